"""Batch prediction speed: onnxruntime vs the same model in PyTorch eager, on this machine.

    python benchmarks/predict_bench.py --models models \\
        --reviews ../shared/data/imdb/plain_text/test-00000-of-00001.parquet \\
        --tokenizer data/tokens/tokenizer.json               # trained weights
    python benchmarks/predict_bench.py --random ...         # random weights of the real size

This machine is shared, and other processes come and go; so both measurements put the
engines side by side on the same batches rather than one after the other:

1. Steps (inference only): each pre-tokenised batch runs `--repeats` times through torch and
   onnxruntime, alternating, and the fastest time of each counts (other processes' bursts
   only ever add time). Each step adds one change to the previous one: length-sorted
   batches, explicit session options, the RNN rewrite, the batch size, parallel execution of
   the two directions, int8 dynamic quantization; then the folded-Scan graph built from the
   trained weights (export/fast_graph.py) over the same batch sizes.
2. End to end, one run: `predict_file` reads the Parquet, tokenises, sorts and batches, and
   writes the output once; every batch goes through torch and onnxruntime (the exported graph
   in fp32 and int8, and the folded graph) in turn, each timed. An engine's end-to-end time
   is the shared part (read, tokenise, batch, write) plus its own inference time.
3. Accuracy: fp32 and int8 against torch (label agreement, max probability gap) and, when
   the file has labels, accuracy (int8 through one more, untimed, pass).

Peak memory of `sentiment-rnn predict` is measured by benchmarks/predict_memory.py.
Writes <out>.json and <out>.md; which weights were used is written in both.
"""

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _common
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer

from sentiment_rnn.core.model import ModelConfig, SentimentRNN, load_model, predict_proba
from sentiment_rnn.core.tokenizer import TokenizeConfig
from sentiment_rnn.export.fast_graph import build_fast_graph
from sentiment_rnn.export.onnx import to_onnx
from sentiment_rnn.files import sha256_file
from sentiment_rnn.params import load_params
from sentiment_rnn.serving.contract import ServingMeta
from sentiment_rnn.serving.encoding import encode_texts, pad_batch
from sentiment_rnn.serving.model import OnnxSentimentModel, load_onnx_model
from sentiment_rnn.serving.predict import PredictOptions, predict_file
from sentiment_rnn.serving.quantize import quantize_int8
from sentiment_rnn.serving.session import CPU, SessionConfig, create_session

DEFAULT_OUT = Path("reports/benchmarks/predict")

Batch = tuple[np.ndarray, np.ndarray]  # (token_ids (B, T) int64, lengths (B,) int64)


# ---------------------------------------------------------------- models


def source_model(arch: str, models_dir: Path | None, vocab_size: int) -> tuple[SentimentRNN, str]:
    """Trained weights from <models>/<arch>/model.pt, or a random model of the real size."""
    if models_dir is not None:
        where = models_dir / arch / "model.pt"
        model, info = load_model(where)
        return model, f"trained ({where}, val acc {info.best_val_acc})"
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch=arch,
        vocab_size=vocab_size,
        embed_dim=128,
        hidden_size=128,
        num_layers=1,
        bidirectional=True,
    )
    return SentimentRNN(cfg).eval(), "random init (embed 128, hidden 128, bidirectional, 1 layer)"


def export(
    model: SentimentRNN, tokenizer: Path, folder: Path, max_length: int
) -> tuple[dict[str, Path], ServingMeta]:
    """The export stage's graph, its int8 copy and the folded-Scan graph, with the tokenizer
    beside them; and their serving metadata."""
    arch = model.cfg.arch
    meta = ServingMeta(
        arch=arch,
        tokenizer_sha256=sha256_file(tokenizer),
        max_length=max_length,
        truncation_side="right",
        pad_id=model.cfg.pad_id,
    )
    graphs = {"export": folder / f"{arch}.onnx", "folded": folder / f"{arch}.folded.onnx"}
    onnx.save(to_onnx(model, meta), str(graphs["export"]))
    onnx.save(build_fast_graph(model, meta), str(graphs["folded"]))
    graphs["int8"] = quantize_int8(graphs["export"], folder / f"{arch}.int8.onnx")
    (folder / f"{arch}.tokenizer.json").write_bytes(tokenizer.read_bytes())
    return graphs, meta


class TorchScoringModel:
    """The torch model behind the interface `predict_file` uses, for a like-for-like run."""

    provider = "torch-eager-cpu"

    def __init__(self, model: SentimentRNN, meta: ServingMeta, tokenizer: Tokenizer) -> None:
        self.model, self.meta, self.tokenizer = model.eval(), meta, tokenizer

    def __call__(self, token_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        ids, lens = torch.from_numpy(token_ids), torch.from_numpy(lengths)
        return predict_proba(self.model, ids, lens).numpy()


def cpu_config(threads: int, parallel: bool = False, rewrite: bool = True) -> SessionConfig:
    return SessionConfig(
        providers=("cpu",), threads=threads, parallel=parallel, rewrite_rnn=rewrite
    )


def ort_session(
    path: Path, threads: int, *, tuned: bool = True, parallel: bool = False, rewrite: bool = True
) -> ort.InferenceSession:
    """tuned=False: onnxruntime's defaults on the exported file, as a first user would open it."""
    if not tuned:
        return ort.InferenceSession(str(path), providers=[CPU])
    return create_session(path, cpu_config(threads, parallel, rewrite))


# ---------------------------------------------------------------- step measurements


def make_batches(rows: list[np.ndarray], batch_size: int, sort: bool) -> list[Batch]:
    lengths = np.array([len(r) for r in rows])
    order = np.argsort(lengths, kind="stable") if sort else np.arange(len(rows))
    return [
        pad_batch([rows[i] for i in order[s : s + batch_size]])
        for s in range(0, len(order), batch_size)
    ]


@dataclass
class StepResult:
    step: str
    batch_size: int
    torch_per_s: float
    ort_per_s: float
    max_abs_diff: float

    @property
    def ratio(self) -> float:
        return self.ort_per_s / self.torch_per_s


def interleaved(
    batches: list[Batch], engines: dict[str, Callable[[Batch], np.ndarray]], repeats: int
) -> tuple[dict[str, float], float]:
    """Reviews/s of each engine over the same batches (fastest of `repeats` per batch,
    engines alternating), and the largest |difference| between the first two engines."""
    rows = sum(len(b[1]) for b in batches)
    for fn in engines.values():
        fn(batches[-1])  # warm-up on the longest batch
    totals = dict.fromkeys(engines, 0.0)
    diff = 0.0
    for batch in batches:
        best = dict.fromkeys(engines, float("inf"))
        outputs: dict[str, np.ndarray] = {}
        for _ in range(repeats):
            for name, fn in engines.items():
                start = time.perf_counter()
                outputs[name] = fn(batch)
                best[name] = min(best[name], time.perf_counter() - start)
        for name in engines:
            totals[name] += best[name]
        first, second = list(outputs.values())[:2]
        diff = max(diff, float(np.abs(first - second).max()))
    return {name: rows / t for name, t in totals.items()}, diff


def torch_engine(model: SentimentRNN) -> Callable[[Batch], np.ndarray]:
    def run(batch: Batch) -> np.ndarray:
        ids, lengths = torch.from_numpy(batch[0]), torch.from_numpy(batch[1])
        return predict_proba(model, ids, lengths).numpy()

    return run


def ort_engine(session: ort.InferenceSession) -> Callable[[Batch], np.ndarray]:
    return lambda b: session.run(["probability"], {"token_ids": b[0], "lengths": b[1]})[0]


def run_steps(
    model: SentimentRNN,
    graphs: dict[str, Path],
    rows: list[np.ndarray],
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> list[StepResult]:
    """Each step adds one change to the previous best; returns a row per step."""
    results: list[StepResult] = []

    def measure(step: str, session: ort.InferenceSession, bs: int, sort: bool = True) -> StepResult:
        engines = {"torch": torch_engine(model), "ort": ort_engine(session)}
        speed, diff = interleaved(make_batches(rows, bs, sort), engines, args.repeats)
        result = StepResult(step, bs, speed["torch"], speed["ort"], diff)
        log(
            f"  {step:44s} bs {bs:4d}: torch {result.torch_per_s:7.1f}/s  "
            f"onnxruntime {result.ort_per_s:7.1f}/s  x{result.ratio:.2f}"
        )
        results.append(result)
        return result

    threads, onnx_path = args.threads, graphs["export"]
    default = ort_session(onnx_path, threads, tuned=False)
    tuned = ort_session(onnx_path, threads, rewrite=False)
    measure("baseline: input order, default session", default, 64, sort=False)
    measure("+ length-sorted batches", default, 64)
    measure("+ session options (ENABLE_ALL, threads)", tuned, 64)
    if model.cfg.arch == "rnn":  # the rewrite only touches RNN nodes
        tuned = ort_session(onnx_path, threads)
        measure("+ RNN nodes served as a Scan", tuned, 64)
    sweep = [measure(f"+ batch size {bs}", tuned, bs) for bs in args.batch_sizes]
    best = max(sweep, key=lambda r: r.ort_per_s).batch_size
    par = measure(
        "+ parallel directions (ORT_PARALLEL)", ort_session(onnx_path, threads, parallel=True), best
    )
    parallel = par.ort_per_s > max(r.ort_per_s for r in sweep) * 1.02
    measure(
        "+ int8 dynamic quantization", ort_session(graphs["int8"], threads, parallel=parallel), best
    )
    folded = [
        measure(
            f"folded-Scan graph (fp32), batch size {bs}", ort_session(graphs["folded"], threads), bs
        )
        for bs in args.batch_sizes
    ]
    log(f"  folded graph best: {max(folded, key=lambda r: r.ort_per_s).batch_size}")
    return results


# ---------------------------------------------------------------- end to end


class SideBySide:
    """The serving interface over several engines: each batch runs through all of them, each
    timed; the first engine's probabilities are returned (and written), the others compared."""

    def __init__(self, engines: dict[str, Any]) -> None:
        self.engines = engines
        first = next(iter(engines.values()))
        self.meta, self.tokenizer, self.provider = first.meta, first.tokenizer, first.provider
        self.seconds = dict.fromkeys(engines, 0.0)
        self.max_gap = dict.fromkeys(engines, 0.0)
        self.label_flips = dict.fromkeys(engines, 0)

    def __call__(self, token_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        outputs = {}
        for name, engine in self.engines.items():
            start = time.perf_counter()
            outputs[name] = engine(token_ids, lengths)
            self.seconds[name] += time.perf_counter() - start
        reference = next(iter(outputs.values()))
        for name, out in outputs.items():
            self.max_gap[name] = max(self.max_gap[name], float(np.abs(out - reference).max()))
            self.label_flips[name] += int(((out > 0.5) != (reference > 0.5)).sum())
        return reference


def end_to_end(
    engines: dict[str, Any], reviews: Path, out: Path, batch_size: int, chunk_rows: int
) -> dict[str, Any]:
    """One `predict_file` run, every batch through every engine; per-engine figures."""
    paired = SideBySide(engines)
    start, load = time.perf_counter(), os.getloadavg()[0]
    options = PredictOptions(batch_size=batch_size, chunk_rows=chunk_rows, progress=False)
    summary = predict_file(paired, reviews, out, options)
    total = time.perf_counter() - start
    shared = total - sum(paired.seconds.values())
    runs = {name: {"engine": f"{name} ({engine.provider})",
                   "seconds": shared + paired.seconds[name],
                   "inference_seconds": paired.seconds[name],
                   "reviews_per_s": summary.rows / (shared + paired.seconds[name]),
                   "max_abs_prob_diff_vs_torch": paired.max_gap[name],
                   "label_flips_vs_torch": paired.label_flips[name]}
            for name, engine in engines.items()}  # fmt: skip
    return {
        "rows": summary.rows,
        "shared_seconds": shared,
        "wall_seconds": total,
        "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
        "runs": runs,
    }


def accuracy(out: Path, labels: np.ndarray | None) -> float | None:
    if labels is None:
        return None
    pred = pq.read_table(out, columns=["label"]).column("label").to_numpy(zero_copy_only=False)
    return float(((pred == "positive") == (labels == 1)).mean())


# ---------------------------------------------------------------- report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Batch prediction: onnxruntime vs PyTorch eager", "",
        f"Weights: **{report['weights']}**. Data: {report['reviews']} "
        f"({report['rows']} reviews), tokenizer {report['tokenizer']}, max_length "
        f"{report['max_length']}.", "",
        f"Machine: {report['machine']}; torch and onnxruntime threads: {report['threads']}. "
        f"Load average at start: {report['load_average_start']}.", "",
        f"Command: `{report['command']}`", "",
    ]  # fmt: skip
    for arch, res in report["archs"].items():
        lines += [
            f"## {arch}",
            "",
            f"Steps on {res['step_rows']} reviews (inference only, "
            "same batches, alternating torch / onnxruntime):",
            "",
            "| step | batch | torch rev/s | onnxruntime rev/s | ratio | max abs diff |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {s['step']} | {s['batch_size']} | {s['torch_per_s']:.1f} | "
            f"{s['ort_per_s']:.1f} | {s['ratio']:.2f}x | {s['max_abs_diff']:.1e} |"
            for s in res["steps"]
        ]
        e2e = res["end_to_end"]
        lines += [
            "",
            f"End to end, one run over {e2e['rows']} reviews ({e2e['config']}; shared "
            f"read/tokenise/batch/write {e2e['shared_seconds']:.1f} s; load average "
            f"{e2e['load_average'][0]} -> {e2e['load_average'][1]}):",
            "",
            "| engine | seconds | reviews/s | inference s | ratio | inference ratio "
            "| max abs diff | label flips |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r['engine']} | {r['seconds']:.1f} | {r['reviews_per_s']:.1f} | "
            f"{r['inference_seconds']:.1f} | **{r['ratio']:.2f}x** | "
            f"{r['inference_ratio']:.2f}x | {r['max_abs_prob_diff_vs_torch']:.1e} | "
            f"{r['label_flips_vs_torch']} |"
            for r in e2e["runs"].values()
        ]
        lines += ["", f"Accuracy on the file's labels: `{json.dumps(e2e['accuracy'])}`", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def best_settings(steps: list[StepResult]) -> tuple[int, bool]:
    """(batch size of the fastest fp32 step, whether parallel execution helped the export)."""
    sweep = [s for s in steps if s.step.startswith("+ batch size")]
    fp32 = sweep + [s for s in steps if s.step.startswith("folded")]
    parallel = next(s for s in steps if "parallel" in s.step)
    best_export = max(sweep, key=lambda s: s.ort_per_s)
    return (
        max(fp32, key=lambda s: s.ort_per_s).batch_size,
        parallel.ort_per_s > best_export.ort_per_s * 1.02,
    )  # beyond noise


def bench_arch(
    arch: str,
    args: argparse.Namespace,
    tokenizer: Tokenizer,
    texts: list[str],
    labels: np.ndarray | None,
    work: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    model, weights = source_model(arch, args.models, tokenizer.get_vocab_size())
    graphs, meta = export(model, args.tokenizer, work, args.max_length)
    log(f"{arch}: {weights}")
    step_rows = encode_texts(tokenizer, texts[: args.step_rows], args.max_length).ids
    steps = run_steps(model, graphs, step_rows, args, log)
    batch_size, parallel = best_settings(steps)

    def served(name: str) -> OnnxSentimentModel:
        config = cpu_config(args.threads, parallel=parallel and name != "folded")
        return load_onnx_model(graphs[name], args.tokenizer, config)

    engines = {
        "torch": TorchScoringModel(model, meta, tokenizer),
        "onnxruntime exported fp32": served("export"),
        "onnxruntime exported int8": served("int8"),
        "onnxruntime folded fp32": served("folded"),
    }
    e2e = end_to_end(
        engines, args.reviews, work / f"{arch}-torch.parquet", batch_size, args.chunk_rows
    )
    torch_run = e2e["runs"]["torch"]
    for run in e2e["runs"].values():
        run["ratio"] = run["reviews_per_s"] / torch_run["reviews_per_s"]
        run["inference_ratio"] = torch_run["inference_seconds"] / run["inference_seconds"]
        log(
            f"  end to end {run['engine']:40s} {run['reviews_per_s']:7.1f} reviews/s "
            f"(inference {run['inference_seconds']:.1f} s + shared {e2e['shared_seconds']:.1f} s)"
            f"  x{run['ratio']:.2f}"
        )
    untimed = PredictOptions(batch_size=batch_size, progress=False)  # int8 labels, input order
    predict_file(
        engines["onnxruntime exported int8"], args.reviews, work / f"{arch}-int8.parquet", untimed
    )
    e2e["accuracy"] = {
        "torch": accuracy(work / f"{arch}-torch.parquet", labels),
        "onnxruntime int8": accuracy(work / f"{arch}-int8.parquet", labels),
    }
    log(f"  accuracy {e2e['accuracy']}")
    return {
        "weights": weights, "step_rows": len(step_rows),
        "steps": [asdict(s) | {"ratio": s.ratio} for s in steps],
        "end_to_end": e2e | {"config": f"batch {batch_size}, parallel={parallel}, chunk rows "
                                       f"{args.chunk_rows}, {args.threads} thread(s)"},
        "served": {"batch_size": batch_size, "parallel": parallel},
    }  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _common.parser(__doc__, DEFAULT_OUT)
    parser.add_argument("--reviews", type=Path, required=True, help="Parquet with a text column")
    parser.add_argument("--tokenizer", type=Path, required=True)
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--models", type=Path, help="folder with <arch>/model.pt (trained)")
    weights.add_argument("--random", action="store_true", help="random weights of the real size")
    parser.add_argument("--archs", default="rnn,lstm,gru")
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens kept per review (default: tokenize.max_length of "
        "params.yaml, as the exported models serve)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--step-rows", type=int, default=1000, help="reviews for the step table")
    parser.add_argument("--repeats", type=int, default=3, help="runs per batch in the steps")
    parser.add_argument("--chunk-rows", type=int, default=8192)
    parser.add_argument("--batch-sizes", default="32,64,128,256,512")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.max_length is None:
        args.max_length = serving_length(Path("params.yaml"))
    return args


def serving_length(params: Path) -> int:
    """`tokenize.max_length` of the project's params.yaml, else the tokenizer's default."""
    tokenize = load_params(params).get("tokenize", {}) if params.is_file() else {}
    return int(tokenize.get("max_length", TokenizeConfig().max_length))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        print(message, flush=True)

    tokenizer = Tokenizer.from_file(str(args.tokenizer))
    frame = pd.read_parquet(args.reviews)
    labels = frame["label"].to_numpy() if "label" in frame else None
    report: dict[str, Any] = {
        "command": _common.command(__file__, argv),
        "reviews": str(args.reviews), "rows": len(frame), "tokenizer": str(args.tokenizer),
        "max_length": args.max_length, "threads": args.threads,
        "machine": _common.machine("torch", "onnxruntime-gpu"),
        "load_average_start": [round(x, 2) for x in os.getloadavg()], "archs": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        work = Path(tmp)
        for arch in args.archs.split(","):
            report["archs"][arch] = bench_arch(
                arch, args, tokenizer, frame["text"].tolist(), labels, work, log
            )
            report["weights"] = report["archs"][arch]["weights"]
    _common.write_result(args.out, report, markdown(report))


if __name__ == "__main__":
    main()
