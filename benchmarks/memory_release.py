"""Memory and speed of `sentiment-rnn predict` with and without its memory release per chunk.

    PYTHONPATH=src python benchmarks/memory_release.py --model models/gru.onnx \\
        --tokenizer models/gru.tokenizer.json \\
        --reviews ../shared/data/imdb/plain_text/test-00000-of-00001.parquet \\
        --rows 150000 --threads 16 --out reports/benchmarks/memory-release

With `--release-memory`, `predict` shrinks onnxruntime's CPU arena after each chunk. This runs
the same command on the same file twice, alternately `--repeats` times: without it (the
default, the baseline) and with it.
`--threads 16` on a small machine starts the thread pools of a 16-core one. Each run's peak
RSS (kernel), RSS growth per 100,000 rows and rows/s are recorded; speed is the ratio of the
two in this run. Writes <out>/memory_release.json and <out>/memory_release.md.
"""

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from predict_memory import (
    child_env,
    cycled_reviews,
    growth_mb_per_100k,
    predict_command,
    rows_curve,
    run_measured,
    summary_line,
)

RATE = re.compile(r"([\d,]+) rows/s\s*$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help=".onnx file")
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--reviews", type=Path, required=True, help="Parquet with the reviews")
    parser.add_argument("--rows", type=int, default=150_000)
    parser.add_argument("--threads", type=int, default=16,
                        help="onnxruntime and tokenizer threads (0: one per core)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="folder for the reports")
    return parser.parse_args(argv)


def one_run(args: argparse.Namespace, big: Path, work: Path, name: str,
            extra: list[str]) -> dict[str, Any]:
    """One measured `predict` over `big`; its peak, growth and speed."""
    cmd = predict_command(args.model, args.tokenizer, big, work / "out.parquet", args.threads,
                          extra)
    log_path = args.out / f"{name}.log"
    print(f"{name}: {' '.join(cmd)}", flush=True)
    run = run_measured(cmd, child_env(), log_path, interval=0.5, max_seconds=0)
    log_text = log_path.read_text()
    summary = summary_line(log_text)
    rate = RATE.search(summary)
    if run["returncode"] != 0 or rate is None:
        raise SystemExit(f"{name} failed (status {run['returncode']}): see {log_path}")
    curve = rows_curve(log_text, run["samples"], run["start"])
    result = {"run": name, "peak_rss_mb": run["peak_rss_mb"], "seconds": run["seconds"],
              "rows_per_second": float(rate.group(1).replace(",", "")),
              "growth_mb_per_100k_rows": growth_mb_per_100k(curve), "rss_by_rows": curve}
    print(f"{name}: peak {result['peak_rss_mb']} MB, growth "
          f"{result['growth_mb_per_100k_rows']} MB/100k rows, {result['rows_per_second']} rows/s",
          flush=True)
    return result


def summarise(runs: list[dict[str, Any]], label: str) -> dict[str, Any]:
    mine = [r for r in runs if r["run"].startswith(label)]
    growth = [r["growth_mb_per_100k_rows"] for r in mine if r["growth_mb_per_100k_rows"]]
    return {"peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
            "growth_mb_per_100k_rows": statistics.median(growth) if growth else None,
            "rows_per_second": statistics.median(r["rows_per_second"] for r in mine)}


def row(name: str, result: dict[str, Any]) -> str:
    return (f"| {name} | {result['peak_rss_mb']} | {result['growth_mb_per_100k_rows']} | "
            f"{result['rows_per_second']:,.0f} |")


def markdown(report: dict[str, Any]) -> str:
    base, shipped = report["baseline"], report["shipped"]
    lines = [
        "# `sentiment-rnn predict` with and without its memory release per chunk", "",
        f"Command: `python benchmarks/memory_release.py {report['argv']}`", "",
        f"Machine: {report['machine']}. {report['rows']:,} rows cycled from {report['reviews']}, "
        f"`--threads {report['threads']}`, {report['repeats']} run(s) each, alternating.", "",
        "| run | peak RSS MB | RSS growth MB per 100k rows | rows/s |", "| --- | --- | --- | --- |",
        row("without the arena release", base),
        row("`--release-memory`", shipped), "",
        f"Speed, with / without the release: **{report['speed_ratio']:.2f}x**.", "",
    ]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="memory-release-") as tmp:
        big = cycled_reviews(args.reviews, Path(tmp) / "reviews.parquet", args.rows, "text")
        for i in range(args.repeats):
            runs.append(one_run(args, big, Path(tmp), f"baseline-{i}", []))
            runs.append(one_run(args, big, Path(tmp), f"shipped-{i}", ["--release-memory"]))
    baseline, shipped = summarise(runs, "baseline"), summarise(runs, "shipped")
    report = {"argv": " ".join(sys.argv[1:] if argv is None else argv), "rows": args.rows,
              "reviews": str(args.reviews), "threads": args.threads,
              "repeats": args.repeats, "baseline": baseline, "shipped": shipped,
              "speed_ratio": shipped["rows_per_second"] / baseline["rows_per_second"],
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
                         f"{platform.python_version()}", "runs": runs}  # fmt: skip
    (args.out / "memory_release.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "memory_release.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
