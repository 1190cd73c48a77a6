"""Every MLflow call of the package: runs and metrics (`runs`), the model registry (`registry`)."""
