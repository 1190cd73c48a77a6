"""Serving-time graph rewrite: ONNX `RNN` nodes as a `Scan` of MatMul + Add + Tanh.

onnxruntime's CPU kernel for the plain (Elman) `RNN` op applies its activation one element at
a time through a `std::function` (onnxruntime/core/providers/cpu/rnn/rnn.cc), which makes
tanh, not the matrix products, the bottleneck. The same recurrence written with standard ops
runs on MLAS's vectorised kernels:

    XW  = X @ W^T + (Wb + Rb)                  one large GEMM for every time step
    h_t = tanh(h_{t-1} @ R^T + XW_t)           a Scan over time

The result is the same function (float32 rounding aside, ~1e-7). LSTM and GRU nodes are
left alone: onnxruntime's fused kernels for them are already vectorised.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _attributes(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _rewritable(node: onnx.NodeProto, initializers: set[str]) -> bool:
    """A forward tanh RNN with constant weights, no sequence_lens and no clipping."""
    if node.op_type != "RNN":
        return False
    attrs = _attributes(node)
    activations = attrs.get("activations", [b"Tanh"])
    has_lens = len(node.input) > 4 and bool(node.input[4])
    return (
        attrs.get("direction", b"forward") == b"forward"
        and activations == [b"Tanh"]
        and "clip" not in attrs
        and not has_lens
        and all(name in initializers for name in node.input[1:4] if name)
    )


def _scan_body(prefix: str) -> onnx.GraphProto:
    """(h_prev, xw_t) -> (h_t, y_t): one step, reading R^T from the outer graph."""
    nodes = [
        helper.make_node("MatMul", ["h_prev", f"{prefix}_Rt"], ["hr"]),
        helper.make_node("Add", ["hr", "xw_t"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["h_t"]),
        helper.make_node("Identity", ["h_t"], ["y_t"]),  # the state and the scan output
    ]
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, None)  # noqa: E731
    return helper.make_graph(
        nodes, f"{prefix}_step", [value("h_prev"), value("xw_t")], [value("h_t"), value("y_t")]
    )


def _scan_nodes(node: onnx.NodeProto, prefix: str) -> list[onnx.NodeProto]:
    """The nodes that replace one RNN node, writing to the RNN node's own output names."""
    x, initial_h = node.input[0], node.input[5] if len(node.input) > 5 else ""
    nodes = [
        helper.make_node("MatMul", [x, f"{prefix}_Wt"], [f"{prefix}_xw"]),  # (T, B, H)
        helper.make_node("Add", [f"{prefix}_xw", f"{prefix}_b"], [f"{prefix}_xwb"]),
    ]
    if initial_h:
        nodes.append(helper.make_node("Squeeze", [initial_h, f"{prefix}_axis0"], [f"{prefix}_h0"]))
    else:  # zeros (B, H), shaped like one time step of XW
        nodes += [
            helper.make_node(
                "Gather", [f"{prefix}_xwb", f"{prefix}_zero"], [f"{prefix}_x0"], axis=0
            ),
            helper.make_node("Mul", [f"{prefix}_x0", f"{prefix}_zerof"], [f"{prefix}_h0"]),
        ]
    nodes.append(
        helper.make_node(
            "Scan",
            [f"{prefix}_h0", f"{prefix}_xwb"],
            [f"{prefix}_hT", f"{prefix}_ys"],
            num_scan_inputs=1,
            body=_scan_body(prefix),
        )
    )
    outputs = list(node.output) + ["", ""]
    if outputs[0]:  # Y: (T, num_directions=1, B, H)
        nodes.append(
            helper.make_node("Unsqueeze", [f"{prefix}_ys", f"{prefix}_axis1"], [outputs[0]])
        )
    if outputs[1]:  # Y_h: (1, B, H)
        nodes.append(
            helper.make_node("Unsqueeze", [f"{prefix}_hT", f"{prefix}_axis0"], [outputs[1]])
        )
    return nodes


def _scan_initializers(
    node: onnx.NodeProto, weights: dict[str, np.ndarray], prefix: str
) -> list[onnx.TensorProto]:
    w, r = weights[node.input[1]][0], weights[node.input[2]][0]  # (H, I), (H, H)
    hidden = w.shape[0]
    bias = weights[node.input[3]][0] if len(node.input) > 3 and node.input[3] else None
    b = bias[:hidden] + bias[hidden:] if bias is not None else np.zeros(hidden, np.float32)
    arrays = {
        "Wt": np.ascontiguousarray(w.T),
        "Rt": np.ascontiguousarray(r.T),
        "b": b,
        "axis0": np.array([0], np.int64),
        "axis1": np.array([1], np.int64),
        "zero": np.array(0, np.int64),
        "zerof": np.array(0.0, np.float32),
    }
    return [numpy_helper.from_array(v, f"{prefix}_{k}") for k, v in arrays.items()]


def rnn_to_scan(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite every eligible RNN node in place; returns (the model, how many were rewritten)."""
    graph = proto.graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    rewritten = 0
    for node in graph.node:
        if not _rewritable(node, set(weights)):
            nodes.append(node)
            continue
        prefix = f"rnn_scan_{rewritten}"
        nodes += _scan_nodes(node, prefix)
        graph.initializer.extend(_scan_initializers(node, weights, prefix))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    prune_initializers(graph)
    return proto, rewritten


def prune_initializers(graph: onnx.GraphProto) -> None:
    """Drop the constants no node reads, in the graph or in a subgraph such as a Scan body
    (which reads its weights from the outer graph), and no graph output is."""
    used = {name for node in graph.node for name in node.input}
    used |= {
        name
        for node in graph.node
        for a in node.attribute
        if a.g.name
        for n in a.g.node
        for name in n.input
    }
    used |= {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
