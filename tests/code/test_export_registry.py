"""The export stage end to end, and the Model Registry: versions, the `champion` alias."""

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from sentiment_rnn import export as ex
from sentiment_rnn.errors import UserError
from sentiment_rnn.files import read_json
from sentiment_rnn.model import ModelConfig, SentimentRNN
from tests.conftest import trained_copy

EXPERIMENT = "test-experiment"  # tiny_params' mlflow.experiment
MAX_LENGTH = 32  # tiny_params' tokenize.max_length


def test_choose_champion_prefers_best_score_then_newest() -> None:
    assert ex.choose_champion({1: 0.80, 2: 0.90, 3: 0.85}) == 2
    assert ex.choose_champion({1: 0.90, 2: 0.90}) == 2  # a re-export of the same score
    assert ex.choose_champion({1: None, 2: 0.70}) == 2
    assert ex.choose_champion({1: None}) is None
    assert ex.choose_champion({}) is None


def tiny_proto(seed: int) -> tuple[onnx.ModelProto, ex.ParityBatch]:
    torch.manual_seed(seed)
    model = SentimentRNN(ModelConfig(arch="gru", vocab_size=30, embed_dim=4, hidden_size=4))
    example = ex.random_batch(np.random.default_rng(0), 2, 5, 30, 0)
    return ex.to_onnx(model), example


def register_run(name: str, best_val_acc: float | None, seed: int) -> int:
    import mlflow

    from sentiment_rnn import tracking

    proto, example = tiny_proto(seed)
    tracking.setup(EXPERIMENT)
    with mlflow.start_run():
        if best_val_acc is not None:
            mlflow.log_metric("best_val_acc", best_val_acc)
        return ex.log_and_register(proto, name, example, {"seed": str(seed)})


def test_champion_alias_follows_the_best_validation_accuracy(mlflow_store: str) -> None:
    import mlflow

    name = "imdb-sentiment-test"
    versions = [register_run(name, acc, seed) for seed, acc in enumerate([0.70, 0.90, 0.80])]
    assert versions == [1, 2, 3]
    assert ex.update_champion(name) == 2
    client = mlflow.MlflowClient(mlflow_store)
    assert int(client.get_model_version_by_alias(name, ex.CHAMPION).version) == 2
    loaded = mlflow.onnx.load_model(f"models:/{name}@{ex.CHAMPION}")
    assert ex.symbolic_dims(loaded) == {"token_ids": ["batch", "time"], "lengths": ["batch"]}
    assert client.get_model_version(name, "2").tags["seed"] == "1"

    register_run(name, None, seed=3)  # no score: cannot take the alias
    assert ex.update_champion(name) == 2
    assert register_run(name, 0.95, seed=4) == 5
    assert ex.update_champion(name) == 5
    assert int(client.get_model_version_by_alias(name, ex.CHAMPION).version) == 5


def test_check_pairing_refuses_another_tokenizer(tmp_path: Path) -> None:
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}")
    digest = hashlib.sha256(b"{}").hexdigest()
    assert ex.check_pairing({"tokenizer_sha256": digest}, tokenizer, "gru") == digest
    with pytest.raises(UserError, match="another tokenizer"):
        ex.check_pairing({"tokenizer_sha256": "0" * 64}, tokenizer, "gru")
    with pytest.raises(UserError, match="run the tokenize stage"):
        ex.check_pairing({}, tmp_path / "missing.json", "gru")


@pytest.fixture(scope="module")
def project(tokenized_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("export") / "p"
    with trained_copy(tokenized_project, root, ("lstm", "gru"), EXPERIMENT) as project_root:
        yield project_root


def export(arch: str, **overrides) -> dict:
    kwargs = {"max_length": MAX_LENGTH, "truncation_side": "right", "opset": 17,
              "registered_model_prefix": "imdb-test", "parity_tolerance": 1e-4}  # fmt: skip
    kwargs |= overrides
    return ex.run_export(arch, EXPERIMENT, **kwargs)


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
    tok_meta = read_json(project / "reports/metrics/tokenize.json")
    run = read_json(project / "models/lstm/mlflow_run.json")
    train = read_json(project / "reports/metrics/train-lstm.json")
    assert props["tokenizer_sha256"] == tok_meta["tokenizer_sha256"]
    assert props["mlflow_run_id"] == run["run_id"]
    assert float(props["best_val_acc"]) == pytest.approx(train["best_val_acc"])
    assert props["max_length"] == str(MAX_LENGTH) and props["truncation_side"] == "right"


def test_written_graph_scores_test_rows_like_torch(project: Path, lstm_report: dict) -> None:
    from sentiment_rnn.model import load_model
    from sentiment_rnn.tokenize import load_encoded

    model, _ = load_model(project / "models/lstm/model.pt")
    test = load_encoded(project / "data/tokens/test.npz")
    session = ex.ort_session((project / "models/lstm.onnx").read_bytes())
    batch = ex.ParityBatch(test.ids.astype(np.int64), test.lengths.astype(np.int64), "test")
    prob = session.run(["probability"], batch.feed())[0]
    np.testing.assert_allclose(prob, ex.torch_outputs(model, batch)[0], atol=1e-5)


def test_export_registers_the_champion_in_the_training_run(
    project: Path, lstm_report: dict
) -> None:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    name = lstm_report["registered_model"]
    assert name == "imdb-test-lstm"
    version = client.get_model_version(name, str(lstm_report["model_version"]))
    run_id = read_json(project / "models/lstm/mlflow_run.json")["run_id"]
    assert version.run_id == run_id
    assert client.get_model_version_by_alias(name, "champion").version == version.version
    metrics = client.get_run(run_id).data.metrics
    assert metrics["export/onnx_bytes"] == lstm_report["onnx_bytes"]
    loaded = mlflow.onnx.load_model(f"models:/{name}@champion")
    assert {p.key: p.value for p in loaded.metadata_props}["mlflow_run_id"] == run_id
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion"))
    tokenizers = list(folder.rglob("*tokenizer.json"))  # logged with the model: self-contained
    assert [t.name for t in tokenizers] == ["lstm.tokenizer.json"]
    assert tokenizers[0].read_bytes() == (project / "data/tokens/tokenizer.json").read_bytes()


def test_export_refuses_mismatched_settings_and_unknown_arch(project: Path) -> None:
    with pytest.raises(UserError, match="unknown arch"):
        export("cnn")
    with pytest.raises(UserError, match="tokenize.max_length"):
        export("gru", max_length=MAX_LENGTH + 1)
    with pytest.raises(UserError, match="run the train stage"):
        export("rnn")  # not trained in this project
    assert not (project / "models/gru.onnx").exists()


def test_export_refuses_a_model_trained_on_another_tokenizer(project: Path) -> None:
    tokenizer = project / "data/tokens/tokenizer.json"
    original = tokenizer.read_bytes()
    tokenizer.write_bytes(original + b" ")
    try:
        with pytest.raises(UserError, match="another tokenizer"):
            export("gru")
    finally:
        tokenizer.write_bytes(original)
    assert not (project / "models/gru.onnx").exists()
