"""Peak memory of `sentiment-rnn predict` on a large file: the issue's 1,000,000-row check.

    PYTHONPATH=src python benchmarks/predict_memory.py --model models/gru.onnx \\
        --tokenizer models/gru.tokenizer.json \\
        --reviews /work/shared/data/imdb/plain_text/test-00000-of-00001.parquet \\
        --rows 1000000 --out reports/benchmarks/predict-memory

Builds an N-row Parquet file by cycling the reviews (ids `r0`, `r1`, ...; one row group per
pass over the reviews), runs `python -m sentiment_rnn.cli predict` on it in a subprocess and
records:
* its exact peak RSS, from the kernel (`ru_maxrss` of the finished child, via `os.wait4`);
* RSS over time, sampled from /proc every `--interval` seconds;
* RSS over rows: at each of the command's progress log lines (`scored N rows`, every 30 s)
  the RSS sampled at that moment, so growth per row scored can be read off.
Writes <out>/predict_memory.json and <out>/predict_memory.md.

Standalone on purpose: it needs only Python, pyarrow, and what `sentiment-rnn predict` itself
imports (numpy, pandas, pyarrow, tokenizers, onnxruntime, onnx, tqdm, typer, pyyaml and this
package); no torch, MLflow, Prefect, DVC or datasets. Linux only (/proc, wait4).
"""

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TARGET_MB = 2048.0
SRC = Path(__file__).resolve().parents[1] / "src"
PROGRESS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*scored (\d+) rows")


def cycled_reviews(src: Path, dst: Path, rows: int, text_column: str) -> Path:
    """`rows` rows made by cycling `src`'s reviews, one row group per pass."""
    texts = pq.read_table(src, columns=[text_column]).column(text_column).cast(pa.string())
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    with pq.ParquetWriter(dst, schema) as writer:
        written = 0
        while written < rows:
            n = min(len(texts), rows - written)
            ids = pa.array([f"r{i}" for i in range(written, written + n)], pa.string())
            writer.write_table(pa.table({"id": ids, "text": texts.slice(0, n)}, schema=schema))
            written += n
    return dst


def rss_mb(pid: int) -> float | None:
    """Current resident set size of `pid` in MB, None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


class Sampler(threading.Thread):
    """Samples the RSS of `pid` every `interval` seconds as (unix time, MB)."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.samples = pid, interval, []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            mb = rss_mb(self.pid)
            if mb is not None:
                self.samples.append((time.time(), mb))
            self.stop.wait(self.interval)


def run_measured(
    cmd: list[str], env: dict[str, str], log_path: Path, interval: float, max_seconds: float
) -> dict[str, Any]:
    """Run `cmd` (output to `log_path`), sampling its RSS; the kernel's peak at the end."""
    start = time.time()
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        sampler = Sampler(proc.pid, interval)
        sampler.start()
        timer = threading.Timer(max_seconds, proc.terminate) if max_seconds else None
        if timer:
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # usage: this child's own rusage
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the command, keep what was measured
            proc.terminate()
            _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if timer:
            timer.cancel()
        sampler.stop.set()
        sampler.join()
    return {"returncode": proc.returncode, "seconds": round(time.time() - start, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "start": start,
            "samples": sampler.samples}  # fmt: skip


def peak_between(samples: list[tuple[float, float]], start: float, end: float) -> float | None:
    """The highest RSS sampled in (start, end]."""
    inside = [mb for t, mb in samples if start < t <= end]
    return max(inside) if inside else None


def rows_curve(log_text: str, samples: list[tuple[float, float]], start: float) -> list[dict]:
    """(seconds, rows scored, peak RSS MB since the previous line) at each progress line of
    the command's log. The peak, not the RSS at that moment: after each chunk predict hands
    memory back, so a sample right after a release reads low."""
    curve = []
    previous = start
    for line in log_text.splitlines():
        match = PROGRESS.match(line)
        if match:
            when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            rss = peak_between(samples, previous, when)
            previous = when
            curve.append({"seconds": round(when - start, 1), "rows": int(match.group(2)),
                          "rss_mb": None if rss is None else round(rss, 1)})  # fmt: skip
    return curve


def growth_mb_per_100k(curve: list[dict]) -> float | None:
    """Growth of the peak RSS per 100,000 rows between the second and the last progress line
    (the first still includes warm-up: the arena reaching the longest batch)."""
    points = [p for p in curve if p["rss_mb"] is not None]
    if len(points) < 3 or points[-1]["rows"] == points[1]["rows"]:
        return None
    first, last = points[1], points[-1]
    return round((last["rss_mb"] - first["rss_mb"]) / (last["rows"] - first["rows"]) * 1e5, 1)


def markdown(report: dict[str, Any]) -> str:
    verdict = "under" if report["within_target"] else "NOT under"
    env = " ".join(f"{k}={v}" for k, v in report.get("environment", {}).items()) or "none set"
    lines = [
        "# Peak memory of `sentiment-rnn predict`", "",
        f"Command: `{report['command']}`", "",
        f"Input: {report['rows']} rows cycled from {report['reviews']}. Machine: "
        f"{report['machine']}. Environment: "
        f"`{env}`.", "",
        f"Peak RSS (kernel, ru_maxrss): **{report['peak_rss_mb']} MB**, {verdict} the "
        f"{TARGET_MB:.0f} MB target; {report['seconds']} s, exit status {report['returncode']}"
        f" (completed: {report['completed']}). Summary: `{report['summary']}`", "",
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help=".onnx file (or models:/ URI)")
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--reviews", type=Path, required=True, help="Parquet with the reviews")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, required=True, help="folder for the reports")
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
    parser.add_argument("--release-memory", action="store_true",
                        help="run predict with --release-memory (onnxruntime's arena shrunk)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=0.0,
        help="stop the command after this long (0: let it finish)",
    )
    return parser.parse_args(argv)


def predict_command(model: str, tokenizer: Path, reviews: Path, output: Path, threads: int,
                    options: list[str]) -> list[str]:
    """`sentiment-rnn predict` on the CPU provider, ids from the `id` column, no bar."""
    return [sys.executable, "-m", "sentiment_rnn.cli", "predict", "-m", str(model),
            "--tokenizer", str(tokenizer), "-i", str(reviews), "-o", str(output),
            "--id-column", "id", "--no-progress", "--providers", "cpu",
            "--threads", str(threads), *options]  # fmt: skip


def child_env() -> dict[str, str]:
    """This environment, with this checkout's src/ first on PYTHONPATH."""
    paths = (str(SRC), os.environ.get("PYTHONPATH", ""))
    return os.environ | {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def summary_line(log_text: str) -> str:
    """The command's closing summary (`N rows -> ...`), or "" if it did not finish."""
    return next((line for line in log_text.splitlines() if " rows -> " in line), "")


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    big = work / f"reviews-{args.rows}.parquet"
    if not big.is_file():
        print(f"writing {big} ({args.rows} rows)", flush=True)
        cycled_reviews(args.reviews, big, args.rows, args.text_column)
    options = ["--batch-size", str(args.batch_size), "--chunk-rows", str(args.chunk_rows)]
    if args.release_memory:
        options.append("--release-memory")
    cmd = predict_command(args.model, args.tokenizer, big, work / "scored.parquet", args.threads,
                          options)
    print(f"running: {' '.join(cmd)}", flush=True)
    log_path = args.out / "predict_memory.log"
    run = run_measured(cmd, child_env(), log_path, args.interval, args.max_seconds)
    log_text = log_path.read_text()
    summary = summary_line(log_text)
    start, samples = run.pop("start"), run.pop("samples")
    timeline = [(round(t - start, 1), round(mb, 1)) for t, mb in samples]
    curve = rows_curve(log_text, samples, start)
    return run | {
        "command": " ".join(cmd), "rows": args.rows, "reviews": str(args.reviews),
        "completed": run["returncode"] == 0 and bool(summary), "summary": summary,
        "target_mb": TARGET_MB, "within_target": run["peak_rss_mb"] < TARGET_MB,
        "rss_by_rows": curve, "growth_mb_per_100k_rows": growth_mb_per_100k(curve),
        "rss_mb_timeline": timeline[:: max(1, len(timeline) // 40)],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
                   f"{platform.python_version()}",
        "environment": memory_environment(),
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
    args.out.mkdir(parents=True, exist_ok=True)
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        report = measure(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="predict-memory-") as tmp:
            report = measure(args, Path(tmp))
    (args.out / "predict_memory.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "predict_memory.md").write_text(markdown(report))
    print(
        f"peak RSS {report['peak_rss_mb']} MB (target < {TARGET_MB:.0f} MB), "
        f"{report['seconds']} s, completed: {report['completed']}; growth "
        f"{report['growth_mb_per_100k_rows']} MB per 100k rows; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
