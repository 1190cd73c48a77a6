"""The pipeline flow (flows/pipeline.py) on a tiny DVC project, under a temporary Prefect API.

The flow tests share one project and run in file order: a first run (every stage runs), a
second (none does), one arch's parameter changed, an arch subset, then a failing stage.
"""

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows import pipeline as flow_module
from sentiment_rnn import orchestration as orch
from sentiment_rnn.errors import UserError
from tests.code.dvc_project import build_dvc_project

RAN, SKIPPED = orch.RAN, orch.SKIPPED


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One temporary Prefect server for the session (about 9 s to start on two cores)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, synthetic_imdb: Path,
            prefect_api: None) -> Iterator[Path]:
    """A tiny DVC project with its own MLflow store, shared by the ordered tests below."""
    root = build_dvc_project(tmp_path_factory.mktemp("flow") / "project", synthetic_imdb)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.setenv("OMP_NUM_THREADS", "1")  # the stages' torch, on two shared cores
        yield root


def run_flow(root: Path, **params: Any) -> tuple[dict[str, str], Any]:
    """Outcomes per stage and the flow run's id, of one successful flow run."""
    state = flow_module.pipeline(project_root=str(root), return_state=True, **params)
    return state.result(), state.state_details.flow_run_id


def stage_table(flow_run_id: Any) -> list[dict[str, str]]:
    return json.loads(artifact(flow_run_id, "pipeline-stages").data)


def artifact(flow_run_id: Any, key: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    found = ArtifactFilter(key=ArtifactFilterKey(any_=[key]),
                           flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=found)
    assert len(artifacts) == 1, f"expected one {key} artifact, found {len(artifacts)}"
    return artifacts[0]


def dvc_status(root: Path) -> dict[str, Any]:
    out = subprocess.run([orch.dvc_command(orch.child_env({})), "status", "--json"], cwd=root,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout or "{}")


def mlflow_runs(root: Path) -> list[Any]:
    """Every MLflow run of the project, oldest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("test-experiment")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def parent_runs(root: Path) -> list[Any]:
    return [r for r in mlflow_runs(root) if r.info.run_name.startswith("pipeline")]


def arch_stages(outcomes: dict[str, str], arch: str) -> set[str]:
    return {stage for stage in outcomes if orch.stage_arch(stage) == arch}


@pytest.mark.slow
def test_first_run_runs_every_stage(project):
    outcomes, flow_run_id = run_flow(project)

    assert {"download", "tokenize", "train@rnn", "train@lstm", "train@gru"} <= set(outcomes)
    assert set(outcomes.values()) == {RAN}
    assert [row["stage"] for row in stage_table(flow_run_id)] == list(outcomes)
    assert dvc_status(project) == {}
    (parent,) = parent_runs(project)
    assert parent.info.status == "FINISHED"
    children = [r for r in mlflow_runs(project)
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["gru", "lstm", "rnn"]
    assert all(r.info.artifact_uri.startswith(str(project)) for r in children)
    if "compare" in outcomes:
        published = artifact(flow_run_id, "model-comparison").data
        assert published == (project / flow_module.COMPARISON).read_text()


@pytest.mark.slow
def test_second_run_runs_nothing(project):
    runs_before = len(mlflow_runs(project))

    outcomes, flow_run_id = run_flow(project)

    assert set(outcomes.values()) == {SKIPPED}
    assert {row["outcome"] for row in stage_table(flow_run_id)} == {SKIPPED}
    assert len(mlflow_runs(project)) == runs_before + 1  # the parent run only
    assert parent_runs(project)[-1].info.status == "FINISHED"


@pytest.mark.slow
def test_changing_one_arch_reruns_only_its_stages(project):
    orch.set_param(project / "params.yaml", "train.gru.lr", 0.02)

    outcomes, _ = run_flow(project)

    ran = {stage for stage, outcome in outcomes.items() if outcome == RAN}
    assert ran == arch_stages(outcomes, "gru") | ({"compare"} & set(outcomes))
    assert dvc_status(project) == {}


@pytest.mark.slow
def test_an_arch_subset_leaves_the_other_archs_alone(project):
    params = project / "params.yaml"
    old_lr = orch.read_param(params, "train.lstm.lr")
    orch.set_param(params, "train.lstm.lr", 0.03)

    outcomes, _ = run_flow(project, archs=["rnn"])

    assert {outcomes[s] for s in arch_stages(outcomes, "rnn")} == {SKIPPED}
    others = arch_stages(outcomes, "lstm") | arch_stages(outcomes, "gru")
    assert {outcomes[s] for s in others} == {orch.EXCLUDED}
    if "compare" in outcomes:  # lstm is out of date: a comparison now would mix old and new
        assert outcomes["compare"] == orch.BLOCKED
    assert "train@lstm" in dvc_status(project)
    orch.set_param(params, "train.lstm.lr", old_lr)
    assert dvc_status(project) == {}


@pytest.mark.slow
def test_unknown_arch_fails_before_any_stage(project):
    parents_before = len(parent_runs(project))
    with pytest.raises(UserError, match="unknown arch"):
        flow_module.pipeline(project_root=str(project), archs=["cnn"])
    assert len(parent_runs(project)) == parents_before


@pytest.mark.slow
def test_failing_stage_fails_the_flow_with_its_message(project):
    lock_before = (project / "dvc.lock").read_text()
    missing = project / "no-such-imdb"

    state = flow_module.pipeline(project_root=str(project), data_source=str(missing),
                                 return_state=True)

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, orch.StageFailed)
    assert error.stage == "download"
    assert f"data.source '{missing}' does not exist" in str(error)  # the stage's own message
    assert orch.read_param(project / "params.yaml", "data.source") == str(missing)
    assert parent_runs(project)[-1].info.status == "FAILED"
    table = {row["stage"]: row["outcome"] for row in stage_table(state.state_details.flow_run_id)}
    assert table.pop("download") == orch.FAILED
    assert set(table.values()) == {orch.NOT_RUN}
    assert (project / "dvc.lock").read_text() == lock_before


def test_stage_task_retries_only_a_download_from_the_hub(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  source: stanfordnlp/imdb\n")
    assert flow_module.stage_task("download", tmp_path).retries == 2
    assert flow_module.stage_task("tokenize", tmp_path).retries == 0
    orch.set_param(params, "data.source", str(tmp_path))
    assert flow_module.stage_task("download", tmp_path).retries == 0


def test_up_to_date_stage_task_returns_without_calling_dvc(tmp_path):
    # .fn runs the task's body as a plain function: no dvc project here to call
    from prefect.logging import disable_run_logger

    with disable_run_logger():
        assert flow_module.run_stage.fn("train@rnn", tmp_path, {}, up_to_date=True) == SKIPPED


@pytest.mark.slow
def test_temporary_server_answers_and_stops():
    import httpx

    server = flow_module.TemporaryServer()
    server.start()
    try:
        server.wait(timeout=120)
        assert httpx.get(f"{server.api_url}/health").json() is True
    finally:
        process = server.process
        server.stop()
    assert process is not None and process.poll() is not None
    assert server.process is None


def test_no_temporary_server_where_an_api_url_is_set(prefect_api):
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    with flow_module.temporary_prefect_api(startup_timeout=1):
        assert PREFECT_API_URL.value() == url


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
