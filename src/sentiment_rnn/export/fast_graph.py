"""A faster serving graph for one-layer models, built from the trained weights.

Same inputs, outputs and metadata as the exported graph (`token_ids`, `lengths` ->
`probability`, `logit`), same function, but computed differently:

* The first layer's input projection is folded into the embedding: `P = E @ W_ih^T + b` is a
  (vocab, gates * hidden) table, so `x_t @ W_ih^T + b` becomes a row lookup and half of the
  recurrent layer's arithmetic disappears.
* The backward direction reads the token ids reversed within each length (a cheap int64
  gather) instead of gathering embedding vectors twice.
* Both directions advance in one `Scan` (one step node per time step), and pooling masks
  positions >= length in processing order: valid positions stay valid under the reversal, and
  the backward direction's summary (position 0) is its last processed step.

The table costs memory (vocab x 4 x hidden floats per direction for an LSTM: 41 MB at
20000 x 512) in exchange for speed. Check it like an export: against torch at many shapes.
"""

from dataclasses import replace

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from sentiment_rnn.core.model import SentimentRNN
from sentiment_rnn.errors import UserError
from sentiment_rnn.serving.contract import ServingMeta
from sentiment_rnn.serving.rnn_scan import prune_initializers

GRAPH_KIND = "folded-scan"  # ServingMeta.serving_graph of the graphs built here
IR_VERSION = 8  # onnxruntime 1.31 reads IR <= 13; 8 is what opset 17 needs


def _value(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def _tables(model: SentimentRNN, direction: int) -> dict[str, np.ndarray]:
    """Folded input table (V, G*H), recurrent weight R^T (H, G*H) and recurrent bias (G*H,)."""
    layer = model.layers[0][direction]
    emb = model.embedding.weight.detach().double()
    w_ih, w_hh = layer.weight_ih_l0.detach().double(), layer.weight_hh_l0.detach().double()
    b_ih, b_hh = layer.bias_ih_l0.detach().double(), layer.bias_hh_l0.detach().double()
    hidden = model.cfg.hidden_size
    if model.cfg.arch == "gru":  # b_hn stays inside r * (W_hn h + b_hn); b_hr, b_hz fold in
        folded_b = b_ih + torch.cat([b_hh[: 2 * hidden], torch.zeros(hidden, dtype=b_hh.dtype)])
        recurrent_b = torch.cat([torch.zeros(2 * hidden, dtype=b_hh.dtype), b_hh[2 * hidden :]])
    else:
        folded_b, recurrent_b = b_ih + b_hh, torch.zeros_like(b_hh)
    folded, rt = emb @ w_ih.T + folded_b, w_hh.T
    if model.cfg.arch == "lstm":  # torch's (i, f, g, o) -> (i, f, o, g)
        order = torch.cat(
            [
                torch.arange(0, 2 * hidden),
                torch.arange(3 * hidden, 4 * hidden),
                torch.arange(2 * hidden, 3 * hidden),
            ]
        )
        folded, rt = folded[:, order], rt[:, order]
    return {
        "P": folded.float().numpy(),
        "Rt": rt.contiguous().float().numpy(),
        "Rb": recurrent_b.float().numpy(),
    }


def _cell_nodes(arch: str, d: str) -> list[onnx.NodeProto]:
    """One step of direction `d`: reads h{d} (and c{d}) and x{d}; writes h{d}_out (c{d}_out).

    Fewer, larger nodes run faster (each node costs a dispatch per time step), hence the LSTM
    gates reordered to (i, f, o | g): one Sigmoid over three gates.
    """
    n = helper.make_node
    if arch == "rnn":
        return [
            n("MatMul", [f"h{d}", f"Rt{d}"], [f"hr{d}"]),
            n("Add", [f"x{d}", f"hr{d}"], [f"z{d}"]),
            n("Tanh", [f"z{d}"], [f"h{d}_out"]),
        ]
    if arch == "lstm":
        return [
            n("MatMul", [f"h{d}", f"Rt{d}"], [f"hr{d}"]),
            n("Add", [f"x{d}", f"hr{d}"], [f"z{d}"]),
            n("Split", [f"z{d}", "split_ifo_g"], [f"zifo{d}", f"zg{d}"], axis=1),
            n("Sigmoid", [f"zifo{d}"], [f"ifo{d}"]), n("Tanh", [f"zg{d}"], [f"g{d}"]),
            n("Split", [f"ifo{d}", "split3"], [f"i{d}", f"f{d}", f"o{d}"], axis=1),
            n("Mul", [f"f{d}", f"c{d}"], [f"fc{d}"]), n("Mul", [f"i{d}", f"g{d}"], [f"ig{d}"]),
            n("Add", [f"fc{d}", f"ig{d}"], [f"c{d}_out"]), n("Tanh", [f"c{d}_out"], [f"tc{d}"]),
            n("Mul", [f"o{d}", f"tc{d}"], [f"h{d}_out"]),
        ]  # fmt: skip
    return [  # gru, torch gate order: r, z, n; b_hn must stay inside r * (W_hn h + b_hn)
        n("MatMul", [f"h{d}", f"Rt{d}"], [f"hr{d}"]),
        n("Add", [f"hr{d}", f"Rb{d}"], [f"hrb{d}"]),
        n("Split", [f"x{d}", "split3"], [f"xr{d}", f"xz{d}", f"xn{d}"], axis=1),
        n("Split", [f"hrb{d}", "split3"], [f"hr_{d}", f"hz{d}", f"hn{d}"], axis=1),
        n("Add", [f"xr{d}", f"hr_{d}"], [f"ar{d}"]), n("Sigmoid", [f"ar{d}"], [f"r{d}"]),
        n("Add", [f"xz{d}", f"hz{d}"], [f"az{d}"]), n("Sigmoid", [f"az{d}"], [f"u{d}"]),
        n("Mul", [f"r{d}", f"hn{d}"], [f"rh{d}"]), n("Add", [f"xn{d}", f"rh{d}"], [f"an{d}"]),
        n("Tanh", [f"an{d}"], [f"nn{d}"]), n("Sub", [f"h{d}", f"nn{d}"], [f"dh{d}"]),
        n("Mul", [f"u{d}", f"dh{d}"], [f"udh{d}"]), n("Add", [f"nn{d}", f"udh{d}"], [f"h{d}_out"]),
    ]  # fmt: skip


def _scan_body(arch: str, directions: list[str]) -> onnx.GraphProto:
    """Step of every direction: states (h, [c]) per direction, then one x per direction."""
    nodes, states_in, states_out, outputs = [], [], [], []
    for d in directions:
        nodes += _cell_nodes(arch, d)
        states_in += [f"h{d}"] + ([f"c{d}"] if arch == "lstm" else [])
        states_out += [f"h{d}_out"] + ([f"c{d}_out"] if arch == "lstm" else [])
        nodes.append(helper.make_node("Identity", [f"h{d}_out"], [f"y{d}"]))
        outputs.append(f"y{d}")
    inputs = states_in + [f"x{d}" for d in directions]
    return helper.make_graph(
        nodes, "step", [_value(i) for i in inputs], [_value(o) for o in states_out + outputs]
    )


def _prologue() -> list[onnx.NodeProto]:
    """ids (T, B) forward and reversed-within-length, the (T, B, 1) validity mask, zeros."""
    n = helper.make_node
    return [
        n("Shape", ["token_ids"], ["shape"]),
        n("Gather", ["shape", "one"], ["steps"], axis=0),
        n("Range", ["zero", "steps", "one"], ["pos"]),  # (T,)
        n("Unsqueeze", ["pos", "axis0"], ["pos_row"]),  # (1, T)
        n("Unsqueeze", ["lengths", "axis1"], ["len_col"]),  # (B, 1)
        n("Less", ["pos_row", "len_col"], ["valid_bt"]),  # (B, T)
        n("Sub", ["len_col", "one"], ["last_col"]),
        n("Sub", ["last_col", "pos_row"], ["flipped"]),
        n("GreaterOrEqual", ["flipped", "zero"], ["in_range"]),
        n("Where", ["in_range", "flipped", "pos_row"], ["rev_index"]),
        n("GatherElements", ["token_ids", "rev_index"], ["ids_rev"], axis=1),
        n("Transpose", ["token_ids"], ["ids_f"], perm=[1, 0]),  # (T, B)
        n("Transpose", ["ids_rev"], ["ids_b"], perm=[1, 0]),
        n("Transpose", ["valid_bt"], ["valid_tb"], perm=[1, 0]),
        n("Unsqueeze", ["valid_tb", "axis2"], ["valid"]),  # (T, B, 1)
        n("Gather", ["token_ids", "zero"], ["first_ids"], axis=1),  # (B,)
        n("Cast", ["first_ids"], ["first_f"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["first_f", "axis1"], ["first_col"]),  # (B, 1)
        n("Mul", ["first_col", "zero_f"], ["zero_col"]),
        n("Expand", ["zero_col", "hidden_shape"], ["h0"]),  # (B, H) zeros
        n("Cast", ["valid"], ["valid_f"], to=TensorProto.FLOAT),
        n("Cast", ["len_col"], ["len_f"], to=TensorProto.FLOAT),
    ]  # fmt: skip


def _pooling_nodes(pooling: str, d: str) -> tuple[list[onnx.NodeProto], list[str]]:
    """Pool Y{d} (T, B, H) over valid positions; returns nodes and the pooled names."""
    n = helper.make_node
    nodes = []
    names = []
    if pooling in ("mean", "meanmax"):
        nodes += [
            n("Mul", [f"Y{d}", "valid_f"], [f"ym{d}"]),
            n("ReduceSum", [f"ym{d}", "axis0"], [f"sum{d}"], keepdims=0),
            n("Div", [f"sum{d}", "len_f"], [f"mean{d}"]),
        ]
        names.append(f"mean{d}")
    if pooling in ("max", "meanmax"):
        nodes += [
            n("Where", ["valid", f"Y{d}", "neg_inf"], [f"yx{d}"]),
            n("ReduceMax", [f"yx{d}"], [f"max{d}"], axes=[0], keepdims=0),
        ]  # opset 17: attr
        names.append(f"max{d}")
    if pooling == "last":  # the last processed step: position len-1 in processing order
        nodes += [
            n("GatherElements", [f"Y{d}", "last_idx"], [f"last3{d}"], axis=0),
            n("Squeeze", [f"last3{d}", "axis0"], [f"last{d}"]),
        ]
        names.append(f"last{d}")
    return nodes, names


def _constants(hidden: int) -> list[onnx.TensorProto]:
    arrays = {
        "zero": np.array(0, np.int64), "one": np.array(1, np.int64),
        "axis0": np.array([0], np.int64), "axis1": np.array([1], np.int64),
        "axis2": np.array([2], np.int64), "zero_f": np.array(0.0, np.float32),
        "neg_inf": np.array(-np.inf, np.float32), "hidden_shape": np.array([1, hidden], np.int64),
        "last_shape": np.array([1, 1, hidden], np.int64),
        "split3": np.array([hidden] * 3, np.int64),
        "split_ifo_g": np.array([3 * hidden, hidden], np.int64),
    }  # fmt: skip
    return [numpy_helper.from_array(v, k) for k, v in arrays.items()]


def build_fast_graph(model: SentimentRNN, meta: ServingMeta) -> onnx.ModelProto:
    """The folded-Scan graph of a one-layer fused model, with `meta` as its metadata."""
    cfg = model.cfg
    if cfg.num_layers != 1 or cfg.cell != "fused":
        raise UserError(
            "the folded serving graph supports one-layer fused models only: "
            "serve the exported graph instead"
        )
    model = model.eval()
    directions = ["f", "b"][: cfg.directions]
    initializers = _constants(cfg.hidden_size)
    nodes = _prologue()
    for i, d in enumerate(directions):
        tables = _tables(model, i)
        initializers += [numpy_helper.from_array(v, f"{k}{d}") for k, v in tables.items()]
        nodes.append(helper.make_node("Gather", [f"P{d}", f"ids_{d}"], [f"x{d}_seq"], axis=0))
    # One Scan per direction: independent nodes, which a parallel session runs on two cores.
    for d in directions:
        states = ["h0", "h0"] if cfg.arch == "lstm" else ["h0"]
        finals = [f"{s}{d}_final" for s in (["h", "c"] if cfg.arch == "lstm" else ["h"])]
        nodes.append(
            helper.make_node(
                "Scan",
                [*states, f"x{d}_seq"],
                [*finals, f"Y{d}"],
                num_scan_inputs=1,
                body=_scan_body(cfg.arch, [d]),
            )
        )
    pooled: list[str] = []
    if cfg.pooling == "last":  # index (1, B, H) of each row's last valid step
        nodes += [
            helper.make_node("Unsqueeze", ["last_col", "axis0"], ["last_1b1"]),
            helper.make_node("Expand", ["last_1b1", "last_shape"], ["last_idx"]),
        ]
    for d in directions:
        pool_nodes, names = _pooling_nodes(cfg.pooling, d)
        nodes += pool_nodes
        pooled += names
    # torch's feature order: per direction [mean | max] over cat(fwd, bwd) -> regroup
    order = [p for kind in ("mean", "max", "last") for p in pooled if p.startswith(kind)]
    nodes.append(helper.make_node("Concat", order, ["pooled"], axis=1))
    initializers += [
        numpy_helper.from_array(model.head.weight.detach().numpy().T.copy(), "head_w"),
        numpy_helper.from_array(model.head.bias.detach().numpy().copy(), "head_b"),
    ]  # fmt: skip
    nodes += [
        helper.make_node("MatMul", ["pooled", "head_w"], ["logit_2d"]),
        helper.make_node("Add", ["logit_2d", "head_b"], ["logit_b"]),
        helper.make_node("Squeeze", ["logit_b", "axis1"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        "sentiment_rnn_folded",
        [
            helper.make_tensor_value_info("token_ids", TensorProto.INT64, ["batch", "time"]),
            helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch"]),
        ],
        initializers,
    )
    prune_initializers(graph)
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=IR_VERSION,
        producer_name="sentiment_rnn.fast_graph",
    )
    helper.set_model_props(proto, replace(meta, serving_graph=GRAPH_KIND).to_props())
    onnx.checker.check_model(proto)
    return proto
