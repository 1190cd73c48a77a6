"""Tokenize-stage throughput on a real IMDB copy: fit on train, encode all labelled reviews.

    python benchmarks/tokenize_throughput.py --source ../shared/data/imdb

Prints reviews/s and writes reports/benchmarks/tokenize.json.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from sentiment_rnn.download import run_download
from sentiment_rnn.tokenize import TokenizeConfig, run_tokenize


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", default="../shared/data/imdb")
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks/tokenize.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run_download(args.source, 0.1, 42, root / "raw", root / "data.json")
        start = time.perf_counter()
        metrics = run_tokenize(TokenizeConfig(), root / "raw", root / "tokens", root / "tok.json")
        stage_seconds = time.perf_counter() - start
    rows = sum(metrics[s]["rows"] for s in ("train", "val", "test"))
    result = {
        "source": args.source,
        "reviews": rows,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "fit_seconds": metrics["fit_seconds"],
        "encode_seconds": metrics["encode_seconds"],
        "encode_reviews_per_second": metrics["reviews_per_second"],
        "stage_seconds": round(stage_seconds, 2),
        "stage_reviews_per_second": round(rows / stage_seconds, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
