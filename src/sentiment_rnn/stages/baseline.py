"""Stage `baseline`: the peer baseline on the pipeline's own splits, TF-IDF + logistic regression.

Fits on the train split, selects C on the validation split, reports test accuracy once; the
`compare` stage shows it beside the three recurrent families for scale.
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score

from sentiment_rnn import paths
from sentiment_rnn.errors import UserError
from sentiment_rnn.files import write_json
from sentiment_rnn.params import section, validate
from sentiment_rnn.stages import entry

STAGE = "baseline"


@dataclass(frozen=True)
class BaselineConfig:
    """params.yaml `baseline`."""

    max_ngram: int  # word n-grams 1..max_ngram
    min_df: int  # terms in fewer train reviews are dropped
    max_df: float  # terms in a larger share of train reviews are dropped
    c_values: list[float]  # inverse regularisation strengths tried; chosen on validation

    def __post_init__(self) -> None:
        if self.max_ngram < 1 or not self.c_values or min(self.c_values) <= 0:
            raise UserError("baseline.max_ngram must be >= 1 and baseline.c_values positive")

    def describe(self) -> str:
        return (
            f"TF-IDF (1-{self.max_ngram} grams, sublinear tf, min_df {self.min_df})"
            " + logistic regression"
        )


def fit_baseline(cfg: BaselineConfig, splits: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Fit, choose C on validation, then score the test split once."""
    start = time.perf_counter()
    vectorizer = TfidfVectorizer(
        ngram_range=(1, cfg.max_ngram), min_df=cfg.min_df, max_df=cfg.max_df, sublinear_tf=True
    )
    x_train = vectorizer.fit_transform(splits["train"]["text"])
    x_val = vectorizer.transform(splits["val"]["text"])
    models, val_acc = {}, {}
    for c in cfg.c_values:
        models[c] = LogisticRegression(C=c, max_iter=2000).fit(x_train, splits["train"]["label"])
        val_acc[c] = float(accuracy_score(splits["val"]["label"], models[c].predict(x_val)))
    best = max(val_acc, key=val_acc.__getitem__)
    seconds = time.perf_counter() - start
    test_pred = models[best].predict(vectorizer.transform(splits["test"]["text"]))
    return {
        "model": cfg.describe(),
        "selected_C": best,
        "val_acc_by_C": {str(k): round(v, 4) for k, v in val_acc.items()},
        "val_acc": round(val_acc[best], 4),
        "test_acc": round(float(accuracy_score(splits["test"]["label"], test_pred)), 4),
        "fit_and_select_seconds": round(seconds, 1),
        "train_rows": len(splits["train"]),
    }


def run(params: Mapping[str, Any]) -> dict[str, Any]:
    """The stage: `baseline` params and data/raw -> reports/metrics/baseline.json."""
    cfg = validate(BaselineConfig, section(params, STAGE, STAGE), STAGE, STAGE)
    for split in ("train", "val", "test"):
        if not paths.split_file(split).is_file():
            raise UserError(f"{paths.split_file(split)} not found: run dvc repro download")
    splits = {s: pd.read_parquet(paths.split_file(s)) for s in ("train", "val", "test")}
    result = fit_baseline(cfg, splits)
    write_json(paths.metrics_file(STAGE), result)
    return result


if __name__ == "__main__":
    entry.main(STAGE, run)
