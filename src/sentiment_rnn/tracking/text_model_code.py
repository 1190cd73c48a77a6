"""The file MLflow runs to build the registered text model (models from code): not imported.

`registry.log_text_model` logs it as `python_model`; MLflow runs it when the model is logged
and when it is loaded, and `load_context` then opens the model's artifacts.
"""

import mlflow

from sentiment_rnn.tracking.text_model import SentimentTextModel

mlflow.models.set_model(SentimentTextModel())
