"""The graph that is served: exported, checked, gated on parity with torch, folded if it can be.

For a one-layer fused model the folded-Scan graph of `fast_graph` is served once it passes the
same gate (same inputs, outputs and metadata); otherwise, or if it does not pass, the exported
graph itself.
"""

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from sentiment_rnn.core.model import SentimentRNN
from sentiment_rnn.export.fast_graph import build_fast_graph
from sentiment_rnn.export.onnx import check_onnx, to_onnx
from sentiment_rnn.export.parity import (
    OnnxFeed,
    ParityReport,
    assert_parity,
    compare_outputs,
    parity_batches,
)
from sentiment_rnn.serving.contract import ServingMeta
from sentiment_rnn.serving.session import SessionConfig, create_session

log = logging.getLogger(__name__)

# The gate compares the graph as exported, on the CPU provider.
CPU_ONLY = SessionConfig(providers=("cpu",), rewrite_rnn=False)


@dataclass
class ServedGraph:
    proto: onnx.ModelProto
    session: ort.InferenceSession
    parity: ParityReport


def gated(proto: onnx.ModelProto, model: SentimentRNN, batches: list[OnnxFeed]) -> ServedGraph:
    """Check `proto`, open it on the CPU and compare it with `model` on `batches`."""
    check_onnx(proto)
    session = create_session(proto.SerializeToString(), CPU_ONLY)
    return ServedGraph(proto, session, compare_outputs(session, model, batches))


def foldable(model: SentimentRNN) -> bool:
    """One-layer models with the fused cells: what `fast_graph` can rebuild."""
    return model.cfg.num_layers == 1 and model.cfg.cell == "fused"


def export_model(
    model: SentimentRNN,
    meta: ServingMeta,
    opset: int,
    tolerance: float,
    test_ids: np.ndarray | None,
    test_lengths: np.ndarray | None,
    seed: int = 0,
    fold: bool = True,
) -> ServedGraph:
    """Export, check and gate; with `fold`, the folded graph when it passes the same gate."""
    batches = parity_batches(
        test_ids, test_lengths, meta.max_length, model.cfg.vocab_size, meta.pad_id, seed
    )
    exported = gated(to_onnx(model, meta, opset), model, batches)
    assert_parity(exported.parity, tolerance)
    if not (fold and foldable(model)):
        return exported
    folded = gated(build_fast_graph(model, meta), model, batches)
    if folded.parity.passes(tolerance):
        return folded
    log.warning(
        "the folded serving graph disagrees with torch (max diff %.1e, %d classes):"
        " serving the exported graph",
        folded.parity.max_abs_diff,
        folded.parity.class_mismatches,
    )
    return exported
