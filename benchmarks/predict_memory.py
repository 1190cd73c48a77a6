"""Peak memory of `sentiment-rnn predict` on a large file: the issue's 1,000,000-row check.

    python benchmarks/predict_memory.py --model models/gru.onnx \\
        --tokenizer models/gru.tokenizer.json \\
        --reviews ../shared/data/imdb/plain_text/test-00000-of-00001.parquet \\
        --rows 1000000 --out reports/benchmarks/predict-memory

Builds an N-row Parquet file by cycling the reviews (ids `r0`, `r1`, ...; one row group per
pass over the reviews), runs `python -m sentiment_rnn.cli predict` on it in a subprocess and
records:
* its exact peak RSS, from the kernel (`ru_maxrss` of the finished child, via `os.wait4`);
* RSS over time, sampled from /proc every `--interval` seconds;
* RSS over rows: at each of the command's progress log lines (`scored N rows`, every 30 s)
  the peak RSS sampled since the previous one, so growth per row scored can be read off.
Writes <out>.json, <out>.md and the command's log <out>.log.

Light on purpose: it needs only what `sentiment-rnn predict` itself imports (no torch, MLflow,
Prefect, DVC or datasets). Linux only (/proc, wait4).
"""

import argparse
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

import _common

DEFAULT_OUT = Path("reports/benchmarks/predict_memory")


def markdown(report: dict[str, Any]) -> str:
    verdict = "under" if report["within_target"] else "NOT under"
    env = " ".join(f"{k}={v}" for k, v in report.get("environment", {}).items()) or "none set"
    lines = [
        "# Peak memory of `sentiment-rnn predict`", "",
        f"Command: `{report['command']}`", "",
        f"Input: {report['rows']} rows cycled from {report['reviews']}. Machine: "
        f"{report['machine']}. Environment: `{env}`.", "",
        f"Peak RSS (kernel, ru_maxrss): **{report['peak_rss_mb']} MB**, {verdict} the "
        f"{report['target_mb']:.0f} MB target; {report['seconds']} s, exit status "
        f"{report['returncode']} (completed: {report['completed']}). Summary: "
        f"`{report['summary']}`", "",
        f"RSS growth after warm-up: {report['growth_mb_per_100k_rows']} MB per 100k rows.", "",
        "| seconds | rows scored | peak RSS MB since the previous line |", "| --- | --- | --- |",
    ]  # fmt: skip
    lines += [f"| {p['seconds']} | {p['rows']} | {p['rss_mb']} |" for p in report["rss_by_rows"]]
    lines += [
        "",
        "RSS over time (s: MB): "
        + ", ".join(f"{t:.0f}: {mb:.0f}" for t, mb in report["rss_mb_timeline"]),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _common.parser(__doc__, DEFAULT_OUT)
    parser.add_argument("--model", required=True, help=".onnx file (or models:/ URI)")
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--reviews", type=Path, required=True, help="Parquet with the reviews")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--work",
        type=Path,
        help="folder for the big input and output files "
        "(default: a temporary folder, removed at the end)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="onnxruntime and tokenizer threads (0: all cores)"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--chunk-rows", type=int, default=8192)
    parser.add_argument(
        "--release-memory",
        action="store_true",
        help="run predict with --release-memory (onnxruntime's arena shrunk)",
    )
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=0.0,
        help="stop the command after this long (0: let it finish)",
    )
    parser.add_argument(
        "--target-mb",
        type=float,
        default=2048.0,
        help="the peak RSS the report checks against (default: %(default)s, the issue's)",
    )
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    big = work / f"reviews-{args.rows}.parquet"
    if not big.is_file():
        print(f"writing {big} ({args.rows} rows)", flush=True)
        _common.cycled_reviews(args.reviews, big, args.rows, args.text_column)
    options = ["--batch-size", str(args.batch_size), "--chunk-rows", str(args.chunk_rows)]
    if args.release_memory:
        options.append("--release-memory")
    cmd = _common.predict_command(
        args.model, args.tokenizer, big, work / "scored.parquet", args.threads, options
    )
    print(f"running: {' '.join(cmd)}", flush=True)
    log_path = _common.result_file(args.out, ".log")
    run = _common.run_measured(cmd, _common.child_env(), log_path, args.interval, args.max_seconds)
    log_text = log_path.read_text()
    summary = _common.summary_line(log_text)
    start, samples = run.pop("start"), run.pop("samples")
    timeline = [(round(t - start, 1), round(mb, 1)) for t, mb in samples]
    curve = _common.rows_curve(log_text, samples, start)
    return run | {
        "command": " ".join(cmd), "rows": args.rows, "reviews": str(args.reviews),
        "completed": run["returncode"] == 0 and bool(summary), "summary": summary,
        "target_mb": args.target_mb, "within_target": run["peak_rss_mb"] < args.target_mb,
        "rss_by_rows": curve, "growth_mb_per_100k_rows": _common.growth_mb_per_100k(curve),
        "rss_mb_timeline": timeline[:: max(1, len(timeline) // 40)],
        "machine": _common.machine(), "environment": memory_environment(),
    }  # fmt: skip


def memory_environment() -> dict[str, str]:
    """The variables set for the run that change its threads or its allocator."""
    prefixes = ("MALLOC_", "RAYON_", "OMP_", "TOKENIZERS_")
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(prefixes)}


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a timeout's SIGTERM: report, then exit
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        report = measure(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="predict-memory-") as tmp:
            report = measure(args, Path(tmp))
    _common.write_result(args.out, report, markdown(report))
    print(
        f"peak RSS {report['peak_rss_mb']} MB (target < {args.target_mb:.0f} MB), "
        f"{report['seconds']} s, completed: {report['completed']}; growth "
        f"{report['growth_mb_per_100k_rows']} MB per 100k rows"
    )


if __name__ == "__main__":
    main()
