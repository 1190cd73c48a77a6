"""Model tier: exact on variable-length batches, textbook cells equal torch's, save/load."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sentiment_rnn.core.cells import ElmanCell, GRUCell, LSTMCell
from sentiment_rnn.core.model import (
    ModelConfig,
    SentimentRNN,
    TrainedModelInfo,
    load_model,
    predict_proba,
    reverse_within_length,
    save_model,
)
from sentiment_rnn.errors import UserError

VOCAB = 40


def _model(seed: int = 0, **overrides) -> SentimentRNN:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=VOCAB, embed_dim=6, hidden_size=5, dropout=0.0)
    return SentimentRNN(ModelConfig(**(cfg | overrides))).eval()


def _padded(rows: list[list[int]], extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    steps = max(len(r) for r in rows) + extra
    ids = torch.zeros(len(rows), steps, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, torch.tensor([len(r) for r in rows])


@settings(max_examples=25, deadline=None)
@given(
    arch=st.sampled_from(["rnn", "lstm", "gru"]),
    pooling=st.sampled_from(["last", "mean", "max", "meanmax"]),
    bidirectional=st.booleans(),
    num_layers=st.integers(1, 2),
    rows=st.lists(
        st.lists(st.integers(2, VOCAB - 1), min_size=1, max_size=12), min_size=1, max_size=6
    ),
    extra=st.integers(0, 5),
    garbage=st.integers(1, VOCAB - 1),
)
def test_logit_ignores_batch_and_padding(
    arch, pooling, bidirectional, num_layers, rows, extra, garbage
) -> None:
    model = _model(arch=arch, pooling=pooling, bidirectional=bidirectional, num_layers=num_layers)
    ids, lengths = _padded(rows, extra)
    # Padding positions hold arbitrary ids: nothing past a review's length may reach its logit.
    ids[torch.arange(ids.shape[1])[None] >= lengths[:, None]] = garbage
    with torch.no_grad():
        batched = model(ids, lengths)
        alone = torch.stack([model(*_padded([r]))[0] for r in rows])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_reverse_within_length_leaves_padding() -> None:
    index = reverse_within_length(torch.tensor([3, 1, 5]), 5)
    assert index.tolist() == [[2, 1, 0, 3, 4], [0, 1, 2, 3, 4], [4, 3, 2, 1, 0]]


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(ElmanCell, nn.RNNCell), (LSTMCell, nn.LSTMCell), (GRUCell, nn.GRUCell)],
)
def test_textbook_cells_equal_torch_cells(ours, theirs) -> None:
    torch.manual_seed(0)
    reference = theirs(7, 5)
    cell = ours(7, 5).copy_from(reference)
    x = torch.randn(4, 7)
    state = cell.init_state(4, x)
    state = (
        tuple(torch.randn_like(s) for s in state)
        if isinstance(state, tuple)
        else torch.randn_like(state)
    )
    for _ in range(3):  # a few steps, feeding the state back
        expected = reference(x, state)
        state = cell(x, state)
        if isinstance(expected, tuple):
            for e, s in zip(expected, state, strict=True):
                torch.testing.assert_close(s, e, atol=1e-6, rtol=1e-5)
        else:
            torch.testing.assert_close(state, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_reference_cells_train_the_same_model(arch: str) -> None:
    """The classifier built on textbook cells computes what the fused layers compute."""
    fused = _model(arch=arch, pooling="meanmax")
    reference = _model(arch=arch, pooling="meanmax", cell="reference")
    state = fused.state_dict()
    with torch.no_grad():
        reference.embedding.weight.copy_(fused.embedding.weight)
        reference.head.load_state_dict(fused.head.state_dict())
        for direction, layer in enumerate(reference.layers[0]):
            torch_cell = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}[arch](6, 5)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(torch_cell, name).copy_(state[f"layers.0.{direction}.{name}_l0"])
            layer.cell.copy_from(torch_cell)
    ids, lengths = _padded([[3, 4, 5, 6], [7, 8], [9]])
    with torch.no_grad():
        torch.testing.assert_close(reference(ids, lengths), fused(ids, lengths), atol=1e-5, rtol=0)


def test_save_load_round_trip(tmp_path) -> None:
    model = _model(arch="gru", num_layers=2)
    info = TrainedModelInfo(0.5, 1, "raw", "ab" * 32, "run-id")
    save_model(model, tmp_path / "m.pt", info)
    loaded, loaded_info = load_model(tmp_path / "m.pt")
    ids, lengths = _padded([[3, 4, 5], [6]])
    torch.testing.assert_close(
        predict_proba(loaded, ids, lengths), predict_proba(model, ids, lengths)
    )
    assert loaded_info == info and loaded.cfg == model.cfg


@pytest.mark.parametrize("bad", [{"arch": "transformer"}, {"pooling": "sum"}, {"dropout": 1.5}])
def test_bad_config_is_a_user_error(bad: dict) -> None:
    with pytest.raises(UserError):
        ModelConfig(**bad)
