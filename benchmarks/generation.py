"""Generated reviews, judged: does the requested sentiment come out, and is the text varied?

    python benchmarks/generation.py                      # the LSTM language model, 200 samples
    python benchmarks/generation.py --lm models/lm-gru/lm.pt --samples 50

Draws `--samples` reviews of `--max-tokens` tokens from a language model of the `lm` stage
(half asked `positive`, half `negative`; temperature 0.9, top-p 0.95 unless told otherwise),
then scores them with the project's best classifier (the exported ONNX model of the arch with
the highest validation accuracy in reports/metrics/train-<arch>.json, unless `--classifier`).
Prints and writes to <out>.json / <out>.md, with ten samples shown:
- agreement: the share of samples the classifier labels with the requested sentiment
  (target >= 0.85);
- distinct bigrams: distinct word bigrams over all bigrams of all samples (target >= 0.5);
- repeated 4-grams: the share of a sample's word 4-grams seen earlier in the same sample,
  pooled over the samples (target <= 0.05).
Several `--steer` values make a sweep: one table row per strength, no samples shown.
"""

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _common

from sentiment_rnn import paths
from sentiment_rnn.core.generate import Sampling
from sentiment_rnn.core.model import ARCHS
from sentiment_rnn.files import read_json
from sentiment_rnn.generate import DEFAULT_STEER, Request, Sample, run_generate
from sentiment_rnn.serving.batching import infer_chunk, prepare_chunk
from sentiment_rnn.serving.io import Chunk
from sentiment_rnn.serving.model import load_model
from sentiment_rnn.serving.session import SessionConfig

DEFAULT_OUT = Path("reports/benchmarks/generation")
TARGETS = {"agreement": 0.85, "distinct_bigrams": 0.5, "repeated_4grams": 0.05}
SHOWN = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _common.parser(__doc__, DEFAULT_OUT)
    parser.add_argument("--lm", type=Path, default=paths.lm_dir("lstm") / "lm.pt")
    parser.add_argument("--classifier", type=Path, default=None, help="an exported .onnx model")
    parser.add_argument("--samples", type=int, default=200, help="in all, half per sentiment")
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--guidance", type=float, default=Sampling.guidance,
                        help="classifier-free guidance of the sentiment (0: off)")  # fmt: skip
    parser.add_argument("--steer", type=float, nargs="+", default=[DEFAULT_STEER],
                        help="lexicon steering of the sentiment (0: off); several values: a "
                        "sweep, one table row each")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def best_classifier() -> tuple[str, Path]:
    """The arch with the highest validation accuracy, and its exported model."""
    found = {
        arch: read_json(paths.metrics_file("train", arch))["best_val_acc"]
        for arch in ARCHS
        if paths.metrics_file("train", arch).is_file() and paths.onnx_path(arch).is_file()
    }
    if not found:
        raise SystemExit("no trained and exported classifier: run `dvc repro export@lstm` first")
    arch = max(found, key=found.__getitem__)
    return arch, paths.onnx_path(arch)


def words(sample: Sample) -> list[str]:
    return sample.text.lower().split()


def distinct_bigrams(samples: list[Sample]) -> float:
    bigrams = [tuple(w[i : i + 2]) for s in samples for w in [words(s)] for i in range(len(w) - 1)]
    return len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def repeated_4grams(samples: list[Sample]) -> float:
    repeats = total = 0
    for sample in samples:
        w = words(sample)
        grams = Counter(tuple(w[i : i + 4]) for i in range(len(w) - 3))
        total += sum(grams.values())
        repeats += sum(count - 1 for count in grams.values())
    return repeats / total if total else 0.0


def classify(classifier: Path, texts: list[str]) -> tuple[list[str], list[str]]:
    """(label, status) per text, as `sentiment-rnn predict` would give them."""
    model = load_model(str(classifier), None, SessionConfig(providers=("cpu",)))
    scored = infer_chunk(model, prepare_chunk(model, Chunk(0, texts)), 64)
    names = model.meta.label_names
    labels = [names[int(p > 0.5)] for p in scored.probability]
    return labels, scored.status


def measure(args: argparse.Namespace, steer: float) -> dict[str, Any]:
    sampling = Sampling(temperature=args.temperature, top_p=args.top_p, guidance=args.guidance)
    samples: list[Sample] = []
    start = time.perf_counter()
    for offset, sentiment in enumerate(("positive", "negative")):
        request = Request(
            max_tokens=args.max_tokens,
            samples=args.samples // 2,
            seed=args.seed + offset,
            sentiment=sentiment,
            sampling=sampling,
            steer=steer,
        )
        samples += run_generate(args.lm, request)
    seconds = time.perf_counter() - start
    arch, classifier = (None, args.classifier) if args.classifier else best_classifier()
    labels, status = classify(classifier, [s.text for s in samples])
    agree = [lab == s.sentiment for lab, s in zip(labels, samples, strict=True)]
    figures = {
        "agreement": sum(agree) / len(samples),
        "distinct_bigrams": distinct_bigrams(samples),
        "repeated_4grams": repeated_4grams(samples),
    }
    return {
        "lm": str(args.lm),
        "classifier": str(classifier),
        "classifier_arch": arch,
        "samples": len(samples),
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "guidance": args.guidance,
        "steer": steer,
        "seed": args.seed,
        "generation_seconds": round(seconds, 2),
        "tokens_per_second": round(sum(s.tokens for s in samples) / seconds, 1),
        "ended_by_model": sum(s.ended for s in samples),
        "unscored": sum(st != "ok" for st in status),
        **{k: round(v, 4) for k, v in figures.items()},
        "targets": TARGETS,
        "met": {
            "agreement": figures["agreement"] >= TARGETS["agreement"],
            "distinct_bigrams": figures["distinct_bigrams"] >= TARGETS["distinct_bigrams"],
            "repeated_4grams": figures["repeated_4grams"] <= TARGETS["repeated_4grams"],
        },
        "shown": [
            {"sentiment": s.sentiment, "classified": lab, "text": s.text}
            for s, lab in list(zip(samples, labels, strict=True))[: SHOWN // 2]
            + list(zip(samples, labels, strict=True))[-(SHOWN // 2) :]
        ],
    }


def markdown(result: dict[str, Any], command: str, machine: str) -> str:
    rows = [
        f"| {name.replace('_', ' ')} | {result[name]:.3f} | "
        f"{'>=' if name != 'repeated_4grams' else '<='} {target} | "
        f"{'yes' if result['met'][name] else 'no'} |"
        for name, target in TARGETS.items()
    ]
    shown = [
        f"{i + 1}. *asked {s['sentiment']}, classified {s['classified']}*: {s['text']}"
        for i, s in enumerate(result["shown"])
    ]
    return "\n".join(
        [
            "# Generated reviews",
            "",
            f"`{command}` on {machine}.",
            "",
            f"{result['samples']} samples of up to {result['max_tokens']} tokens from "
            f"`{result['lm']}` (temperature {result['temperature']}, top-p {result['top_p']}, "
            f"guidance {result['guidance']}, lexicon steering {result['steer']}, "
            f"half asked positive, half negative), scored by `{result['classifier']}`; "
            f"{result['tokens_per_second']:,.0f} tokens/s, {result['ended_by_model']} ended "
            "by the model.",
            "",
            "| figure | value | target | met |",
            "|---|---|---|---|",
            *rows,
            "",
            "## Ten samples",
            "",
            *shown,
            "",
        ]
    )


def sweep_markdown(results: list[dict[str, Any]], command: str, machine: str) -> str:
    first = results[0]
    rows = [
        f"| {r['steer']} | {r['agreement']:.3f} | {r['distinct_bigrams']:.3f} | "
        f"{r['repeated_4grams']:.3f} | {r['ended_by_model']} |"
        for r in results
    ]
    return "\n".join(
        [
            "# Generated reviews: a sweep of the lexicon steering strength",
            "",
            f"`{command}` on {machine}.",
            "",
            f"{first['samples']} samples of up to {first['max_tokens']} tokens per strength from "
            f"`{first['lm']}` (temperature {first['temperature']}, top-p {first['top_p']}, seed "
            f"{first['seed']}), half asked positive, half negative, scored by "
            f"`{first['classifier']}`.",
            "",
            "| steer | agreement | distinct bigrams | repeated 4-grams | ended by the model |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.samples < 2:
        raise SystemExit("--samples must be >= 2 (half per sentiment)")
    command = _common.command(__file__, argv)
    machine = _common.machine("torch", "onnxruntime-gpu")
    if len(args.steer) > 1:
        results = [measure(args, steer) for steer in args.steer]
        for r in results:
            figures = ", ".join(f"{name} {r[name]:.3f}" for name in TARGETS)
            print(f"steer {r['steer']}: {figures}")
        report = {"command": command, "machine": machine, "sweep": results}
        _common.write_result(args.out, report, sweep_markdown(results, command, machine))
        return
    result = measure(args, args.steer[0])
    result |= {"command": command, "machine": machine}
    files = _common.write_result(args.out, result, markdown(result, command, machine))
    for name in TARGETS:
        print(f"{name}: {result[name]:.3f} (target {TARGETS[name]}, met {result['met'][name]})")
    print("wrote", *files)


if __name__ == "__main__":
    main()
