"""Hyperparameter sweep on the validation split: which configuration goes into params.yaml.

    python benchmarks/sweep.py --raw data/raw --grid benchmarks/grids/accuracy.yaml \\
        --unsupervised data/raw/unsupervised.parquet --out reports/benchmarks/sweep

Trains every run of a grid file with the train stage's own pieces (`build_model`, `fit`: same
model, batches, optimiser, schedule and early stopping) and reports validation accuracy per
epoch and epoch times. The test split is never read: model selection happens on validation
only. Needs only torch, numpy, pandas, pyyaml and tokenizers, so it also runs on a bare GPU
machine.

Grid file: `defaults` (tokenize, model, train, embeddings) and `runs`, each with a `name`, an
`arch` and any overrides of those sections (`embeddings` only for runs that set it: word
vectors for the embedding layer). Runs that share a tokenizer setting share one tokenization.
Writes <out>.json after every run, and <out>.md at the end.
"""

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _common
import numpy as np
import pandas as pd
import torch
import yaml

from sentiment_rnn.core.data import TokenDataset
from sentiment_rnn.core.device import resolve_device
from sentiment_rnn.core.embeddings import EmbeddingConfig, fit_embeddings
from sentiment_rnn.core.model import ModelConfig, build_model, count_parameters
from sentiment_rnn.core.tokenizer import TokenizeConfig, encode_split, train_tokenizer
from sentiment_rnn.core.training import TrainConfig, fit

DEFAULT_OUT = Path("reports/benchmarks/sweep")


@dataclass
class Prepared:
    """What the runs of one tokenizer setting share."""

    splits: dict[str, TokenDataset]  # train, val
    vectors: np.ndarray | None  # word vectors for the embedding layer
    vocab_size: int  # the fitted tokenizer's, as the tokenize stage records it
    seconds: float


def merged(defaults: dict[str, Any], run: dict[str, Any], key: str) -> dict[str, Any]:
    return {**defaults.get(key, {}), **run.get(key, {})}


def tokenized(
    frames: dict[str, pd.DataFrame], unlabelled: list[str], cfg: TokenizeConfig, emb: dict
) -> Prepared:
    """The tokenize stage's steps on train and val, and the embeddings stage's word vectors
    when `emb` asks for them; with the seconds they took."""
    t0 = time.perf_counter()
    train_texts = frames["train"]["text"].tolist()
    tok = train_tokenizer(train_texts, cfg)
    splits = {
        name: TokenDataset(encode_split(tok, df["text"].tolist(), df["label"].to_numpy(), cfg))
        for name, df in frames.items()
    }
    vectors = None
    if emb:
        vectors = fit_embeddings(tok, train_texts + unlabelled, EmbeddingConfig(**emb)).vectors
    return Prepared(splits, vectors, tok.get_vocab_size(), time.perf_counter() - t0)


def run_one(
    arch: str, model: dict[str, Any], train: dict[str, Any], prepared: Prepared
) -> dict[str, Any]:
    """Train one run as the train stage does; its validation curve and timings."""
    cfg = TrainConfig(**train)
    model_cfg = ModelConfig(**{"arch": arch, "vocab_size": prepared.vocab_size, **model})
    net = build_model(model_cfg, cfg.seed, cfg.forget_gate_bias, prepared.vectors)
    result = fit(net, prepared.splits["train"], prepared.splits["val"], cfg)
    return {
        "best_val_acc": result.best_val_acc,
        "best_epoch": result.best_epoch,
        "best_weights": result.best_weights,
        "val_acc": [round(h.val_acc, 4) for h in result.history],
        "train_acc": [round(h.train_acc, 4) for h in result.history],
        "epoch_seconds": [round(h.seconds, 2) for h in result.history],
        "train_seconds": round(result.seconds, 1),
        "parameters": count_parameters(net),
    }


def table(results: list[dict[str, Any]]) -> str:
    """The runs as a markdown table, best validation accuracy first."""
    lines = ["| run | arch | best val acc | epoch | s/epoch |", "| --- | --- | --- | --- | --- |"]
    for r in sorted(results, key=lambda r: -r["best_val_acc"]):
        lines.append(
            f"| {r['name']} | {r['arch']} | {r['best_val_acc']:.4f} | {r['best_epoch']} | "
            f"{np.mean(r['epoch_seconds']):.1f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _common.parser(__doc__, DEFAULT_OUT)
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
    parser.add_argument("--grid", type=Path, required=True, help="grid YAML (see above)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these names")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    grid = yaml.safe_load(args.grid.read_text())
    defaults, runs = grid.get("defaults", {}), grid["runs"]
    if args.only:
        runs = [r for r in runs if r["name"] in args.only]
    frames = {s: pd.read_parquet(args.raw / f"{s}.parquet") for s in ("train", "val")}
    unlabelled = pd.read_parquet(args.unsupervised)["text"].tolist() if args.unsupervised else []
    device = resolve_device(merged(defaults, {}, "train").get("device", "auto"))
    report: dict[str, Any] = {
        "command": _common.command(__file__, argv),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "machine": _common.machine("torch"),
        "split": "validation (carved from train); test never read",
        "runs": [],
    }
    cache: dict[str, Prepared] = {}
    for run in runs:
        tok_cfg = TokenizeConfig(**merged(defaults, run, "tokenize"))
        emb = merged(defaults, run, "embeddings") if run.get("embeddings") else {}
        key = json.dumps([asdict(tok_cfg), emb], sort_keys=True)
        if key not in cache:
            cache[key] = tokenized(frames, unlabelled, tok_cfg, emb)
        print(f"== {run['name']} ({run['arch']})", flush=True)
        row = {
            "name": run["name"],
            "arch": run["arch"],
            "tokenize": asdict(tok_cfg),
            "embeddings": emb,
            "model": merged(defaults, run, "model"),
            "train": merged(defaults, run, "train"),
            "prep_seconds": round(cache[key].seconds, 1),
        }
        row |= run_one(run["arch"], row["model"], row["train"], cache[key])
        print(
            f"   best val {row['best_val_acc']:.4f} at epoch {row['best_epoch']}, "
            f"val by epoch {row['val_acc']}, {row['train_seconds']} s",
            flush=True,
        )
        report["runs"].append(row)
        _common.write_result(args.out, report)  # after every run: a long sweep keeps its results
    text = table(report["runs"])
    _common.write_result(args.out, report, f"# Sweep: {args.grid}\n\n{text}")
    print(text)


if __name__ == "__main__":
    main()
