"""Code tier: MLflow set-up, runs resumed (or replaced) by the stages after train, flattening."""

from pathlib import Path

import mlflow
import pytest

from sentiment_rnn.tracking import runs as tracking


def test_tracking_uri_is_the_project_store_unless_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.tracking_uri() == "http://mlflow.example:5000"


def test_a_relative_store_is_the_original_projects_in_a_dvc_experiment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dvc exp run --queue` runs stages in a temporary copy and sets DVC_ROOT to the project."""
    copy = tmp_path / ".dvc/tmp/exps/run/abc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////abs/store.db")
    assert tracking.tracking_uri() == "sqlite:////abs/store.db"


def test_resume_run_reopens_a_run_of_the_store(mlflow_store: str) -> None:
    with tracking.start_run("x", "lstm", {"arch": "lstm"}) as run:
        run_id = run.info.run_id
    with tracking.resume_run(run_id, "x", "lstm", {}) as resumed:
        assert resumed.info.run_id == run_id


def test_a_run_missing_from_the_store_is_replaced_by_a_new_one(
    mlflow_store: str, caplog: pytest.LogCaptureFixture
) -> None:
    missing = "0123456789abcdef0123456789abcdef"
    with caplog.at_level("INFO"), tracking.resume_run(missing, "x", "gru", {"arch": "gru"}) as run:
        new_id = run.info.run_id
    assert new_id != missing
    tags = mlflow.MlflowClient(mlflow_store).get_run(new_id).data.tags
    assert tags["trained_in_run"] == missing and tags["arch"] == "gru"
    lines = [r.getMessage() for r in caplog.records if missing in r.getMessage()]
    assert len(lines) == 1 and "logging to a new run instead" in lines[0]


def test_flatten_nests_with_dots_or_another_separator() -> None:
    flat = tracking.flatten({"model": {"arch": "gru", "layers": 2}, "lr": 0.1})
    assert flat == {"model.arch": "gru", "model.layers": 2, "lr": 0.1}
    assert tracking.flatten({"a": {"b": 1}}, "test", sep="/") == {"test/a/b": 1}


def test_numeric_keeps_numbers_but_not_booleans() -> None:
    data = {"accuracy": 0.5, "arch": "gru", "rows": 3, "flag": True}
    assert tracking.numeric(data) == {"accuracy": 0.5, "rows": 3.0}
