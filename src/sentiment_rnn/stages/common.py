"""What several stages read: the tokens' meta, word vectors, a trained model, the experiment."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sentiment_rnn import paths
from sentiment_rnn.core.model import SentimentRNN, TrainedModelInfo, load_model
from sentiment_rnn.core.tokenizer import TokensMeta
from sentiment_rnn.errors import UserError
from sentiment_rnn.files import read_json
from sentiment_rnn.params import section, validate
from sentiment_rnn.serving.contract import check_pairing


def tokens_meta() -> TokensMeta:
    """What the tokenize stage recorded of the tokens (`data/tokens/meta.json`)."""
    if not paths.TOKENS_META.is_file():
        raise UserError(
            f"{paths.TOKENS_META} not found: run the tokenize stage (dvc repro tokenize)"
        )
    return TokensMeta.from_dict(read_json(paths.TOKENS_META))


@dataclass(frozen=True)
class MlflowConfig:
    """params.yaml `mlflow`."""

    experiment: str  # where every stage's run goes


def experiment(params: Mapping[str, Any], stage: str) -> str:
    return validate(MlflowConfig, section(params, "mlflow", stage), "mlflow", stage).experiment


def trained_model(arch: str) -> tuple[SentimentRNN, TrainedModelInfo]:
    """models/<arch>, after checking it was trained on the current tokens."""
    model, info = load_model(paths.model_file(arch))
    check_pairing(
        paths.TOKENIZER_FILE,
        info.tokenizer_sha256,
        f"models/{arch}",
        f"rerun the train stage (dvc repro train@{arch})",
    )
    return model, info


def word_vectors() -> np.ndarray:
    """The vectors of the embeddings stage, with a clear error when they are not there."""
    if not paths.EMBEDDINGS_FILE.exists():
        raise UserError(
            f"{paths.EMBEDDINGS_FILE} is missing: run `dvc repro embeddings` first, or set "
            "train.<arch>.pretrained_embeddings: false"
        )
    return np.load(paths.EMBEDDINGS_FILE)
