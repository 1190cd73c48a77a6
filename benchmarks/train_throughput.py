"""Training-loop overhead: the train stage's epoch loop vs a bare PyTorch loop, same batches.

    python benchmarks/train_throughput.py --arch lstm --steps 40 --repeats 3

Run from the project root after `dvc repro tokenize` (it reads data/tokens/train.npz). The
two loops alternate, so drift in the machine's load hits both alike; prints the throughput
ratio (median of the repeats) against `--target` and writes <out>.json.
"""

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import _common
import numpy as np
import torch
from torch import nn

from sentiment_rnn import paths
from sentiment_rnn.core.data import TokenDataset, bucketed_batches
from sentiment_rnn.core.device import resolve_device, sync
from sentiment_rnn.core.model import ARCHS, ModelConfig, build_model
from sentiment_rnn.core.tokenizer import load_encoded
from sentiment_rnn.core.training import TrainConfig, make_optimizer, train_epoch, weight_average

DEFAULT_OUT = Path("reports/benchmarks/train_throughput")


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
    sync(device)
    return tokens / (time.perf_counter() - start)


def stage_loop(
    model: nn.Module,
    data: TokenDataset,
    batches: list[np.ndarray],
    cfg: TrainConfig,
    device: torch.device,
) -> float:
    """The train stage's own epoch loop (clipping, schedule, weight average, accounting, bar)."""
    optimizer, schedule = make_optimizer(model, cfg, len(batches))
    ema = weight_average(model, cfg.ema_decay)
    start = time.perf_counter()
    _, _, tokens = train_epoch(model, data, batches, optimizer, schedule, cfg, device, "bench", ema)
    sync(device)
    return tokens / (time.perf_counter() - start)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _common.parser(__doc__, DEFAULT_OUT)
    parser.add_argument("--arch", default="lstm", choices=ARCHS)
    parser.add_argument("--steps", type=int, default=40, help="batches per timed loop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--ema-decay", type=float, default=0.998, help="the stage's weight average (0 = off)"
    )
    parser.add_argument("--tokens", type=Path, default=paths.tokens_file("train"))
    parser.add_argument(
        "--target",
        type=float,
        default=0.90,
        help="the stage / bare throughput ratio the report checks against (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = replace(TrainConfig(), device="auto", bf16=False, ema_decay=args.ema_decay)
    device = resolve_device(cfg.device)
    data = TokenDataset(load_encoded(args.tokens))
    rng = np.random.default_rng(0)
    batches = bucketed_batches(data.lengths_np, cfg.batch_size, rng)[: args.steps]
    model_cfg = ModelConfig(arch=args.arch, vocab_size=int(data.ids.max()) + 1)
    bare, stage = [], []
    for _ in range(args.repeats):  # alternate, so drift in machine load hits both alike
        bare.append(bare_loop(build_model(model_cfg, 0).to(device), data, batches, device))
        stage.append(stage_loop(build_model(model_cfg, 0).to(device), data, batches, cfg, device))
    ratio = round(statistics.median(stage) / statistics.median(bare), 3)
    result = {
        "arch": args.arch,
        "device": str(device),
        "machine": _common.machine("torch"),
        "torch_threads": torch.get_num_threads(),
        "steps": len(batches),
        "ema_decay": args.ema_decay,
        "repeats": args.repeats,
        "bare_tokens_per_s": [round(x) for x in bare],
        "stage_tokens_per_s": [round(x) for x in stage],
        "ratio_stage_over_bare": ratio,
        "target": args.target,
        "within_target": ratio >= args.target,
    }
    _common.write_result(args.out, result)
    print(f"stage loop / bare loop throughput: {ratio:.3f} (target >= {args.target:.2f})")


if __name__ == "__main__":
    main()
