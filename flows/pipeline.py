"""The training pipeline as a Prefect flow: each DVC stage of dvc.yaml is one task.

DVC decides what is out of date and records what ran (dvc.lock); the flow adds schedules,
logs, retries for the download, one MLflow parent run that the stages' runs nest under, and
Prefect artifacts: a table of the stages that ran or were skipped, and the model comparison.

    python flows/pipeline.py [--archs lstm,gru] [--data-source PATH] [--project-root DIR]

With no PREFECT_API_URL set, the command starts a temporary local Prefect server for the run, as
Prefect itself would (see `temporary_prefect_api`).
"""

import argparse
import atexit
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import prefect
from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_logger
from prefect.runtime import flow_run
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_EPHEMERAL_ENABLED,
    get_current_settings,
    temporary_settings,
)
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as STARTUP_TIMEOUT

from sentiment_rnn import orchestration as orch
from sentiment_rnn.errors import UserError
from sentiment_rnn.paths import is_local_source
from sentiment_rnn.tracking import PARENT_RUN_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS = "params.yaml"
COMPARISON = Path("reports/comparison.md")  # written by the `compare` stage
NETWORK_STAGES = {"download"}  # the only stage whose I/O can fail transiently (the hub)
DOWNLOAD_RETRY_DELAYS = [10.0, 60.0]


@task(cache_policy=NO_CACHE)
def read_dvc_state(root: Path) -> tuple[orch.StageGraph, set[str]]:
    """The stages of dvc.yaml as DVC sees them (stages added later run too), and those that
    `dvc status` finds out of date."""
    return orch.read_state(root, orch.child_env({}))


@task(cache_policy=NO_CACHE)
def set_data_source(root: Path, source: str) -> bool:
    """Whether params.yaml changed."""
    logger = get_run_logger()
    if orch.set_param(root / PARAMS, "data.source", source):
        logger.info("set data.source to %r in %s", source, root / PARAMS)
        return True
    logger.info("data.source in %s is already %r", root / PARAMS, source)
    return False


@task(cache_policy=NO_CACHE)
def out_of_date_stages(root: Path) -> set[str]:
    return orch.changed_stages(root, orch.child_env({}))


@task(cache_policy=NO_CACHE, task_run_name="{stage}")
def run_stage(stage: str, root: Path, extra_env: dict[str, str], up_to_date: bool = False) -> str:
    """`dvc repro --single-item stage`, its output streamed into this task's log.

    A stage that `dvc status` found up to date (and nothing upstream has run since) is not
    asked again: `dvc repro` would cost a second per stage to say "didn't change, skipping".
    """
    logger = get_run_logger()
    if up_to_date:
        logger.info("%s: skipped, up to date (dvc status)", stage)
        return orch.SKIPPED
    outcome = orch.repro_stage(stage, root, orch.child_env(extra_env), logger.info)
    logger.info("%s: %s", stage, outcome)
    return outcome


def stage_task(stage: str, root: Path) -> Task[..., str]:
    """Retries only for a download from the hub: a missing local folder will not reappear."""
    source = str(orch.read_param(root / PARAMS, "data.source"))
    if stage in NETWORK_STAGES and not is_local_source(source, root):
        return run_stage.with_options(retries=len(DOWNLOAD_RETRY_DELAYS),
                                      retry_delay_seconds=DOWNLOAD_RETRY_DELAYS)
    return run_stage


def run_stages(graph: orch.StageGraph, archs: list[str], changed: set[str], root: Path,
               extra_env: dict[str, str], outcomes: dict[str, str],
               details: dict[str, str]) -> None:
    """Each stage in order, filling `outcomes` as it goes; the first failure stops the run.

    Excluded and blocked stages get no task: they are not part of this run, only of its table.
    """
    logger = get_run_logger()
    for stage in graph.stages:
        skip = orch.skip_reason(stage, graph, archs, changed, outcomes)
        if skip is not None and skip[0] != orch.SKIPPED:
            outcomes[stage], details[stage] = skip
            logger.info("%s: %s (%s)", stage, *skip)
            continue
        start = time.perf_counter()
        try:
            outcomes[stage] = stage_task(stage, root)(stage, root, extra_env, skip is not None)
        except Exception as exc:
            outcomes[stage], details[stage] = orch.FAILED, str(exc)
            raise
        details[stage] = skip[1] if skip else f"dvc repro, {time.perf_counter() - start:.1f} s"


def publish(root: Path, graph: orch.StageGraph, outcomes: dict[str, str],
            details: dict[str, str]) -> None:
    """The stage table, and the comparison report when the compare stage has written one."""
    create_table_artifact(table=orch.outcome_table(graph.stages, outcomes, details),
                          key="pipeline-stages", description="DVC stages: ran, skipped, excluded")
    comparison = root / COMPARISON
    if comparison.is_file():
        create_markdown_artifact(markdown=comparison.read_text(), key="model-comparison",
                                 description=f"{COMPARISON}, written by the compare stage")


@flow(name="sentiment-pipeline")
def pipeline(archs: list[str] | None = None, data_source: str | None = None,
             project_root: str | None = None) -> dict[str, str]:
    """Run the DVC stages in order; returns each stage's outcome (ran, skipped, ...).

    archs: the model families to train (default: all foreach items of dvc.yaml). Per-arch stages
        (`<stage>@<arch>`) of the others are excluded; a stage over all archs (`compare`) runs
        only if the excluded archs' stages are up to date, else it is reported as blocked.
    data_source: if given, written to `data.source` in params.yaml first (comments kept).
    project_root: the folder with dvc.yaml (default: this repository).
    """
    root = Path(project_root).resolve() if project_root else REPO_ROOT
    state = read_dvc_state.submit(root)
    orch.preload_tracking()  # MLflow's import, while DVC works
    graph, changed = state.result()
    chosen = orch.check_archs(graph, archs)
    if data_source is not None and set_data_source(root, data_source):
        changed = out_of_date_stages(root)  # the status above predates the new data source
    uri, run_id = open_parent_run(root, chosen)
    extra_env = {"MLFLOW_TRACKING_URI": uri, PARENT_RUN_ENV: run_id}
    outcomes: dict[str, str] = {}
    details: dict[str, str] = {}
    try:
        run_stages(graph, chosen, changed, root, extra_env, outcomes, details)
    except BaseException:  # interrupted too: the parent run must not stay RUNNING
        orch.close_parent_run(uri, run_id, outcomes, failed=True)
        publish(root, graph, outcomes, details)
        raise
    orch.close_parent_run(uri, run_id, outcomes, failed=False)
    publish(root, graph, outcomes, details)
    return outcomes


def open_parent_run(root: Path, archs: list[str]) -> tuple[str, str]:
    """(tracking URI, run id) of this flow run's MLflow run, in params.yaml's experiment."""
    uri = orch.resolve_tracking_uri(root)
    experiment = str(orch.read_param(root / PARAMS, "mlflow.experiment"))
    tags = {"prefect_flow_run_id": str(flow_run.id), "archs": ",".join(archs),
            "data_source": str(orch.read_param(root / PARAMS, "data.source"))}
    name = f"pipeline {flow_run.name or ''}".strip()
    run_id = orch.open_parent_run(uri, experiment, name, tags)
    get_run_logger().info("MLflow parent run %s in experiment %s (%s)", run_id, experiment, uri)
    return uri, run_id


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the DVC pipeline (dvc.yaml) as a Prefect flow, tracked in MLflow.")
    parser.add_argument("--archs", type=lambda text: [a for a in text.split(",") if a],
                        help="comma-separated model families, e.g. lstm,gru (default: all)")
    parser.add_argument("--data-source",
                        help="set data.source in params.yaml to this hub id or local folder first")
    parser.add_argument("--project-root", help=f"the folder with dvc.yaml (default: {REPO_ROOT})")
    return parser.parse_args(argv)


@contextmanager
def temporary_prefect_api(startup_timeout: float) -> Iterator[None]:
    """Prefect's temporary local server for the duration, where Prefect would start one (no
    PREFECT_API_URL, ephemeral mode allowed); else nothing.

    Prefect starts the same server itself once the flow is called, but first imports the whole
    server package into this process just to launch it (about 3 s on two cores). Launched from
    here, the server starts while this process imports MLflow, and nothing here loads its code.
    As Prefect's does, it stops when the process exits, after Prefect's workers have sent the
    last logs and events.
    """
    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield
        return
    server = TemporaryServer()
    atexit.register(server.stop)
    server.start()
    orch.preload_tracking()  # meanwhile
    server.wait(startup_timeout)
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield


class TemporaryServer:
    """The command and settings of Prefect's `SubprocessASGIServer`: the API without UI and with
    the services of an ephemeral server, on a free local port."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.api_url = ""

    def start(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        # A throwaway local server sends no telemetry (offline it logs a red "Failed to send
        # telemetry" error); a user's own PREFECT_SERVER_ANALYTICS_ENABLED still wins.
        env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", **os.environ,
               "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1",
               **get_current_settings().to_environment_variables(exclude_unset=True)}
        cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
               "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "error", "--lifespan", "on"]
        get_logger(__name__).info("Starting temporary server on http://127.0.0.1:%d", port)
        self.process = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        self.api_url = f"http://127.0.0.1:{port}/api"

    def wait(self, timeout: float) -> None:
        """Poll the server's health until it answers; a server that exits first (its port taken
        meanwhile) is started again on another port, twice at most."""
        deadline = time.monotonic() + timeout
        restarts = 2
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    if not restarts:
                        raise RuntimeError("the temporary Prefect server exited with status "
                                           f"{self.process.returncode} before it answered")
                    restarts -= 1
                    self.start()
                try:
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"the temporary Prefect server at {self.api_url} did not answer "
                           f"within {timeout} s")

    def stop(self) -> None:
        if self.process is None:
            return
        get_logger(__name__).info("Stopping temporary server on %s",
                                  self.api_url.removesuffix("/api"))
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Prefect's temporary server gets 20 s to start by default: too few on two busy cores.
    timeout = max(STARTUP_TIMEOUT.value(), 120)
    try:
        with temporary_settings(updates={STARTUP_TIMEOUT: timeout}), temporary_prefect_api(timeout):
            outcomes = pipeline(archs=args.archs, data_source=args.data_source,
                                project_root=args.project_root)
    except (orch.StageFailed, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    width = max(map(len, outcomes), default=0)
    print("\n".join(f"{stage:<{width}}  {outcome}" for stage, outcome in outcomes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
