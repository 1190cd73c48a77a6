"""Training a bidirectional language model: truncated backpropagation through time, both
directions at once, held-out perplexity, checkpoints for an exact resume mid-epoch.

Needs only torch and numpy; the stage tracks it through the `on_epoch_end` callback.
"""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from sentiment_rnn.core.checkpoint import fingerprint, load_fingerprinted
from sentiment_rnn.core.device import autocast, resolve_device
from sentiment_rnn.core.lm import BiLM, State, detach
from sentiment_rnn.core.lm_data import chunks, epoch_rows, join, n_chunks, rows_of
from sentiment_rnn.core.progress import bar
from sentiment_rnn.core.training import TrainingDiverged, lr_lambda
from sentiment_rnn.errors import UserError
from sentiment_rnn.files import atomic_path

log = logging.getLogger(__name__)

DIRECTIONS = ("forward", "backward")


@dataclass(frozen=True)
class LMTrainConfig:
    OPTIONAL: ClassVar[tuple[str, ...]] = ("bf16", "checkpoint_every", "max_chunks_per_epoch")

    epochs: int = 1
    batch_size: int = 64  # parallel rows of the token stream
    bptt: int = 64  # tokens per truncated backpropagation step
    lr: float = 3e-3
    weight_decay: float = 0.01
    clip_grad_norm: float = 0.5
    warmup_fraction: float = 0.02
    seed: int = 0
    device: str = "auto"
    bf16: bool = True  # bf16 autocast on CUDA; ignored on CPU
    checkpoint_every: int = 200  # chunks between checkpoints (and at each epoch's end)
    max_chunks_per_epoch: int = 0  # 0 = the whole stream; >0 for smoke runs and budgets

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size, self.bptt) < 1 or self.lr <= 0:
            raise UserError("lm.epochs, lm.batch_size and lm.bptt must be >= 1, lm.lr > 0")


@dataclass
class LMEpoch:
    epoch: int
    train_loss: float  # mean negative log-likelihood per token, both directions
    val_loss: float
    val_ppl: float  # per token
    val_word_ppl: float  # per word: exp(total NLL / words), comparable across tokenizers
    val_loss_forward: float
    val_loss_backward: float
    seconds: float
    tokens_per_second: float
    lr: float

    def as_metrics(self) -> dict[str, float]:
        return {
            "train/loss": self.train_loss,
            "val/loss": self.val_loss,
            "val/ppl": self.val_ppl,
            "val/word_ppl": self.val_word_ppl,
            "val/loss_forward": self.val_loss_forward,
            "val/loss_backward": self.val_loss_backward,
            "epoch_seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
            "lr": self.lr,
        }


@dataclass
class LMFitResult:
    history: list[LMEpoch] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: tuple[int, int] | None = None  # (epoch, chunk)


@dataclass
class Position:
    """Where an epoch stands: the next chunk, the carried states, the running sums."""

    epoch: int = 0
    chunk: int = 0
    states: list[State | None] = field(default_factory=lambda: [None, None])
    loss_sum: float = 0.0
    targets: int = 0
    seconds: float = 0.0


def optimizer_for(model: nn.Module, cfg: LMTrainConfig, total_steps: int) -> tuple[Any, Any]:
    """AdamW without weight decay on biases and norms; warm-up then cosine decay."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    groups.append({"params": no_decay, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, cfg.warmup_fraction)
    )
    return optimizer, schedule


def step_loss(
    model: BiLM,
    batch: tuple[np.ndarray, np.ndarray],
    direction: int,
    state: State | None,
    cfg: LMTrainConfig,
    device: torch.device,
) -> tuple[torch.Tensor, int, State]:
    """Summed NLL of one direction's chunk, its target count, and the state to carry on."""
    inputs, targets = (torch.from_numpy(a).to(device) for a in batch)
    with autocast(device, cfg.bf16):
        features, state = model.features(inputs, direction, state)
    loss, count = model.loss(features, targets)
    return loss, count, detach(state)


@torch.inference_mode()
def evaluate_lm(
    model: BiLM, docs: list[np.ndarray], words: int, rows: int, bptt: int, device: torch.device
) -> tuple[float, float, float, float]:
    """(mean NLL per token, per word perplexity, forward NLL, backward NLL) over `docs`."""
    model.eval()
    stream = join(docs)
    losses = []
    targets = 0
    for direction, data in enumerate((rows_of(stream, rows), rows_of(stream[::-1].copy(), rows))):
        state: State | None = None
        total = 0.0
        targets = 0
        for chunk in chunks(data, bptt):
            inputs = torch.from_numpy(chunk.inputs).to(device)
            features, state = model.features(inputs, direction, state)
            loss, count = model.loss(features, torch.from_numpy(chunk.targets).to(device))
            total += float(loss)
            targets += count
        losses.append(total)
    forward, backward = (loss / max(targets, 1) for loss in losses)
    mean = (forward + backward) / 2
    word_ppl = math.exp(min(losses[0] / max(words, 1), 50.0))  # forward direction
    return mean, word_ppl, forward, backward


def _check_finite(value: float, where: str) -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"language model training diverged ({where}): the loss is {value}; "
            "lower lm.<arch>.lr or lm.<arch>.clip_grad_norm"
        )


def _save(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def fit_lm(
    model: BiLM,
    train_docs: list[np.ndarray],
    val_docs: list[np.ndarray],
    val_words: int,
    cfg: LMTrainConfig,
    checkpoint: Path | None = None,
    on_epoch_end: Callable[[LMEpoch], None] | None = None,
    job_key: str = "",
) -> LMFitResult:
    """Train both directions on `train_docs`, scoring `val_docs` after each epoch.

    Each epoch reads the reviews in an order seeded by (seed, epoch); each chunk steps the
    forward direction on the stream and the backward one on the stream reversed. A checkpoint
    every `checkpoint_every` chunks (and at each epoch's end) holds the position in the
    stream and the carried states too, so a killed run resumes where it stopped and ends as
    an uninterrupted run would (on the CPU).
    """
    device = resolve_device(cfg.device, "lm.device")
    model.to(device)
    rows_per_epoch = epoch_rows(train_docs, cfg.batch_size, cfg.seed, False)
    per_epoch = n_chunks(rows_per_epoch, cfg.bptt)
    if cfg.max_chunks_per_epoch:
        per_epoch = min(per_epoch, cfg.max_chunks_per_epoch)
    optimizer, schedule = optimizer_for(model, cfg, cfg.epochs * per_epoch)
    key = fingerprint(asdict(model.cfg), asdict(cfg), job_key)
    result, position = LMFitResult(), Position()
    saved = load_fingerprinted(checkpoint, key)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        torch.set_rng_state(saved["rng"])
        result.history = [LMEpoch(**h) for h in saved["history"]]
        position = Position(**saved["position"])
        result.resumed_from = (position.epoch, position.chunk)
        log.info("resuming %s at epoch %d, chunk %d", checkpoint, position.epoch, position.chunk)

    def snapshot() -> None:
        if checkpoint is not None:
            _save(checkpoint, {
                "fingerprint": key, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "rng": torch.get_rng_state(), "history": [asdict(h) for h in result.history],
                "position": asdict(position),
            })  # fmt: skip

    for epoch in range(position.epoch, cfg.epochs):
        if position.epoch != epoch:
            position = Position(epoch=epoch)
        if position.chunk == 0:
            torch.manual_seed(cfg.seed + epoch)
        data = [epoch_rows(train_docs, cfg.batch_size, cfg.seed + epoch, b) for b in (False, True)]
        model.train()
        start = time.perf_counter()
        started_at = position.seconds
        tokens_before = position.targets
        desc = f"lm {model.cfg.arch} epoch {epoch}"
        with bar(per_epoch, desc, initial=position.chunk) as progress:
            pairs = zip(chunks(data[0], cfg.bptt), chunks(data[1], cfg.bptt), strict=True)
            for forward, backward in pairs:
                if forward.index >= per_epoch:
                    break
                if forward.index < position.chunk:
                    continue
                total = torch.zeros((), device=device)
                count = 0
                for direction, chunk in enumerate((forward, backward)):
                    loss, n, position.states[direction] = step_loss(
                        model, (chunk.inputs, chunk.targets), direction,
                        position.states[direction], cfg, device,
                    )  # fmt: skip
                    total, count = total + loss, count + n
                optimizer.zero_grad(set_to_none=True)
                (total / max(count, 1)).backward()
                if cfg.clip_grad_norm > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
                optimizer.step()
                schedule.step()
                position.loss_sum += float(total.detach())
                position.targets += count
                position.chunk = forward.index + 1
                position.seconds = started_at + time.perf_counter() - start
                if position.chunk % 20 == 0:
                    _check_finite(position.loss_sum, f"epoch {epoch}, chunk {position.chunk}")
                    rate = (position.targets - tokens_before) / max(
                        position.seconds - started_at, 1e-9
                    )
                    progress.set_postfix(
                        loss=f"{position.loss_sum / max(position.targets, 1):.3f}",
                        tok_s=f"{rate:,.0f}",
                    )
                if position.chunk % cfg.checkpoint_every == 0:
                    snapshot()
                progress.update(1)
        _check_finite(position.loss_sum, f"epoch {epoch}")
        val_loss, word_ppl, val_fwd, val_bwd = evaluate_lm(
            model, val_docs, val_words, cfg.batch_size, cfg.bptt, device
        )
        stats = LMEpoch(
            epoch=epoch,
            train_loss=position.loss_sum / max(position.targets, 1),
            val_loss=val_loss,
            val_ppl=math.exp(val_loss),
            val_word_ppl=word_ppl,
            val_loss_forward=val_fwd,
            val_loss_backward=val_bwd,
            seconds=position.seconds,
            tokens_per_second=position.targets / max(position.seconds, 1e-9),
            lr=schedule.get_last_lr()[0],
        )
        result.history.append(stats)
        result.seconds = sum(h.seconds for h in result.history)
        log.info("lm %s %s", model.cfg.arch, stats)
        position = Position(epoch=epoch + 1)
        snapshot()
        if on_epoch_end is not None:
            on_epoch_end(stats)
    return result
