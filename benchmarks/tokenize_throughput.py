"""Tokenize-stage throughput on a real IMDB copy: fit on train, encode all labelled reviews.

    python benchmarks/tokenize_throughput.py --source ../shared/data/imdb

Runs the download and tokenize stages' functions in a temporary project folder (tokenizer
settings: `TokenizeConfig`'s defaults) and prints reviews/s. Writes <out>.json.
"""

import argparse
import contextlib
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import _common
import numpy as np

from sentiment_rnn import paths
from sentiment_rnn.core.tokenizer import TokenizeConfig, encode_split, train_tokenizer
from sentiment_rnn.stages.download import DataConfig, download
from sentiment_rnn.stages.tokenize import SPLITS, read_split, tokenize

DEFAULT_OUT = Path("reports/benchmarks/tokenize")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _common.parser(__doc__, DEFAULT_OUT)
    parser.add_argument(
        "--source", default="../shared/data/imdb", help="data.source: a hub id or a local copy"
    )
    return parser.parse_args(argv)


def measure(source: str, cfg: TokenizeConfig) -> dict[str, Any]:
    """Download into a temporary project, then time the tokenize stage there."""
    source = paths.resolve_source(source)  # before leaving the project root
    with tempfile.TemporaryDirectory(prefix="tokenize-bench-") as tmp, contextlib.chdir(tmp):
        download(DataConfig(source=source, val_fraction=0.1, seed=42), paths.RAW_DIR)
        frames = {split: read_split(split) for split in SPLITS}
        start = time.perf_counter()
        tok = train_tokenizer(frames["train"]["text"].tolist(), cfg)
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for df in frames.values():
            encode_split(tok, df["text"].tolist(), df["label"].to_numpy(np.int64), cfg)
        encode_seconds = time.perf_counter() - start
        start = time.perf_counter()
        tokenize(cfg)  # the whole stage: read, fit, encode, write
        stage_seconds = time.perf_counter() - start
    rows = sum(len(df) for df in frames.values())
    return {
        "reviews": rows,
        "fit_seconds": round(fit_seconds, 2),
        "encode_seconds": round(encode_seconds, 2),
        "encode_reviews_per_second": round(rows / encode_seconds, 1),
        "stage_seconds": round(stage_seconds, 2),
        "stage_reviews_per_second": round(rows / stage_seconds, 1),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = TokenizeConfig()
    result = {"source": args.source, "tokenize": asdict(cfg), **measure(args.source, cfg)}
    result["machine"] = _common.machine("tokenizers")
    _common.write_result(args.out, result)
    print(
        f"{result['reviews']} reviews: fit {result['fit_seconds']} s, encode "
        f"{result['encode_reviews_per_second']} reviews/s, stage "
        f"{result['stage_reviews_per_second']} reviews/s"
    )


if __name__ == "__main__":
    main()
