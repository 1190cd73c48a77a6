"""Model tier: training learns, is deterministic, resumes exactly after a kill, stops on NaN;
adversarial training on the embeddings."""

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from sentiment_rnn.core.data import TokenDataset
from sentiment_rnn.core.model import ModelConfig, SentimentRNN, load_model, set_forget_gate_bias
from sentiment_rnn.core.tokenizer import load_encoded
from sentiment_rnn.core.training import (
    TrainConfig,
    TrainingDiverged,
    adversarial_perturbation,
    evaluate_loss_acc,
    fit,
    make_optimizer,
)
from sentiment_rnn.errors import UserError
from sentiment_rnn.params import validate
from sentiment_rnn.stages import train as train_stage

CFG = TrainConfig(epochs=3, batch_size=16, lr=0.01, patience=5, seed=0, device="cpu")


def _data(project: Path) -> tuple[TokenDataset, TokenDataset]:
    tokens = project / "data/tokens"
    return TokenDataset(load_encoded(tokens / "train.npz")), TokenDataset(
        load_encoded(tokens / "val.npz")
    )


def _model(arch: str = "gru") -> SentimentRNN:
    torch.manual_seed(0)
    return SentimentRNN(ModelConfig(arch=arch, vocab_size=200, embed_dim=16, hidden_size=16))


class Killed(Exception):
    pass


def test_training_is_deterministic(tokenized_project: Path) -> None:
    train, val = _data(tokenized_project)
    a, b = _model(), _model()
    ra, rb = fit(a, train, val, CFG), fit(b, train, val, CFG)
    assert [asdict(h) | {"seconds": 0, "tokens_per_second": 0} for h in ra.history] == [
        asdict(h) | {"seconds": 0, "tokens_per_second": 0} for h in rb.history
    ]
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], atol=0, rtol=0)


@pytest.mark.parametrize("ema_decay", [0.0, 0.9], ids=["raw", "weight-average"])
def test_resume_after_kill_matches_uninterrupted_run(
    tokenized_project: Path, tmp_path: Path, ema_decay: float
) -> None:
    train, val = _data(tokenized_project)
    cfg = replace(CFG, ema_decay=ema_decay)
    full = _model()
    expected = fit(full, train, val, cfg)

    def kill_after_first_epoch(stats) -> None:
        if stats.epoch == 1:
            raise Killed

    checkpoint = tmp_path / "ckpt.pt"
    with pytest.raises(Killed):
        fit(_model(), train, val, cfg, checkpoint, kill_after_first_epoch)
    resumed_model = _model(arch="gru")
    torch.nn.init.normal_(resumed_model.head.weight)  # the checkpoint, not the init, must win
    resumed = fit(resumed_model, train, val, cfg, checkpoint)
    assert resumed.resumed_from_epoch == 2
    assert [(h.val_acc, h.ema_val_acc) for h in resumed.history] == [
        (h.val_acc, h.ema_val_acc) for h in expected.history
    ]
    assert resumed.best_epoch == expected.best_epoch
    assert resumed.best_weights == expected.best_weights
    for k, v in full.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[k], v, atol=0, rtol=0)


def test_weight_average_competes_without_changing_the_raw_run(tokenized_project: Path) -> None:
    """With ema_decay, the raw weights follow exactly the run without it; the weight average is
    scored beside them each epoch, and the kept model is the best of both on validation."""
    train, val = _data(tokenized_project)
    plain = fit(_model(), train, val, CFG)
    model = _model()
    averaged = fit(model, train, val, replace(CFG, ema_decay=0.9))
    assert [h.val_acc for h in averaged.history] == [h.val_acc for h in plain.history]
    assert all(h.ema_val_acc is not None for h in averaged.history)
    assert [h.ema_val_acc for h in averaged.history] != [h.val_acc for h in averaged.history]
    candidates = [
        (acc, name)
        for h in averaged.history
        for acc, name in ((h.val_acc, "raw"), (h.ema_val_acc, "ema"))
    ]
    assert averaged.best_val_acc == max(acc for acc, _ in candidates)
    assert (averaged.best_val_acc, averaged.best_weights) in candidates
    _, kept_acc = evaluate_loss_acc(model, val, CFG.batch_size, torch.device("cpu"))
    assert kept_acc == averaged.best_val_acc
    assert plain.history[0].ema_val_acc is None and "val_ema/acc" not in (
        plain.history[0].as_metrics()
    )


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_ema_decay_out_of_range_is_refused(decay: float) -> None:
    with pytest.raises(UserError, match="ema_decay must be in"):
        TrainConfig(ema_decay=decay)


@pytest.mark.parametrize("cell", ["fused", "reference"])
def test_forget_gate_bias_sets_only_the_forget_gates(cell: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="lstm", vocab_size=50, embed_dim=8, hidden_size=6, num_layers=2, cell=cell
    )
    model = SentimentRNN(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert set_forget_gate_bias(model, 1.0) == 4  # 2 layers x 2 directions
    h, changed = cfg.hidden_size, 0
    for name, value in model.state_dict().items():
        if "bias" not in name or name.startswith("head"):
            torch.testing.assert_close(value, before[name], atol=0, rtol=0)
            continue
        gates = value.view(4, h)  # input, forget, candidate, output
        keep = [0, 2, 3]
        torch.testing.assert_close(gates[keep], before[name].view(4, h)[keep], atol=0, rtol=0)
        changed += 1
    assert changed == (8 if cell == "fused" else 4)
    # what the gate sees is the sum of its biases: exactly the value asked for
    for directions in model.layers:
        for layer in directions:
            if cell == "fused":
                total = layer.bias_ih_l0[h : 2 * h] + layer.bias_hh_l0[h : 2 * h]
            else:
                total = layer.cell.linear.bias[h : 2 * h]
            torch.testing.assert_close(total, torch.ones(h))


@pytest.mark.parametrize("arch", ["rnn", "gru"])
def test_forget_gate_bias_on_a_model_without_one_is_refused(arch: str) -> None:
    with pytest.raises(UserError, match="LSTMs only"):
        set_forget_gate_bias(_model(arch), 1.0)


def test_checkpoint_of_another_configuration_is_ignored(
    tokenized_project: Path, tmp_path: Path
) -> None:
    train, val = _data(tokenized_project)
    checkpoint = tmp_path / "ckpt.pt"
    fit(_model(), train, val, replace(CFG, epochs=1), checkpoint)
    result = fit(_model(), train, val, replace(CFG, epochs=1, lr=0.02), checkpoint)
    assert result.resumed_from_epoch is None


def test_training_learns_the_synthetic_cues(tokenized_project: Path) -> None:
    train, val = _data(tokenized_project)
    result = fit(_model("lstm"), train, val, replace(CFG, epochs=6, lr=0.02))
    assert result.best_val_acc >= 0.85
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_nan_loss_stops_with_a_clear_error(tokenized_project: Path) -> None:
    train, val = _data(tokenized_project)
    model = _model()
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="diverged.*lower train.lr"):
        fit(model, train, val, replace(CFG, epochs=1))


def test_unknown_train_option() -> None:
    section = asdict(CFG) | {"learning_rate": 0.1}
    with pytest.raises(UserError, match="unknown key 'train.lstm.learning_rate'"):
        validate(TrainConfig, section, "train.lstm", "train@lstm")


def _stage_project(tokenized_project: Path, tmp_path: Path, arch: str, **changes: object) -> dict:
    """A writable copy of the tiny project as the working directory; its params with
    `train.<arch>` changed."""
    project = tmp_path / "p"
    shutil.copytree(tokenized_project, project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"][arch] |= changes
    return params


def test_stage_logs_one_run_to_mlflow(
    tokenized_project: Path, tmp_path: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = _stage_project(tokenized_project, tmp_path, "rnn", epochs=1)
    project = tmp_path / "p"
    monkeypatch.chdir(project)
    train_stage.run("rnn", params)
    run_id = load_model(project / "models/rnn/model.pt")[1].mlflow_run_id
    mlflow.set_tracking_uri(mlflow_store)
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.arch"] == "rnn" and run.data.params["train.epochs"] == "1"
    assert {"train/loss", "val/acc", "val_ema/acc", "best_val_acc", "tokens_per_second"} <= set(
        run.data.metrics
    )
    history = mlflow.tracking.MlflowClient().get_metric_history(run_id, "val/acc")
    assert [m.step for m in history] == [0]
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run_id)}
    assert {"plots", "model", "model_config.json"} <= artifacts
    assert run.data.tags["arch"] == "rnn" and run.data.tags["device"] == "cpu"
    metrics = json.loads((project / "reports/metrics/train-rnn.json").read_text())
    assert metrics["best_weights"] in {"raw", "ema"}
    assert (
        metrics["epochs_run"] == 1 and (project / "reports/plots/train-rnn.png").stat().st_size > 0
    )
    assert not (project / "checkpoints/rnn.pt").exists()


def test_stage_starts_from_the_pretrained_word_vectors(
    tokenized_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `pretrained_embeddings`, the embedding layer starts as the embeddings stage's
    vectors: with its lr scale at 0 it ends there too, while the rest of the model trains."""
    params = _stage_project(tokenized_project, tmp_path, "lstm", epochs=1, embedding_lr_scale=0.0)
    project = tmp_path / "p"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(project)
    train_stage.run("lstm", params)
    model, _ = load_model(project / "models/lstm/model.pt")
    vectors = np.load(project / "data/embeddings/vectors.npy")
    np.testing.assert_allclose(model.embedding.weight.detach().numpy(), vectors, atol=1e-6)


def test_embedding_lr_scale_sets_the_embedding_group() -> None:
    model = _model("lstm")
    optimizer, _ = make_optimizer(model, TrainConfig(lr=0.01, embedding_lr_scale=0.1), 10)
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert groups[id(model.embedding.weight)]["initial_lr"] == pytest.approx(0.001)
    assert groups[id(model.head.weight)]["initial_lr"] == pytest.approx(0.01)
    with pytest.raises(UserError, match="embedding_lr_scale"):
        TrainConfig(embedding_lr_scale=-1)


def test_vectors_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(UserError, match="embed_dim"):
        _model("gru").load_embeddings(torch.zeros(7, 3))


# Adversarial training on the embeddings (train.<arch>.adversarial_epsilon)


def _loss(model: SentimentRNN, embedded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    labels = torch.tensor([1.0, 0.0, 1.0])
    return nn.functional.binary_cross_entropy_with_logits(model.classify(embedded, lengths), labels)


def test_perturbation_has_the_asked_size_and_spares_padding() -> None:
    torch.manual_seed(0)
    grad, embedded = torch.randn(3, 7, 4), torch.randn(3, 7, 4)
    lengths = torch.tensor([7, 4, 1])
    step = adversarial_perturbation(grad, embedded, lengths, epsilon=0.05)
    for row, length in enumerate(lengths.tolist()):
        assert torch.all(step[row, length:] == 0)
        own = embedded[row, :length].norm()
        torch.testing.assert_close(step[row].norm(), 0.05 * own)
        cosine = nn.functional.cosine_similarity(
            step[row, :length].flatten(), grad[row, :length].flatten(), dim=0
        )
        torch.testing.assert_close(cosine, torch.tensor(1.0))


def test_perturbation_raises_the_loss_more_than_a_random_step_of_the_same_size() -> None:
    model = _model().eval()
    ids = torch.randint(1, 200, (3, 9))
    lengths = torch.tensor([9, 6, 3])
    embedded = model.embedding(ids).detach().requires_grad_()
    clean = _loss(model, embedded, lengths)
    (grad,) = torch.autograd.grad(clean, embedded)
    step = adversarial_perturbation(grad, embedded.detach(), lengths, epsilon=0.02)
    torch.manual_seed(1)
    noise = adversarial_perturbation(
        torch.randn_like(grad), embedded.detach(), lengths, epsilon=0.02
    )
    with torch.no_grad():
        adversarial = _loss(model, embedded + step, lengths)
        random = _loss(model, embedded + noise, lengths)
    assert adversarial > clean
    assert adversarial - clean > abs(random - clean)


def test_adversarial_training_learns_and_is_deterministic(tokenized_project: Path) -> None:
    train, val = _data(tokenized_project)
    cfg = replace(CFG, epochs=6, lr=0.02, adversarial_epsilon=0.05)
    first, second = _model("lstm"), _model("lstm")
    a, b = fit(first, train, val, cfg), fit(second, train, val, cfg)
    assert a.best_val_acc >= 0.85
    assert [h.train_loss for h in a.history] == [h.train_loss for h in b.history]
    plain = fit(_model("lstm"), train, val, replace(cfg, adversarial_epsilon=0.0))
    assert [h.train_loss for h in a.history] != [h.train_loss for h in plain.history]


def test_adversarial_training_with_a_frozen_embedding_layer(tokenized_project: Path) -> None:
    """Gradual unfreezing trains the head alone in epoch 0: the perturbation still needs the
    gradient with respect to the (frozen) embeddings."""
    train, val = _data(tokenized_project)
    model = _model()
    before = model.embedding.weight.detach().clone()
    cfg = replace(CFG, epochs=1, adversarial_epsilon=0.05, gradual_unfreezing=True)
    result = fit(model, train, val, cfg)
    assert len(result.history) == 1
    torch.testing.assert_close(model.embedding.weight, before, atol=0, rtol=0)


def test_negative_epsilon_is_refused() -> None:
    with pytest.raises(UserError, match="adversarial_epsilon must be >= 0"):
        TrainConfig(adversarial_epsilon=-0.1)
