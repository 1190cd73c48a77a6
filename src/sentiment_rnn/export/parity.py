"""The parity gate: onnxruntime and torch run the same batches and must agree.

Batches mix real test rows and random ids, batch 1 to 64, length 1 to max_length; any
probability gap above the tolerance, or any changed predicted class, fails the export. The same
feeds time both runtimes for the export report.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import torch

from sentiment_rnn.core.model import SentimentRNN
from sentiment_rnn.core.progress import bar
from sentiment_rnn.core.tokenizer import valid_mask
from sentiment_rnn.errors import UserError
from sentiment_rnn.serving.contract import OUTPUT_NAMES

# (batch, time) shapes the parity gate runs; None stands for max_length.
PARITY_SHAPES: tuple[tuple[int, int | None], ...] = (
    (1, 1), (1, None), (2, 5), (7, 17), (16, 64), (33, None), (64, 1), (64, None),
)  # fmt: skip


@dataclass
class OnnxFeed:
    """One batch in the graph's input format: for the gate, for timing, as an input example."""

    token_ids: np.ndarray  # (B, T) int64
    lengths: np.ndarray  # (B,) int64
    source: str  # "test" rows or "random" ids

    def feed(self) -> dict[str, np.ndarray]:
        return {"token_ids": self.token_ids, "lengths": self.lengths}


def random_batch(
    rng: np.random.Generator, batch: int, steps: int, vocab_size: int, pad_id: int
) -> OnnxFeed:
    """Random ids with random lengths in [1, steps]; the first row fills all `steps`."""
    ids = rng.integers(0, vocab_size, (batch, steps), dtype=np.int64)
    lengths = rng.integers(1, steps + 1, batch, dtype=np.int64)
    lengths[0] = steps
    ids[~valid_mask(lengths, steps)] = pad_id
    return OnnxFeed(ids, lengths, "random")


def rows_batch(
    rng: np.random.Generator, ids: np.ndarray, lengths: np.ndarray, batch: int, steps: int
) -> OnnxFeed:
    """`batch` real rows cut to their first `steps` positions (lengths capped to match)."""
    idx = rng.choice(len(lengths), batch, replace=len(lengths) < batch)
    cut = np.minimum(lengths[idx], steps).astype(np.int64)
    return OnnxFeed(ids[idx, :steps].astype(np.int64), cut, "test")


def parity_batches(
    ids: np.ndarray | None,
    lengths: np.ndarray | None,
    max_length: int,
    vocab_size: int,
    pad_id: int = 0,
    seed: int = 0,
) -> list[OnnxFeed]:
    """For each shape of PARITY_SHAPES: real rows (when given) and random ones."""
    rng = np.random.default_rng(seed)
    batches = []
    for batch, steps in PARITY_SHAPES:
        steps = min(steps or max_length, max_length)
        if ids is not None and lengths is not None and len(lengths):
            batches.append(rows_batch(rng, ids, lengths, batch, steps))
        batches.append(random_batch(rng, batch, steps, vocab_size, pad_id))
    return batches


def max_gap(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference; infinite if either side holds NaN or inf (never hidden)."""
    gap = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(gap.max()) if np.isfinite(gap).all() else float("inf")


@dataclass
class ParityReport:
    max_abs_diff: float = 0.0  # probabilities
    max_abs_logit_diff: float = 0.0
    class_mismatches: int = 0
    rows: int = 0
    shapes: list[list[int]] = field(default_factory=list)

    def update(self, torch_out: tuple[np.ndarray, np.ndarray], ort_out: list[np.ndarray]) -> None:
        (t_prob, t_logit), (o_prob, o_logit) = torch_out, ort_out[:2]
        self.rows += len(t_prob)
        if o_prob.shape != t_prob.shape or o_logit.shape != t_logit.shape:
            self.max_abs_diff = self.max_abs_logit_diff = float("inf")  # broadcasting would hide it
            return
        self.max_abs_diff = max(self.max_abs_diff, max_gap(t_prob, o_prob))
        self.max_abs_logit_diff = max(self.max_abs_logit_diff, max_gap(t_logit, o_logit))
        self.class_mismatches += int(((t_logit > 0) != (o_logit > 0)).sum())

    def passes(self, tolerance: float) -> bool:
        return self.max_abs_diff <= tolerance and not self.class_mismatches


@torch.inference_mode()
def torch_outputs(model: SentimentRNN, batch: OnnxFeed) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    logit = model(torch.from_numpy(batch.token_ids), torch.from_numpy(batch.lengths)).float()
    return torch.sigmoid(logit).numpy(), logit.numpy()


def compare_outputs(
    session: ort.InferenceSession, model: SentimentRNN, batches: list[OnnxFeed]
) -> ParityReport:
    """Run torch and onnxruntime on every batch and record the largest disagreements."""
    report = ParityReport()
    with bar(len(batches), "parity") as progress:
        for batch in batches:
            report.update(
                torch_outputs(model, batch), session.run(list(OUTPUT_NAMES), batch.feed())
            )
            if list(batch.token_ids.shape) not in report.shapes:
                report.shapes.append(list(batch.token_ids.shape))
            progress.update(1)
    return report


def assert_parity(report: ParityReport, tolerance: float) -> None:
    """The gate: fail on any probability gap above `tolerance` or any changed class."""
    if not report.passes(tolerance):
        raise UserError(
            f"the ONNX graph disagrees with torch: max |probability diff| "
            f"{report.max_abs_diff:.2e} (tolerance {tolerance:g}), {report.class_mismatches} of "
            f"{report.rows} predicted classes differ; not written. Check the export"
            " (eval mode, opset, dynamic axes) before serving it"
        )


def timing_batches(
    ids: np.ndarray, lengths: np.ndarray, rows: int = 1024, batch_size: int = 64
) -> list[OnnxFeed]:
    """A fixed set: the first `rows` rows, length-sorted, each batch trimmed to its longest."""
    order = np.argsort(lengths[:rows], kind="stable")
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        steps = int(lengths[idx].max())
        feed_ids = ids[idx, :steps].astype(np.int64)
        batches.append(OnnxFeed(feed_ids, lengths[idx].astype(np.int64), "test"))
    return batches


def _rows_per_second(run: Callable[[OnnxFeed], object], batches: list[OnnxFeed]) -> float:
    """Reviews per second of `run(batch)` over `batches`, after one warm-up batch."""
    run(batches[-1])
    start = time.perf_counter()
    for batch in batches:
        run(batch)
    return sum(len(b.lengths) for b in batches) / (time.perf_counter() - start)


def throughput(
    session: ort.InferenceSession, model: SentimentRNN, batches: list[OnnxFeed]
) -> dict[str, float | int]:
    """onnxruntime and torch reviews/s over the same batches."""
    return {
        "ort_reviews_per_second": round(
            _rows_per_second(lambda b: session.run(None, b.feed()), batches), 1
        ),
        "torch_reviews_per_second": round(
            _rows_per_second(lambda b: torch_outputs(model, b), batches), 1
        ),
        "throughput_rows": sum(len(b.lengths) for b in batches),
        "throughput_batch_size": len(batches[0].lengths),
    }
