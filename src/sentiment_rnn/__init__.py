"""IMDB sentiment with recurrent models: DVC stages, Prefect flows, MLflow, ONNX serving."""

__version__ = "0.1.0"
