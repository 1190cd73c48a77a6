"""Sharded scoring on Dask (flows/score.py) against one process: the issue's 1,000,000-row check.

    python benchmarks/score_bench.py --model models/gru.onnx \\
        --reviews ../shared/data/imdb/plain_text/test-00000-of-00001.parquet \\
        --shards 40 --rows-per-shard 25000          # 1M rows, the default
    python benchmarks/score_bench.py --synthetic --shards 4 --rows-per-shard 500 \\
        --model /tmp/tiny/gru.onnx                  # a smoke run

Builds `--shards` Parquet files of `--rows-per-shard` rows cycled from the test reviews (ids
`r0`, `r1`, ... in each shard), then measures on the same rows, in one run:
(a) the flow on a local Dask cluster of 1 worker x 1 thread;
(b) the flow on 2 workers x 1 thread;
(c) in this process, as `sentiment-rnn predict --threads 2` would: the model loaded once
    (`load_model`, SessionConfig(threads=2)), then `predict_file` over every shard.
Each cluster (its workers' imports too) and Prefect's temporary server start before the
timed flow run: their start-up is not counted, each worker's model load is. `task_seconds`
sums the tasks' own time; the rest of `seconds` is the flow's overhead. Per run: rows/s, rows
in == rows out and unique ids in every shard, and for (a) and (b) each worker's peak RSS (the
kernel's ru_maxrss, read in the worker, and the highest psutil sample). Targets: b/a >= 1.7,
b/c >= 1.0, peak RSS per worker <= 2 GB.

Then the kill-and-rerun check: `python flows/score.py --workers 2` in its own process group,
SIGKILLed (the flow, its workers, its temporary Prefect server) once about half the shards
have records; a rerun; the final outputs must equal (b)'s byte for byte, no temporary file
may be left, and the rerun's manifest must show scored exactly the shards without a complete
output after the kill. Last, the machine's own ceiling for (b)/(a): the first shard scored on
one thread by one process alone, then by two processes at once, without Dask or Prefect
(`--no-ceiling` skips it). `--scaling-only` runs (a) and (b) alone, a repeat of b/a.
Writes <out>.json and <out>.md.
"""

import argparse
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _common
import pandas as pd
import psutil
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `flows` importable
    sys.path.insert(0, str(REPO_ROOT))

from flows import score as score_flow  # noqa: E402
from flows.prefect_defaults import command_settings  # noqa: E402
from sentiment_rnn.files import read_json  # noqa: E402
from sentiment_rnn.serving.memory import size_tokenizer_pool  # noqa: E402
from sentiment_rnn.serving.model import load_model  # noqa: E402
from sentiment_rnn.serving.predict import PredictOptions, predict_file  # noqa: E402
from sentiment_rnn.serving.session import SessionConfig  # noqa: E402

DEFAULT_OUT = Path("reports/benchmarks/score_dask")
DEFAULT_REVIEWS = Path("../shared/data/imdb/plain_text/test-00000-of-00001.parquet")
TARGETS = {"b_over_a": 1.7, "b_over_c": 1.0, "peak_rss_mb": 2048.0}


def build_shards(reviews: Path, folder: Path, shards: int, rows: int) -> list[Path]:
    """`shards` Parquet files of `rows` rows cycled from `reviews`."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        _common.cycled_reviews(reviews, folder / f"shard{i:03d}.parquet", rows)
        for i in range(shards)
    ]


def synthetic_source(folder: Path) -> Path:
    """The tests' synthetic reviews as a Parquet file, for a run without the IMDB copy."""
    from sentiment_rnn.testing import synthetic_reviews

    path = folder / "synthetic.parquet"
    synthetic_reviews(1000, seed=0)[["text"]].to_parquet(path, index=False)
    return path


class RssSampler(threading.Thread):
    """The highest RSS seen per process, sampled every `interval` seconds."""

    def __init__(self, pids: list[int], interval: float) -> None:
        super().__init__(daemon=True)
        self.procs = [psutil.Process(pid) for pid in pids]
        self.interval, self.peaks = interval, {pid: 0.0 for pid in pids}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for proc in self.procs:
                try:
                    rss = proc.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                self.peaks[proc.pid] = max(self.peaks[proc.pid], rss)
            self.stop.wait(self.interval)


def _import_flow() -> None:
    import flows.score  # noqa: F401


def _peak_rss_mb() -> float:
    """This process's peak RSS (Linux: ru_maxrss in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check_outputs(out: Path, records: list[dict[str, Any]], shards: int) -> dict[str, Any]:
    """Rows in == rows out for every shard, and ids unique in each."""
    in_out = all(r["rows_in"] == r["rows_out"] for r in records) and len(records) == shards
    unique = all(
        pd.read_parquet(out / r["output"], columns=["id"])["id"].is_unique for r in records
    )
    return {"shards": len(records), "rows_in_equal_rows_out": in_out, "ids_unique": unique,
            "errors": sum(r["errors"] for r in records)}  # fmt: skip


def dask_run(args: Any, src: Path, out: Path, workers: int, rows: int) -> dict[str, Any]:
    """The flow over `src` on a fresh local cluster of `workers` x 1 thread, timed."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(_import_flow)  # the workers' imports (Prefect, onnxruntime) are start-up
        pids = list(client.run(os.getpid).values())
        sampler = RssSampler(pids, args.interval)
        sampler.start()
        flow = score_flow.score_folder.with_options(
            task_runner=score_flow.dask_runner(address=cluster.scheduler_address)
        )
        start = time.perf_counter()
        records = flow(str(src), str(out), args.model, tokenizer=args.tokenizer,
                       id_column="id", threads=1, force=True)  # fmt: skip
        seconds = time.perf_counter() - start
        sampler.stop.set()
        sampler.join()
        kernel_peaks = client.run(_peak_rss_mb)
    peaks = sorted(round(mb, 1) for mb in kernel_peaks.values())
    result = {"workers": workers, "threads_per_worker": 1, "seconds": round(seconds, 2),
              "rows": rows, "rows_per_second": round(rows / seconds, 1),
              "task_seconds": round(sum(r["seconds"] for r in records), 2),
              "peak_rss_mb_per_worker": peaks,
              "sampled_peak_rss_mb_per_worker": sorted(round(v, 1) for v in sampler.peaks.values()),
              "shards_per_worker": sorted(pd.Series([r["worker"] for r in records])
                                          .value_counts().tolist())}  # fmt: skip
    return result | check_outputs(out, records, len(list(src.glob("*.parquet"))))


def in_process_run(args: Any, shards: list[Path], out: Path, rows: int) -> dict[str, Any]:
    """`sentiment-rnn predict --threads 2` over every shard, the model loaded once."""
    out.mkdir(parents=True, exist_ok=True)
    options = PredictOptions(id_column="id", progress=False)
    tokenizer = Path(args.tokenizer) if args.tokenizer else None
    start = time.perf_counter()
    model = load_model(args.model, tokenizer, SessionConfig(threads=2))
    done = 0
    for shard in shards:
        done += predict_file(model, shard, out / f"{shard.stem}.predictions.parquet", options).rows
    seconds = time.perf_counter() - start
    outputs = sorted(out.glob("*.parquet"))
    rows_out = sum(pq.ParquetFile(p).metadata.num_rows for p in outputs)
    unique = all(pd.read_parquet(p, columns=["id"])["id"].is_unique for p in outputs)
    return {"threads": 2, "seconds": round(seconds, 2), "rows": rows,
            "rows_per_second": round(rows / seconds, 1),
            "rows_in_equal_rows_out": done == rows == rows_out, "ids_unique": unique}  # fmt: skip


def score_one(shard: Path, out: Path, model: str, tokenizer: str | None) -> None:
    """Score `shard` on one thread in this process, as a Dask task of one thread does; print
    the seconds of the scoring itself (the model loaded before)."""
    size_tokenizer_pool(1)
    loaded = load_model(model, Path(tokenizer) if tokenizer else None, SessionConfig(threads=1))
    start = time.perf_counter()
    predict_file(loaded, shard, out, PredictOptions(id_column="id", progress=False, prefetch=False))
    print(f"seconds {time.perf_counter() - start:.3f}", flush=True)


def bare_ceiling(args: Any, shard: Path, folder: Path) -> dict[str, Any]:
    """The machine's own 2-for-1 scaling, without Dask or Prefect: `shard` scored by one process
    of one thread alone, then by two such processes at once."""

    def run(copies: int) -> list[float]:
        cmd = [sys.executable, __file__, "--model", args.model]
        cmd += ["--tokenizer", args.tokenizer] if args.tokenizer else []
        cmd += ["--score-one", str(shard)]  # its output goes last, one per copy
        procs = [
            subprocess.Popen([*cmd, str(folder / f"bare{copies}-{i}.parquet")],
                             stdout=subprocess.PIPE, text=True, env=_common.child_env())
            for i in range(copies)
        ]  # fmt: skip
        outs = [proc.communicate()[0] for proc in procs]
        if any(proc.returncode for proc in procs):
            raise SystemExit(f"error: scoring {shard} alone failed:\n{outs}")
        return [float(out.split()[-1]) for out in outs]

    folder.mkdir(parents=True, exist_ok=True)
    (alone,), pair = run(1), run(2)
    return {"shard_rows": pq.ParquetFile(shard).metadata.num_rows, "alone_s": round(alone, 2),
            "pair_s": [round(t, 2) for t in pair],
            "two_over_one": round(2 * alone / max(pair), 2)}  # fmt: skip


def outputs_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.predictions.parquet"))}


def complete_shards(folder: Path) -> set[str]:
    """Shards whose output and record are both there (what a rerun must not score again)."""
    names = set()
    for record in (folder / score_flow.RECORDS).glob("*.json"):
        entry = score_flow.read_record(record)
        output = folder / entry["output"] if entry else None
        if entry and output and output.is_file() and entry["output_bytes"] == output.stat().st_size:
            names.add(entry["shard"])
    return names


def kill_and_rerun(args: Any, src: Path, out: Path, reference: Path, shards: int) -> dict:
    """Kill the flow's process group after half the shards, rerun, compare with `reference`."""
    cmd = [sys.executable, str(REPO_ROOT / "flows/score.py"), "--input-dir", str(src),
           "--output-dir", str(out), "--model", args.model, "--id-column", "id",
           "--workers", "2"]  # fmt: skip
    cmd += ["--tokenizer", args.tokenizer] if args.tokenizer else []
    env = _common.child_env()
    log = out.parent / f"{out.name}.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        while proc.poll() is None and len(complete_shards(out)) < shards / 2:
            time.sleep(0.2)
        killed = proc.poll() is None
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(1.0)  # let the killed group's processes go
    done_at_kill = complete_shards(out)
    temporaries_after_kill = len(list(out.rglob("*.tmp")))
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if rerun.returncode != 0:
        raise SystemExit(f"error: the rerun failed:\n{(rerun.stdout + rerun.stderr)[-3000:]}")
    manifest = read_json(out / score_flow.MANIFEST)
    rescored = {e["shard"] for e in manifest["shards"] if e["status"] == "scored"}
    all_names = {p.stem for p in src.glob("*.parquet")}
    return {"killed": killed, "complete_at_kill": len(done_at_kill),
            "temporaries_after_kill": temporaries_after_kill,
            "rerun_scored": len(rescored),
            "rerun_scored_only_the_rest": rescored == all_names - done_at_kill,
            "outputs_equal_uninterrupted": outputs_of(out) == outputs_of(reference),
            "temporaries_left": len(list(out.rglob("*.tmp")))}  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    a, b, c = report["a_1x1"], report["b_2x1"], report["c_in_process"]
    kill = report.get("kill_and_rerun")
    c_row = (
        f"| (c) one process, 2 threads | {c['seconds']} | {c['rows_per_second']:,.0f} | - | "
        f"{c['rows_in_equal_rows_out']} | {c['ids_unique']} |"
        if c
        else "| (c) one process, 2 threads | not run (--scaling-only) | | | | |"
    )
    b_over_c = (
        f"- b/c = {report['b_over_c']} (target >= {TARGETS['b_over_c']}): "
        f"{'met' if report['b_over_c'] >= TARGETS['b_over_c'] else 'NOT met'}"
        if c
        else "- b/c: not measured in this run (--scaling-only)"
    )
    lines = [
        "# Sharded scoring on Dask (flows/score.py)", "",
        f"Command: `{report['command']}`", "",
        f"Input: {report['shards']} shards x {report['rows_per_shard']:,} rows = "
        f"{report['rows']:,} rows from {report['reviews']}; model {report['model']}. "
        f"Machine: {report['machine']}.", "",
        "| run | seconds | rows/s | peak RSS per worker (MB) | rows in = out | ids unique |",
        "|---|---:|---:|---|---|---|",
        f"| (a) 1 worker x 1 thread | {a['seconds']} | {a['rows_per_second']:,.0f} | "
        f"{a['peak_rss_mb_per_worker']} | {a['rows_in_equal_rows_out']} | {a['ids_unique']} |",
        f"| (b) 2 workers x 1 thread | {b['seconds']} | {b['rows_per_second']:,.0f} | "
        f"{b['peak_rss_mb_per_worker']} | {b['rows_in_equal_rows_out']} | {b['ids_unique']} |",
        c_row, "",
        f"- b/a = {report['b_over_a']} (target >= {TARGETS['b_over_a']}): "
        f"{'met' if report['b_over_a'] >= TARGETS['b_over_a'] else 'NOT met'}",
        b_over_c,
        f"- peak RSS per worker <= {TARGETS['peak_rss_mb']:.0f} MB: "
        f"{'met' if report['rss_within_target'] else 'NOT met'}",
    ]  # fmt: skip
    if bare := report.get("bare_ceiling"):
        lines += [
            f"- the machine's own ceiling, without Dask or Prefect: one shard of "
            f"{bare['shard_rows']:,} rows scored on one thread took {bare['alone_s']} s alone "
            f"and {bare['pair_s']} s as two processes at once: two cores give "
            f"{bare['two_over_one']}x one",
        ]  # fmt: skip
    if kill:
        lines += ["", "Kill and rerun: " + ", ".join(f"{k} {v}" for k, v in kill.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = _common.parser(__doc__, DEFAULT_OUT)
    parser.add_argument("--model", default="models/gru.onnx")
    parser.add_argument("--tokenizer", default=None, help="default: the one beside the model")
    parser.add_argument("--reviews", type=Path, default=DEFAULT_REVIEWS)
    parser.add_argument("--synthetic", action="store_true", help="synthetic reviews instead")
    parser.add_argument("--shards", type=int, default=40)
    parser.add_argument("--rows-per-shard", type=int, default=25_000)
    parser.add_argument("--interval", type=float, default=0.5, help="RSS sampling, seconds")
    parser.add_argument("--no-kill", action="store_true", help="skip the kill-and-rerun check")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary one")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the bare 2-vs-1 check")
    parser.add_argument("--scaling-only", action="store_true",
                        help="only (a) and (b): a repeat of the scaling figure")  # fmt: skip
    parser.add_argument("--score-one", nargs=2, type=Path, metavar=("SHARD", "OUT"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args(argv)
    if args.score_one:  # a child of bare_ceiling
        score_one(*args.score_one, args.model, args.tokenizer)
        return
    if not Path(args.model).is_file():
        raise SystemExit(f"error: model {args.model} not found (--model)")
    rows = args.shards * args.rows_per_shard
    with tempfile.TemporaryDirectory(prefix="score-bench-", dir=args.workdir) as tmp:
        root = Path(tmp)
        reviews = synthetic_source(root) if args.synthetic else args.reviews
        print(f"building {args.shards} shards x {args.rows_per_shard} rows ...", flush=True)
        shards = build_shards(reviews, root / "shards", args.shards, args.rows_per_shard)
        c = None
        if not args.scaling_only:
            print("(c) one process, 2 threads ...", flush=True)
            c = in_process_run(args, shards, root / "out-c", rows)
            print(f"    {c}", flush=True)
        with command_settings(), score_flow.api_for_workers():  # as `score.py --workers` does
            print("(a) 1 worker x 1 thread ...", flush=True)
            a = dask_run(args, root / "shards", root / "out-a", 1, rows)
            print(f"    {a}", flush=True)
            print("(b) 2 workers x 1 thread ...", flush=True)
            b = dask_run(args, root / "shards", root / "out-b", 2, rows)
            print(f"    {b}", flush=True)
        kill = None
        if not (args.no_kill or args.scaling_only):
            print("kill and rerun ...", flush=True)
            kill = kill_and_rerun(args, root / "shards", root / "out-kill", root / "out-b",
                                  args.shards)  # fmt: skip
            print(f"    {kill}", flush=True)
        same_ab = outputs_of(root / "out-a") == outputs_of(root / "out-b")
        bare = None
        if not (args.no_ceiling or args.scaling_only):
            print("the machine's own ceiling: one shard, one process, then two ...", flush=True)
            bare = bare_ceiling(args, shards[0], root / "out-bare")
            print(f"    {bare}", flush=True)
    peaks = a["peak_rss_mb_per_worker"] + b["peak_rss_mb_per_worker"]
    report = {
        "command": _common.command(__file__, argv), "machine": _common.machine(
            "onnxruntime-gpu", "dask", "distributed", "prefect", "prefect-dask"),
        "model": args.model, "reviews": "synthetic" if args.synthetic else str(args.reviews),
        "shards": args.shards, "rows_per_shard": args.rows_per_shard, "rows": rows,
        "a_1x1": a, "b_2x1": b, "c_in_process": c,
        "b_over_a": round(b["rows_per_second"] / a["rows_per_second"], 2),
        "b_over_c": round(b["rows_per_second"] / c["rows_per_second"], 2) if c else None,
        "rss_within_target": max(peaks) <= TARGETS["peak_rss_mb"],
        "outputs_a_equal_b": same_ab, "kill_and_rerun": kill, "bare_ceiling": bare,
        "targets": TARGETS,
    }  # fmt: skip
    _common.write_result(args.out, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
