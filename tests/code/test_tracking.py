"""Code tier: MLflow set-up and run-id hand-over between stages."""

from pathlib import Path

import pytest

from sentiment_rnn import tracking
from sentiment_rnn.errors import UserError
from sentiment_rnn.files import write_json


def test_tracking_uri_defaults_to_sqlite_and_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert tracking.tracking_uri() == "sqlite:///elsewhere.db"


def test_missing_run_file_says_to_train_first(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="run the train stage first"):
        tracking.read_run_id(tmp_path / "mlflow_run.json")


def test_run_from_another_store_is_a_user_error(tmp_path: Path, mlflow_store: str) -> None:
    run_file = tmp_path / "mlflow_run.json"
    write_json(run_file, {"run_id": "0123456789abcdef0123456789abcdef", "experiment_id": "1"})
    with pytest.raises(UserError, match="MLFLOW_TRACKING_URI"), tracking.resume_run(run_file, "x"):
        pass


def test_flatten_nests_with_dots() -> None:
    flat = tracking.flatten("", {"model": {"arch": "gru", "layers": 2}, "lr": 0.1})
    assert flat == {"model.arch": "gru", "model.layers": 2, "lr": 0.1}
