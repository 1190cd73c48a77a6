"""The recurrent sentiment classifier: embedding -> RNN / LSTM / GRU -> pooling -> logit.

Exact on variable-length batches without packing: the forward direction runs over the padded
batch (its outputs up to each length never see padding), and the backward direction runs over
each sequence reversed *within its own length*, then is flipped back. Pooling masks padding.
So a review's logit does not depend on its batch or its padding, the fused cuDNN / CPU kernels
do the work, and the graph exports to ONNX with dynamic batch and time axes.
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from sentiment_rnn.core.cells import LSTMCell, ReferenceLayer
from sentiment_rnn.errors import UserError

ARCHS = ("rnn", "lstm", "gru")
POOLINGS = ("last", "mean", "max", "meanmax")
CELLS = ("fused", "reference")
FUSED = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass(frozen=True)
class ModelConfig:
    """Model hyperparameters; saved beside the weights so export and serving rebuild the model."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("pad_id",)  # keys params.yaml may leave out

    arch: str = "lstm"
    vocab_size: int = 20000
    embed_dim: int = 128
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.3  # on embeddings, between layers and before the head
    pooling: str = "max"
    cell: str = "fused"  # "reference": the textbook cells of cells.py (slow, for teaching)
    pad_id: int = 0

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("arch", self.arch, ARCHS),
            ("pooling", self.pooling, POOLINGS),
            ("cell", self.cell, CELLS),
        ):
            if value not in allowed:
                raise UserError(f"model.{name} must be one of {allowed}, got {value!r}")
        if min(self.vocab_size, self.embed_dim, self.hidden_size, self.num_layers) < 1:
            raise UserError(
                "model sizes (vocab_size, embed_dim, hidden_size, num_layers) must be >= 1"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"model.dropout must be in [0, 1), got {self.dropout}")

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1


def _recurrent_layer(cfg: ModelConfig, input_size: int) -> nn.Module:
    if cfg.cell == "reference":
        return ReferenceLayer(cfg.arch, input_size, cfg.hidden_size)
    return FUSED[cfg.arch](input_size, cfg.hidden_size, batch_first=True)


def reverse_within_length(lengths: Tensor, steps: int) -> Tensor:
    """Index (B, T) that reverses positions [0, length) of each row and leaves padding in place."""
    positions = torch.arange(steps, device=lengths.device).unsqueeze(0)  # (1, T)
    flipped = lengths.unsqueeze(1) - 1 - positions  # (B, T)
    return torch.where(flipped >= 0, flipped, positions)


def valid_positions(lengths: Tensor, steps: int) -> Tensor:
    """(B, T, 1) mask, True at positions [0, length) of each row and False on padding."""
    positions = torch.arange(steps, device=lengths.device).unsqueeze(0)  # (1, T)
    return (positions < lengths.unsqueeze(1)).unsqueeze(-1)


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def copy_word_vectors(embedding: nn.Embedding, vectors: Tensor | np.ndarray, fix: str) -> None:
    """Copy pretrained word vectors into `embedding`; another shape is a one-line error
    whose advice `fix` names the setting to change."""
    expected = tuple(embedding.weight.shape)
    if tuple(vectors.shape) != expected:
        raise UserError(
            f"pretrained word vectors have shape {tuple(vectors.shape)}, the model needs "
            f"{expected}: {fix}"
        )
    with torch.no_grad():
        embedding.weight.copy_(torch.as_tensor(vectors))


class SentimentRNN(nn.Module):
    """forward(token_ids (B, T) int64, lengths (B,) int64) -> logits (B,)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=cfg.pad_id)
        width = cfg.hidden_size * cfg.directions
        self.layers = nn.ModuleList(
            nn.ModuleList(
                _recurrent_layer(cfg, cfg.embed_dim if i == 0 else width)
                for _ in range(cfg.directions)
            )
            for i in range(cfg.num_layers)
        )
        self.dropout = nn.Dropout(cfg.dropout)
        pooled = width * (2 if cfg.pooling == "meanmax" else 1)
        self.head = nn.Linear(pooled, 1)

    @torch.no_grad()
    def load_embeddings(self, vectors: Tensor) -> None:
        """Start the embedding layer from pretrained word vectors (vocab, embed_dim)."""
        copy_word_vectors(
            self.embedding, vectors, "set model.embed_dim to embeddings.dim and retokenize"
        )
        self.embedding.weight[self.cfg.pad_id].zero_()

    def encode(self, embedded: Tensor, lengths: Tensor) -> Tensor:
        """Per-step features (B, T, D*H) of embedded reviews (B, T, E); positions >= length
        hold padding garbage."""
        x = self.dropout(embedded)
        reverse = reverse_within_length(lengths, embedded.shape[1])  # (B, T)
        for depth, directions in enumerate(self.layers):
            outputs = [directions[0](x)[0]]  # (B, T, H)
            if self.cfg.bidirectional:
                backward = directions[1](_gather_time(x, reverse))[0]
                outputs.append(_gather_time(backward, reverse))
            x = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
            if depth < len(self.layers) - 1:
                x = self.dropout(x)
        return x

    def pool(self, features: Tensor, lengths: Tensor) -> Tensor:
        """(B, T, F) -> (B, P), using only positions < length."""
        mask = valid_positions(lengths, features.shape[1])  # (B, T, 1)
        if self.cfg.pooling == "last":
            last = _gather_time(features, (lengths - 1).unsqueeze(1))[:, 0]  # (B, F)
            if not self.cfg.bidirectional:
                return last
            h = self.cfg.hidden_size  # the backward direction's summary sits at position 0
            return torch.cat([last[:, :h], features[:, 0, h:]], dim=-1)
        mean = (features * mask).sum(1) / lengths.unsqueeze(1).to(features.dtype)
        peak = features.masked_fill(~mask, float("-inf")).amax(1)
        if self.cfg.pooling == "mean":
            return mean
        if self.cfg.pooling == "max":
            return peak
        return torch.cat([mean, peak], dim=-1)

    def classify(self, embedded: Tensor, lengths: Tensor) -> Tensor:
        """Logits (B,) of already embedded reviews (B, T, E): the adversarial training step
        perturbs the embeddings before this."""
        pooled = self.pool(self.encode(embedded, lengths), lengths)
        return self.head(self.dropout(pooled)).squeeze(-1)

    def forward(self, token_ids: Tensor, lengths: Tensor) -> Tensor:
        return self.classify(self.embedding(token_ids), lengths)  # (B,)


@torch.inference_mode()
def predict_proba(model: SentimentRNN, token_ids: Tensor, lengths: Tensor) -> Tensor:
    """Positive-class probabilities (B,), in eval mode."""
    model.eval()
    return torch.sigmoid(model(token_ids, lengths).float())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def set_forget_gate_bias(model: SentimentRNN, value: float) -> int:
    """Set the forget-gate bias of every LSTM layer of `model` to `value`; returns how many.

    Fused `nn.LSTM` layers have two biases (input and hidden side) that add up; the forget
    slice (torch's gate order: input, forget, candidate, output) of the input-side one is set
    to `value` and of the hidden-side one to 0. The textbook `LSTMCell` has one bias.
    """
    if model.cfg.arch != "lstm":
        raise UserError(
            f"forget_gate_bias applies to LSTMs only; remove it from the {model.cfg.arch} "
            "section of params.yaml"
        )
    h = model.cfg.hidden_size
    forget = slice(h, 2 * h)
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LSTM):
                for name, bias in module.named_parameters():
                    if name.startswith("bias_ih"):
                        bias[forget] = value
                    elif name.startswith("bias_hh"):
                        bias[forget] = 0.0
                count += module.num_layers
            elif isinstance(module, LSTMCell):
                module.linear.bias[forget] = value
                count += 1
    return count


def build_model(
    cfg: ModelConfig,
    seed: int,
    forget_gate_bias: float | None = None,
    vectors: np.ndarray | None = None,
) -> SentimentRNN:
    """A freshly initialised model: seeded weights, optionally open forget gates and pretrained
    word vectors in the embedding layer."""
    torch.manual_seed(seed)
    model = SentimentRNN(cfg)
    if forget_gate_bias is not None:
        set_forget_gate_bias(model, forget_gate_bias)
    if vectors is not None:
        model.load_embeddings(torch.from_numpy(vectors))
    return model


@dataclass(frozen=True)
class TrainedModelInfo:
    """Who a trained model is: its validation score, tokenizer and MLflow training run."""

    best_val_acc: float
    best_epoch: int
    best_weights: str  # "raw" or "ema"
    tokenizer_sha256: str
    mlflow_run_id: str = ""


def save_model(model: SentimentRNN, path: str | Path, info: TrainedModelInfo) -> None:
    """Weights + config + identity in one file that loads with `weights_only=True`."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": asdict(model.cfg), "state_dict": state, "info": asdict(info)}, path)


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[SentimentRNN, TrainedModelInfo]:
    """Rebuild a model saved by `save_model`; returns it in eval mode with its identity."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} not found: run the train stage first")
    blob = torch.load(path, map_location=map_location, weights_only=True)
    model = SentimentRNN(ModelConfig(**blob["config"]))
    model.load_state_dict(blob["state_dict"])
    return model.eval(), TrainedModelInfo(**blob["info"])
