"""Stage `tokenize`: fit the tokenizer on the train split, encode train / val / test once.

Writes `data/tokens/{tokenizer.json, meta.json, train.npz, val.npz, test.npz}`; `meta.json`
is what the later stages read of the tokens (vocabulary size, tokenizer digest, length).
"""

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from sentiment_rnn import paths
from sentiment_rnn.core.tokenizer import (
    TokenizeConfig,
    TokensMeta,
    encode_split,
    save_encoded,
    split_metrics,
    train_tokenizer,
)
from sentiment_rnn.errors import UserError
from sentiment_rnn.files import sha256_file, write_json
from sentiment_rnn.params import section, validate
from sentiment_rnn.stages import entry

log = logging.getLogger(__name__)

STAGE = "tokenize"
SPLITS = ("train", "val", "test")


def read_split(split: str) -> pd.DataFrame:
    path = paths.split_file(split)
    if not path.is_file():
        raise UserError(f"{path} not found: run the download stage first (dvc repro download)")
    return pd.read_parquet(path)


def tokenize(cfg: TokenizeConfig) -> dict[str, Any]:
    """Fit on train, encode every split, write the arrays, tokenizer and meta; returns metrics."""
    frames = {split: read_split(split) for split in SPLITS}
    t0 = time.perf_counter()
    tok = train_tokenizer(frames["train"]["text"].tolist(), cfg)
    metrics: dict[str, Any] = {"vocab_size": tok.get_vocab_size()}
    # times are logged, not written: the stage's outputs must be a function of its inputs
    log.info("tokenizer fitted in %.1f s", time.perf_counter() - t0)
    paths.TOKENS_DIR.mkdir(parents=True, exist_ok=True)
    tok.save(str(paths.TOKENIZER_FILE))
    t0 = time.perf_counter()
    for split, df in frames.items():
        enc = encode_split(tok, df["text"].tolist(), df["label"].to_numpy(np.int64), cfg)
        save_encoded(paths.tokens_file(split), enc)
        metrics[split] = split_metrics(enc)
    seconds = time.perf_counter() - t0
    rows = sum(len(df) for df in frames.values())
    meta = TokensMeta(
        tok.get_vocab_size(), sha256_file(paths.TOKENIZER_FILE), cfg.max_length, cfg.truncation_side
    )
    write_json(paths.TOKENS_META, meta.to_dict())
    metrics["tokenizer_sha256"] = meta.tokenizer_sha256
    log.info("vocab %d, %d reviews encoded at %.0f/s", meta.vocab_size, rows, rows / seconds)
    return metrics


def run(params: Mapping[str, Any]) -> dict[str, Any]:
    """The stage: `tokenize` params -> data/tokens/ and reports/metrics/tokenize.json."""
    cfg = validate(TokenizeConfig, section(params, STAGE, STAGE), STAGE, STAGE)
    metrics = tokenize(cfg)
    write_json(paths.metrics_file(STAGE), metrics)
    return metrics


if __name__ == "__main__":
    entry.main(STAGE, run)
