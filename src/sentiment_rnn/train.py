"""Stage `train`: fit one recurrent classifier with early stopping on validation accuracy.

The core (`fit`) needs only torch and numpy, so it runs on a bare GPU machine; MLflow, plots
and metric files are handled by `run_train`, the stage's entry, through callbacks.
"""

import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from sentiment_rnn.data import Batch, TokenDataset, bucketed_batches, sorted_batches
from sentiment_rnn.errors import UserError
from sentiment_rnn.model import SentimentRNN, save_model
from sentiment_rnn.params import build_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        cfg = build_config(cls, data, "train")
        if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
            raise UserError("train.epochs and train.batch_size must be >= 1, train.lr > 0")
        if cfg.embedding_lr_scale < 0:
            raise UserError("train.embedding_lr_scale must be >= 0 (0 freezes the embeddings)")
        if not 0.0 <= cfg.ema_decay < 1.0:
            raise UserError(
                f"train.ema_decay must be in [0, 1) (0 turns the weight average off), "
                f"got {cfg.ema_decay}"
            )
        return cfg


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


def set_forget_gate_bias(model: SentimentRNN, value: float) -> int:
    """Set the forget-gate bias of every LSTM layer of `model` to `value`; returns how many.

    Fused `nn.LSTM` layers have two biases (input and hidden side) that add up; the forget
    slice (torch's gate order: input, forget, candidate, output) of the input-side one is set
    to `value` and of the hidden-side one to 0. The textbook `LSTMCell` has one bias.
    """
    if model.cfg.arch != "lstm":
        raise UserError(
            f"train.forget_gate_bias applies to LSTMs only; remove it from the {model.cfg.arch} "
            "section of params.yaml"
        )
    from sentiment_rnn.cells import LSTMCell

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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "train.device is 'cuda' but no CUDA GPU is visible: set it to 'auto' or 'cpu'"
        )
    return torch.device(name)


def lr_lambda(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW, no weight decay on biases, the embedding at its own lr scale; cosine schedule."""
    named = list(model.named_parameters())
    embedding = [p for n, p in named if n.startswith("embedding.")]
    decay = [p for n, p in named if p.ndim >= 2 and not n.startswith("embedding.")]
    no_decay = [p for n, p in named if p.ndim < 2 and not n.startswith("embedding.")]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        {
            "params": embedding,
            "weight_decay": cfg.weight_decay,
            "lr": cfg.lr * cfg.embedding_lr_scale,
        },
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.epochs * steps_per_epoch, cfg.warmup_fraction)
    )
    return optimizer, schedule


def _autocast(device: torch.device, cfg: TrainConfig) -> torch.autocast:
    enabled = device.type == "cuda" and cfg.bf16
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train_step(
    model: nn.Module,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; returns (summed loss, correct count) as device tensors (no sync)."""
    with _autocast(device, cfg):
        logits = model(batch.token_ids, batch.lengths).float()
    loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
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
        with torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and bf16
        ):
            logits = model(batch.token_ids, batch.lengths).float()
        loss_sum += nn.functional.binary_cross_entropy_with_logits(
            logits, batch.labels, reduction="sum"
        )
        correct += ((logits > 0) == (batch.labels > 0.5)).sum()
    return float(loss_sum) / len(data), float(correct) / len(data)


def _progress(total: int, desc: str) -> tqdm:
    return tqdm(
        total=total,
        desc=desc,
        unit="batch",
        dynamic_ncols=True,
        mininterval=1.0,
        disable=None if sys.stderr.isatty() else True,
        leave=False,
    )


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
    with _progress(len(batches), desc) as bar:
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
                if not bar.disable:
                    rate = tokens / max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix(
                        loss=f"{float(loss_sum) / rows:.4f}",
                        acc=f"{float(correct) / rows:.3f}",
                        tok_s=f"{rate:,.0f}",
                    )
            bar.update(1)
    return float(loss_sum) / rows, float(correct) / rows, tokens


def _check_finite(loss_sum: torch.Tensor, step: int, desc: str) -> None:
    if not torch.isfinite(loss_sum):
        raise TrainingDiverged(
            f"training diverged ({desc}, step {step}): the loss is {float(loss_sum)}; "
            "lower train.lr or set train.clip_grad_norm > 0"
        )


def fingerprint(*parts: Any) -> str:
    """A stable hash of configs and data, so a checkpoint is resumed only by the same job."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path | None, key: str) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != key:
        log.info("checkpoint %s belongs to another configuration: starting afresh", path)
        return None
    return state


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
    device = resolve_device(cfg.device)
    model.to(device)
    steps = len(bucketed_batches(train.lengths_np, cfg.batch_size, np.random.default_rng(0)))
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    optimizer, schedule = make_optimizer(model, cfg, steps)
    ema = weight_average(model, cfg.ema_decay)
    result, bad_epochs, start_epoch = FitResult(), 0, 0
    key = fingerprint(asdict(model.cfg), asdict(cfg), job_key)
    state = _load_checkpoint(checkpoint, key)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        result.history = [EpochStats(**h) for h in state["history"]]
        result.best_epoch, result.best_val_acc = state["best_epoch"], state["best_val_acc"]
        result.best_state, bad_epochs = state["best_state"], state["bad_epochs"]
        result.best_weights = state["best_weights"]
        start_epoch = result.resumed_from_epoch = state["epoch"] + 1
        result.seconds = state["seconds"]
        log.info("resuming %s after epoch %d", checkpoint, state["epoch"])
    for epoch in range(start_epoch, cfg.epochs):
        if bad_epochs >= cfg.patience:
            break
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed + epoch)
        batches = bucketed_batches(
            train.lengths_np, cfg.batch_size, np.random.default_rng(cfg.seed + epoch)
        )[:steps]
        loss, acc, tokens = train_epoch(
            model,
            train,
            batches,
            optimizer,
            schedule,
            cfg,
            device,
            f"{model.cfg.arch} epoch {epoch}",
            ema,
        )
        seconds = time.perf_counter() - t0
        val_loss, val_acc = evaluate_loss_acc(model, val, cfg.batch_size, device, cfg.bf16)
        lr = schedule.get_last_lr()[0]
        stats = EpochStats(epoch, loss, acc, val_loss, val_acc, seconds, tokens / seconds, lr)
        candidates: list[tuple[str, float, nn.Module]] = [("raw", val_acc, model)]
        if ema is not None:
            stats.ema_val_loss, stats.ema_val_acc = evaluate_loss_acc(
                ema.module, val, cfg.batch_size, device, cfg.bf16
            )
            candidates.append(("ema", stats.ema_val_acc, ema.module))
        result.history.append(stats)
        result.seconds += time.perf_counter() - t0
        bad_epochs = 0 if _select(result, epoch, candidates) else bad_epochs + 1
        log.info("%s %s", model.cfg.arch, stats)
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            _save_checkpoint(
                checkpoint,
                {
                    "fingerprint": key,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "ema": None if ema is None else ema.state_dict(),
                    "history": [asdict(h) for h in result.history],
                    "best_epoch": result.best_epoch,
                    "best_val_acc": result.best_val_acc,
                    "best_state": result.best_state,
                    "best_weights": result.best_weights,
                    "bad_epochs": bad_epochs,
                    "seconds": result.seconds,
                },
            )
        if on_epoch_end is not None:
            on_epoch_end(stats)
    if result.best_state is not None:
        model.load_state_dict(result.best_state)
    return result


def write_history_csv(path: Path, history: list[EpochStats]) -> None:
    """Per-epoch history for `dvc plots`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = [f.name for f in fields(EpochStats)]

    def cell(value: object) -> str:
        return "" if value is None else str(value)

    lines = [",".join(cols)] + [",".join(cell(getattr(h, c)) for c in cols) for h in history]
    path.write_text("\n".join(lines) + "\n")


def plot_history(path: Path, arch: str, history: list[EpochStats]) -> None:
    """Loss and accuracy, train vs validation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h.epoch for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h.train_loss for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h.val_loss for h in history], "o-", label="validation")
    ax_loss.set(title=f"{arch}: loss", xlabel="epoch", ylabel="BCE loss")
    ax_acc.plot(epochs, [h.train_acc for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h.val_acc for h in history], "o-", label="validation")
    if any(h.ema_val_acc is not None for h in history):
        ema_acc = [math.nan if h.ema_val_acc is None else h.ema_val_acc for h in history]
        ax_acc.plot(epochs, ema_acc, "s--", label="validation, weight average")
    ax_acc.set(title=f"{arch}: accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_train(arch: str, section: dict[str, Any], experiment: str) -> FitResult:
    """The stage's entry: train `arch` from its params, track it in MLflow, write outputs."""
    from sentiment_rnn import paths, tracking
    from sentiment_rnn.files import read_json, write_json
    from sentiment_rnn.model import ModelConfig, count_parameters
    from sentiment_rnn.tokenize import load_encoded

    tok_meta = read_json(paths.METRICS_DIR / "tokenize.json")
    model_cfg = ModelConfig.from_dict(
        {"arch": arch, "vocab_size": tok_meta["vocab_size"], **section.get("model", {})}
    )
    if model_cfg.arch != arch:
        raise UserError(
            f"train.{arch}.model.arch is {model_cfg.arch!r}: it must match the stage ({arch!r})"
        )
    cfg = TrainConfig.from_dict({k: v for k, v in section.items() if k != "model"})
    train_data = TokenDataset(load_encoded(paths.TOKENS_DIR / "train.npz"))
    val_data = TokenDataset(load_encoded(paths.TOKENS_DIR / "val.npz"))
    torch.manual_seed(cfg.seed)
    model = SentimentRNN(model_cfg)
    if cfg.forget_gate_bias is not None:
        set_forget_gate_bias(model, cfg.forget_gate_bias)
    vectors_sha = ""  # part of the checkpoint's identity: other vectors, no resume
    if cfg.pretrained_embeddings:
        from sentiment_rnn.embeddings import load_vectors

        vectors = load_vectors(paths.EMBEDDINGS_FILE)
        model.load_embeddings(torch.from_numpy(vectors))
        vectors_sha = hashlib.sha256(vectors.tobytes()).hexdigest()
    device = resolve_device(cfg.device)
    out = paths.model_dir(arch)
    out.mkdir(parents=True, exist_ok=True)
    tags = {
        "arch": arch,
        "dvc_stage": f"train@{arch}",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    with tracking.start_run(experiment, run_name=arch, tags=tags) as run:
        mlflow = tracking.setup(experiment)
        mlflow.log_params(
            tracking.flatten("", {"model": asdict(model_cfg), "train": asdict(cfg)})
            | {
                "parameters": count_parameters(model),
                "tokenizer_sha256": tok_meta["tokenizer_sha256"],
            }
        )
        tracking.write_run_id(paths.run_file(arch), run)

        def log_epoch(stats: EpochStats) -> None:
            mlflow.log_metrics(stats.as_metrics(), step=stats.epoch)

        checkpoint = paths.CHECKPOINT_DIR / f"{arch}.pt"
        result = fit(
            model,
            train_data,
            val_data,
            cfg,
            checkpoint,
            log_epoch,
            job_key=tok_meta["tokenizer_sha256"] + vectors_sha,
        )
        extra = {
            "best_val_acc": result.best_val_acc,
            "best_epoch": result.best_epoch,
            "best_weights": result.best_weights,
            "tokenizer_sha256": tok_meta["tokenizer_sha256"],
            "mlflow_run_id": run.info.run_id,
        }
        save_model(model.cpu(), out / "model.pt", extra)
        write_json(out / "model_config.json", asdict(model_cfg))
        summary = {
            "arch": arch,
            "best_val_acc": result.best_val_acc,
            "best_epoch": result.best_epoch,
            "best_weights": result.best_weights,
            "epochs_run": len(result.history),
            "train_seconds": round(result.seconds, 2),
            "mean_epoch_seconds": round(float(np.mean([h.seconds for h in result.history])), 2),
            "tokens_per_second": round(
                float(np.mean([h.tokens_per_second for h in result.history])), 1
            ),
            "parameters": count_parameters(model),
            "device": tags["device_name"],
        }
        write_json(paths.METRICS_DIR / f"train-{arch}.json", summary)
        write_history_csv(paths.PLOTS_DIR / f"train-{arch}.csv", result.history)
        plot_history(paths.PLOTS_DIR / f"train-{arch}.png", arch, result.history)
        mlflow.log_metric("best_val_acc", result.best_val_acc)
        mlflow.set_tag("best_weights", result.best_weights)
        mlflow.log_metric("train_seconds", result.seconds)
        mlflow.log_artifact(str(paths.PLOTS_DIR / f"train-{arch}.png"), "plots")
        mlflow.log_artifact(str(out / "model_config.json"))
        mlflow.log_artifact(str(out / "model.pt"), "model")
    checkpoint.unlink(missing_ok=True)  # finished: a forced rerun retrains from scratch
    return result
