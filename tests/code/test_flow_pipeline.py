"""The pipeline flow (flows/pipeline.py) on a tiny DVC project.

One flow run per module brings a fresh project up to date (`first_run`); each test starts from
that state: tests that change params or the workspace work on their own copy (`project_copy`),
so the tests pass alone and in any order. In-process runs use one session-wide test API server;
the command line tests run `python flows/pipeline.py` as a subprocess.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flows import dvc_plan as plan
from flows import dvc_runner as dvc
from flows import pipeline as flow_module
from sentiment_rnn.errors import UserError
from sentiment_rnn.params import read_param, set_param
from sentiment_rnn.testing import ARCHS, build_dvc_project, prefect_free_env

RAN, SKIPPED = plan.RAN, plan.SKIPPED
SCRIPT = Path(flow_module.__file__)


@dataclass(frozen=True)
class FirstRun:
    """The project after its first flow run, and what that run returned."""

    root: Path
    outcomes: dict[str, str]
    flow_run_id: Any


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One temporary Prefect server for the session (slow to start on two cores)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def first_run(
    tmp_path_factory: pytest.TempPathFactory, synthetic_imdb: Path, prefect_api: None
) -> Iterator[FirstRun]:
    """A tiny DVC project with its own MLflow store, after one flow run of every stage.

    Read-only for tests, but for no-change flow runs (they add runs to its stores).
    """
    root = build_dvc_project(tmp_path_factory.mktemp("flow") / "project", synthetic_imdb)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store(root))
        patch.setenv("OMP_NUM_THREADS", "1")  # the stages' torch, on two shared cores
        outcomes, flow_run_id = run_flow(root)
        yield FirstRun(root, outcomes, flow_run_id)


@pytest.fixture
def project_copy(first_run: FirstRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project after its first run, for a test that changes it, tracked in the
    copy's MLflow store. (The store's artifact locations still point into the original, so new
    runs' artifacts land there; no test reads them.)"""
    root = tmp_path / "project"
    shutil.copytree(first_run.root, root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store(root))
    return root


def store(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def run_flow(root: Path, **params: Any) -> tuple[dict[str, str], Any]:
    """Outcomes per stage and the flow run's id, of one successful flow run."""
    state = flow_module.pipeline(project_root=str(root), return_state=True, **params)
    return state.result(), state.state_details.flow_run_id


def stage_table(flow_run_id: Any) -> list[dict[str, str]]:
    return json.loads(artifact(flow_run_id, "pipeline-stages").data)


def artifact(flow_run_id: Any, key: str) -> Any:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    found = ArtifactFilter(
        key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
    )
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=found)
    assert len(artifacts) == 1, f"expected one {key} artifact, found {len(artifacts)}"
    return artifacts[0]


def dvc_status(root: Path) -> dict[str, Any]:
    out = subprocess.run(
        [dvc.dvc_command(dvc.child_env({})), "status", "--json"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout or "{}")


def mlflow_runs(root: Path) -> list[Any]:
    """Every MLflow run of the project, oldest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store(root))
    experiment = client.get_experiment_by_name("test-experiment")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def parent_runs(root: Path) -> list[Any]:
    return [r for r in mlflow_runs(root) if r.info.run_name.startswith("pipeline")]


def arch_stages(outcomes: dict[str, str], arch: str) -> set[str]:
    return {stage for stage in outcomes if plan.stage_arch(stage) == arch}


def run_cli(root: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """`python flows/pipeline.py` on `root`: exit status, stdout (the outcome table), log."""
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--project-root", str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return out.returncode, out.stdout, out.stdout + out.stderr


def cli_env(tmp_path: Path, **prefect: str) -> dict[str, str]:
    """Our environment without any PREFECT_ setting but `prefect`, with a throwaway PREFECT_HOME
    (no profile, and not the user's database)."""
    return prefect_free_env(os.environ, tmp_path / "prefect-home", **prefect)


def table_outcomes(stdout: str) -> set[str]:
    rows = [line.split(maxsplit=1) for line in stdout.splitlines() if line.strip()]
    return {row[1].strip() for row in rows if len(row) == 2}


@pytest.mark.slow
def test_first_run_runs_every_stage(first_run):
    outcomes, root = first_run.outcomes, first_run.root

    assert {"download", "tokenize", "train@rnn", "train@lstm", "train@gru"} <= set(outcomes)
    assert set(outcomes.values()) == {RAN}
    assert [row["stage"] for row in stage_table(first_run.flow_run_id)] == list(outcomes)
    assert dvc_status(root) == {}
    (parent,) = [
        r
        for r in parent_runs(root)
        if r.data.tags.get("prefect_flow_run_id") == str(first_run.flow_run_id)
    ]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["stages_ran"] == ", ".join(outcomes)
    children = [
        r for r in mlflow_runs(root) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    # one run per classifier, and one per language model when its stage is in the pipeline
    expected = [*ARCHS, *(f"lm-{a}" for a in ARCHS if f"lm@{a}" in outcomes)]
    assert sorted(r.info.run_name for r in children) == sorted(expected)
    assert all(r.info.artifact_uri.startswith(str(root)) for r in children)
    if "compare" in outcomes:
        published = artifact(first_run.flow_run_id, "model-comparison").data
        assert published == (root / flow_module.COMPARISON).read_text()


@pytest.mark.slow
def test_second_run_runs_nothing(first_run):
    runs_before = len(mlflow_runs(first_run.root))

    outcomes, flow_run_id = run_flow(first_run.root)

    assert set(outcomes.values()) == {SKIPPED}
    assert {row["outcome"] for row in stage_table(flow_run_id)} == {SKIPPED}
    assert len(mlflow_runs(first_run.root)) == runs_before  # nothing trained: no MLflow run


@pytest.mark.slow
def test_changing_one_arch_reruns_only_its_stages(project_copy):
    set_param(project_copy / "params.yaml", "train.gru.lr", 0.02)

    outcomes, _ = run_flow(project_copy)

    ran = {stage for stage, outcome in outcomes.items() if outcome == RAN}
    downstream = {s for s in arch_stages(outcomes, "gru") if not s.startswith("lm@")}
    assert ran == downstream | ({"compare"} & set(outcomes))  # the LM is upstream of nothing here
    assert dvc_status(project_copy) == {}


@pytest.mark.slow
def test_an_arch_subset_leaves_the_other_archs_alone(project_copy):
    params = project_copy / "params.yaml"
    old_lr = read_param(params, "train.lstm.lr")
    set_param(params, "train.lstm.lr", 0.03)

    outcomes, _ = run_flow(project_copy, archs=["rnn"])

    assert {outcomes[s] for s in arch_stages(outcomes, "rnn")} == {SKIPPED}
    others = arch_stages(outcomes, "lstm") | arch_stages(outcomes, "gru")
    assert {outcomes[s] for s in others} == {plan.EXCLUDED}
    if "compare" in outcomes:  # lstm is out of date: a comparison now would mix old and new
        assert outcomes["compare"] == plan.BLOCKED
    assert "train@lstm" in dvc_status(project_copy)
    set_param(params, "train.lstm.lr", old_lr)
    assert dvc_status(project_copy) == {}  # nothing of lstm was touched


@pytest.mark.slow
def test_unknown_arch_fails_before_any_stage(first_run):
    parents_before = len(parent_runs(first_run.root))
    with pytest.raises(UserError, match="unknown arch"):
        flow_module.pipeline(project_root=str(first_run.root), archs=["cnn"])
    assert len(parent_runs(first_run.root)) == parents_before


@pytest.mark.slow
def test_failing_stage_fails_the_flow_with_its_message(project_copy):
    lock_before = (project_copy / "dvc.lock").read_text()
    missing = project_copy / "no-such-imdb"

    state = flow_module.pipeline(
        project_root=str(project_copy), data_source=str(missing), return_state=True
    )

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, dvc.StageFailed)
    assert error.stage == "download"
    assert f"data.source '{missing}' does not exist" in str(error)  # the stage's own message
    assert read_param(project_copy / "params.yaml", "data.source") == str(missing)
    assert parent_runs(project_copy)[-1].info.status == "FAILED"
    table = {row["stage"]: row["outcome"] for row in stage_table(state.state_details.flow_run_id)}
    assert table.pop("download") == plan.FAILED
    assert set(table.values()) == {plan.NOT_RUN}
    assert (project_copy / "dvc.lock").read_text() == lock_before


@pytest.mark.slow
def test_command_without_an_api_url_runs_on_prefects_temporary_server(first_run, tmp_path):
    code, stdout, log = run_cli(first_run.root, cli_env(tmp_path))

    assert code == 0, log[-3000:]
    assert table_outcomes(stdout) == {SKIPPED}
    assert "Starting temporary server on" in log  # Prefect's own, started by Prefect
    assert "Failed to send telemetry" not in log  # offline: the CLI turned analytics off


@pytest.mark.slow
def test_command_with_an_api_url_records_the_run_there_and_starts_no_server(first_run, tmp_path):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()  # the session's test server
    code, stdout, log = run_cli(first_run.root, cli_env(tmp_path, PREFECT_API_URL=api))

    assert code == 0, log[-3000:]
    assert table_outcomes(stdout) == {SKIPPED}
    assert "temporary server" not in log
    flow_run_id = re.search(r"/runs/flow-run/([0-9a-f-]{36})", log)
    assert flow_run_id, log[-3000:]
    with get_client(sync_client=True) as client:
        recorded = client.read_flow_run(flow_run_id[1])
    assert recorded.state is not None and recorded.state.is_completed()
    assert {row["outcome"] for row in stage_table(recorded.id)} == {SKIPPED}


def test_command_defaults_leave_the_users_own_settings_alone():
    from prefect.settings import (
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        get_current_settings,
        temporary_settings,
    )

    chosen = {
        PREFECT_SERVER_ANALYTICS_ENABLED: True,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 7,
    }
    with temporary_settings(updates=chosen), flow_module.command_settings():
        assert PREFECT_SERVER_ANALYTICS_ENABLED.value() is True
        assert PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() == 7
    if any(setting.name in os.environ for setting in chosen):
        pytest.skip("this environment sets them itself")
    with flow_module.command_settings():
        assert PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() == 120
        # What Prefect passes to the temporary server it starts:
        server_env = get_current_settings().to_environment_variables(exclude_unset=True)
        assert server_env["PREFECT_SERVER_ANALYTICS_ENABLED"].lower() == "false"


def test_stage_task_retries_only_a_download_from_the_hub(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  source: stanfordnlp/imdb\n")
    assert flow_module.stage_task("download", tmp_path).retries == 2
    assert flow_module.stage_task("tokenize", tmp_path).retries == 0
    set_param(params, "data.source", str(tmp_path))
    assert flow_module.stage_task("download", tmp_path).retries == 0


def test_up_to_date_stage_task_returns_without_calling_dvc(tmp_path):
    # .fn runs the task's body as a plain function: no dvc project here to call
    from prefect.logging import disable_run_logger

    with disable_run_logger():
        assert flow_module.run_stage.fn("train@rnn", tmp_path, {}, up_to_date=True) == SKIPPED


def test_command_line_arguments():
    args = flow_module.parse_args(["--archs", "lstm,gru", "--data-source", "/d"])
    assert (args.archs, args.data_source, args.project_root) == (["lstm", "gru"], "/d", None)
    assert flow_module.parse_args([]).archs is None


def test_deployments_have_their_schedules():
    from flows.serve import RETRAIN_CRON, deployments

    retrain, scoring = deployments()
    assert retrain.entrypoint == "flows/pipeline.py:pipeline"
    assert retrain.schedules[0].schedule.cron == RETRAIN_CRON
    assert retrain.concurrency_limit == 1  # DVC's repo lock: one pipeline run at a time
    assert scoring.entrypoint.startswith("flows/score.py:")
    assert scoring.schedules
