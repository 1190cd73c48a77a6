"""ONNX export: onnxruntime against torch at many shapes, symbolic axes, metadata, the gate."""

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from sentiment_rnn.core.model import ModelConfig, SentimentRNN
from sentiment_rnn.errors import UserError
from sentiment_rnn.export import parity
from sentiment_rnn.export.graph import CPU_ONLY, export_model
from sentiment_rnn.export.onnx import symbolic_dims, to_onnx
from sentiment_rnn.serving.contract import ServingMeta
from sentiment_rnn.serving.session import create_session

VOCAB = 40
MAX_LENGTH = 24
SHAPES = [(1, 1), (1, MAX_LENGTH), (3, 7), (17, 5), (64, 1), (64, MAX_LENGTH)]

CONFIGS = {
    "rnn": ModelConfig(arch="rnn", vocab_size=VOCAB, embed_dim=8, hidden_size=8),
    "lstm": ModelConfig(arch="lstm", vocab_size=VOCAB, embed_dim=8, hidden_size=8),
    "gru": ModelConfig(arch="gru", vocab_size=VOCAB, embed_dim=8, hidden_size=8),
    "lstm-2layer-last": ModelConfig(
        arch="lstm", vocab_size=VOCAB, embed_dim=8, hidden_size=8, num_layers=2, pooling="last"
    ),
    "gru-forward-meanmax": ModelConfig(
        arch="gru",
        vocab_size=VOCAB,
        embed_dim=8,
        hidden_size=8,
        bidirectional=False,
        pooling="meanmax",
    ),  # fmt: skip
}


def tiny_model(cfg: ModelConfig, seed: int = 0) -> SentimentRNN:
    torch.manual_seed(seed)
    return SentimentRNN(cfg).eval()


def serving_meta(arch: str) -> ServingMeta:
    return ServingMeta(
        arch=arch,
        tokenizer_sha256="ab" * 32,
        max_length=MAX_LENGTH,
        truncation_side="right",
        pad_id=0,
        mlflow_run_id="0123abcd",
        best_val_acc=0.875,
    )


def batch_of(rng: np.random.Generator, batch: int, steps: int) -> parity.OnnxFeed:
    return parity.random_batch(rng, batch, steps, VOCAB, pad_id=0)


def cpu_session(proto: onnx.ModelProto):
    return create_session(proto.SerializeToString(), CPU_ONLY)


@pytest.fixture(scope="module", params=list(CONFIGS))
def exported(request: pytest.FixtureRequest) -> tuple[SentimentRNN, onnx.ModelProto]:
    model = tiny_model(CONFIGS[request.param])
    return model, to_onnx(model, serving_meta(model.cfg.arch), opset=17)


def test_onnxruntime_matches_torch_at_every_shape(exported) -> None:
    model, proto = exported
    session = cpu_session(proto)
    rng = np.random.default_rng(1)
    for batch, steps in SHAPES:
        feed = batch_of(rng, batch, steps)
        prob, logit = session.run(["probability", "logit"], feed.feed())
        t_prob, t_logit = parity.torch_outputs(model, feed)
        assert prob.shape == (batch,) and prob.dtype == np.float32 and logit.dtype == np.float32
        np.testing.assert_allclose(prob, t_prob, atol=1e-5, err_msg=f"shape {(batch, steps)}")
        np.testing.assert_allclose(logit, t_logit, atol=1e-4, err_msg=f"shape {(batch, steps)}")
        assert ((logit > 0) == (t_logit > 0)).all()


def test_a_review_scores_the_same_alone_and_padded_in_a_batch(exported) -> None:
    _, proto = exported
    session = cpu_session(proto)
    feed = batch_of(np.random.default_rng(2), 8, 12)
    together = session.run(["probability"], feed.feed())[0]
    for i in range(8):
        n = int(feed.lengths[i])
        row = {"token_ids": feed.token_ids[i : i + 1, :n], "lengths": feed.lengths[i : i + 1]}
        alone = session.run(["probability"], row)[0]
        assert alone[0] == pytest.approx(together[i], abs=1e-6)


def test_graph_inputs_and_outputs_have_symbolic_dims(exported) -> None:
    _, proto = exported
    assert symbolic_dims(proto) == {"token_ids": ["batch", "time"], "lengths": ["batch"]}
    inputs = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
    assert inputs == {"token_ids": onnx.TensorProto.INT64, "lengths": onnx.TensorProto.INT64}
    outputs = {o.name: o for o in proto.graph.output}
    assert list(outputs) == ["probability", "logit"]
    for out in outputs.values():
        assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert [d.dim_param for d in out.type.tensor_type.shape.dim] == ["batch"]
    assert proto.opset_import[0].version == 17


def test_export_model_adds_metadata_and_passes_checker_and_gate() -> None:
    model = tiny_model(CONFIGS["gru"])
    rng = np.random.default_rng(3)
    test_ids = rng.integers(2, VOCAB, (50, MAX_LENGTH))
    test_lengths = rng.integers(1, MAX_LENGTH + 1, 50)
    served = export_model(model, serving_meta("gru"), 17, 1e-4, test_ids, test_lengths)
    proto, session, report = served.proto, served.session, served.parity
    onnx.checker.check_model(proto, full_check=True)
    props = {p.key: p.value for p in proto.metadata_props}
    assert ServingMeta.from_props(props, "graph") == replace(
        serving_meta("gru"), serving_graph="folded-scan"
    )
    assert json.loads(props["label_names"]) == ["negative", "positive"]
    assert props["max_length"] == str(MAX_LENGTH) and props["pad_id"] == "0"
    assert float(props["best_val_acc"]) == 0.875 and props["arch"] == "gru"
    assert session.get_providers()[0] == "CPUExecutionProvider"
    assert report.max_abs_diff <= 1e-4 and report.class_mismatches == 0
    assert [1, 1] in report.shapes and [64, MAX_LENGTH] in report.shapes
    assert report.rows == 2 * sum(b for b, _ in parity.PARITY_SHAPES)  # test rows + random rows
    assert props["serving_graph"] == "folded-scan"  # the faster graph, through the same gate


@pytest.mark.parametrize(("name", "fold"), [("lstm-2layer-last", True), ("gru", False)])
def test_export_model_serves_the_exported_graph_when_not_folded(name: str, fold: bool) -> None:
    """Two layers cannot fold; fold=False keeps the export as it is."""
    model = tiny_model(CONFIGS[name])
    rng = np.random.default_rng(4)
    ids, lengths = rng.integers(2, VOCAB, (20, MAX_LENGTH)), rng.integers(1, MAX_LENGTH + 1, 20)
    served = export_model(model, serving_meta(model.cfg.arch), 17, 1e-4, ids, lengths, fold=fold)
    proto, report = served.proto, served.parity
    assert {p.key: p.value for p in proto.metadata_props}["serving_graph"] == "exported"
    assert {n.op_type for n in proto.graph.node} & {"LSTM", "GRU"}
    assert report.max_abs_diff <= 1e-4


def test_parity_gate_fails_against_a_model_with_other_weights() -> None:
    model = tiny_model(CONFIGS["lstm"])
    proto = to_onnx(model, serving_meta("lstm"))
    session = cpu_session(proto)
    perturbed = tiny_model(CONFIGS["lstm"])
    with torch.no_grad():
        perturbed.head.bias += 0.5  # shifts every logit: probabilities move well past 1e-4
    batches = parity.parity_batches(None, None, MAX_LENGTH, VOCAB)
    # the true pair passes
    parity.assert_parity(parity.compare_outputs(session, model, batches), 1e-4)
    report = parity.compare_outputs(session, perturbed, batches)
    assert report.max_abs_diff > 1e-4
    with pytest.raises(UserError, match="disagrees with torch"):
        parity.assert_parity(report, 1e-4)


def test_parity_gate_fails_on_a_single_flipped_class() -> None:
    report = parity.ParityReport(max_abs_diff=1e-6, class_mismatches=1, rows=10)
    with pytest.raises(UserError, match="1 of 10 predicted classes differ"):
        parity.assert_parity(report, 1e-4)


def test_parity_report_never_hides_nan_or_a_wrong_shape() -> None:
    report = parity.ParityReport()
    torch_out = (np.array([0.5, 0.5], np.float32), np.array([0.0, 0.0], np.float32))
    report.update(torch_out, [np.array([0.5, np.nan], np.float32), np.zeros(2, np.float32)])
    assert report.max_abs_diff == float("inf")
    shaped = parity.ParityReport()
    shaped.update(torch_out, [np.full((2, 1), 0.5, np.float32), np.zeros((2, 1), np.float32)])
    assert shaped.max_abs_diff == float("inf")


def test_parity_batches_cover_the_shapes_with_valid_lengths() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(2, VOCAB, (30, MAX_LENGTH)).astype(np.int32)
    lengths = rng.integers(1, MAX_LENGTH + 1, 30)
    batches = parity.parity_batches(ids, lengths, MAX_LENGTH, VOCAB, seed=0)
    assert {b.source for b in batches} == {"test", "random"}
    shapes = {b.token_ids.shape for b in batches}
    assert (1, 1) in shapes and (64, MAX_LENGTH) in shapes
    assert max(b.token_ids.shape[0] for b in batches) == 64
    for b in batches:
        steps = b.token_ids.shape[1]
        assert b.token_ids.dtype == np.int64 and b.lengths.dtype == np.int64
        assert ((b.lengths >= 1) & (b.lengths <= steps)).all()
        if b.source == "random":
            assert b.lengths[0] == steps  # some row always fills the batch
            padding = np.arange(steps)[None, :] >= b.lengths[:, None]
            assert (b.token_ids[padding] == 0).all()
