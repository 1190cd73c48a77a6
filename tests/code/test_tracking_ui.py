"""What MLflow's UI shows of the project's runs: the experiment's kind and description, and the
data splits a run names as its datasets."""

import hashlib
import json
from pathlib import Path

import mlflow
import pandas as pd

from sentiment_rnn.tracking import runs


def test_a_new_experiment_opens_on_its_training_runs(mlflow_store: str) -> None:
    experiment_id = runs.setup("fresh")
    tags = mlflow.MlflowClient(mlflow_store).get_experiment(experiment_id).tags
    assert tags[runs.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert "sort the runs table by a metric" in tags[runs.NOTE_TAG]


def test_an_older_experiment_gets_the_kind_and_keeps_its_description(mlflow_store: str) -> None:
    client = mlflow.MlflowClient(mlflow_store)
    experiment_id = client.create_experiment("older", tags={runs.NOTE_TAG: "our notes"})
    assert runs.setup("older") == experiment_id
    tags = client.get_experiment(experiment_id).tags
    assert tags[runs.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert tags[runs.NOTE_TAG] == "our notes"
    client.set_experiment_tag(experiment_id, runs.EXPERIMENT_KIND_TAG, "genai_development")
    runs.setup("older")  # a kind someone chose is left alone
    assert (
        client.get_experiment(experiment_id).tags[runs.EXPERIMENT_KIND_TAG] == "genai_development"
    )


def test_a_split_is_logged_as_a_dataset_named_by_its_file(
    mlflow_store: str, tmp_path: Path
) -> None:
    path = tmp_path / "train.parquet"
    pd.DataFrame({"text": ["good", "bad", "fine"], "label": [1, 0, 1]}).to_parquet(path)
    with runs.start_run("datasets", "gru", {}) as run:
        runs.log_split(path, "train", "training")
    (logged,) = mlflow.MlflowClient(mlflow_store).get_run(run.info.run_id).inputs.dataset_inputs
    assert logged.dataset.name == "imdb-train"
    assert logged.dataset.digest == hashlib.md5(path.read_bytes()).hexdigest()
    assert json.loads(logged.dataset.source)["uri"] == str(path)
    assert json.loads(logged.dataset.profile)["num_rows"] == 3
    schema = json.loads(logged.dataset.schema)["mlflow_colspec"]
    assert [c["name"] for c in schema] == ["text", "label"]
    assert [(t.key, t.value) for t in logged.tags] == [("mlflow.data.context", "training")]
