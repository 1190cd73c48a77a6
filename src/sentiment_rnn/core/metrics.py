"""The final report of a trained classifier on a labelled split: metrics, curves, throughput.

Pure numpy / torch / scikit-learn; the `evaluate` stage runs it on the test split only, after
training and selection are done, so nothing computed here feeds back into model choice.

Review length groups: the test split's full (untruncated) token lengths are cut at their
terciles, so "short", "medium" and "long" each hold about a third of the reviews; the cut
points are written to the metrics file.
"""

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn import metrics as skm

from sentiment_rnn.core.data import TokenDataset, sorted_batches
from sentiment_rnn.core.device import sync
from sentiment_rnn.core.model import SentimentRNN, predict_proba
from sentiment_rnn.core.progress import bar
from sentiment_rnn.errors import UserError

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


def predict_split(
    model: SentimentRNN, data: TokenDataset, batch_size: int, device: torch.device
) -> Predictions:
    """Probabilities for every row, in length-sorted batches; the timed pass follows a warm-up."""
    model.to(device).eval()
    batches = list(sorted_batches(data.lengths_np, batch_size))
    warm = data.batch(batches[-1], device)  # the longest batch: allocates the largest buffers
    predict_proba(model, warm.token_ids, warm.lengths)
    probs = np.empty(len(data), dtype=np.float64)
    sync(device)
    start = time.perf_counter()
    with bar(len(batches), "evaluate") as progress:
        for idx in batches:
            batch = data.batch(idx, device)
            probs[idx] = predict_proba(model, batch.token_ids, batch.lengths).cpu().numpy()
            progress.update(1)
    sync(device)
    return Predictions(probs, time.perf_counter() - start, str(device))


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
