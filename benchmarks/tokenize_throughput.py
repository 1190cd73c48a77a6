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

from sentiment_rnn import paths
from sentiment_rnn.core.tokenizer import TokenizeConfig
from sentiment_rnn.stages.download import DataConfig, download
from sentiment_rnn.stages.tokenize import SPLITS, tokenize

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
        start = time.perf_counter()
        metrics = tokenize(cfg)
        stage_seconds = time.perf_counter() - start
    rows = sum(metrics[s]["rows"] for s in SPLITS)
    return {
        "reviews": rows,
        "fit_seconds": metrics["fit_seconds"],
        "encode_seconds": metrics["encode_seconds"],
        "encode_reviews_per_second": metrics["reviews_per_second"],
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
