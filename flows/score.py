"""Batch scoring as a Prefect flow: every new file of an input folder into an output folder.

    python flows/score.py --input-dir data/inbox --output-dir data/predictions \\
        --model models/lstm.onnx                       # once
    python flows/score.py ... --cron "*/15 * * * *"    # scheduled: needs `prefect server start`

Each input file (.csv, .jsonl, .ndjson, .parquet, .pq, .txt; hidden files are ignored) becomes
`<output-dir>/<stem>.predictions.<format>`. A file is skipped when its output exists and is
newer than the input (and than the model, for a local model file), so a rerun, scheduled or
not, scores only what is new or changed; `force=True` rescores everything. Drop files into
the input folder atomically (write elsewhere, then move), so a half-copied file is never read.

Each file is one task that calls the plain `predict` function. Retries happen only on I/O
errors (OSError: a network share that blinks); a bad file (UserError: empty, no text column)
is not retried, does not stop the other files, and fails the run at the end, by name.
"""

import argparse
import logging
from pathlib import Path
from typing import Any

from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import MissingContextError
from prefect.states import State

from sentiment_rnn.errors import UserError
from sentiment_rnn.serving.io import EXTENSIONS
from sentiment_rnn.serving.predict import DEFAULT_BATCH_SIZE, PredictOptions, run_predict
from sentiment_rnn.serving.session import SessionConfig

DEFAULT_MODEL = "models/lstm.onnx"
DEFAULT_CRON = "*/15 * * * *"
IO_RETRY_DELAYS = [5.0, 30.0]


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run's logger inside Prefect, a plain one when a task's `.fn` is called directly."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def output_for(input_file: Path, output_dir: Path, output_format: str) -> Path:
    return output_dir / f"{input_file.stem}.predictions.{output_format}"


def is_scored(input_file: Path, output_file: Path, model: str) -> bool:
    """The output exists and is newer than the input and than a local model file."""
    if not output_file.is_file():
        return False
    newest_source = input_file.stat().st_mtime
    if Path(model).is_file():
        newest_source = max(newest_source, Path(model).stat().st_mtime)
    return output_file.stat().st_mtime >= newest_source


def new_files(
    input_dir: Path, output_dir: Path, output_format: str, model: str, force: bool = False
) -> list[tuple[Path, Path]]:
    """(input, output) pairs still to score, in name order."""
    if not input_dir.is_dir():
        raise UserError(f"input folder {input_dir} does not exist")
    if input_dir.resolve() == output_dir.resolve():
        raise UserError("the input and output folders must differ (outputs would be rescored)")
    inputs = sorted(
        p
        for p in input_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in EXTENSIONS
    )
    pairs = [(p, output_for(p, output_dir, output_format)) for p in inputs]
    return [(i, o) for i, o in pairs if force or not is_scored(i, o, model)]


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
    task_run_name="score {input_file.name}",
)
def score_file(
    model: str, input_file: Path, output_file: Path, options: dict[str, Any]
) -> dict[str, Any]:
    """Score one file with the plain predict function; returns its summary."""
    summary = run_predict(
        model, input_file, output_file, PredictOptions(progress=False, **options), SessionConfig()
    )
    _logger().info(summary.line())
    return summary.as_dict()


@flow(name="score-folder", log_prints=True)
def score_folder(
    input_dir: str = "data/inbox",
    output_dir: str = "data/predictions",
    model: str = DEFAULT_MODEL,
    output_format: str = "parquet",
    text_column: str = "text",
    id_column: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Score the files of `input_dir` not scored yet into `output_dir`; returns their summaries."""
    logger = get_run_logger()
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pending = new_files(Path(input_dir), out_dir, output_format, model, force)
    logger.info("%d file(s) to score in %s", len(pending), input_dir)
    options = {
        "text_column": text_column,
        "id_column": id_column,
        "batch_size": batch_size,
        "output_format": output_format,
    }
    summaries, failed = [], []
    for input_file, output_file in pending:
        try:
            summaries.append(score_file(model, input_file, output_file, options))
        except Exception as exc:  # one bad file must not stop the others
            logger.error("%s: %s", input_file.name, exc)
            failed.append(f"{input_file.name} ({exc})")
    if summaries:
        create_table_artifact(
            key="scored-files", table=summaries, description=f"Files scored from {input_dir}"
        )
    if failed:
        raise UserError(f"{len(failed)} file(s) could not be scored: {'; '.join(failed)}")
    return summaries


def deployment(cron: str = DEFAULT_CRON, **parameters: Any) -> RunnerDeployment:
    """A scheduled deployment of the flow, for `prefect.serve(...)` alongside others."""
    return score_folder.to_deployment(
        name="score-folder", cron=cron, parameters=parameters, tags=["predict"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-dir", default="data/inbox")
    parser.add_argument("--output-dir", default="data/predictions")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--output-format", default="parquet", choices=["parquet", "csv", "jsonl"])
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--id-column", default=None)
    parser.add_argument("--cron", default=None, help="serve on this schedule instead of once")
    args = vars(parser.parse_args())
    cron = args.pop("cron")
    if cron:
        score_folder.serve(name="score-folder", cron=cron, parameters=args)
    else:
        score_folder(**args)


if __name__ == "__main__":
    main()
