"""Hyperparameter sweep on the validation split: which configuration goes into params.yaml.

Trains every run of a grid file with the train stage's own `fit` (same model, batches, optimiser,
schedule and early stopping) and reports validation accuracy per epoch and epoch times. The test
split is never read: model selection happens on validation only. Needs only torch, numpy, pandas,
pyyaml and tokenizers, so it also runs on a bare GPU machine:

    python benchmarks/sweep.py --raw data/raw --grid benchmarks/grids/accuracy.yaml \
        --out reports/benchmarks/sweep.json

Grid file: `defaults` (tokenize, model, train) and `runs`, each with a `name`, an `arch` and any
overrides of those three sections. Runs that share a tokenizer setting share one tokenization.
"""

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from sentiment_rnn.data import TokenDataset
from sentiment_rnn.embeddings import EmbeddingConfig, fit_embeddings
from sentiment_rnn.model import ModelConfig, SentimentRNN, count_parameters
from sentiment_rnn.tokenize import Encoded, TokenizeConfig, encode, train_tokenizer
from sentiment_rnn.train import TrainConfig, fit, resolve_device, set_forget_gate_bias


def merged(defaults: dict[str, Any], run: dict[str, Any], key: str) -> dict[str, Any]:
    return {**defaults.get(key, {}), **run.get(key, {})}


def tokenized(
    frames: dict[str, pd.DataFrame], unsup: list[str], cfg: TokenizeConfig, emb: dict[str, Any]
) -> tuple[dict[str, TokenDataset], np.ndarray | None, float]:
    """Fit the tokenizer on train, encode train and val; word vectors if `emb` asks for them."""
    t0 = time.perf_counter()
    tok = train_tokenizer(frames["train"]["text"].tolist(), cfg)
    splits = {}
    for name, df in frames.items():
        ids, lengths, full = encode(tok, df["text"].tolist(), cfg.max_length, cfg.truncation_side)
        splits[name] = TokenDataset(
            Encoded(ids, lengths, full, df["label"].to_numpy(dtype=np.int64))
        )
    vectors = None
    if emb:
        texts = frames["train"]["text"].tolist() + unsup
        vectors = fit_embeddings(tok, texts, EmbeddingConfig(**emb)).vectors
    return splits, vectors, time.perf_counter() - t0


def run_one(
    arch: str,
    model_cfg: dict[str, Any],
    train_cfg: dict[str, Any],
    data: dict[str, TokenDataset],
    vectors: np.ndarray | None,
    vocab_size: int,
) -> dict[str, Any]:
    cfg = TrainConfig.from_dict(train_cfg)
    mcfg = ModelConfig.from_dict({"arch": arch, "vocab_size": vocab_size, **model_cfg})
    torch.manual_seed(cfg.seed)
    model = SentimentRNN(mcfg)
    if cfg.forget_gate_bias is not None:
        set_forget_gate_bias(model, cfg.forget_gate_bias)
    if vectors is not None:
        model.load_embeddings(torch.from_numpy(vectors))
    result = fit(model, data["train"], data["val"], cfg)
    return {
        "best_val_acc": result.best_val_acc,
        "best_epoch": result.best_epoch,
        "val_acc": [round(h.val_acc, 4) for h in result.history],
        "train_acc": [round(h.train_acc, 4) for h in result.history],
        "epoch_seconds": [round(h.seconds, 2) for h in result.history],
        "train_seconds": round(result.seconds, 1),
        "parameters": count_parameters(model),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--raw",
        type=Path,
        default=Path("data/raw"),
        help="folder with train.parquet and val.parquet (the download stage's)",
    )
    parser.add_argument(
        "--unsupervised",
        type=Path,
        default=None,
        help="parquet of unlabelled reviews for runs with word vectors",
    )
    parser.add_argument("--grid", type=Path, required=True, help="grid YAML (see module doc)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these names")
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks/sweep.json"))
    args = parser.parse_args()

    grid = yaml.safe_load(args.grid.read_text())
    defaults, runs = grid.get("defaults", {}), grid["runs"]
    if args.only:
        runs = [r for r in runs if r["name"] in args.only]
    frames = {s: pd.read_parquet(args.raw / f"{s}.parquet") for s in ("train", "val")}
    unsup = pd.read_parquet(args.unsupervised)["text"].tolist() if args.unsupervised else []
    device = resolve_device(merged(defaults, {}, "train").get("device", "auto"))
    cache: dict[str, tuple[dict[str, TokenDataset], np.ndarray | None, float]] = {}
    results = []
    for run in runs:
        tok_cfg = TokenizeConfig(**merged(defaults, run, "tokenize"))
        emb = merged(defaults, run, "embeddings") if run.get("embeddings") else {}
        key = json.dumps([tok_cfg.__dict__, emb], sort_keys=True)
        if key not in cache:
            cache[key] = tokenized(frames, unsup, tok_cfg, emb)
        data, vectors, prep_seconds = cache[key]
        print(f"== {run['name']} ({run['arch']})", flush=True)
        row = {
            "name": run["name"],
            "arch": run["arch"],
            "tokenize": tok_cfg.__dict__,
            "embeddings": emb,
            "model": merged(defaults, run, "model"),
            "train": merged(defaults, run, "train"),
            "prep_seconds": round(prep_seconds, 1),
        }
        row |= run_one(run["arch"], row["model"], row["train"], data, vectors, tok_cfg.vocab_size)
        print(
            f"   best val {row['best_val_acc']:.4f} at epoch {row['best_epoch']}, "
            f"val by epoch {row['val_acc']}, {row['train_seconds']} s",
            flush=True,
        )
        results.append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "device": torch.cuda.get_device_name()
                    if device.type == "cuda"
                    else platform.processor(),
                    "torch": torch.__version__,
                    "split": "validation (carved from train); test never read",
                    "runs": results,
                },
                indent=2,
            )
        )
    print(f"\n{'run':32s} {'arch':5s} {'best val':>9s} {'epoch':>5s} {'s/epoch':>8s}")
    for r in results:
        print(
            f"{r['name']:32s} {r['arch']:5s} {r['best_val_acc']:9.4f} {r['best_epoch']:5d} "
            f"{np.mean(r['epoch_seconds']):8.1f}"
        )


if __name__ == "__main__":
    main()
