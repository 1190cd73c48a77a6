"""The training loop: one recurrent classifier, early stopping on validation accuracy.

`fit` needs only torch and numpy, so it runs on a bare GPU machine; tracking, plots and files
are the stage's business, reached through the `on_epoch_end` callback.
"""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from sentiment_rnn.core.checkpoint import TrainState, fingerprint, load_checkpoint, save_checkpoint
from sentiment_rnn.core.data import Batch, TokenDataset, bucketed_batches, sorted_batches
from sentiment_rnn.core.device import autocast, resolve_device
from sentiment_rnn.core.model import SentimentRNN, valid_positions
from sentiment_rnn.core.progress import bar
from sentiment_rnn.errors import UserError

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "slanted")
SLANTED_RATIO = 32  # the slanted triangular schedule's lowest lr is lr / 32 (ULMFiT)


@dataclass(frozen=True)
class TrainConfig:
    # keys params.yaml may leave out (the rest it must set)
    OPTIONAL: ClassVar[tuple[str, ...]] = (
        "embedding_lr_scale", "ema_decay", "forget_gate_bias", "bf16", "max_steps_per_epoch",
        "lm_init", "discriminative_lr", "gradual_unfreezing", "schedule", "adversarial_epsilon",
    )  # fmt: skip

    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    clip_grad_norm: float = 1.0
    warmup_fraction: float = 0.05  # linear warm-up, then cosine decay to zero
    patience: int = 2  # epochs without a better val accuracy before stopping
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda
    pretrained_embeddings: bool = False  # start from the `embeddings` stage's word vectors
    embedding_lr_scale: float = 1.0  # embedding lr = lr * this (0 freezes pretrained vectors)
    # An exponential moving average of the weights, updated every step with this decay
    # (0 = off). Each epoch both the raw and the averaged weights are scored on validation;
    # the better of the two is what model selection and early stopping see.
    ema_decay: float = 0.0
    # LSTM only: start every forget-gate bias at this value (None: torch's uniform init).
    # 1.0 keeps the cell state open early in training (Jozefowicz et al., 2015).
    forget_gate_bias: float | None = None
    bf16: bool = True  # bf16 autocast on CUDA; ignored on CPU
    max_steps_per_epoch: int = 0  # 0 = the whole split; >0 for smoke runs
    # Fine-tuning a model started from its family's language model (Howard & Ruder, 2018):
    lm_init: bool = False  # embedding and recurrent layers from the `lm` stage's model
    discriminative_lr: float = 1.0  # lr / this for the recurrent layers, / this^2 for the embedding
    gradual_unfreezing: bool = False  # epoch 0 trains the head, 1 adds the recurrent layers, 2 all
    schedule: str = "cosine"  # "cosine": warm-up then cosine; "slanted": slanted triangular
    # Adversarial training on the embeddings (Miyato et al., 2017): each step also trains on
    # the reviews pushed along their loss gradient by this fraction of each review's embedding
    # norm (0 = off). Regularises; costs a second forward and backward pass per step.
    adversarial_epsilon: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UserError("train.epochs and train.batch_size must be >= 1, train.lr > 0")
        if self.embedding_lr_scale < 0:
            raise UserError("train.embedding_lr_scale must be >= 0 (0 freezes the embeddings)")
        if self.discriminative_lr < 1.0 or self.schedule not in SCHEDULES:
            raise UserError(
                f"train.discriminative_lr must be >= 1 and train.schedule one of {SCHEDULES}"
            )
        if self.adversarial_epsilon < 0:
            raise UserError(
                "train.adversarial_epsilon must be >= 0 (0 turns adversarial training off), "
                f"got {self.adversarial_epsilon}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(
                f"train.ema_decay must be in [0, 1) (0 turns the weight average off), "
                f"got {self.ema_decay}"
            )


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float
    tokens_per_second: float
    lr: float
    ema_val_loss: float | None = None  # the weight average's, when train.ema_decay > 0
    ema_val_acc: float | None = None

    def __str__(self) -> str:
        ema = "" if self.ema_val_acc is None else f" (weight average {self.ema_val_acc:.4f})"
        return (
            f"epoch {self.epoch}: train loss {self.train_loss:.4f} acc {self.train_acc:.4f} | "
            f"val loss {self.val_loss:.4f} acc {self.val_acc:.4f}{ema} | "
            f"{self.seconds:.1f}s, {self.tokens_per_second:.0f} tok/s"
        )

    def as_metrics(self) -> dict[str, float]:
        metrics = {
            "train/loss": self.train_loss,
            "train/acc": self.train_acc,
            "val/loss": self.val_loss,
            "val/acc": self.val_acc,
            "epoch_seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
            "lr": self.lr,
        }
        if self.ema_val_acc is not None and self.ema_val_loss is not None:
            metrics |= {"val_ema/loss": self.ema_val_loss, "val_ema/acc": self.ema_val_acc}
        return metrics


@dataclass
class FitResult:
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = -1
    best_val_acc: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None
    best_weights: str = "raw"  # "raw" or "ema": which weights best_state holds
    seconds: float = 0.0
    resumed_from_epoch: int | None = None


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def lr_lambda(
    total_steps: int, warmup_fraction: float, schedule: str = "cosine"
) -> Callable[[int], float]:
    """The lr factor at each step: a linear warm-up over `warmup_fraction` of the steps, then
    cosine decay to 0, or (`slanted`) linear decay to 1 / SLANTED_RATIO."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if schedule == "slanted":
            return 1.0 - progress * (1.0 - 1.0 / SLANTED_RATIO)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


LAYER_GROUPS = ("head", "recurrent", "embedding")  # from the top; unfrozen in this order


def layer_group(name: str) -> str:
    if name.startswith("embedding."):
        return "embedding"
    return "recurrent" if name.startswith("layers.") else "head"


def trainable_groups(cfg: TrainConfig, epoch: int) -> tuple[str, ...]:
    """The layer groups trained in `epoch`: all, or with gradual unfreezing one more per epoch."""
    return LAYER_GROUPS[: epoch + 1] if cfg.gradual_unfreezing else LAYER_GROUPS


def freeze_for_epoch(model: nn.Module, cfg: TrainConfig, epoch: int) -> None:
    """Frozen parameters get no gradient, so AdamW leaves them (and their decay) alone."""
    trained = trainable_groups(cfg, epoch)
    for name, param in model.named_parameters():
        param.requires_grad_(layer_group(name) in trained)


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW without weight decay on biases; each layer group at its own lr (discriminative
    rates, the embedding's scaled by `embedding_lr_scale` too); the configured schedule."""
    lrs = {
        "head": cfg.lr,
        "recurrent": cfg.lr / cfg.discriminative_lr,
        "embedding": cfg.lr / cfg.discriminative_lr**2 * cfg.embedding_lr_scale,
    }
    named = list(model.named_parameters())
    groups = []
    for group in LAYER_GROUPS:
        params = [(n, p) for n, p in named if layer_group(n) == group]
        decay = [p for n, p in params if p.ndim >= 2 or group == "embedding"]
        no_decay = [p for n, p in params if p.ndim < 2 and group != "embedding"]
        groups.append({"params": decay, "weight_decay": cfg.weight_decay, "lr": lrs[group]})
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr": lrs[group]})
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.epochs * steps_per_epoch, cfg.warmup_fraction, cfg.schedule)
    )
    return optimizer, schedule


def adversarial_perturbation(
    grad: torch.Tensor, embedded: torch.Tensor, lengths: torch.Tensor, epsilon: float
) -> torch.Tensor:
    """The worst-case first-order step on each review's embeddings (B, T, E): along the loss
    gradient, with an L2 norm of `epsilon` times the review's own embedding norm; zero on
    padding."""
    mask = valid_positions(lengths, grad.shape[1]).to(grad.dtype)  # (B, T, 1)
    grad, embedded = grad * mask, embedded * mask
    grad_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)  # (B,)
    scale = epsilon * embedded.flatten(1).norm(dim=1) / grad_norm
    return grad * scale[:, None, None]


def train_step(
    model: SentimentRNN,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; returns (summed loss, correct count) as device tensors (no sync).

    With `cfg.adversarial_epsilon` > 0 the loss on the adversarially perturbed embeddings is
    added (its gradient accumulates onto the clean one); the reported loss is the clean one.
    """
    adversarial = cfg.adversarial_epsilon > 0
    with autocast(device, cfg.bf16):
        embedded = model.embedding(batch.token_ids)
        if adversarial and embedded.requires_grad:
            embedded.retain_grad()
        elif adversarial:  # a frozen embedding layer (gradual unfreezing): grad of the input
            embedded.requires_grad_()
        logits = model.classify(embedded, batch.lengths).float()
    loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if adversarial and embedded.grad is not None:
        step = adversarial_perturbation(
            embedded.grad, embedded.detach(), batch.lengths, cfg.adversarial_epsilon
        )
        with autocast(device, cfg.bf16):
            adv_logits = model.classify(model.embedding(batch.token_ids) + step, batch.lengths)
        nn.functional.binary_cross_entropy_with_logits(adv_logits.float(), batch.labels).backward()
    if cfg.clip_grad_norm > 0:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
    optimizer.step()
    correct = ((logits > 0) == (batch.labels > 0.5)).sum()
    return loss.detach() * len(batch.labels), correct


@torch.inference_mode()
def evaluate_loss_acc(
    model: nn.Module, data: TokenDataset, batch_size: int, device: torch.device, bf16: bool = True
) -> tuple[float, float]:
    """Mean loss and accuracy over a split, in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    for idx in sorted_batches(data.lengths_np, batch_size * 2):
        batch = data.batch(idx, device)
        with autocast(device, bf16):
            logits = model(batch.token_ids, batch.lengths).float()
        loss_sum += nn.functional.binary_cross_entropy_with_logits(
            logits, batch.labels, reduction="sum"
        )
        correct += ((logits > 0) == (batch.labels > 0.5)).sum()
    return float(loss_sum) / len(data), float(correct) / len(data)


def train_epoch(
    model: nn.Module,
    data: TokenDataset,
    batches: list[np.ndarray],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LambdaLR,
    cfg: TrainConfig,
    device: torch.device,
    desc: str,
    ema: AveragedModel | None = None,
) -> tuple[float, float, int]:
    """Train over `batches` (updating `ema` after each step); returns (loss, accuracy, tokens)."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    rows = tokens = 0
    start = time.perf_counter()
    with bar(len(batches), desc) as progress:
        for step, idx in enumerate(batches):
            batch = data.batch(idx, device)
            step_loss, step_correct = train_step(model, batch, optimizer, cfg, device)
            schedule.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += step_loss
            correct += step_correct
            rows += len(idx)
            tokens += batch.tokens
            if step % 20 == 0 or step == len(batches) - 1:
                _check_finite(loss_sum, step, desc)
                if not progress.disable:
                    rate = tokens / max(time.perf_counter() - start, 1e-9)
                    progress.set_postfix(
                        loss=f"{float(loss_sum) / rows:.4f}",
                        acc=f"{float(correct) / rows:.3f}",
                        tok_s=f"{rate:,.0f}",
                    )
            progress.update(1)
    return float(loss_sum) / rows, float(correct) / rows, tokens


def _check_finite(loss_sum: torch.Tensor, step: int, desc: str) -> None:
    if not torch.isfinite(loss_sum):
        raise TrainingDiverged(
            f"training diverged ({desc}, step {step}): the loss is {float(loss_sum)}; "
            "lower train.lr or set train.clip_grad_norm > 0"
        )


def weight_average(model: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of `model`'s weights (None when decay is 0)."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _select(result: FitResult, epoch: int, candidates: list[tuple[str, float, nn.Module]]) -> bool:
    """Keep the candidate with the best val accuracy if it beats the best so far."""
    name, acc, module = max(candidates, key=lambda c: c[1])  # ties keep the raw weights
    if acc <= result.best_val_acc:
        return False
    result.best_epoch, result.best_val_acc, result.best_weights = epoch, acc, name
    result.best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    return True


def _restore(
    state: TrainState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LambdaLR,
    ema: AveragedModel | None,
    result: FitResult,
) -> None:
    """Put the loop back where `state` left it."""
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    schedule.load_state_dict(state.schedule)
    if ema is not None and state.ema is not None:
        ema.load_state_dict(state.ema)
    result.history = [EpochStats(**h) for h in state.history]
    result.best_epoch, result.best_val_acc = state.best_epoch, state.best_val_acc
    result.best_state, result.best_weights = state.best_state, state.best_weights
    result.resumed_from_epoch = state.epoch + 1
    result.seconds = state.seconds


def _snapshot(
    key: str,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LambdaLR,
    ema: AveragedModel | None,
    result: FitResult,
    bad_epochs: int,
) -> TrainState:
    return TrainState(
        fingerprint=key,
        epoch=epoch,
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        schedule=schedule.state_dict(),
        ema=None if ema is None else ema.state_dict(),
        history=[asdict(h) for h in result.history],
        best_epoch=result.best_epoch,
        best_val_acc=result.best_val_acc,
        best_state=result.best_state,
        best_weights=result.best_weights,
        bad_epochs=bad_epochs,
        seconds=result.seconds,
    )


def _epoch_stats(
    model: SentimentRNN,
    ema: AveragedModel | None,
    val: TokenDataset,
    cfg: TrainConfig,
    device: torch.device,
    epoch: int,
    train: tuple[float, float, int, float, float],
) -> tuple[EpochStats, list[tuple[str, float, nn.Module]]]:
    """Score the raw weights (and the weight average) on validation after an epoch."""
    loss, acc, tokens, seconds, lr = train
    val_loss, val_acc = evaluate_loss_acc(model, val, cfg.batch_size, device, cfg.bf16)
    stats = EpochStats(epoch, loss, acc, val_loss, val_acc, seconds, tokens / seconds, lr)
    candidates: list[tuple[str, float, nn.Module]] = [("raw", val_acc, model)]
    if ema is not None:
        stats.ema_val_loss, stats.ema_val_acc = evaluate_loss_acc(
            ema.module, val, cfg.batch_size, device, cfg.bf16
        )
        candidates.append(("ema", stats.ema_val_acc, ema.module))
    return stats, candidates


def fit(
    model: SentimentRNN,
    train: TokenDataset,
    val: TokenDataset,
    cfg: TrainConfig,
    checkpoint: Path | None = None,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    job_key: str = "",
) -> FitResult:
    """Train with early stopping on val accuracy, checkpointing every epoch.

    If `checkpoint` holds a state of the same job (`job_key`), training resumes after its last
    completed epoch and ends exactly as an uninterrupted run would (on CPU): each epoch reseeds
    torch and the batch order from (seed, epoch). With `cfg.ema_decay` > 0 the weight average
    is a second candidate each epoch; it never changes the raw weights' trajectory.
    """
    device = resolve_device(cfg.device, "train.device")
    model.to(device)
    steps = len(bucketed_batches(train.lengths_np, cfg.batch_size, np.random.default_rng(0)))
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    optimizer, schedule = make_optimizer(model, cfg, steps)
    ema = weight_average(model, cfg.ema_decay)
    result, bad_epochs = FitResult(), 0
    key = fingerprint(asdict(model.cfg), asdict(cfg), job_key)
    state = load_checkpoint(checkpoint, key)
    if state is not None:
        _restore(state, model, optimizer, schedule, ema, result)
        bad_epochs = state.bad_epochs
        log.info("resuming %s after epoch %d", checkpoint, state.epoch)
    for epoch in range(result.resumed_from_epoch or 0, cfg.epochs):
        if bad_epochs >= cfg.patience:
            break
        t0 = time.perf_counter()
        freeze_for_epoch(model, cfg, epoch)
        torch.manual_seed(cfg.seed + epoch)
        rng = np.random.default_rng(cfg.seed + epoch)
        batches = bucketed_batches(train.lengths_np, cfg.batch_size, rng)[:steps]
        desc = f"{model.cfg.arch} epoch {epoch}"
        loss, acc, tokens = train_epoch(
            model, train, batches, optimizer, schedule, cfg, device, desc, ema
        )
        seconds = time.perf_counter() - t0
        lr = schedule.get_last_lr()[0]
        stats, candidates = _epoch_stats(
            model, ema, val, cfg, device, epoch, (loss, acc, tokens, seconds, lr)
        )
        result.history.append(stats)
        result.seconds += time.perf_counter() - t0
        bad_epochs = 0 if _select(result, epoch, candidates) else bad_epochs + 1
        log.info("%s %s", model.cfg.arch, stats)
        if checkpoint is not None:
            state = _snapshot(key, epoch, model, optimizer, schedule, ema, result, bad_epochs)
            save_checkpoint(checkpoint, state)
        if on_epoch_end is not None:
            on_epoch_end(stats)
    if result.best_state is not None:
        model.load_state_dict(result.best_state)
    return result
