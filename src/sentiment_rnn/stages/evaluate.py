"""Stage `evaluate@<arch>`: the final report of a trained model on the test split.

The test split is read here only, after training and selection are done. Writes the metrics
file, the DVC plot files (ROC, precision-recall, confusion) and a PNG, and logs the same numbers
to the MLflow run that trained the model.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sentiment_rnn import paths, reports
from sentiment_rnn.core.data import TokenDataset
from sentiment_rnn.core.device import resolve_device
from sentiment_rnn.core.metrics import THRESHOLD, evaluate_model, pr_points, roc_points
from sentiment_rnn.core.model import ARCHS
from sentiment_rnn.core.tokenizer import load_encoded
from sentiment_rnn.errors import UserError
from sentiment_rnn.files import write_json
from sentiment_rnn.params import section, validate
from sentiment_rnn.serving.contract import LABEL_NAMES
from sentiment_rnn.stages import common, entry
from sentiment_rnn.tracking import runs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig:
    """params.yaml `evaluate`."""

    batch_size: int  # inference batch; throughput (reviews/s) is measured with it
    device: str  # auto | cpu | cuda

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"evaluate.batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class EvalOutputs:
    """Where the stage writes, for one arch."""

    metrics: Path
    roc: Path
    pr: Path
    confusion: Path
    image: Path

    @classmethod
    def for_arch(cls, arch: str) -> "EvalOutputs":
        return cls(
            metrics=paths.metrics_file("eval", arch),
            roc=paths.plot_file("roc", arch, "csv"),
            pr=paths.plot_file("pr", arch, "csv"),
            confusion=paths.plot_file("confusion", arch, "csv"),
            image=paths.plot_file("eval", arch, "png"),
        )


def _curve_rows(points: np.ndarray) -> list[list[str]]:
    return [[f"{v:.6g}" for v in row] for row in points]


def plot_evaluation(
    path: Path, arch: str, roc: np.ndarray, pr: np.ndarray, report: dict[str, Any]
) -> None:
    """ROC, precision-recall, confusion matrix and accuracy by length, as one PNG."""
    with reports.figure(path, nrows=2, ncols=2, figsize=(10, 8)) as (_, axes):
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


def write_outputs(
    out: EvalOutputs, arch: str, labels: np.ndarray, probs: np.ndarray, report: dict[str, Any]
) -> None:
    """The metrics file, the three DVC plot files and the PNG."""
    roc, pr = roc_points(labels, probs), pr_points(labels, probs)
    reports.write_csv(out.roc, ("fpr", "tpr", "threshold"), _curve_rows(roc))
    reports.write_csv(out.pr, ("recall", "precision", "threshold"), _curve_rows(pr))
    names = np.asarray(LABEL_NAMES)
    predicted = (probs > THRESHOLD).astype(np.int64)
    reports.write_csv(
        out.confusion, ("actual", "predicted"), zip(names[labels], names[predicted], strict=True)
    )
    plot_evaluation(out.image, arch, roc, pr, report)
    write_json(out.metrics, report)


def evaluate(arch: str, cfg: EvaluateConfig, experiment: str) -> dict[str, Any]:
    """Evaluate models/<arch> on the test split, write and log the report."""
    model, info = common.trained_model(arch)
    enc = load_encoded(paths.tokens_file("test"))
    device = resolve_device(cfg.device, "evaluate.device")
    report, probs = evaluate_model(
        model, TokenDataset(enc), enc.full_lengths, cfg.batch_size, device
    )
    report = {"arch": arch, "best_val_acc": info.best_val_acc, **report}
    out = EvalOutputs.for_arch(arch)
    write_outputs(out, arch, enc.labels.astype(np.int64), probs, report)
    tags = {"arch": arch, "dvc_stage": f"evaluate@{arch}"}
    with runs.resume_run(info.mlflow_run_id, experiment, arch, tags):
        runs.log_split(paths.split_file("test"), "test", "test")
        test = {k: v for k, v in report.items() if k not in ("arch", "best_val_acc")}
        runs.log_metrics(runs.numeric(runs.flatten(test, "test", sep="/")))
        for path in (out.image, out.roc, out.pr, out.metrics):
            runs.log_artifact(path, "evaluation")
    log.info(
        "%s test: accuracy %.4f, F1 %.4f, ROC-AUC %.4f, %.0f reviews/s",
        arch,
        report["accuracy"],
        report["f1"],
        report["roc_auc"],
        report["throughput"]["reviews_per_second"],
    )
    return report


def run(arch: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The stage: `evaluate` and `mlflow` params -> reports/metrics/eval-<arch>.json, plots."""
    stage = f"evaluate@{arch}"
    cfg = validate(EvaluateConfig, section(params, "evaluate", stage), "evaluate", stage)
    return evaluate(arch, cfg, common.experiment(params, stage))


if __name__ == "__main__":
    entry.main("evaluate", run, ARCHS)
