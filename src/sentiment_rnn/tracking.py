"""MLflow, set up in one place: tracking URI, experiment, run ids shared between stages.

Imported only by stage entry points and flows, never by models or the training core.
"""

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sentiment_rnn.files import read_json, write_json

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PARENT_RUN_ENV = "SENTIMENT_RNN_PARENT_RUN_ID"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else a SQLite file in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside the SQLite file of a local store.

    MLflow would anchor a SQLite store's default `./mlruns` at the working directory of the
    process that creates the experiment, scattering artifacts wherever a stage or test ran.
    """
    if not uri.startswith("sqlite:///"):
        return None  # a tracking server decides
    database = Path(uri.removeprefix("sqlite:///")).resolve()
    return str(database.parent / "mlruns" / re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment))


def setup(experiment: str) -> Any:
    """Point MLflow at the tracking store and experiment; returns the `mlflow` module."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=artifact_location(uri, experiment))
    mlflow.set_experiment(experiment)
    return mlflow


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


@contextmanager
def start_run(experiment: str, run_name: str, tags: dict[str, str]) -> Iterator[Any]:
    """Start a run tagged with the git commit; nested under a flow's parent run when one is set."""
    mlflow = setup(experiment)
    tags = {"git_commit": git_commit(), **tags}
    parent = os.environ.get(PARENT_RUN_ENV)
    if parent:
        tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        yield run


@contextmanager
def resume_run(run_file: str | Path, experiment: str) -> Iterator[Any]:
    """Reopen the run that trained a model (its id is in `run_file`), for evaluate and export."""
    from mlflow.exceptions import MlflowException

    from sentiment_rnn.errors import UserError

    mlflow = setup(experiment)
    run_id = read_run_id(run_file)
    try:
        mlflow.get_run(run_id)
    except MlflowException:
        raise UserError(
            f"MLflow run {run_id} (from {run_file}) is not in the tracking store {tracking_uri()}: "
            "set MLFLOW_TRACKING_URI to the store the model was trained with, or retrain"
        ) from None
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def write_run_id(path: str | Path, run: Any) -> None:
    write_json(path, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id})


def read_run_id(path: str | Path) -> str:
    from sentiment_rnn.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path} not found: run the train stage first (it records the MLflow run id)"
        )
    return str(read_json(path)["run_id"])


def flatten(prefix: str, data: dict[str, Any]) -> dict[str, Any]:
    """{'model': {'arch': 'lstm'}} -> {'model.arch': 'lstm'}, for `log_params`."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(flatten(name, value))
        else:
            flat[name] = value
    return flat
