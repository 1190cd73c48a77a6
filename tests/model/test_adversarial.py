"""Model tier: adversarial training on the embeddings (train.<arch>.adversarial_epsilon)."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from sentiment_rnn.core.data import TokenDataset
from sentiment_rnn.core.model import ModelConfig, SentimentRNN
from sentiment_rnn.core.tokenizer import load_encoded
from sentiment_rnn.core.training import TrainConfig, adversarial_perturbation, fit
from sentiment_rnn.errors import UserError

CFG = TrainConfig(epochs=3, batch_size=16, lr=0.01, patience=5, seed=0, device="cpu")


def _data(project: Path) -> tuple[TokenDataset, TokenDataset]:
    tokens = project / "data/tokens"
    return TokenDataset(load_encoded(tokens / "train.npz")), TokenDataset(
        load_encoded(tokens / "val.npz")
    )


def _model(arch: str = "gru") -> SentimentRNN:
    torch.manual_seed(0)
    return SentimentRNN(ModelConfig(arch=arch, vocab_size=200, embed_dim=16, hidden_size=16))


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
