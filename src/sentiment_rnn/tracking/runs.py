"""MLflow runs: the tracking store, the experiment, one run per stage, the flow's parent run.

Set up once per process (`setup`); stages log through the small functions below, so no other
module of the package imports MLflow.

What the UI shows: the experiment is marked as one of model training runs (MLflow 3 opens an
experiment with no kind on its GenAI overview) and carries a description of its runs. Each
model family trains in a run named after it (`rnn`, `lstm`, `gru`, tag `arch`) that also gets
its test metrics, nested under the flow's run when the flow ran it; each run names the data
splits it read (`log_split`).
"""

import hashlib
import logging
import os
import re
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sentiment_rnn.paths import project_root

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PARENT_RUN_ENV = "SENTIMENT_RNN_PARENT_RUN_ID"
_SQLITE = "sqlite:///"
# The experiment tag MLflow 3's UI reads to open an experiment on its training runs (its own
# values: "custom_model_development", "genai_development"; unset, the UI guesses).
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # the description shown at the top of the experiment page
EXPERIMENT_NOTE = """Training runs of the IMDB sentiment models (`sentiment-rnn`).

Each model family trains in a run named after it (`rnn`, `lstm`, `gru`; tag `arch`) with its
validation curves, `best_val_acc` and, once evaluated, its `test/*` metrics; its inputs name the
train / validation / test parquet files (MLflow datasets, digest = the file's md5 as DVC records
it). A pipeline run of the Prefect flow is a parent run with the families nested under it.

To compare the families side by side, sort the runs table by a metric (e.g. `best_val_acc`)
or filter it (e.g. `tags.arch != ''`): MLflow then lists nested runs flat, and the chart view
and Compare take them like any run. Registered versions (`imdb-sentiment-<arch>`, alias
`champion`) link back to the run that trained them.
"""


def tracking_uri(root: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else `mlflow.db`; a relative SQLite path is taken from the
    project root (`root`, by default `paths.project_root()`), so a `dvc exp run --queue`
    experiment, which runs in a temporary copy, logs to the project's own store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    return anchored_uri(uri, root or project_root())


def anchored_uri(uri: str, root: Path) -> str:
    """`uri` with a relative SQLite path made absolute against `root` (the project root).

    SQLite paths resolve against the working directory; a process started elsewhere (a flow,
    a DVC experiment in a temporary copy) must still point at the project's own store.
    """
    if uri.startswith(_SQLITE) and not uri.startswith(_SQLITE + "/"):
        return _SQLITE + str((root / uri.removeprefix(_SQLITE)).resolve())
    return uri


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside the SQLite file of a local store.

    MLflow would anchor a SQLite store's default `./mlruns` at the working directory of the
    process that creates the experiment, scattering artifacts wherever a stage or test ran.
    """
    if not uri.startswith(_SQLITE):
        return None  # a tracking server decides
    database = Path(uri.removeprefix(_SQLITE)).resolve()
    return str(database.parent / "mlruns" / re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment))


def _experiment_id(client: MlflowClient, uri: str, experiment: str) -> str:
    """The experiment's id, creating it (with its kind and description) if needed."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        tags = {EXPERIMENT_KIND_TAG: TRAINING_KIND, NOTE_TAG: EXPERIMENT_NOTE}
        return str(client.create_experiment(experiment, artifact_location(uri, experiment), tags))
    if EXPERIMENT_KIND_TAG not in found.tags:  # made before the kind was set, or by hand
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        if NOTE_TAG not in found.tags:
            client.set_experiment_tag(found.experiment_id, NOTE_TAG, EXPERIMENT_NOTE)
    return str(found.experiment_id)


def setup(experiment: str) -> str:
    """Point MLflow at the tracking store and experiment; returns the experiment's id.

    Called once per stage process, by `start_run` or `resume_run`.
    """
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment_id = _experiment_id(MlflowClient(uri), uri, experiment)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


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
    setup(experiment)
    tags = {"git_commit": git_commit(), **tags}
    parent = os.environ.get(PARENT_RUN_ENV)
    if parent:
        tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        yield run


@contextmanager
def resume_run(run_id: str, experiment: str, run_name: str, tags: dict[str, str]) -> Iterator[Any]:
    """Reopen the run that trained a model, for evaluate and export.

    Where that run is not in the current tracking store (a clone with its own store, a model
    pulled from a DVC remote), a fresh run named `run_name` takes its place, and a line says so.
    """
    setup(experiment)
    try:
        found = bool(run_id) and mlflow.get_run(run_id) is not None
    except MlflowException:
        found = False
    if found:
        with mlflow.start_run(run_id=run_id) as run:
            yield run
        return
    log.info(
        "MLflow run %s of the trained model is not in the tracking store %s: "
        "logging to a new run instead",
        run_id or "(none)",
        tracking_uri(),
    )
    with start_run(experiment, run_name, {**tags, "trained_in_run": run_id or "unknown"}) as run:
        yield run


def flatten(data: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """{'model': {'arch': 'lstm'}} -> {'model.arch': 'lstm'}, for params and metrics."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name, sep))
        else:
            flat[name] = value
    return flat


def numeric(data: Mapping[str, Any]) -> dict[str, float]:
    """The entries of a flat dict that are numbers (booleans are not), as floats."""
    return {
        k: float(v)
        for k, v in data.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def log_params(params: Mapping[str, Any]) -> None:
    mlflow.log_params(dict(params))


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    mlflow.log_metrics(dict(metrics), step=step)


def set_tags(tags: Mapping[str, str]) -> None:
    mlflow.set_tags(dict(tags))


def log_artifact(path: str | Path, folder: str | None = None) -> None:
    mlflow.log_artifact(str(path), folder)


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


def run_metrics(run_id: str) -> dict[str, float]:
    """The latest value of each metric of a run."""
    return dict(mlflow.get_run(run_id).data.metrics)


def md5_file(path: Path) -> str:
    """The file's md5, which DVC records for each file of an output folder."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def log_split(path: Path, split: str, context: str) -> None:
    """Name a data split the active run read (`context`: training, validation, test): an
    MLflow dataset of the parquet file, its source the file, its digest the file's md5."""
    frame = pd.read_parquet(path)
    # MLflow warns that a local path matches its two local sources (the same class, for "" and
    # file:) and that an integer column could not hold missing values: neither applies here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            frame,
            source=str(project_root() / path),  # an absolute path stays as it is
            targets="label" if "label" in frame.columns else None,
            name=f"imdb-{split}",
            digest=md5_file(path),
        )
        mlflow.log_input(dataset, context=context)  # the schema is inferred here


def open_parent_run(uri: str, experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """Start the flow's MLflow run that the stages' runs nest under; returns its id."""
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(
        _experiment_id(client, uri, experiment),
        run_name=run_name,
        tags={"git_commit": git_commit(), **tags},
    )
    return str(run.info.run_id)


def close_parent_run(uri: str, run_id: str, stages: Mapping[str, list[str]], failed: bool) -> None:
    """Record which stages had which outcome and end the run FINISHED, or FAILED."""
    client = MlflowClient(tracking_uri=uri)
    for outcome, names in stages.items():
        key = f"stages_{outcome.replace(' ', '_')}"
        client.set_tag(run_id, key, ", ".join(names) or "-")
        client.log_metric(run_id, key, len(names))
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")
