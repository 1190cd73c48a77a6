"""A tiny registered text model in a throwaway MLflow store, for the MLflow client tests.

The model is the export stage's graph of a randomly initialised GRU (`make_model`), registered
as `tiny-gru` through `registry.log_text_model` in a run that carries a validation accuracy,
with `champion` moved to it as `sentiment-rnn promote` does.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from sentiment_rnn.tracking import registry, runs
from tests.conftest import synthetic_reviews
from tests.model.predict_helpers import make_model, make_tokenizer

NAME = "tiny-gru"
URI = f"models:/{NAME}@champion"
MAX_LENGTH = 12  # short, so that some synthetic reviews are truncated


@dataclass(frozen=True)
class TinyRegistry:
    store: str  # MLFLOW_TRACKING_URI of the throwaway store
    onnx_file: Path
    tokenizer: Path
    version: int


def register_tiny_model(root: Path) -> TinyRegistry:
    """Register the tiny text model in `root/mlflow.db`; MLFLOW_TRACKING_URI must name it."""
    tokenizer = make_tokenizer(root / "tokenizer.json")
    onnx_file, _ = make_model(root / "models", tokenizer, "gru", MAX_LENGTH)
    with runs.start_run("text-model", "gru", {"arch": "gru"}):
        runs.log_metrics({"best_val_acc": 0.5})
        version = registry.log_text_model(
            onnx_file, root / "models/gru.tokenizer.json", NAME, {"arch": "gru"}
        )
    assert registry.update_champion(NAME) == version
    return TinyRegistry(f"sqlite:///{root / 'mlflow.db'}", onnx_file, tokenizer, version)


@contextmanager
def tiny_registry(root: Path) -> Iterator[TinyRegistry]:
    """The tiny model registered in a store under `root`, which MLFLOW_TRACKING_URI names and
    the working directory is while the block runs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        yield register_tiny_model(root)


def review_frame(n: int = 24, seed: int = 7) -> pd.DataFrame:
    """Synthetic reviews with labels as the model names them, one of them long."""
    frame = synthetic_reviews(n, seed)
    frame.loc[3, "text"] = " ".join(frame["text"][:10])  # beyond MAX_LENGTH tokens
    frame["label"] = frame["label"].map({0: "negative", 1: "positive"})
    return frame
