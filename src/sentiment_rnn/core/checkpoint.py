"""Checkpoints for exact resume: everything `fit` needs to continue after a completed epoch."""

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sentiment_rnn.files import atomic_path

log = logging.getLogger(__name__)


def fingerprint(*parts: Any) -> str:
    """A stable hash of configs and data, so a checkpoint is resumed only by the same job."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class TrainState:
    """The training loop after epoch `epoch`: weights, optimiser, schedule, history, best."""

    fingerprint: str
    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    ema: dict[str, Any] | None
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_acc: float
    best_state: dict[str, torch.Tensor] | None
    best_weights: str
    bad_epochs: int
    seconds: float


def save_checkpoint(path: Path, state: TrainState) -> None:
    """Write `state` atomically: a kill mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(dict(vars(state)), tmp)  # shallow: asdict would deep-copy every tensor


def load_fingerprinted(path: Path | None, key: str) -> dict[str, Any] | None:
    """What was saved at `path` if it belongs to the job `key`, else None."""
    if path is None or not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("fingerprint") != key:
        log.info("checkpoint %s belongs to another configuration: starting afresh", path)
        return None
    return saved


def load_checkpoint(path: Path | None, key: str) -> TrainState | None:
    """The state saved at `path` if it belongs to the job `key`, else None."""
    saved = load_fingerprinted(path, key)
    return None if saved is None else TrainState(**saved)
