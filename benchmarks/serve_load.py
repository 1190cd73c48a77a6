"""Load test of the registered text model behind `mlflow models serve`, on loopback.

    python benchmarks/serve_load.py [--model models:/imdb-sentiment-gru@champion] \\
        [--reviews ../shared/data/imdb/plain_text/test-00000-of-00001.parquet] \\
        [--clients 1,8,32] [--rows 1,64] [--requests 300] [--max-seconds 60] \
        [--model-config '{"threads": 1}']

Starts `mlflow models serve -m MODEL --env-manager local` on a free loopback port (the store
is MLFLOW_TRACKING_URI, else the project's `mlflow.db`; `--model-config` reaches the model as
MLFLOW_PYFUNC_INFERENCE_CONFIG), then, one after the other:
1. Load: for each number of concurrent clients and reviews per request, `--requests` requests
   (or fewer, when `--max-seconds` runs out) from that many threads, each with its own httpx
   client; reviews are taken in order from the test split (cycled), sent as
   `{"dataframe_records": [{"text": ...}]}`. Per cell: p50 / p99 latency, reviews/s over the
   cell's wall time, errors (a transport error, an answer other than 200, a row whose status
   is not `ok`: must be 0) and the server's RSS (the uvicorn process) after the cell.
2. Baseline: `sentiment-rnn predict` with the same model on the reviews the largest
   64-review cell sent, as a Parquet file; its own rows/s (scoring only, model load and
   start-up excluded, as the server's figures exclude its start), and the served reviews/s of
   each 64-review cell as a ratio to it.
3. Hostile requests (`hostile_requests`): each one's HTTP status against the expected one, its
   answer's size and time, and whether the server still answers /ping afterwards.
The clients run on the same cores as the server: the figures are those of one machine serving
itself. Writes reports/benchmarks/serve_load.json and serve_load.md (`--out`).
"""

import argparse
import itertools
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import psutil

from sentiment_rnn.testing import free_port
from sentiment_rnn.tracking.runs import tracking_uri

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "models:/imdb-sentiment-gru@champion"
DEFAULT_REVIEWS = "../shared/data/imdb/plain_text/test-00000-of-00001.parquet"
JSON = "application/json"
MB = 1 << 20


# ---------------------------------------------------------------- the server


@dataclass
class Server:
    """A running `mlflow models serve` and where it answers."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def rss_mb(self) -> float:
        """Resident memory of the serving process tree (the CLI and its uvicorn child)."""
        root = psutil.Process(self.process.pid)
        procs = [root, *root.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs if p.is_running()) / MB

    def alive(self) -> bool:
        try:
            return httpx.get(f"{self.url}/ping", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def serve(model: str, log: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """`mlflow models serve` on a free loopback port, until the block ends.

    The CLI runs `uvicorn` from PATH: this interpreter's folder goes first. The server runs
    in its own process group, which is what is stopped at the end.
    """
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, **(env or {})}
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    port = free_port()
    command = [str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", model]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 300
        while not server.alive():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow models serve did not start:\n{_tail(log)}")
            time.sleep(0.5)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is still there after 30 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def invoke(client: httpx.Client, texts: list[str]) -> httpx.Response:
    return client.post(
        "/invocations", json={"dataframe_records": [{"text": t} for t in texts]}, timeout=300
    )


# ---------------------------------------------------------------- hostile requests


@dataclass(frozen=True)
class Hostile:
    """A request that a careless or hostile client may send, and the answer it must get."""

    name: str
    body: Callable[[], bytes]  # built when sent: some are 10 MB
    content_type: str
    expect: int  # HTTP status
    statuses: tuple[str, ...] = ()  # for a 200: the rows' statuses, in order
    why: str = ""


def _json(data: Any) -> Callable[[], bytes]:
    return lambda: json.dumps(data).encode()


def _raw(body: bytes) -> Callable[[], bytes]:
    return lambda: body


def _ten_mb_review() -> str:
    return "A great film, " * (10 * MB // 14)


def hostile_requests() -> list[Hostile]:
    """The cases, with the answer MLflow's scoring server and the model give each."""
    return [
        Hostile(
            "malformed JSON",
            _raw(b'{"dataframe_records": [{"text": "A fine film."'),
            JSON,
            400,
            why="MLflow's server: not valid JSON, BAD_REQUEST",
        ),
        Hostile(
            "no text field",
            _json({"dataframe_records": [{"review": "A fine film."}]}),
            JSON,
            400,
            why="the model: no `text` column, INVALID_PARAMETER_VALUE",
        ),
        Hostile(
            "no input key",
            _json({"reviews": ["A fine film."]}),
            JSON,
            400,
            why="MLflow's server: none of dataframe_records / dataframe_split / inputs / "
            "instances, BAD_REQUEST",
        ),
        Hostile(
            "10 MB review",
            lambda: json.dumps({"inputs": [_ten_mb_review()]}).encode(),
            JSON,
            200,
            ("ok",),
            why="scored from its first max_length tokens and flagged truncated: uvicorn and "
            "MLflow's server put no limit on a body, and the tokeniser reads only a prefix",
        ),
        Hostile(
            "10 MB malformed",
            lambda: b'{"inputs": ["' + _ten_mb_review().encode(),
            JSON,
            400,
            why="MLflow's server: not valid JSON (its message quotes the body back)",
        ),
        Hostile(
            "100,000 rows",
            _json({"inputs": ["A fine film."] * 100_000}),
            JSON,
            400,
            why="the model: more than model_config max_rows (10,000) in one served request, "
            "INVALID_PARAMETER_VALUE",
        ),
        Hostile(
            "non-UTF-8 JSON body",
            _raw(b'{"inputs": ["caf\xe9 au lait"]}'),
            JSON,
            400,
            why="MLflow's server: the body does not decode as UTF-8, BAD_REQUEST",
        ),
        Hostile(
            "non-UTF-8 CSV body",
            _raw(b"text\ncaf\xe9 au lait\n"),
            "text/csv",
            400,
            why="MLflow's server: the body does not decode as UTF-8, BAD_REQUEST",
        ),
        Hostile(
            "escaped lone surrogate (inputs)",
            _raw(b'{"inputs": ["caf\\udce9", "A fine film."]}'),
            JSON,
            400,
            why="valid JSON, but pandas 3 string columns cannot hold a lone surrogate: "
            "MLflow's parsing refuses the request (`sentiment-rnn predict` flags the row alone)",
        ),
        Hostile(
            "escaped lone surrogate (records)",
            _raw(b'{"dataframe_records": [{"text": "caf\\udce9"}, {"text": "A fine film."}]}'),
            JSON,
            400,
            why="as above, through the records parser",
        ),
        Hostile(
            "bad rows among good",
            _json(
                {
                    "dataframe_records": [
                        {"text": "A fine film."},
                        {"text": ""},
                        {"text": 5},
                        {"text": None},
                        {},
                    ]
                }
            ),
            JSON,
            200,
            (
                "ok",
                "error: empty text",
                "error: not text",
                "error: missing text",
                "error: missing text",
            ),
            why="one status per row; the good row is scored",
        ),
        Hostile(
            "unknown content type",
            _raw(b"A fine film."),
            "text/plain",
            415,
            why="MLflow's server: only JSON, CSV and Parquet bodies",
        ),
    ]


@dataclass
class HostileResult:
    name: str
    expect: int
    status: int
    seconds: float
    response_bytes: int
    statuses_ok: bool
    alive_after: bool
    message: str

    @property
    def passed(self) -> bool:
        return self.status == self.expect and self.statuses_ok and self.alive_after


def send_hostile(server: Server, case: Hostile) -> HostileResult:
    """Send `case`; check the answer and that the server still answers /ping."""
    start = time.perf_counter()
    response = httpx.post(
        f"{server.url}/invocations",
        content=case.body(),
        headers={"content-type": case.content_type},
        timeout=300,
    )
    seconds = time.perf_counter() - start
    statuses_ok = True
    if case.statuses:
        rows = response.json().get("predictions", []) if response.status_code == 200 else []
        statuses_ok = [r["status"] for r in rows] == list(case.statuses)
    return HostileResult(
        case.name,
        case.expect,
        response.status_code,
        round(seconds, 3),
        len(response.content),
        statuses_ok,
        server.alive(),
        error_message(response)[:300],
    )


def error_message(response: httpx.Response) -> str:
    """The message of an error answer (MLflow's JSON `message`, or the text), else ''."""
    if response.status_code == 200:
        return ""
    try:
        return str(response.json().get("message", ""))
    except ValueError:
        return response.text


# ---------------------------------------------------------------- load


@dataclass
class Cell:
    clients: int
    rows: int
    requests: int = 0
    reviews: int = 0
    errors: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    reviews_per_second: float = 0.0
    rss_mb_after: float = 0.0
    first_error: str = ""
    latencies: list[float] = field(default_factory=list, repr=False)


def _row_errors(response: httpx.Response, rows: int) -> str:
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {error_message(response)[:200]}"
    predictions = response.json()["predictions"]
    bad = [p["status"] for p in predictions if p["status"] != "ok"]
    if len(predictions) != rows or bad:
        return f"{len(predictions)} rows for {rows}, statuses {sorted(set(bad))}"
    return ""


def run_cell(
    server: Server, reviews: list[str], clients: int, rows: int, requests: int, seconds: float
) -> Cell:
    """`requests` requests of `rows` reviews from `clients` threads, within `seconds`."""
    cell = Cell(clients, rows)
    counter = itertools.count()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker() -> None:
        with httpx.Client(base_url=server.url) as client:
            while (i := next(counter)) < requests and time.monotonic() < deadline:
                texts = [reviews[(i * rows + j) % len(reviews)] for j in range(rows)]
                start = time.perf_counter()
                try:
                    problem = _row_errors(invoke(client, texts), rows)
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - start
                with lock:
                    cell.latencies.append(elapsed)
                    cell.requests += 1
                    cell.reviews += rows
                    if problem:
                        cell.errors += 1
                        cell.first_error = cell.first_error or problem

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for future in [pool.submit(worker) for _ in range(clients)]:
            future.result()
    cell.seconds = round(time.perf_counter() - start, 3)
    ms = sorted(x * 1000 for x in cell.latencies)
    cell.p50_ms = round(statistics.median(ms), 1)
    cell.p99_ms = round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1)
    cell.reviews_per_second = round(cell.reviews / cell.seconds, 1)
    cell.rss_mb_after = round(server.rss_mb(), 1)
    return cell


# ---------------------------------------------------------------- baseline


def predict_baseline(model: str, texts: list[str], folder: Path, threads: int) -> dict[str, Any]:
    """`sentiment-rnn predict` on `texts`: its rows/s as its summary line reports it."""
    source, out = folder / "baseline.parquet", folder / "baseline.predictions.parquet"
    pd.DataFrame({"text": texts}).to_parquet(source, index=False)
    command = [str(Path(sys.executable).parent / "sentiment-rnn"), "predict", "--model", model]
    command += ["-i", str(source), "-o", str(out), "--no-progress", "--threads", str(threads)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"sentiment-rnn predict failed:\n{done.stderr[-2000:]}")
    found = re.search(r"([\d,]+) rows/s", done.stdout)
    if found is None:
        raise RuntimeError(f"no rows/s in the summary of sentiment-rnn predict: {done.stdout}")
    return {
        "command": " ".join(command[1:]),
        "rows": len(texts),
        "reviews_per_second": float(found.group(1).replace(",", "")),
        "wall_seconds_with_start_up": round(wall, 2),
        "summary": done.stdout.strip().splitlines()[-1],
    }


# ---------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Served text model under load (`mlflow models serve`, loopback)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Model `{result['model']}`; reviews: {result['reviews_source']}; machine: "
        f"{result['machine']['cpus']} CPUs, {result['machine']['platform']}; the clients share "
        f"the server's cores; model_config overrides: {result['model_config'] or 'none'}. "
        f"Server RSS after the warm-up {result['rss_mb_start']} MB, after the load "
        f"{result['rss_mb_end']} MB, after the hostile requests {result['rss_mb_after_hostile']} "
        "MB.",
        "",
        "| clients | reviews / request | requests | p50 ms | p99 ms | reviews/s | errors | "
        "RSS after (MB) | vs predict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in result["cells"]:
        ratio = c.get("ratio_to_predict")
        lines.append(
            f"| {c['clients']} | {c['rows']} | {c['requests']} | {c['p50_ms']} | {c['p99_ms']} "
            f"| {c['reviews_per_second']} | {c['errors']} | {c['rss_mb_after']} | "
            f"{'' if ratio is None else f'{ratio:.2f}x'} |"
        )
    base = result["baseline"]
    lines += [
        "",
        f"Baseline: `{base['command']}` on the {base['rows']:,} reviews of the largest "
        f"64-review cell: {base['reviews_per_second']:,} reviews/s (its summary: "
        f"`{base['summary']}`).",
        "",
        "## Hostile requests",
        "",
        "| request | expected | got | seconds | answer bytes | alive after | message |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for h in result["hostile"]:
        message = h["message"].replace("|", "\\|").replace("\n", " ")[:120]
        lines.append(
            f"| {h['name']} | {h['expect']} | {h['status']} | {h['seconds']} | "
            f"{h['response_bytes']:,} | {h['alive_after']} | {message} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--reviews", type=Path, default=Path(DEFAULT_REVIEWS))
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--rows", default="1,64", help="reviews per request, comma-separated")
    parser.add_argument("--requests", type=int, default=300, help="requests per cell, at most")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="per cell, at most")
    parser.add_argument(
        "--model-config", type=json.loads, default={}, help="JSON: the model's model_config"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports/benchmarks/serve_load")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    reviews = pd.read_parquet(args.reviews, columns=["text"])["text"].tolist()
    clients = [int(c) for c in args.clients.split(",")]
    rows = [int(r) for r in args.rows.split(",")]
    cells: list[Cell] = []
    env = {
        "MLFLOW_TRACKING_URI": tracking_uri(),  # the project's store, wherever it is started
        "MLFLOW_PYFUNC_INFERENCE_CONFIG": json.dumps(args.model_config),
    }
    with (
        tempfile.TemporaryDirectory(prefix="serve-load-") as tmp,
        serve(args.model, Path(tmp) / "server.log", env) as server,
    ):
        run_cell(server, reviews, 2, max(rows), 8, args.max_seconds)  # warm-up, not reported
        rss_start = round(server.rss_mb(), 1)
        for n_rows, n_clients in itertools.product(rows, clients):
            cell = run_cell(server, reviews, n_clients, n_rows, args.requests, args.max_seconds)
            print(
                f"{n_clients} clients x {n_rows} reviews: {cell.reviews_per_second} reviews/s, "
                f"p50 {cell.p50_ms} ms, p99 {cell.p99_ms} ms, errors {cell.errors}",
                flush=True,
            )
            cells.append(cell)
        rss_end = round(server.rss_mb(), 1)
        hostile = [send_hostile(server, case) for case in hostile_requests()]
        rss_after_hostile = round(server.rss_mb(), 1)
        batch_cells = [c for c in cells if c.rows == 64] or cells
        sent = max(c.reviews for c in batch_cells)
        texts = [reviews[i % len(reviews)] for i in range(sent)]
        threads = int(args.model_config.get("threads", 0))
        baseline = predict_baseline(args.model, texts, Path(tmp), threads)  # server idle
    result = {
        "command": shlex.join(["python", "benchmarks/serve_load.py", *(argv or sys.argv[1:])]),
        "model": args.model,
        "model_config": args.model_config,
        "reviews_source": str(args.reviews),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "rss_mb_start": rss_start,
        "rss_mb_end": rss_end,
        "rss_mb_after_hostile": rss_after_hostile,
        "cells": [],
        "baseline": baseline,
        "hostile": [asdict(h) | {"passed": h.passed} for h in hostile],
    }
    for cell in cells:
        entry = {k: v for k, v in asdict(cell).items() if k != "latencies"}
        if cell.rows == 64:
            entry["ratio_to_predict"] = round(
                cell.reviews_per_second / baseline["reviews_per_second"], 3
            )
        result["cells"].append(entry)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
