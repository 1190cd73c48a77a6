"""Language-model batches: reviews joined into one token stream, cut into parallel rows.

Truncated backpropagation through time: the stream is split into `rows` contiguous rows that
are read `bptt` tokens at a time, the recurrent state carried from one chunk of a row to the
next. Rows overlap by one token, so every token of the stream but the first is a target
exactly once; the end is padded (padding is never a target).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sentiment_rnn.core.tokenizer import PAD_ID
from sentiment_rnn.errors import UserError
from sentiment_rnn.files import write_npz


@dataclass(frozen=True)
class LMCorpus:
    """Framed reviews as one flat int32 array and the offsets where each begins (N + 1)."""

    tokens: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def from_docs(cls, docs: list[np.ndarray]) -> "LMCorpus":
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        tokens = np.concatenate(docs).astype(np.int32) if docs else np.empty(0, np.int32)
        return cls(tokens, offsets)

    def docs(self) -> list[np.ndarray]:
        return [self.tokens[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]

    def save(self, path: Path) -> None:
        write_npz(path, {"tokens": self.tokens, "offsets": self.offsets})

    @classmethod
    def load(cls, path: Path) -> "LMCorpus":
        if not path.is_file():
            raise UserError(f"{path} not found: run the lm_corpus stage (dvc repro lm_corpus)")
        with np.load(path) as z:
            return cls(z["tokens"], z["offsets"])


def join(docs: list[np.ndarray], order: np.ndarray | None = None) -> np.ndarray:
    """The framed reviews, in `order` (default: as given), as one int64 stream."""
    if not docs:
        return np.empty(0, dtype=np.int64)
    picked = docs if order is None else [docs[i] for i in order]
    return np.concatenate(picked).astype(np.int64)


def rows_of(stream: np.ndarray, rows: int) -> np.ndarray:
    """(rows, L + 1): row r holds stream[r*L : r*L + L + 1], padded at the end."""
    length = max(1, -(-(len(stream) - 1) // rows))  # ceil((N - 1) / rows)
    padded = np.full(rows * length + 1, PAD_ID, dtype=np.int64)
    padded[: len(stream)] = stream
    starts = np.arange(rows) * length
    return padded[starts[:, None] + np.arange(length + 1)[None, :]]


@dataclass(frozen=True)
class Chunk:
    """Inputs and next-token targets of `bptt` steps of every row."""

    index: int
    inputs: np.ndarray  # (rows, T) int64
    targets: np.ndarray  # (rows, T) int64, PAD_ID where nothing is to be predicted


def chunks(data: np.ndarray, bptt: int) -> Iterator[Chunk]:
    """The chunks of `rows_of(...)` in reading order."""
    steps = data.shape[1] - 1
    for index, start in enumerate(range(0, steps, bptt)):
        end = min(start + bptt, steps)
        yield Chunk(index, data[:, start:end], data[:, start + 1 : end + 1])


def n_chunks(data: np.ndarray, bptt: int) -> int:
    return -(-(data.shape[1] - 1) // bptt)


def epoch_rows(docs: list[np.ndarray], rows: int, seed: int, backward: bool) -> np.ndarray:
    """One epoch's rows: the reviews in a seeded order, read forwards or each reversed."""
    order = np.random.default_rng(seed).permutation(len(docs))
    stream = join(docs, order)
    return rows_of(stream[::-1].copy() if backward else stream, rows)
