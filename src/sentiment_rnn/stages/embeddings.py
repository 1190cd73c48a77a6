"""Stage `embeddings`: word vectors (PPMI + SVD) from the train and unlabelled reviews.

Validation and test texts are never read here. Writes `data/embeddings/vectors.npy` and
`reports/metrics/embeddings.json` (sizes, timing, nearest neighbours of probe words).
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from sentiment_rnn import paths
from sentiment_rnn.core.embeddings import EmbeddingConfig, fit_embeddings
from sentiment_rnn.core.tokenizer import load_tokenizer
from sentiment_rnn.errors import UserError
from sentiment_rnn.files import write_json
from sentiment_rnn.params import section, validate
from sentiment_rnn.paths import UNLABELLED
from sentiment_rnn.stages import entry

STAGE = "embeddings"


def corpus() -> list[str]:
    """The texts the vectors learn from: the train split and the unlabelled reviews."""
    files = [paths.split_file("train"), paths.split_file(UNLABELLED)]
    for path in files:
        if not path.exists():
            raise UserError(f"{path} is missing: run `dvc repro download` first")
    return [t for f in files for t in pd.read_parquet(f, columns=["text"])["text"].tolist()]


def run(params: Mapping[str, Any]) -> dict[str, Any]:
    """The stage: `embeddings` params -> data/embeddings/vectors.npy and its metrics."""
    cfg = validate(EmbeddingConfig, section(params, STAGE, STAGE), STAGE, STAGE)
    result = fit_embeddings(load_tokenizer(paths.TOKENIZER_FILE), corpus(), cfg)
    paths.EMBEDDINGS_FILE.parent.mkdir(parents=True, exist_ok=True)
    np.save(paths.EMBEDDINGS_FILE, result.vectors)
    metrics = {"dim": cfg.dim, "vocab_size": int(result.vectors.shape[0]), **result.stats}
    write_json(paths.metrics_file(STAGE), metrics)
    return metrics


if __name__ == "__main__":
    entry.main(STAGE, run)
