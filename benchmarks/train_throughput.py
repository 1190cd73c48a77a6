"""Training-loop overhead: the train stage's epoch loop vs a bare PyTorch loop, same batches.

Prints the throughput ratio and writes reports/benchmarks/train_throughput.json. Run from the
project root after `dvc repro tokenize` (it reads data/tokens/train.npz):

    python benchmarks/train_throughput.py --arch lstm --steps 40 --repeats 3
"""

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sentiment_rnn.data import TokenDataset, bucketed_batches
from sentiment_rnn.model import ModelConfig, SentimentRNN
from sentiment_rnn.tokenize import load_encoded
from sentiment_rnn.train import (
    TrainConfig,
    make_optimizer,
    resolve_device,
    train_epoch,
    weight_average,
)


def bare_loop(
    model: nn.Module, data: TokenDataset, batches: list[np.ndarray], device: torch.device
) -> float:
    """The plainest loop over the same batches: forward, loss, backward, AdamW step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    tokens, start = 0, time.perf_counter()
    for idx in batches:
        batch = data.batch(idx, device)
        loss = nn.functional.binary_cross_entropy_with_logits(
            model(batch.token_ids, batch.lengths), batch.labels
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        tokens += batch.tokens
    if device.type == "cuda":
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - start)


def stage_loop(
    model: SentimentRNN,
    data: TokenDataset,
    batches: list[np.ndarray],
    cfg: TrainConfig,
    device: torch.device,
) -> float:
    """The train stage's own epoch loop (clipping, schedule, weight average, accounting, bar)."""
    optimizer, schedule = make_optimizer(model, cfg, len(batches))
    ema = weight_average(model, cfg.ema_decay)
    start = time.perf_counter()
    _, _, tokens = train_epoch(
        model, data, batches, optimizer, schedule, cfg, device, "bench", ema
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="lstm", choices=["rnn", "lstm", "gru"])
    parser.add_argument("--steps", type=int, default=40, help="batches per timed loop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--ema-decay", type=float, default=0.998, help="the stage's weight average (0 = off)"
    )
    parser.add_argument("--tokens", type=Path, default=Path("data/tokens/train.npz"))
    parser.add_argument(
        "--out", type=Path, default=Path("reports/benchmarks/train_throughput.json")
    )
    args = parser.parse_args()

    cfg = replace(TrainConfig(), device="auto", bf16=False, ema_decay=args.ema_decay)
    device = resolve_device(cfg.device)
    data = TokenDataset(load_encoded(args.tokens))
    batches = bucketed_batches(data.lengths_np, cfg.batch_size, np.random.default_rng(0))[
        : args.steps
    ]
    model_cfg = ModelConfig(arch=args.arch, vocab_size=int(data.ids.max()) + 1)
    bare, stage = [], []
    for _ in range(args.repeats):  # alternate, so drift in machine load hits both alike
        torch.manual_seed(0)
        bare.append(bare_loop(SentimentRNN(model_cfg).to(device), data, batches, device))
        torch.manual_seed(0)
        stage.append(stage_loop(SentimentRNN(model_cfg).to(device), data, batches, cfg, device))
    result = {
        "arch": args.arch,
        "device": str(device),
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "ema_decay": args.ema_decay,
        "repeats": args.repeats,
        "bare_tokens_per_s": [round(x) for x in bare],
        "stage_tokens_per_s": [round(x) for x in stage],
        "ratio_stage_over_bare": round(statistics.median(stage) / statistics.median(bare), 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(
        f"stage loop / bare loop throughput: {result['ratio_stage_over_bare']:.3f} (target >= 0.90)"
    )


if __name__ == "__main__":
    main()
