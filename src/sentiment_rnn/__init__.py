"""IMDB sentiment with recurrent models: DVC stages, Prefect flows, MLflow tracking, ONNX serving."""

__version__ = "0.1.0"
