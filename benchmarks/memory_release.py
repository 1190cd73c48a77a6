"""Memory and speed of `sentiment-rnn predict` with and without its memory release per chunk.

    python benchmarks/memory_release.py --model models/gru.onnx \\
        --tokenizer models/gru.tokenizer.json \\
        --reviews ../shared/data/imdb/plain_text/test-00000-of-00001.parquet \\
        --rows 150000 --threads 16 --out reports/benchmarks/memory-release/memory_release

With `--release-memory`, `predict` shrinks onnxruntime's CPU arena after each chunk (opt-in).
This runs the same command on the same file, alternately `--repeats` times each: without it
(`no-release`, the default and the baseline) and with it (`release`). `--threads 16` on a
small machine starts the thread pools of a 16-core one. Each run's peak RSS (kernel), RSS
growth per 100,000 rows and rows/s are recorded; speed is the ratio of the two in this run.
Writes <out>.json, <out>.md and each run's log <out>-<run>.log.
"""

import argparse
import re
import statistics
import tempfile
from pathlib import Path
from typing import Any

import _common

DEFAULT_OUT = Path("reports/benchmarks/memory_release")
RATE = re.compile(r"([\d,]+) rows/s\s*$")
RUNS = {"no-release": [], "release": ["--release-memory"]}  # run name -> predict options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _common.parser(__doc__, DEFAULT_OUT)
    parser.add_argument("--model", required=True, help=".onnx file")
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--reviews", type=Path, required=True, help="Parquet with the reviews")
    parser.add_argument("--rows", type=int, default=150_000)
    parser.add_argument(
        "--threads", type=int, default=16, help="onnxruntime and tokenizer threads (0: all cores)"
    )
    parser.add_argument("--repeats", type=int, default=1)
    return parser.parse_args(argv)


def one_run(
    args: argparse.Namespace, big: Path, work: Path, name: str, extra: list[str]
) -> dict[str, Any]:
    """One measured `predict` over `big`; its peak, growth and speed."""
    cmd = _common.predict_command(
        args.model, args.tokenizer, big, work / "out.parquet", args.threads, extra
    )
    log_path = _common.result_file(args.out, f"-{name}.log")
    print(f"{name}: {' '.join(cmd)}", flush=True)
    run = _common.run_measured(cmd, _common.child_env(), log_path, interval=0.5, max_seconds=0)
    log_text = log_path.read_text()
    rate = RATE.search(_common.summary_line(log_text))
    if run["returncode"] != 0 or rate is None:
        raise SystemExit(f"{name} failed (status {run['returncode']}): see {log_path}")
    curve = _common.rows_curve(log_text, run["samples"], run["start"])
    result = {"run": name, "peak_rss_mb": run["peak_rss_mb"], "seconds": run["seconds"],
              "rows_per_second": float(rate.group(1).replace(",", "")),
              "growth_mb_per_100k_rows": _common.growth_mb_per_100k(curve),
              "rss_by_rows": curve}  # fmt: skip
    print(
        f"{name}: peak {result['peak_rss_mb']} MB, growth {result['growth_mb_per_100k_rows']} "
        f"MB/100k rows, {result['rows_per_second']} rows/s",
        flush=True,
    )
    return result


def summarise(runs: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """The worst peak and the median growth and speed of the runs named `label-<i>`."""
    mine = [r for r in runs if r["run"].rsplit("-", 1)[0] == label]
    growth = [r["growth_mb_per_100k_rows"] for r in mine if r["growth_mb_per_100k_rows"]]
    return {"peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
            "growth_mb_per_100k_rows": statistics.median(growth) if growth else None,
            "rows_per_second": statistics.median(r["rows_per_second"] for r in mine)}  # fmt: skip


def row(name: str, result: dict[str, Any]) -> str:
    return (f"| {name} | {result['peak_rss_mb']} | {result['growth_mb_per_100k_rows']} | "
            f"{result['rows_per_second']:,.0f} |")  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# `sentiment-rnn predict` with and without its memory release per chunk", "",
        f"Command: `{report['command']}`", "",
        f"Machine: {report['machine']}. {report['rows']:,} rows cycled from {report['reviews']}, "
        f"`--threads {report['threads']}`, {report['repeats']} run(s) each, alternating.", "",
        "| run | peak RSS MB | RSS growth MB per 100k rows | rows/s |", "| --- | --- | --- | --- |",
        row("no-release (default)", report["no_release"]),
        row("release (`--release-memory`)", report["release"]), "",
        f"Speed, release / no-release: **{report['speed_ratio']:.2f}x**.", "",
    ]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="memory-release-") as tmp:
        big = _common.cycled_reviews(args.reviews, Path(tmp) / "reviews.parquet", args.rows)
        for i in range(args.repeats):
            for name, options in RUNS.items():
                runs.append(one_run(args, big, Path(tmp), f"{name}-{i}", options))
    no_release, release = summarise(runs, "no-release"), summarise(runs, "release")
    report = {"command": _common.command(__file__, argv), "rows": args.rows,
              "reviews": str(args.reviews), "threads": args.threads, "repeats": args.repeats,
              "no_release": no_release, "release": release,
              "speed_ratio": release["rows_per_second"] / no_release["rows_per_second"],
              "machine": _common.machine(), "runs": runs}  # fmt: skip
    text = markdown(report)
    _common.write_result(args.out, report, text)
    print(text)


if __name__ == "__main__":
    main()
