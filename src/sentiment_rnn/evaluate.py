"""Stage `evaluate`: final report of one trained model on the test split.

The test split is read here only, after training and selection are done: nothing computed here
feeds back into model or checkpoint choice. The core (`predict_split`, `report_metrics`, ...) is
pure numpy / torch / scikit-learn; `run_evaluate`, the stage's entry, writes the metrics file,
the DVC plot files and images, and logs the same numbers to the MLflow run that trained the
model.

Review length groups: the test split's full (untruncated) token lengths are cut at their
terciles, so "short", "medium" and "long" each hold about a third of the reviews; the cut
points are written to the metrics file.
"""

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn import metrics as skm
from tqdm.auto import tqdm

from sentiment_rnn.data import TokenDataset, sorted_batches
from sentiment_rnn.errors import UserError
from sentiment_rnn.model import SentimentRNN, predict_proba

log = logging.getLogger(__name__)

LABEL_NAMES = ("negative", "positive")
LENGTH_GROUPS = ("short", "medium", "long")
THRESHOLD = 0.5  # probability of the positive class above which a review is called positive
MAX_CURVE_POINTS = 500  # curves are thinned to this many points for DVC plots


@dataclass
class Predictions:
    """Positive-class probabilities in the split's row order, and the time the pass took."""

    probs: np.ndarray  # (N,) float64
    seconds: float
    device: str

    @property
    def reviews_per_second(self) -> float:
        return len(self.probs) / max(self.seconds, 1e-9)


def _bar(total: int, desc: str) -> tqdm:
    disable = None if sys.stderr.isatty() else True
    return tqdm(total=total, desc=desc, unit="batch", mininterval=1.0, disable=disable, leave=False)


def predict_split(
    model: SentimentRNN, data: TokenDataset, batch_size: int, device: torch.device
) -> Predictions:
    """Probabilities for every row, in length-sorted batches; the timed pass follows a warm-up."""
    model.to(device).eval()
    batches = list(sorted_batches(data.lengths_np, batch_size))
    warm = data.batch(batches[-1], device)  # the longest batch: allocates the largest buffers
    predict_proba(model, warm.token_ids, warm.lengths)
    probs = np.empty(len(data), dtype=np.float64)
    _sync(device)
    start = time.perf_counter()
    with _bar(len(batches), "evaluate") as bar:
        for idx in batches:
            batch = data.batch(idx, device)
            probs[idx] = predict_proba(model, batch.token_ids, batch.lengths).cpu().numpy()
            bar.update(1)
    _sync(device)
    return Predictions(probs, time.perf_counter() - start, str(device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (positive class), ROC-AUC and log loss."""
    if len(np.unique(labels)) < 2:
        raise UserError("the test split holds a single class: ROC-AUC is undefined; rerun download")
    preds = (probs > THRESHOLD).astype(np.int64)
    return {
        "accuracy": float(skm.accuracy_score(labels, preds)),
        "precision": float(skm.precision_score(labels, preds, zero_division=0)),
        "recall": float(skm.recall_score(labels, preds, zero_division=0)),
        "f1": float(skm.f1_score(labels, preds, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(labels, probs)),
        "log_loss": float(skm.log_loss(labels, probs, labels=[0, 1])),
    }


def confusion(labels: np.ndarray, preds: np.ndarray) -> dict[str, int]:
    """Counts of true / false negatives and positives."""
    tn, fp, fn, tp = skm.confusion_matrix(labels, preds, labels=[0, 1]).ravel()
    return {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}


def length_edges(full_lengths: np.ndarray) -> tuple[float, float]:
    """Tercile cut points of the untruncated token lengths."""
    low, high = np.percentile(full_lengths, [100 / 3, 200 / 3])
    return float(low), float(high)


def length_groups(full_lengths: np.ndarray, edges: tuple[float, float]) -> np.ndarray:
    """0 (short: <= first cut), 1 (medium: <= second cut), 2 (long) for every review."""
    return np.searchsorted(np.asarray(edges), full_lengths, side="left")


def accuracy_by_length(
    labels: np.ndarray, preds: np.ndarray, full_lengths: np.ndarray, edges: tuple[float, float]
) -> dict[str, dict[str, float]]:
    """Accuracy and size of each length group; an empty group reports accuracy 0 and rows 0."""
    groups = length_groups(full_lengths, edges)
    out: dict[str, dict[str, float]] = {}
    for code, name in enumerate(LENGTH_GROUPS):
        mask = groups == code
        rows = int(mask.sum())
        acc = float((preds[mask] == labels[mask]).mean()) if rows else 0.0
        out[name] = {"accuracy": acc, "rows": rows}
    return out


def thin(points: np.ndarray, limit: int = MAX_CURVE_POINTS) -> np.ndarray:
    """Keep at most `limit` rows, evenly spaced, always with the first and last."""
    if len(points) <= limit:
        return points
    keep = np.unique(np.linspace(0, len(points) - 1, limit).round().astype(int))
    return points[keep]


def roc_points(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(K, 3) rows of false positive rate, true positive rate, threshold."""
    fpr, tpr, thr = skm.roc_curve(labels, probs)
    return thin(np.column_stack([fpr, tpr, np.minimum(thr, 1.0)]))


def pr_points(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(K, 3) rows of recall, precision, threshold (the last point has no threshold: 1.0)."""
    precision, recall, thr = skm.precision_recall_curve(labels, probs)
    return thin(np.column_stack([recall, precision, np.append(thr, 1.0)]))


def report_metrics(
    labels: np.ndarray, probs: np.ndarray, full_lengths: np.ndarray
) -> dict[str, Any]:
    """Every number of the report except throughput, as a nested dict of plain values."""
    preds = (probs > THRESHOLD).astype(np.int64)
    edges = length_edges(full_lengths)
    return {
        "rows": int(len(labels)),
        **classification_metrics(labels, probs),
        "threshold": THRESHOLD,
        "confusion": confusion(labels, preds),
        "length_cuts": {"short_max_tokens": edges[0], "medium_max_tokens": edges[1]},
        "by_length": accuracy_by_length(labels, preds, full_lengths, edges),
    }


def numeric_items(data: dict[str, Any], prefix: str, sep: str = "/") -> dict[str, float]:
    """Flatten nested numbers for MLflow: {'a': {'b': 1}} -> {'<prefix>a/b': 1.0}."""
    flat: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(numeric_items(value, f"{name}{sep}", sep))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def write_curve_csv(path: Path, header: tuple[str, ...], rows: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)] + [",".join(f"{v:.6g}" for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def write_confusion_csv(path: Path, labels: np.ndarray, preds: np.ndarray) -> None:
    """One row per review (actual, predicted), the input of DVC's confusion template."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = np.asarray(LABEL_NAMES)
    rows = [f"{a},{p}" for a, p in zip(names[labels], names[preds], strict=True)]
    path.write_text("\n".join(["actual,predicted", *rows]) + "\n")


def plot_evaluation(
    path: Path, arch: str, roc: np.ndarray, pr: np.ndarray, report: dict[str, Any]
) -> None:
    """ROC, precision-recall, confusion matrix and accuracy by length, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    ax_roc, ax_pr, ax_cm, ax_len = axes.ravel()
    ax_roc.plot(roc[:, 0], roc[:, 1], label=f"AUC {report['roc_auc']:.3f}")
    ax_roc.plot([0, 1], [0, 1], ":", color="grey")
    ax_roc.set(
        title=f"{arch}: ROC (test)", xlabel="false positive rate", ylabel="true positive rate"
    )
    ax_pr.plot(pr[:, 0], pr[:, 1], label=f"F1 {report['f1']:.3f}")
    ax_pr.set(title=f"{arch}: precision-recall (test)", xlabel="recall", ylabel="precision")
    c = report["confusion"]
    matrix = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    ax_cm.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax_cm.text(j, i, str(count), ha="center", va="center")
    ax_cm.set(
        title=f"{arch}: confusion (test)",
        xlabel="predicted",
        ylabel="actual",
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=LABEL_NAMES,
        yticklabels=LABEL_NAMES,
    )
    groups = report["by_length"]
    ax_len.bar(list(groups), [g["accuracy"] for g in groups.values()])
    ax_len.set(title=f"{arch}: accuracy by review length", ylabel="accuracy", ylim=(0, 1))
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is ax_roc else "lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class EvalOutputs:
    """Where the stage writes, for one arch."""

    metrics: Path
    roc: Path
    pr: Path
    confusion: Path
    image: Path

    @classmethod
    def for_arch(cls, arch: str, metrics_dir: Path, plots_dir: Path) -> "EvalOutputs":
        return cls(
            metrics=metrics_dir / f"eval-{arch}.json",
            roc=plots_dir / f"roc-{arch}.csv",
            pr=plots_dir / f"pr-{arch}.csv",
            confusion=plots_dir / f"confusion-{arch}.csv",
            image=plots_dir / f"eval-{arch}.png",
        )


def write_outputs(
    out: EvalOutputs, arch: str, labels: np.ndarray, probs: np.ndarray, report: dict[str, Any]
) -> None:
    """The metrics file, the three DVC plot files and the PNG."""
    from sentiment_rnn.files import write_json

    roc, pr = roc_points(labels, probs), pr_points(labels, probs)
    write_curve_csv(out.roc, ("fpr", "tpr", "threshold"), roc)
    write_curve_csv(out.pr, ("recall", "precision", "threshold"), pr)
    write_confusion_csv(out.confusion, labels, (probs > THRESHOLD).astype(np.int64))
    plot_evaluation(out.image, arch, roc, pr, report)
    write_json(out.metrics, report)


def evaluate_model(
    model: SentimentRNN,
    data: TokenDataset,
    full_lengths: np.ndarray,
    batch_size: int,
    device: torch.device,
) -> tuple[dict[str, Any], np.ndarray]:
    """The report (metrics + measured throughput) and the probabilities for one model."""
    pred = predict_split(model, data, batch_size, device)
    labels = data.labels.numpy().astype(np.int64)
    report = report_metrics(labels, pred.probs, full_lengths)
    report["throughput"] = {
        "reviews_per_second": round(pred.reviews_per_second, 1),
        "seconds": round(pred.seconds, 3),
        "batch_size": batch_size,
        "device": pred.device,
        "torch_threads": torch.get_num_threads(),
    }
    return report, pred.probs


def run_evaluate(
    arch: str, experiment: str, batch_size: int = 256, device: str = "auto"
) -> dict[str, Any]:
    """The stage's entry: evaluate models/<arch> on the test split, write and log the report."""
    from sentiment_rnn import paths, tracking
    from sentiment_rnn.model import ARCHS, load_model
    from sentiment_rnn.tokenize import load_encoded, tokenizer_sha256
    from sentiment_rnn.train import resolve_device

    if arch not in ARCHS:
        raise UserError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
    if batch_size < 1:
        raise UserError(f"evaluate.batch_size must be >= 1, got {batch_size}")
    model, extra = load_model(paths.model_dir(arch) / "model.pt")
    enc = load_encoded(paths.TOKENS_DIR / "test.npz")
    if extra.get("tokenizer_sha256") != tokenizer_sha256(paths.TOKENS_DIR / "tokenizer.json"):
        raise UserError(
            f"models/{arch} was trained with another tokenizer than data/tokens: "
            f"rerun the train stage (dvc repro train@{arch})"
        )
    report, probs = evaluate_model(
        model, TokenDataset(enc), enc.full_lengths, batch_size, resolve_device(device)
    )
    report = {"arch": arch, "best_val_acc": extra.get("best_val_acc"), **report}
    out = EvalOutputs.for_arch(arch, paths.METRICS_DIR, paths.PLOTS_DIR)
    write_outputs(out, arch, enc.labels.astype(np.int64), probs, report)
    with tracking.resume_run(paths.run_file(arch), experiment):
        mlflow = tracking.setup(experiment)
        mlflow.log_metrics(
            numeric_items({k: v for k, v in report.items() if k != "best_val_acc"}, "test/")
        )
        for path in (out.image, out.roc, out.pr):
            mlflow.log_artifact(str(path), "evaluation")
        mlflow.log_artifact(str(out.metrics), "evaluation")
    log.info(
        "%s test: accuracy %.4f, F1 %.4f, ROC-AUC %.4f, %.0f reviews/s",
        arch,
        report["accuracy"],
        report["f1"],
        report["roc_auc"],
        report["throughput"]["reviews_per_second"],
    )
    return report
