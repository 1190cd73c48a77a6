"""The evaluate stage: metric functions against hand-computed cases, and the stage end to end."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from sentiment_rnn.core import metrics as ev
from sentiment_rnn.core.data import TokenDataset
from sentiment_rnn.core.model import ModelConfig, SentimentRNN, load_model
from sentiment_rnn.core.tokenizer import Encoded
from sentiment_rnn.errors import UserError
from sentiment_rnn.files import read_json
from sentiment_rnn.stages import evaluate as stage
from tests.conftest import tiny_params, trained_copy

EXPERIMENT = "test-experiment"  # tiny_params' mlflow.experiment

# Six reviews: TP at 0 and 4, FN at 1, TN at 2 and 5, FP at 3.
LABELS = np.array([1, 1, 0, 0, 1, 0])
PROBS = np.array([0.9, 0.4, 0.2, 0.6, 0.7, 0.1])


def test_classification_metrics_match_hand_computation() -> None:
    m = ev.classification_metrics(LABELS, PROBS)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)  # 2 TP / (2 TP + 1 FP)
    assert m["recall"] == pytest.approx(2 / 3)  # 2 TP / (2 TP + 1 FN)
    assert m["f1"] == pytest.approx(2 / 3)
    # ROC-AUC = share of (positive, negative) pairs ranked correctly: 3 + 2 + 3 of 9.
    assert m["roc_auc"] == pytest.approx(8 / 9)
    p_true = [0.9, 0.4, 0.8, 0.4, 0.7, 0.9]  # probability given to each true label
    assert m["log_loss"] == pytest.approx(-np.mean(np.log(p_true)))


def test_threshold_is_strict_and_confusion_counts() -> None:
    labels = np.array([0, 1, 1, 0])
    probs = np.array([0.5, 0.5, 0.51, 0.49])  # exactly 0.5 is called negative
    preds = (probs > ev.THRESHOLD).astype(np.int64)
    assert ev.confusion(labels, preds) == {"tn": 2, "fp": 0, "fn": 1, "tp": 1}
    assert ev.classification_metrics(labels, probs)["accuracy"] == pytest.approx(3 / 4)


def test_single_class_split_is_refused() -> None:
    with pytest.raises(UserError, match="single class"):
        ev.classification_metrics(np.ones(4, dtype=int), np.full(4, 0.7))


def test_length_terciles_and_accuracy_by_length() -> None:
    full = np.arange(1, 10)  # terciles at 3.67 and 6.33
    edges = ev.length_edges(full)
    assert edges == pytest.approx((11 / 3, 19 / 3))
    assert ev.length_groups(full, edges).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0, 1])
    preds = np.array([1, 1, 0, 0, 0, 0, 0, 1, 1])  # short 2/3, medium 3/3, long 1/3
    by = ev.accuracy_by_length(labels, preds, full, edges)
    assert by["short"] == {"accuracy": pytest.approx(2 / 3), "rows": 3}
    assert by["medium"] == {"accuracy": 1.0, "rows": 3}
    assert by["long"] == {"accuracy": pytest.approx(1 / 3), "rows": 3}


def test_length_group_edges_are_inclusive_and_empty_groups_report_zero() -> None:
    full = np.array([5, 5, 5, 5])  # both cuts at 5: everything is "short"
    by = ev.accuracy_by_length(np.ones(4, int), np.ones(4, int), full, ev.length_edges(full))
    assert by["short"]["rows"] == 4
    assert by["medium"] == {"accuracy": 0.0, "rows": 0}


def test_curves_run_corner_to_corner_and_are_thinned() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 5000)
    probs = np.clip(labels * 0.3 + rng.random(5000) * 0.7, 0, 1)
    roc = ev.roc_points(labels, probs)
    assert roc[0, :2].tolist() == [0.0, 0.0] and roc[-1, :2].tolist() == [1.0, 1.0]
    assert len(roc) <= ev.MAX_CURVE_POINTS
    pr = ev.pr_points(labels, probs)
    assert len(pr) <= ev.MAX_CURVE_POINTS
    assert pr[0, 0] == pytest.approx(1.0) and pr[-1, :2].tolist() == [0.0, 1.0]


def test_thin_keeps_both_ends() -> None:
    points = np.arange(1000).reshape(-1, 1)
    kept = ev.thin(points, 10)
    assert len(kept) == 10 and kept[0, 0] == 0 and kept[-1, 0] == 999
    assert ev.thin(points[:5], 10).tolist() == points[:5].tolist()


def test_predictions_do_not_depend_on_batching() -> None:
    torch.manual_seed(0)
    model = SentimentRNN(ModelConfig(arch="gru", vocab_size=30, embed_dim=8, hidden_size=8))
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 13, 40)
    ids = rng.integers(2, 30, (40, 12)).astype(np.int32)
    ids[np.arange(12)[None, :] >= lengths[:, None]] = 0
    data = TokenDataset(Encoded(ids, lengths, lengths, rng.integers(0, 2, 40)))
    one = ev.predict_split(model, data, 1, torch.device("cpu"))
    many = ev.predict_split(model, data, 16, torch.device("cpu"))
    np.testing.assert_allclose(one.probs, many.probs, atol=1e-6)
    # and row i's probability is row i's, not its position in the length-sorted order
    row = data.batch(np.array([7]), torch.device("cpu"))
    alone = torch.sigmoid(model(row.token_ids, row.lengths)).item()
    assert one.probs[7] == pytest.approx(alone, abs=1e-6)
    assert many.reviews_per_second > 0


@pytest.fixture(scope="module")
def project(tokenized_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("evaluate") / "p"
    with trained_copy(tokenized_project, root, ("gru", "lstm"), EXPERIMENT) as project_root:
        yield project_root


CFG = stage.EvaluateConfig(batch_size=16, device="cpu")


@pytest.fixture(scope="module")
def gru_report(project: Path) -> dict:
    return stage.evaluate("gru", CFG, EXPERIMENT)


def test_evaluate_writes_metrics_plots_and_image(project: Path, gru_report: dict) -> None:
    saved = read_json(project / "reports/metrics/eval-gru.json")
    assert saved == gru_report
    c, rows = saved["confusion"], saved["rows"]
    assert rows == 120 and c["tn"] + c["fp"] + c["fn"] + c["tp"] == rows
    assert saved["accuracy"] == pytest.approx((c["tn"] + c["tp"]) / rows)
    assert sum(g["rows"] for g in saved["by_length"].values()) == rows
    assert saved["throughput"]["reviews_per_second"] > 0
    assert (
        saved["best_val_acc"]
        == read_json(project / "reports/metrics/train-gru.json")["best_val_acc"]
    )
    plots = project / "reports/plots"
    confusion = (plots / "confusion-gru.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted" and len(confusion) == rows + 1
    predicted_pos = sum(line.endswith(",positive") for line in confusion[1:])
    assert predicted_pos == c["tp"] + c["fp"]
    assert (plots / "roc-gru.csv").read_text().startswith("fpr,tpr,threshold\n")
    assert (plots / "pr-gru.csv").read_text().startswith("recall,precision,threshold\n")
    assert (plots / "eval-gru.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_logs_test_metrics_to_the_training_run(project: Path, gru_report: dict) -> None:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(load_model(project / "models/gru/model.pt")[1].mlflow_run_id)
    metrics = run.data.metrics
    assert metrics["test/accuracy"] == pytest.approx(gru_report["accuracy"])
    assert metrics["test/roc_auc"] == pytest.approx(gru_report["roc_auc"])
    assert metrics["test/confusion/tp"] == gru_report["confusion"]["tp"]
    assert metrics["test/by_length/long/accuracy"] == pytest.approx(
        gru_report["by_length"]["long"]["accuracy"]
    )
    assert "best_val_acc" in metrics  # the training run itself, not a new one
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/eval-gru.png" in logged and "evaluation/eval-gru.json" in logged


def test_evaluate_refuses_a_missing_model(project: Path) -> None:
    with pytest.raises(UserError, match="run the train stage"):
        stage.evaluate("rnn", CFG, EXPERIMENT)  # not trained in this project


def test_evaluate_starts_a_new_run_when_the_training_run_is_not_in_the_store(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    other = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    report = stage.evaluate("gru", CFG, EXPERIMENT)
    runs = mlflow.MlflowClient(other).search_runs(
        [mlflow.MlflowClient(other).get_experiment_by_name(EXPERIMENT).experiment_id]
    )
    assert len(runs) == 1 and runs[0].data.metrics["test/accuracy"] == report["accuracy"]
    assert (
        runs[0].data.tags["trained_in_run"]
        == load_model(project / "models/gru/model.pt")[1].mlflow_run_id
    )


def test_stage_refuses_a_wrong_evaluate_section(project: Path) -> None:
    params = tiny_params("unused") | {"evaluate": {"batch_size": "16", "device": "cpu"}}
    with pytest.raises(UserError, match=r"'evaluate.batch_size'.*valid integer.*evaluate@gru"):
        stage.run("gru", params)


def test_evaluate_refuses_a_model_trained_on_another_tokenizer(project: Path) -> None:
    tokenizer = project / "data/tokens/tokenizer.json"
    original = tokenizer.read_bytes()
    tokenizer.write_bytes(original + b" ")
    try:
        with pytest.raises(UserError, match="is not the one models/lstm was trained with"):
            stage.evaluate("lstm", CFG, EXPERIMENT)
    finally:
        tokenizer.write_bytes(original)
