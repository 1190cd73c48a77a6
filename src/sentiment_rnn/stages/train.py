"""Stage `train@<arch>`: fit one model family with early stopping on validation accuracy.

Reads `train.<arch>` and `mlflow` from params.yaml, the tokens and word vectors; writes
`models/<arch>/` (weights, config, identity), its metrics and curves; logs params, per-epoch
metrics and artifacts to an MLflow run. A checkpoint per epoch lets a killed run resume.
"""

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from sentiment_rnn import paths, reports
from sentiment_rnn.core.data import TokenDataset
from sentiment_rnn.core.device import resolve_device
from sentiment_rnn.core.lm import init_from_lm, load_lm
from sentiment_rnn.core.model import (
    ARCHS,
    ModelConfig,
    SentimentRNN,
    TrainedModelInfo,
    build_model,
    count_parameters,
    save_model,
)
from sentiment_rnn.core.tokenizer import load_encoded
from sentiment_rnn.core.training import EpochStats, FitResult, TrainConfig, fit
from sentiment_rnn.errors import UserError
from sentiment_rnn.files import sha256_file, write_json
from sentiment_rnn.params import section, validate
from sentiment_rnn.stages import common, entry
from sentiment_rnn.tracking import runs


def configs(
    arch: str, params: Mapping[str, Any], vocab_size: int
) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configs of `train.<arch>`, validated."""
    where, stage = f"train.{arch}", f"train@{arch}"
    train = section(params, where, stage)
    if not isinstance(train, Mapping) or "model" not in train:
        raise UserError(f"params.yaml: missing key '{where}.model' (stage {stage})")
    model = validate(
        ModelConfig,
        train["model"],
        f"{where}.model",
        stage,
        {"arch": arch, "vocab_size": vocab_size},
    )
    cfg = validate(TrainConfig, {k: v for k, v in train.items() if k != "model"}, where, stage)
    return model, cfg


def write_history_csv(arch: str, history: list[EpochStats]) -> None:
    """Per-epoch history for `dvc plots`."""
    cols = [f.name for f in fields(EpochStats)]
    rows = ([getattr(h, c) for c in cols] for h in history)
    reports.write_csv(paths.plot_file("train", arch, "csv"), cols, rows)


def plot_history(arch: str, history: list[EpochStats]) -> None:
    """Loss and accuracy, train vs validation, as a PNG."""
    epochs = [h.epoch for h in history]
    png = paths.plot_file("train", arch, "png")
    with reports.figure(png, ncols=2, figsize=(10, 4)) as (_, axes):
        ax_loss, ax_acc = axes
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


def summary(arch: str, result: FitResult, parameters: int, device: str) -> dict[str, Any]:
    """The stage's metrics file."""
    history = result.history
    return {
        "arch": arch,
        "best_val_acc": result.best_val_acc,
        "best_epoch": result.best_epoch,
        "best_weights": result.best_weights,
        "epochs_run": len(history),
        "train_seconds": round(result.seconds, 2),
        "mean_epoch_seconds": round(float(np.mean([h.seconds for h in history])), 2),
        "tokens_per_second": round(float(np.mean([h.tokens_per_second for h in history])), 1),
        "parameters": parameters,
        "device": device,
    }


def start_from_lm(model: SentimentRNN, arch: str, tokenizer_sha256: str) -> str:
    """Load the family's language model into `model`; returns the LM file's digest."""
    path = paths.lm_dir(arch) / "lm.pt"
    lm, info = load_lm(path)
    if info["tokenizer_sha256"] != tokenizer_sha256:
        raise UserError(
            f"{path} was trained with another tokenizer than data/tokens: "
            f"rerun the language model (dvc repro lm@{arch})"
        )
    init_from_lm(model, lm)
    return sha256_file(path)


def train(arch: str, model_cfg: ModelConfig, cfg: TrainConfig, experiment: str) -> FitResult:
    """Train `arch`, track it in MLflow, write the model, metrics and curves."""
    meta = common.tokens_meta()
    train_data = TokenDataset(load_encoded(paths.tokens_file("train")))
    val_data = TokenDataset(load_encoded(paths.tokens_file("val")))
    vectors = common.word_vectors() if cfg.pretrained_embeddings else None
    model = build_model(model_cfg, cfg.seed, cfg.forget_gate_bias, vectors)
    # the checkpoint's identity: other tokens, vectors or language model, no resume
    vectors_sha = "" if vectors is None else hashlib.sha256(vectors.tobytes()).hexdigest()
    if cfg.lm_init:
        vectors_sha += start_from_lm(model, arch, meta.tokenizer_sha256)
    device = resolve_device(cfg.device, f"train.{arch}.device")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    tags = {"arch": arch, "dvc_stage": f"train@{arch}", "device": str(device)}
    with runs.start_run(experiment, run_name=arch, tags=tags | {"device_name": device_name}) as run:
        runs.log_params(
            runs.flatten({"model": asdict(model_cfg), "train": asdict(cfg)})
            | {"parameters": count_parameters(model), "tokenizer_sha256": meta.tokenizer_sha256}
        )
        runs.log_split(paths.split_file("train"), "train", "training")
        runs.log_split(paths.split_file("val"), "val", "validation")
        checkpoint = paths.checkpoint_file(arch)
        result = fit(
            model,
            train_data,
            val_data,
            cfg,
            checkpoint,
            lambda stats: runs.log_metrics(stats.as_metrics(), step=stats.epoch),
            job_key=meta.tokenizer_sha256 + vectors_sha,
        )
        info = TrainedModelInfo(
            result.best_val_acc,
            result.best_epoch,
            result.best_weights,
            meta.tokenizer_sha256,
            run.info.run_id,
        )
        paths.model_dir(arch).mkdir(parents=True, exist_ok=True)
        save_model(model.cpu(), paths.model_file(arch), info)
        write_json(paths.model_dir(arch) / "model_config.json", asdict(model_cfg))
        write_json(
            paths.metrics_file("train", arch),
            summary(arch, result, count_parameters(model), device_name),
        )
        write_history_csv(arch, result.history)
        plot_history(arch, result.history)
        runs.log_metrics({"best_val_acc": result.best_val_acc, "train_seconds": result.seconds})
        runs.set_tags({"best_weights": result.best_weights})
        runs.log_artifact(paths.plot_file("train", arch, "png"), "plots")
        runs.log_artifact(paths.model_dir(arch) / "model_config.json")
        runs.log_artifact(paths.model_file(arch), "model")
    checkpoint.unlink(missing_ok=True)  # finished: a forced rerun retrains from scratch
    return result


def run(arch: str, params: Mapping[str, Any]) -> FitResult:
    """The stage: `train.<arch>` and `mlflow` params -> models/<arch>/, metrics, curves."""
    model_cfg, cfg = configs(arch, params, common.tokens_meta().vocab_size)
    return train(arch, model_cfg, cfg, common.experiment(params, f"train@{arch}"))


if __name__ == "__main__":
    entry.main("train", run, ARCHS)
