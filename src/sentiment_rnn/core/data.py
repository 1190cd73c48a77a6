"""Batches for training and evaluation: length-bucketed, trimmed to each batch's longest review."""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sentiment_rnn.core.tokenizer import Encoded


@dataclass
class Batch:
    token_ids: Tensor  # (B, T_batch) int64
    lengths: Tensor  # (B,) int64
    labels: Tensor  # (B,) float32

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())


class TokenDataset:
    """A tokenized split held as tensors; `batch(idx)` trims padding to the batch's maximum."""

    def __init__(self, enc: Encoded) -> None:
        self.ids = torch.from_numpy(np.ascontiguousarray(enc.ids))
        self.lengths = torch.from_numpy(enc.lengths.astype(np.int64))
        self.labels = torch.from_numpy(enc.labels.astype(np.float32))
        self.lengths_np = enc.lengths.astype(np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, idx: np.ndarray, device: torch.device) -> Batch:
        index = torch.from_numpy(idx)
        lengths = self.lengths[index]
        steps = int(lengths.max())
        ids = self.ids[index, :steps].long()
        return Batch(
            ids.to(device, non_blocking=True), lengths.to(device), self.labels[index].to(device)
        )


def bucketed_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool_batches: int = 50
) -> list[np.ndarray]:
    """Shuffle, sort by length within pools of `pool_batches` batches, then shuffle the batches.

    Each batch holds reviews of similar length (little padding) while epochs stay random.
    """
    order = rng.permutation(len(lengths))
    pool = batch_size * pool_batches
    batches: list[np.ndarray] = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Deterministic batches in length order, for evaluation (results do not depend on order)."""
    order = np.argsort(lengths, kind="stable")
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]
