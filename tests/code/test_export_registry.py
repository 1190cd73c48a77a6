"""The export stage end to end, and the Model Registry: versions, the `champion` alias."""

import hashlib
from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import onnx
import pandas as pd
import pytest

from sentiment_rnn import promote
from sentiment_rnn.core.model import load_model
from sentiment_rnn.core.tokenizer import load_encoded
from sentiment_rnn.errors import UserError
from sentiment_rnn.export.graph import CPU_ONLY
from sentiment_rnn.export.parity import OnnxFeed, torch_outputs
from sentiment_rnn.files import read_json
from sentiment_rnn.serving.contract import check_pairing
from sentiment_rnn.serving.session import create_session
from sentiment_rnn.stages import export as stage
from sentiment_rnn.tracking import registry
from sentiment_rnn.tracking import runs as tracking
from tests.conftest import trained_copy
from tests.model.predict_helpers import make_model, make_tokenizer

EXPERIMENT = "test-experiment"  # tiny_params' mlflow.experiment
MAX_LENGTH = 32  # tiny_params' tokenize.max_length


def test_choose_champion_prefers_best_score_then_newest() -> None:
    assert registry.choose_champion({1: 0.80, 2: 0.90, 3: 0.85}) == 2
    assert registry.choose_champion({1: 0.90, 2: 0.90}) == 2  # a re-export of the same score
    assert registry.choose_champion({1: None, 2: 0.70}) == 2
    assert registry.choose_champion({1: None}) is None
    assert registry.choose_champion({}) is None


def register_run(name: str, best_val_acc: float | None, seed: int, folder: Path) -> int:
    """A text-model version of a tiny GRU (weights from `seed`) in a run with that score."""
    tokenizer = folder / "tokenizer.json"
    if not tokenizer.exists():
        make_tokenizer(tokenizer)
    onnx_file, _ = make_model(folder / str(seed), tokenizer, "gru", 8, seed=seed)
    with tracking.start_run(EXPERIMENT, f"register {seed}", {}):
        if best_val_acc is not None:
            tracking.log_metrics({"best_val_acc": best_val_acc})
        return registry.log_text_model(
            onnx_file, folder / str(seed) / "gru.tokenizer.json", name, {"seed": str(seed)}
        )


def test_champion_alias_follows_the_best_validation_accuracy(
    mlflow_store: str, tmp_path: Path
) -> None:
    name = "imdb-sentiment-test"
    versions = [
        register_run(name, acc, seed, tmp_path) for seed, acc in enumerate([0.70, 0.90, 0.80])
    ]
    assert versions == [1, 2, 3]
    assert registry.update_champion(name) == 2
    client = mlflow.MlflowClient(mlflow_store)
    assert int(client.get_model_version_by_alias(name, registry.CHAMPION).version) == 2
    assert client.get_model_version(name, "2").tags["seed"] == "1"
    onnx_file, _ = registry.download_registered(f"models:/{name}@{registry.CHAMPION}", tmp_path)
    assert onnx_file.read_bytes() == (tmp_path / "1/gru.onnx").read_bytes()

    register_run(name, None, 3, tmp_path)  # no score: cannot take the alias
    assert registry.update_champion(name) == 2
    assert register_run(name, 0.95, 4, tmp_path) == 5
    assert registry.update_champion(name) == 5
    assert int(client.get_model_version_by_alias(name, registry.CHAMPION).version) == 5


def test_check_pairing_refuses_another_tokenizer(tmp_path: Path) -> None:
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}")
    digest = hashlib.sha256(b"{}").hexdigest()
    assert check_pairing(tokenizer, digest, "models/gru", "retrain") == digest
    with pytest.raises(UserError, match="is not the one models/gru was trained with.*: retrain"):
        check_pairing(tokenizer, "0" * 64, "models/gru", "retrain")
    with pytest.raises(UserError, match="not found: run the tokenize stage"):
        check_pairing(tmp_path / "missing.json", digest, "models/gru", "run the tokenize stage")


@pytest.fixture(scope="module")
def project(tokenized_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("export") / "p"
    with trained_copy(tokenized_project, root, ("lstm", "gru"), EXPERIMENT) as project_root:
        yield project_root


CFG = stage.ExportConfig(opset=17, parity_tolerance=1e-4, seed=0)
PROMOTE = promote.PromoteConfig(registered_model_prefix="imdb-test")


def export(arch: str) -> dict:
    return stage.export(arch, CFG, EXPERIMENT)


@pytest.fixture(scope="module")
def lstm_report(project: Path) -> dict:
    return export("lstm")


def test_export_writes_graph_tokenizer_and_metrics(project: Path, lstm_report: dict) -> None:
    onnx_file = project / "models/lstm.onnx"
    assert read_json(project / "reports/metrics/export-lstm.json") == lstm_report
    assert lstm_report["onnx_bytes"] == onnx_file.stat().st_size > 0
    tokens = project / "data/tokens/tokenizer.json"
    assert (project / "models/lstm.tokenizer.json").read_bytes() == tokens.read_bytes()
    parity = lstm_report["parity"]
    assert parity["max_abs_diff"] <= 1e-4 and parity["class_mismatches"] == 0
    assert [1, 1] in parity["shapes"] and [64, MAX_LENGTH] in parity["shapes"]
    assert lstm_report["opset"] == 17 and lstm_report["ort_provider"] == "CPUExecutionProvider"
    assert lstm_report["ort_reviews_per_second"] > 0
    assert lstm_report["inputs"] == {"token_ids": ["batch", "time"], "lengths": ["batch"]}
    assert lstm_report["serving_graph"] == "folded-scan"

    proto = onnx.load(onnx_file)
    onnx.checker.check_model(proto, full_check=True)
    props = {p.key: p.value for p in proto.metadata_props}
    tok_meta = read_json(project / "data/tokens/meta.json")
    info = load_model(project / "models/lstm/model.pt")[1]
    train = read_json(project / "reports/metrics/train-lstm.json")
    assert props["tokenizer_sha256"] == tok_meta["tokenizer_sha256"]
    assert props["mlflow_run_id"] == info.mlflow_run_id
    assert float(props["best_val_acc"]) == pytest.approx(train["best_val_acc"])
    assert props["max_length"] == str(MAX_LENGTH) and props["truncation_side"] == "right"


def test_written_graph_scores_test_rows_like_torch(project: Path, lstm_report: dict) -> None:
    model, _ = load_model(project / "models/lstm/model.pt")
    test = load_encoded(project / "data/tokens/test.npz")
    session = create_session((project / "models/lstm.onnx").read_bytes(), CPU_ONLY)
    batch = OnnxFeed(test.ids.astype(np.int64), test.lengths.astype(np.int64), "test")
    prob = session.run(["probability"], batch.feed())[0]
    np.testing.assert_allclose(prob, torch_outputs(model, batch)[0], atol=1e-5)


def test_export_logs_its_figures_to_the_training_run_but_registers_nothing(
    project: Path, lstm_report: dict
) -> None:
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run_id = load_model(project / "models/lstm/model.pt")[1].mlflow_run_id
    assert client.get_run(run_id).data.metrics["export/onnx_bytes"] == lstm_report["onnx_bytes"]
    assert client.search_registered_models() == []
    assert "model_version" not in lstm_report


@pytest.fixture(scope="module")
def promoted(project: Path, lstm_report: dict) -> promote.Promotion:
    return promote.promote("lstm", PROMOTE, EXPERIMENT)


def test_promote_registers_the_text_model_in_the_training_run(
    project: Path, lstm_report: dict, promoted: promote.Promotion
) -> None:
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    name = promoted.registered_model
    assert name == "imdb-test-lstm" and promoted.newly_registered
    version = client.get_model_version(name, str(promoted.version))
    run_id = load_model(project / "models/lstm/model.pt")[1].mlflow_run_id
    assert version.run_id == run_id
    assert version.tags["onnx_sha256"] == lstm_report["onnx_sha256"]
    assert version.tags[registry.TEXT_INPUT_TAG[0]] == registry.TEXT_INPUT_TAG[1]
    assert client.get_model_version_by_alias(name, "champion").version == version.version
    uri = f"models:/{name}@champion"
    folder = Path(mlflow.artifacts.download_artifacts(uri))
    onnx_file, tokenizer = registry.model_artifacts(folder)
    assert (
        onnx_file is not None
        and onnx_file.read_bytes() == (project / "models/lstm.onnx").read_bytes()
    )
    assert tokenizer is not None
    assert tokenizer.read_bytes() == (project / "data/tokens/tokenizer.json").read_bytes()
    texts = pd.read_parquet(project / "data/raw/test.parquet")["text"][:8].tolist()
    out = mlflow.pyfunc.load_model(uri, model_config={"threads": 1}).predict(texts)
    assert out["status"].tolist() == ["ok"] * 8


def test_promote_describes_the_model_and_each_version(
    project: Path, promoted: promote.Promotion
) -> None:
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    model = client.get_registered_model(promoted.registered_model)
    assert "review text" in model.description and "@champion" in model.description
    card = client.get_model_version(promoted.registered_model, str(promoted.version)).description
    meta = read_json(project / "data/tokens/meta.json")
    train = read_json(project / "reports/metrics/train-lstm.json")
    assert f"tokenizer sha256 `{meta['tokenizer_sha256']}`" in card
    assert f"validation accuracy {train['best_val_acc']:.4f}" in card
    assert f"longer than {MAX_LENGTH} tokens" in card and "English" in card
    assert "IMDB" in card and "train 192" in card  # the data metrics file's split sizes


def test_training_runs_name_their_datasets(project: Path) -> None:
    """train logs the train and validation splits, evaluate the test split, to one run."""
    from sentiment_rnn.stages import evaluate

    evaluate.evaluate("gru", evaluate.EvaluateConfig(batch_size=64, device="cpu"), EXPERIMENT)
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run_id = load_model(project / "models/gru/model.pt")[1].mlflow_run_id
    inputs = client.get_run(run_id).inputs.dataset_inputs
    found = {i.dataset.name: {t.key: t.value for t in i.tags} for i in inputs}
    assert found == {
        "imdb-train": {"mlflow.data.context": "training"},
        "imdb-val": {"mlflow.data.context": "validation"},
        "imdb-test": {"mlflow.data.context": "test"},
    }
    by_name = {i.dataset.name: i.dataset for i in inputs}
    assert by_name["imdb-train"].digest == tracking.md5_file(project / "data/raw/train.parquet")
    assert "data/raw/train.parquet" in by_name["imdb-train"].source


def test_promote_again_registers_nothing_new(project: Path, promoted: promote.Promotion) -> None:
    again = promote.promote("lstm", PROMOTE, EXPERIMENT)
    assert not again.newly_registered and again.version == promoted.version
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    assert len(client.search_model_versions("name='imdb-test-lstm'")) == 1


def test_promote_needs_an_exported_model(project: Path) -> None:
    with pytest.raises(UserError, match=r"run the export stage first \(dvc repro export@rnn\)"):
        promote.promote("rnn", PROMOTE, EXPERIMENT)


def test_export_refuses_a_missing_model(project: Path) -> None:
    with pytest.raises(UserError, match="run the train stage"):
        export("rnn")  # not trained in this project
    assert not (project / "models/rnn.onnx").exists()


def test_export_refuses_a_model_trained_on_another_tokenizer(project: Path) -> None:
    tokenizer = project / "data/tokens/tokenizer.json"
    original = tokenizer.read_bytes()
    tokenizer.write_bytes(original + b" ")
    try:
        with pytest.raises(UserError, match="is not the one models/gru was trained with"):
            export("gru")
    finally:
        tokenizer.write_bytes(original)
    assert not (project / "models/gru.onnx").exists()
