"""Where a project's MLflow data lands: the SQLite store and the experiments' artifacts."""

from sentiment_rnn.tracking import runs


def test_relative_sqlite_uri_is_anchored_at_the_project_root(tmp_path):
    assert (
        runs.anchored_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    )
    assert runs.anchored_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    assert runs.anchored_uri("http://localhost:5000", tmp_path) == "http://localhost:5000"


def test_new_experiments_keep_artifacts_beside_the_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert runs.artifact_location(uri, "imdb sentiment") == str(
        tmp_path / "mlruns" / "imdb_sentiment"
    )
    assert runs.artifact_location("http://mlflow:5000", "imdb") is None
