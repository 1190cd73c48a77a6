"""The benchmarks' shared harness: argument parser, machine line, result files, and measured
runs of `sentiment-rnn predict` in a child process (peak RSS from the kernel).

A script run as `python benchmarks/<name>.py` has `benchmarks/` first on sys.path, so it
imports this module as `import _common`. No torch here: the memory benchmarks stay light.
Linux only where it measures memory (/proc, wait4).
"""

import argparse
import importlib.metadata
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import sentiment_rnn
from sentiment_rnn.files import write_json

PROGRESS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*scored (\d+) rows")


# ---------------------------------------------------------------- command line and results


def parser(doc: str, out: Path) -> argparse.ArgumentParser:
    """A parser whose help is the script's docstring, with the `--out` every benchmark takes."""
    result = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    result.add_argument(
        "--out",
        type=Path,
        default=out,
        help="where the results go: <out>.json and <out>.md (default: %(default)s)",
    )
    return result


def command(script: str, argv: list[str] | None) -> str:
    """How this run was started, as a user would type it from the project root."""
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", f"benchmarks/{Path(script).name}", *args])


def machine(*packages: str) -> str:
    """This machine in one line: processor, cores, Python and the versions of `packages`."""
    parts = [platform.processor() or platform.machine(), f"{os.cpu_count()} CPUs"]
    parts.append(f"Python {platform.python_version()}")
    parts += [f"{name} {importlib.metadata.version(name)}" for name in packages]
    return ", ".join(parts)


def result_file(out: Path, suffix: str) -> Path:
    """`<out><suffix>`, e.g. `<out>.json`; an `--out` given with .json or .md is taken as stem."""
    if out.suffix in (".json", ".md"):
        out = out.with_suffix("")
    return out.with_name(out.name + suffix)


def write_result(out: Path, result: dict[str, Any], markdown: str | None = None) -> list[Path]:
    """Write `result` to <out>.json and `markdown` (if any) to <out>.md; returns the files."""
    written = [result_file(out, ".json")]
    write_json(written[0], result)  # creates the folder
    if markdown is not None:
        written.append(result_file(out, ".md"))
        written[1].write_text(markdown)
    print("wrote " + ", ".join(str(p) for p in written), flush=True)
    return written


# ---------------------------------------------------------------- measured predict runs


def cycled_reviews(src: Path, dst: Path, rows: int, text_column: str = "text") -> Path:
    """`rows` rows made by cycling `src`'s reviews (ids `r0`, `r1`, ...), one row group per
    pass over them."""
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


def predict_command(
    model: str, tokenizer: Path, reviews: Path, output: Path, threads: int, options: list[str]
) -> list[str]:
    """`sentiment-rnn predict` on the CPU provider, ids from the `id` column, no bar."""
    return [sys.executable, "-m", "sentiment_rnn.cli", "predict", "-m", str(model),
            "--tokenizer", str(tokenizer), "-i", str(reviews), "-o", str(output),
            "--id-column", "id", "--no-progress", "--providers", "cpu",
            "--threads", str(threads), *options]  # fmt: skip


def child_env() -> dict[str, str]:
    """This environment, with the folder of the `sentiment_rnn` this process imported first
    on PYTHONPATH: the measured command runs the same code, installed or not."""
    here = str(Path(sentiment_rnn.__file__).resolve().parents[1])
    paths = (here, os.environ.get("PYTHONPATH", ""))
    return os.environ | {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


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
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
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
    """Run `cmd` (output to `log_path`), sampling its RSS; the kernel's peak at the end.

    Stops it after `max_seconds` (0: never) or on KeyboardInterrupt, keeping what was measured.
    """
    start = time.time()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        sampler = Sampler(proc.pid, interval)
        sampler.start()
        timer = threading.Timer(max_seconds, proc.terminate) if max_seconds else None
        if timer:
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # usage: this child's own rusage
        except KeyboardInterrupt:
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


def summary_line(log_text: str) -> str:
    """The command's closing summary (`N rows -> ...`), or "" if it did not finish."""
    return next((line for line in log_text.splitlines() if " rows -> " in line), "")


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
