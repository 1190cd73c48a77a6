"""Batch scoring as a Prefect flow: every shard of an input not scored yet, in process or on Dask.

    python flows/score.py --input-dir data/inbox --output-dir data/predictions \\
        --model models/lstm.onnx                       # once, in this process
    python flows/score.py ... --workers 4              # a local Dask cluster, 4 x 1 thread
    python flows/score.py ... --address tcp://host:8786  # an existing Dask cluster
    python flows/score.py ... --cron "*/15 * * * *"    # scheduled: needs `prefect server start`

Shards: the input is a folder (its .csv, .jsonl, .ndjson, .parquet, .pq, .txt files; hidden
ones are ignored), a glob (`'data/inbox/**/*.parquet'`), or one file; a single Parquet file is
split into shards of `--row-groups-per-shard` row groups. Each shard is one task and becomes
`<output-dir>/<shard>.predictions.<format>`, with the columns and per-row statuses of
`sentiment-rnn predict` (the same `predict_file`), written to a temporary file and renamed.

Exactly once: a shard counts as scored when its output exists and its record,
`<output-dir>/_records/<shard>.json`, written atomically after the output, names the same
input digest (sha256 of the file, or of its row groups' bytes and metadata), the same model
digest (sha256 of the ONNX graph and of the tokenizer) and the same reading options. A rerun
after a kill therefore scores only the shards without a complete output; a changed input
rescores that shard, a changed model (a moved `champion`) all of them; modification times play
no part. Temporary files of killed attempts are removed. Each run writes `manifest.json` in
the output folder: per shard its digests, rows in and out, errors, seconds and status
(`scored` in this run, `skipped`, or `failed: ...`). `force=True` rescores everything.

Models: a file, or a registry URI (`models:/imdb-sentiment-gru@champion`) resolved once per run
to the fixed version (`models:/imdb-sentiment-gru/7`) that every task then loads. A worker
process loads the model once and keeps it for the tasks after (`cached_model`).

Errors: retries happen only on I/O errors (OSError: a network share that blinks); a bad shard
(UserError: empty, no text column, unreadable) is not retried, does not stop the others, and
fails the run at the end, by name. Drop files into the input folder atomically (write
elsewhere, then move), so a half-copied file is never read.

Dask workers import this module (`flows.score`): a local cluster's workers inherit this
process's path; the workers of an existing cluster must run with the project root on their
PYTHONPATH, see the input, output and model paths at the same places, and reach a Prefect
server (PREFECT_API_URL); with `--workers` and no server set, one temporary server serves the
flow and its workers (`api_for_workers`).
"""

import argparse
import glob
import hashlib
import logging
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from sentiment_rnn.errors import UserError
from sentiment_rnn.files import read_json, sha256_file, write_json
from sentiment_rnn.serving.batching import ScoringModel
from sentiment_rnn.serving.io import EXTENSIONS
from sentiment_rnn.serving.memory import size_tokenizer_pool
from sentiment_rnn.serving.model import (
    REGISTRY_SCHEME,
    load_model,
    local_tokenizer,
    project_tokenizer,
)
from sentiment_rnn.serving.predict import DEFAULT_BATCH_SIZE, PredictOptions, predict_file
from sentiment_rnn.serving.session import SessionConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "models/lstm.onnx"
DEFAULT_CRON = "*/15 * * * *"
IO_RETRY_DELAYS = [5.0, 30.0]
RECORDS = "_records"
MANIFEST = "manifest.json"
IDENTITY_OPTIONS = ("text_column", "id_column", "output_format")  # what changes the output


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run's logger inside Prefect, a plain one when a task's `.fn` is called directly."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


# ---------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    """One task's input: a whole file, or a contiguous range of a Parquet file's row groups."""

    name: str
    path: Path
    row_groups: tuple[int, ...] | None = None

    @property
    def label(self) -> str:
        """How reports name it: the file, and its row groups for a part of one."""
        if self.row_groups is None:
            return self.path.name
        return f"{self.path.name} row groups {self.row_groups[0]}-{self.row_groups[-1]}"

    def output(self, output_dir: Path, output_format: str) -> Path:
        return output_dir / f"{self.name}.predictions.{output_format}"

    def record(self, output_dir: Path) -> Path:
        return output_dir / RECORDS / f"{self.name}.json"


def output_for(input_file: Path, output_dir: Path, output_format: str) -> Path:
    return Shard(input_file.stem, input_file).output(output_dir, output_format)


def input_files(source: str, output_dir: Path) -> list[Path]:
    """The scorable files that `source` (a folder, a glob or a file) names, in name order."""
    path = Path(source)
    if glob.has_magic(source):
        found = [Path(p) for p in glob.glob(source, recursive=True)]
    elif path.is_dir():
        if path.resolve() == output_dir.resolve():
            raise UserError("the input and output folders must differ (outputs would be rescored)")
        found = list(path.iterdir())
    elif path.is_file():
        return [path]
    else:
        raise UserError(f"input folder {source} does not exist")
    out = output_dir.resolve()
    return sorted(
        p
        for p in found
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix.lower() in EXTENSIONS
        and out not in p.resolve().parents
    )


def row_group_shards(path: Path, per_shard: int) -> list[Shard]:
    """`path` in ranges of `per_shard` row groups; the whole file when it has one (or is not
    readable: its task then reports why)."""
    try:
        count = pq.ParquetFile(path).num_row_groups
    except (pa.ArrowInvalid, OSError):
        count = 0
    if count <= 1 or per_shard < 1:
        return [Shard(path.stem, path)]
    return [
        Shard(f"{path.stem}.rg{a:05d}-{min(a + per_shard, count) - 1:05d}", path, groups)
        for a in range(0, count, per_shard)
        for groups in [tuple(range(a, min(a + per_shard, count)))]
    ]


def plan_shards(source: str, output_dir: Path, row_groups_per_shard: int = 1) -> list[Shard]:
    """The shards of `source`: one per file, a single Parquet file split by row groups."""
    files = input_files(source, output_dir)
    if (
        len(files) == 1
        and Path(source).is_file()
        and EXTENSIONS[files[0].suffix.lower()] == ("parquet")
    ):
        return row_group_shards(files[0], row_groups_per_shard)
    shards = [Shard(p.stem, p) for p in files]
    names = Counter(s.name for s in shards)
    clashes = sorted(str(s.path) for s in shards if names[s.name] > 1)
    if clashes:
        raise UserError(f"these inputs would share an output name: {clashes}; rename them")
    return shards


# ---------------------------------------------------------------- digests and records


def row_group_digest(path: Path, row_groups: tuple[int, ...]) -> str:
    """sha256 of the schema, and of each row group's row count and column-chunk bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        meta = pq.ParquetFile(handle).metadata
        digest.update(meta.schema.to_arrow_schema().serialize().to_pybytes())
        for index in row_groups:
            group = meta.row_group(index)
            digest.update(f"{index}:{group.num_rows}".encode())
            for c in range(group.num_columns):
                column = group.column(c)
                start = column.data_page_offset
                if column.has_dictionary_page and column.dictionary_page_offset:
                    start = min(start, column.dictionary_page_offset)
                handle.seek(start)
                digest.update(handle.read(column.total_compressed_size))
    return digest.hexdigest()


def input_digest(shard: Shard) -> str:
    """The identity of a shard's content (its file's bytes, or its row groups')."""
    if shard.row_groups is None:
        return sha256_file(shard.path)
    return row_group_digest(shard.path, shard.row_groups)


@dataclass(frozen=True)
class ModelIdentity:
    """What every task loads (`ref`: a file, or a fixed `models:/<name>/<version>`) and its
    digest: sha256 over the ONNX file's and the tokenizer's sha256."""

    ref: str
    tokenizer: str | None  # an explicit tokenizer, else the lookup of `load_model`
    onnx_sha256: str
    tokenizer_sha256: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.onnx_sha256}:{self.tokenizer_sha256}".encode()).hexdigest()


def _identity(
    ref: str, tokenizer: str | None, onnx_file: Path, found: Path | None
) -> ModelIdentity:
    if found is None:
        raise UserError(f"no tokenizer found for {ref}: pass --tokenizer")
    return ModelIdentity(ref, tokenizer, sha256_file(onnx_file), sha256_file(found))


def identify_model(model: str, tokenizer: str | None = None) -> ModelIdentity:
    """The model of this run: a registry alias resolved once, to a version, and its digest."""
    explicit = Path(tokenizer) if tokenizer else None
    if model.startswith(REGISTRY_SCHEME):
        from sentiment_rnn.tracking import registry  # MLflow only for a registry URI

        ref = registry.resolve_version(model)
        with tempfile.TemporaryDirectory(prefix="score-model-") as tmp:
            onnx_file, found = registry.download_registered(ref, Path(tmp))
            found = explicit or found or project_tokenizer(onnx_file)
            return _identity(ref, tokenizer, onnx_file, found)
    onnx_file = Path(model)
    if not onnx_file.is_file():
        raise UserError(f"model file {onnx_file} not found")
    return _identity(model, tokenizer, onnx_file, explicit or local_tokenizer(onnx_file))


def identity_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options that change what a shard's output holds (a batch size does not)."""
    return {key: options.get(key) for key in IDENTITY_OPTIONS}


def read_record(path: Path) -> dict[str, Any] | None:
    """A shard's record, None when absent or unreadable (a partial one is no record)."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def is_scored(
    shard: Shard,
    output_dir: Path,
    digest: str,
    model: ModelIdentity,
    options: dict[str, Any],
) -> dict[str, Any] | None:
    """The shard's record when its output is complete for this input, model and options."""
    output = shard.output(output_dir, options["output_format"])
    record = read_record(shard.record(output_dir))
    if record is None or not output.is_file():
        return None
    same = (
        record.get("input_digest") == digest
        and record.get("model_digest") == model.digest
        and record.get("options") == identity_options(options)
        and record.get("output_bytes") == output.stat().st_size
    )
    return record if same else None


def remove_temporaries(target: Path) -> int:
    """Delete what killed writes of `target` left (`atomic_path`'s `.<name>.*.tmp`)."""
    removed = 0
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
        removed += 1
    return removed


def output_rows(path: Path, output_format: str) -> int:
    """Rows in a written output, counted from the file itself."""
    if output_format == "parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    if output_format == "jsonl":
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    with pacsv.open_csv(path) as reader:
        return sum(batch.num_rows for batch in reader)


def input_rows(shard: Shard) -> int | None:
    """Rows of a Parquet shard from its metadata; None for formats that must be read to count."""
    if EXTENSIONS.get(shard.path.suffix.lower()) != "parquet":
        return None
    meta = pq.ParquetFile(shard.path).metadata
    groups = shard.row_groups or range(meta.num_row_groups)
    return sum(meta.row_group(i).num_rows for i in groups)


# ---------------------------------------------------------------- the model, once per worker

_MODELS: dict[tuple[str, str, SessionConfig], ScoringModel] = {}
_LOADS: Counter[tuple[str, str, SessionConfig]] = Counter()
_MODEL_LOCK = threading.Lock()


def cached_model(model: ModelIdentity, session: SessionConfig) -> tuple[ScoringModel, int]:
    """This process's loaded model and how often it was loaded here (1 but after an eviction).

    A Dask worker process runs task after task: it loads the model for the first and keeps
    it. A model of another digest (a new champion) replaces it, so one is held at a time.
    """
    key = (model.ref, model.digest, session)
    with _MODEL_LOCK:
        if key not in _MODELS:
            _MODELS.clear()
            size_tokenizer_pool(session.threads)
            tokenizer = Path(model.tokenizer) if model.tokenizer else None
            _MODELS[key] = load_model(model.ref, tokenizer, session)
            _LOADS[key] += 1
        return _MODELS[key], _LOADS[key]


# ---------------------------------------------------------------- tasks and flow


def is_transient(exc: BaseException | None) -> bool:
    """I/O can fail and then succeed; a user error (bad file, bad option) cannot."""
    return isinstance(exc, OSError) and not isinstance(exc, UserError)


def retry_on_io(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's retry condition: retry only when the task failed on an OSError."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as raised:  # a result that cannot be read is no reason to retry
        exc = raised if isinstance(raised, OSError) else None
    return is_transient(exc if isinstance(exc, BaseException) else None)


@task(
    retries=len(IO_RETRY_DELAYS),
    retry_delay_seconds=IO_RETRY_DELAYS,
    retry_condition_fn=retry_on_io,
    cache_policy=NO_CACHE,
    task_run_name="score {shard.name}",
)
def score_shard(
    shard: Shard,
    output_dir: Path,
    digest: str,
    model: ModelIdentity,
    options: dict[str, Any],
    threads: int = 0,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Score one shard with `predict_file`, then record it; returns the record.

    Dask runs a task again when the worker holding its result dies: a shard this run
    (`run_id`) has already scored and recorded is returned as it is, not scored twice.
    """
    start = time.perf_counter()
    output = shard.output(output_dir, options["output_format"])
    record_file = shard.record(output_dir)
    done = is_scored(shard, output_dir, digest, model, options)
    if run_id is not None and done is not None and done.get("flow_run") == run_id:
        return done
    record_file.parent.mkdir(parents=True, exist_ok=True)
    remove_temporaries(output)  # of an attempt killed before, in this run or an earlier one
    scoring_model, loads = cached_model(model, SessionConfig(threads=threads))
    # One thread is a one-core budget (a Dask worker of one thread): tokenising the next chunk
    # on a second thread would take that core from the next worker.
    predict_options = PredictOptions(
        progress=False, row_groups=shard.row_groups, prefetch=threads != 1, **options
    )
    summary = predict_file(scoring_model, shard.path, output, predict_options)
    rows_in = input_rows(shard)
    record = {
        "shard": shard.name,
        "input": str(shard.path),
        "row_groups": list(shard.row_groups) if shard.row_groups else None,
        "input_digest": digest,
        "output": output.name,
        "output_bytes": output.stat().st_size,
        "rows_in": summary.rows if rows_in is None else rows_in,
        "rows_out": output_rows(output, options["output_format"]),
        "ok": summary.ok,
        "errors": summary.errors,
        "truncated": summary.truncated,
        "duplicate_ids": summary.duplicate_ids,
        "model": model.ref,
        "model_digest": model.digest,
        "options": identity_options(options),
        "seconds": round(time.perf_counter() - start, 3),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "model_loads": loads,
        "flow_run": run_id,
        "status": "scored",
    }
    write_json(record_file, record)  # after the output: an output without it is not scored
    _logger().info(summary.line())
    return record


def _failure(shard: Shard, digest: str | None, model: ModelIdentity, exc: BaseException) -> dict:
    message = str(exc).replace("\n", " ") or type(exc).__name__
    return {"shard": shard.name, "input": str(shard.path), "input_digest": digest,
            "model": model.ref, "model_digest": model.digest,
            "status": f"failed: {message}"}  # fmt: skip


def write_manifest(output_dir: Path, run: dict[str, Any], entries: list[dict[str, Any]]) -> Path:
    """This run's manifest: every shard of the input, as scored, skipped or failed."""
    path = output_dir / MANIFEST
    counts = Counter(e["status"].split(":")[0] for e in entries)
    write_json(path, run | {"counts": dict(counts), "shards": entries})
    return path


@flow(name="score-folder", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def score_folder(
    input_dir: str = "data/inbox",
    output_dir: str = "data/predictions",
    model: str = DEFAULT_MODEL,
    output_format: str = "parquet",
    text_column: str = "text",
    id_column: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    force: bool = False,
    tokenizer: str | None = None,
    row_groups_per_shard: int = 1,
    threads: int = 0,
) -> list[dict[str, Any]]:
    """Score the shards of `input_dir` not scored yet into `output_dir`; returns their records.

    The default task runner scores one shard at a time in this process, as before; a Dask
    runner (`score_folder.with_options(task_runner=dask_runner(...))`) spreads them.
    `threads`: threads per task (0: one per core); with 1, a task reads, tokenises and scores
    on one thread, as a Dask worker of one thread should.
    """
    logger = get_run_logger()
    started = time.time()
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = identify_model(model, tokenizer)  # once per run: every task gets this version
    run_id = str(flow_run.id or uuid.uuid4())
    options = {"text_column": text_column, "id_column": id_column,
               "batch_size": batch_size, "output_format": output_format}  # fmt: skip
    entries: dict[str, dict[str, Any]] = {}
    submitted, failed = [], []
    shards = plan_shards(input_dir, out_dir, row_groups_per_shard)
    for shard in shards:
        try:
            digest = input_digest(shard)
        except (OSError, pa.ArrowInvalid) as exc:
            entries[shard.name] = _failure(shard, None, identity, exc)
            failed.append(f"{shard.label} ({exc})")
            continue
        record = None if force else is_scored(shard, out_dir, digest, identity, options)
        if record is not None:
            entries[shard.name] = record | {"status": "skipped"}
            continue
        future = score_shard.submit(shard, out_dir, digest, identity, options, threads, run_id)
        submitted.append((shard, digest, future))
    logger.info("%d shard(s) to score in %s, %d already scored", len(submitted), input_dir,
                len(entries) - len(failed))  # fmt: skip
    scored = []
    for shard, digest, future in submitted:
        try:
            scored.append(future.result())
            entries[shard.name] = scored[-1]
        except Exception as exc:  # one bad shard must not stop the others
            logger.error("%s: %s", shard.label, exc)
            entries[shard.name] = _failure(shard, digest, identity, exc)
            failed.append(f"{shard.label} ({exc})")
    for shard in shards:  # every attempt has ended: what a killed one left goes
        remove_temporaries(shard.output(out_dir, output_format))
        remove_temporaries(shard.record(out_dir))
    run = {"flow_run": run_id, "input": input_dir, "model": model, "model_version": identity.ref,
           "model_digest": identity.digest, "started": started,
           "seconds": round(time.time() - started, 3)}  # fmt: skip
    write_manifest(out_dir, run, list(entries.values()))
    if scored:
        columns = ("shard", "rows_in", "rows_out", "errors", "seconds", "worker")
        create_table_artifact(
            key="scored-shards",
            table=[{k: r[k] for k in columns} for r in scored],
            description=f"Shards scored from {input_dir} with {identity.ref}",
        )
    if failed:
        raise UserError(f"{len(failed)} shard(s) could not be scored: {'; '.join(failed)}")
    return scored


def dask_runner(workers: int | None = None, address: str | None = None) -> TaskRunner | None:
    """A Dask task runner: a local cluster of `workers` processes of one thread each, or the
    cluster at `address`; None for neither (the flow's own in-process runner)."""
    if workers and address:
        raise UserError("give --workers (a local cluster) or --address (an existing one)")
    if not workers and not address:
        return None
    from prefect_dask import DaskTaskRunner  # imports distributed: only when asked for

    if address:
        return DaskTaskRunner(address=address)
    local = {"n_workers": workers, "threads_per_worker": 1, "processes": True,
             "dashboard_address": None}  # fmt: skip
    return DaskTaskRunner(cluster_kwargs=local)


@contextmanager
def api_for_workers() -> Iterator[None]:
    """One Prefect API for this process and its Dask workers.

    Without PREFECT_API_URL each process starts its own temporary server: every worker would
    start one (seconds each) into the same SQLite file (`database is locked`). This starts the
    temporary server here, once, and names it to the workers (through the environment, which
    the workers of a local cluster inherit, and the settings sent with each task). Workers on
    other machines cannot reach it: give them a real server (`prefect server start`).
    """
    if PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the singleton this process's client would start
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def deployment(cron: str = DEFAULT_CRON, **parameters: Any) -> RunnerDeployment:
    """A scheduled deployment of the flow, for `prefect.serve(...)` alongside others."""
    return score_folder.to_deployment(
        name="score-folder", cron=cron, parameters=parameters, tags=["predict"]
    )


def main(argv: list[str] | None = None) -> None:
    from flows.prefect_defaults import command_settings  # the script puts `flows` on the path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-dir", "--input", default="data/inbox",
                        help="a folder, a glob (quoted) or one file")  # fmt: skip
    parser.add_argument("--output-dir", default="data/predictions")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="an ONNX file or models:/ URI")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--output-format", default="parquet", choices=["parquet", "csv", "jsonl"])
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--id-column", default=None)
    parser.add_argument("--row-groups-per-shard", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="rescore every shard")
    parser.add_argument("--workers", type=int, default=None, help="a local Dask cluster")
    parser.add_argument("--address", default=None, help="an existing Dask scheduler")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per task (1 on Dask, else all)")  # fmt: skip
    parser.add_argument("--cron", default=None, help="serve on this schedule instead of once")
    args = vars(parser.parse_args(argv))
    cron, workers, address = args.pop("cron"), args.pop("workers"), args.pop("address")
    runner = dask_runner(workers, address)
    if args["threads"] is None:
        args["threads"] = 1 if runner is not None else 0
    scoring = score_folder if runner is None else score_folder.with_options(task_runner=runner)
    with command_settings():
        if cron:
            scoring.serve(name="score-folder", cron=cron, parameters=args)
        elif runner is None:
            scoring(**args)
        else:
            with api_for_workers():
                scoring(**args)


if __name__ == "__main__":
    # Run as a script: import this file as `flows.score`, so that Dask workers, which import
    # the tasks by module name, find the same module (and its model cache) again.
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from flows.score import main as _main

    _main()
