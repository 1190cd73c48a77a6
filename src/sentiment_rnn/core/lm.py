"""Recurrent language models of reviews, read forwards and backwards (a bidirectional LM).

One embedding, shared by a forward recurrent layer (predicting each next token) and a backward
one (predicting each previous token, over the text reversed), and one output layer shared by
both: the layout of the classifier's first layer (`core.model.SentimentRNN`), so a classifier
can start its embedding and each direction from the matching direction here.

Reviews are framed as `[BOS] <sentiment> tokens... [EOS]`, the sentiment token being `[POS]` or
`[NEG]` for a labelled review and `[NEUTRAL]` for an unlabelled one; generation can then be
asked for a sentiment. The output layer is an adaptive softmax (Grave et al., 2017): frequent
tokens get the full width, rare ones a narrow projection, which keeps a 20,000-token output
affordable on a CPU. It needs the classes sorted by frequency, so targets are mapped to their
frequency rank (`LMConfig.rank_of`), and log-probabilities back to token ids.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sentiment_rnn.core.cells import ReferenceLayer
from sentiment_rnn.core.model import ARCHS, CELLS, FUSED, copy_word_vectors
from sentiment_rnn.core.tokenizer import BOS_ID, EOS_ID, PAD_ID, SENTIMENT_IDS
from sentiment_rnn.errors import UserError

State = Tensor | tuple[Tensor, Tensor]  # (1, B, H), or (h, c) for an LSTM


@dataclass(frozen=True)
class LMConfig:
    """A language model's sizes; saved with its weights."""

    arch: str = "lstm"
    vocab_size: int = 20000
    embed_dim: int = 128
    hidden_size: int = 128
    dropout: float = 0.1  # on embeddings and on the recurrent outputs
    cell: str = "fused"  # "reference": the textbook cells of cells.py (slow, for teaching)
    cutoffs: tuple[int, ...] = (2000, 10000)  # adaptive softmax clusters, by frequency rank
    div_value: float = 4.0  # each cluster's width is the previous one's / div_value
    rank_of: tuple[int, ...] = field(default=(), repr=False)  # token id -> frequency rank

    def __post_init__(self) -> None:
        if self.arch not in ARCHS or self.cell not in CELLS:
            raise UserError(f"lm arch must be one of {ARCHS} and cell one of {CELLS}")
        cutoffs = list(self.cutoffs)
        if cutoffs != sorted(set(cutoffs)) or min(cutoffs, default=1) < 1:
            raise UserError(f"lm.cutoffs must be increasing and positive, got {cutoffs}")
        if cutoffs and cutoffs[-1] >= self.vocab_size:
            raise UserError(f"lm.cutoffs {cutoffs} must stay below the vocabulary size")
        if self.hidden_size // self.div_value ** len(cutoffs) < 1:
            raise UserError("lm: the last adaptive-softmax cluster would have no width: fewer "
                            "cutoffs, a smaller div_value or a larger hidden_size")  # fmt: skip
        if self.rank_of and sorted(self.rank_of) != list(range(self.vocab_size)):
            raise UserError("lm rank_of must be a permutation of the vocabulary")


def frequency_ranks(counts: np.ndarray) -> tuple[int, ...]:
    """Each token id's rank by corpus frequency (0: most frequent; ties by id, so stable)."""
    order = np.lexsort((np.arange(len(counts)), -counts))
    rank = np.empty(len(counts), dtype=np.int64)
    rank[order] = np.arange(len(counts))
    return tuple(int(r) for r in rank)


def _layer(cfg: LMConfig) -> nn.Module:
    if cfg.cell == "reference":
        return ReferenceLayer(cfg.arch, cfg.embed_dim, cfg.hidden_size)
    return FUSED[cfg.arch](cfg.embed_dim, cfg.hidden_size, batch_first=True)


class BiLM(nn.Module):
    """forward(ids (B, T), direction) -> features (B, T, H) and the final recurrent state."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=PAD_ID)
        self.directions = nn.ModuleList([_layer(cfg), _layer(cfg)])  # forward, backward
        self.dropout = nn.Dropout(cfg.dropout)
        self.output = nn.AdaptiveLogSoftmaxWithLoss(
            cfg.hidden_size, cfg.vocab_size, list(cfg.cutoffs), div_value=cfg.div_value
        )
        rank = torch.tensor(cfg.rank_of or range(cfg.vocab_size), dtype=torch.long)
        self.register_buffer("rank_of", rank, persistent=False)  # token id -> class
        self.register_buffer("id_of", torch.argsort(rank), persistent=False)  # class -> id

    def features(
        self, ids: Tensor, direction: int, state: State | None = None
    ) -> tuple[Tensor, State]:
        x = self.dropout(self.embedding(ids))  # (B, T, E)
        layer = self.directions[direction]
        out, state = layer(x) if state is None else layer(x, state)  # (B, T, H)
        return self.dropout(out), state

    def loss(self, features: Tensor, targets: Tensor) -> tuple[Tensor, int]:
        """Summed negative log-likelihood of the non-padding targets, and how many there are."""
        keep = targets.reshape(-1) != PAD_ID
        flat = features.reshape(-1, features.shape[-1])[keep]
        classes = self.rank_of[targets.reshape(-1)[keep]]
        out = self.output(flat.float(), classes)
        count = int(keep.sum())
        return out.loss * count, count

    def next_log_probs(self, features: Tensor) -> Tensor:
        """(B, H) -> (B, V) log-probabilities of the next token, indexed by token id."""
        return self.output.log_prob(features.float())[:, self.rank_of]


def build_lm(cfg: LMConfig, seed: int, vectors: np.ndarray | None = None) -> BiLM:
    """A freshly initialised language model: seeded weights (torch seeds each process at
    random), optionally pretrained word vectors in the embedding."""
    torch.manual_seed(seed)
    model = BiLM(cfg)
    if vectors is not None:
        copy_word_vectors(
            model.embedding, vectors, "set lm.<arch>.model.embed_dim to embeddings.dim"
        )
    return model


def detach(state: State) -> State:
    """The state as a constant: truncated backpropagation stops at the chunk boundary."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)  # type: ignore[return-value]
    return state.detach()


def save_lm(model: BiLM, path: Path, info: dict[str, Any]) -> None:
    """Weights, config and identity (tokenizer digest, scores) in one `weights_only` file."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    config = asdict(model.cfg) | {"cutoffs": list(model.cfg.cutoffs)}
    config["rank_of"] = list(model.cfg.rank_of)
    torch.save({"config": config, "state_dict": state, "info": info}, path)


def load_lm(path: Path, map_location: str | torch.device = "cpu") -> tuple[BiLM, dict[str, Any]]:
    """A language model saved by `save_lm`, in eval mode, with its identity."""
    if not Path(path).is_file():
        raise UserError(f"language model {path} not found: run the lm stage (dvc repro lm@<arch>)")
    blob = torch.load(path, map_location=map_location, weights_only=True)
    config = blob["config"] | {
        "cutoffs": tuple(blob["config"]["cutoffs"]),
        "rank_of": tuple(blob["config"]["rank_of"]),
    }
    model = BiLM(LMConfig(**config))
    model.load_state_dict(blob["state_dict"])
    return model.eval(), blob["info"]


def frame(ids: np.ndarray, sentiment: str) -> np.ndarray:
    """`[BOS] <sentiment> ids [EOS]`, a review as the language model reads it."""
    head = np.array([BOS_ID, SENTIMENT_IDS[sentiment]], dtype=np.int32)
    return np.concatenate([head, np.asarray(ids, dtype=np.int32), [EOS_ID]]).astype(np.int32)


@torch.no_grad()
def init_from_lm(classifier: nn.Module, lm: BiLM) -> None:
    """Start a classifier's embedding and first recurrent layer from `lm`: its forward
    direction from the forward LM, its backward direction (if any) from the backward LM."""
    cfg = classifier.cfg
    same = (cfg.arch, cfg.embed_dim, cfg.hidden_size, cfg.cell, cfg.vocab_size) == (
        lm.cfg.arch, lm.cfg.embed_dim, lm.cfg.hidden_size, lm.cfg.cell, lm.cfg.vocab_size,
    )  # fmt: skip
    if not same:
        raise UserError(
            f"the {lm.cfg.arch} language model ({lm.cfg.embed_dim}-dim embedding, "
            f"{lm.cfg.hidden_size} hidden, {lm.cfg.cell} cells, vocabulary {lm.cfg.vocab_size}) "
            f"does not fit the classifier ({cfg.arch}, {cfg.embed_dim}, {cfg.hidden_size}, "
            f"{cfg.cell}, {cfg.vocab_size}): give both the same sizes in params.yaml"
        )
    classifier.embedding.weight.copy_(lm.embedding.weight)
    for direction, layer in enumerate(classifier.layers[0]):
        layer.load_state_dict(lm.directions[direction].state_dict())


class TorchStepper:
    """The forward direction of a `BiLM`, in eval mode, one step at a time (a
    `core.generate.Stepper`)."""

    def __init__(self, model: BiLM) -> None:
        self.model = model.eval()

    def start(self, batch: int) -> Any:
        return None

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        ids = torch.from_numpy(tokens.astype(np.int64)).unsqueeze(1)  # (B, 1)
        features, state = self.model.features(ids, 0, state)
        return self.model.next_log_probs(features[:, 0]).numpy(), state
