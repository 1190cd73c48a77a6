"""DVC end to end on the tiny project: experiments (`dvc exp run -S`, `--queue` with
`dvc queue start`) tracked in the project's own MLflow store, and results shared through a DVC
remote, so a second clone pulls them and needs no training.

Slow: each test runs the DVC pipeline (or a part of it) on synthetic data.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from sentiment_rnn.testing import build_dvc_project

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    """The environment a user's shell would have: this venv first, no tracking URI set (the
    project's `mlflow.db` is the default)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    return clean | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def sh(root: Path, *cmd: str, timeout: float = 900) -> str:
    done = subprocess.run(cmd, cwd=root, env=env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def git_commit(root: Path, message: str) -> None:
    sh(root, "git", "add", "-A")
    sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, synthetic_imdb: Path) -> Iterator[Path]:
    """A git + DVC repository of the pipeline on tiny data, reproduced once and committed."""
    root = tmp_path_factory.mktemp("dvc-exp") / "project"
    build_dvc_project(root, synthetic_imdb)
    (root / ".gitignore").write_text("mlflow.db\nmlruns/\n")
    sh(root, str(BIN / "dvc"), "repro")
    git_commit(root, "pipeline on tiny data")
    yield root


def training_runs(root: Path, arch: str) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return [r for r in client.search_runs(experiments) if r.info.run_name == arch]


def test_an_experiment_in_the_workspace_logs_to_the_project_store(project: Path) -> None:
    before = len(training_runs(project, "gru"))
    sh(project, str(BIN / "dvc"), "exp", "run", "-S", "train.gru.lr=0.001")
    runs = training_runs(project, "gru")
    assert len(runs) == before + 1
    assert any(r.data.params.get("train.lr") == "0.001" for r in runs)
    shown = json.loads(sh(project, str(BIN / "dvc"), "exp", "show", "--json"))
    rows = [r for r in shown_rows(shown) if gru_lr(r) == 0.001]
    assert rows, "dvc exp show lists no row with train.gru.lr=0.001"
    assert any("reports/metrics/eval-gru.json" in (r.get("metrics") or {}) for r in rows)


def shown_rows(node: object) -> Iterator[dict]:
    """Every row (`data` with params and metrics) of `dvc exp show --json`, at any depth."""
    if isinstance(node, dict):
        if "params" in node and "metrics" in node:
            yield node
        for value in node.values():
            yield from shown_rows(value)
    elif isinstance(node, list):
        for value in node:
            yield from shown_rows(value)


def gru_lr(row: dict) -> float | None:
    params = (row.get("params") or {}).get("params.yaml", {}).get("data", {})
    return params.get("train", {}).get("gru", {}).get("lr")


def test_queued_experiments_run_in_temporary_copies_and_log_to_the_project_store(
    project: Path,
) -> None:
    """`--queue` runs each experiment in a copy under .dvc/tmp: a relative SQLite URI and a
    relative `data.source` must still mean the project's own."""
    sh(project, str(BIN / "dvc"), "exp", "run", "--queue", "-S", "train.gru.lr=0.003",
       "-n", "lr-0-003")  # fmt: skip
    sh(project, str(BIN / "dvc"), "queue", "start")
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = sh(project, str(BIN / "dvc"), "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert "Success" in status, status + sh(project, str(BIN / "dvc"), "queue", "logs", "lr-0-003")
    runs = training_runs(project, "gru")
    assert any(r.data.params.get("train.lr") == "0.003" for r in runs)
    assert not list((project / ".dvc/tmp").rglob("mlflow.db"))  # none left in the copies
    shown = json.loads(sh(project, str(BIN / "dvc"), "exp", "show", "--json"))
    assert "lr-0-003" in json.dumps(shown)
    assert any(gru_lr(r) == 0.003 for r in shown_rows(shown))


def test_a_second_clone_pulls_the_results_from_the_remote_and_is_up_to_date(
    project: Path, tmp_path: Path
) -> None:
    remote = tmp_path / "remote"
    sh(project, str(BIN / "dvc"), "remote", "add", "-f", "-d", "shared", str(remote))
    git_commit(project, "the team's remote")
    sh(project, str(BIN / "dvc"), "push")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(project), str(clone))
    sh(clone, str(BIN / "dvc"), "pull")
    assert (clone / "models/gru.onnx").read_bytes() == (project / "models/gru.onnx").read_bytes()
    status = sh(clone, str(BIN / "dvc"), "status")
    assert "up to date" in status, status
    shutil.rmtree(clone)
