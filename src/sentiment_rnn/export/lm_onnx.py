"""The forward direction of a language model as an ONNX step graph, for generation.

(token (B,) int64, state) -> (log-probabilities of the next token (B, V) by token id, state):
the recurrent state goes in and out at every step, so a caller generates one token at a time
without re-reading the prefix. `h` (1, B, H), and `c` for an LSTM.
"""

import io
import warnings
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from sentiment_rnn.core.lm import BiLM
from sentiment_rnn.files import atomic_path
from sentiment_rnn.serving.lm_onnx import KIND


class ForwardStep(nn.Module):
    def __init__(self, model: BiLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, token: Tensor, h: Tensor, c: Tensor | None = None) -> tuple[Tensor, ...]:
        state = h if c is None else (h, c)
        features, state = self.model.features(token.unsqueeze(1), 0, state)  # (B, 1, H)
        log_probs = self.model.next_log_probs(features[:, 0])
        return (log_probs, *state) if isinstance(state, tuple) else (log_probs, state)


def state_names(arch: str) -> list[str]:
    return ["h", "c"] if arch == "lstm" else ["h"]


def to_onnx_step(model: BiLM, opset: int = 17) -> onnx.ModelProto:
    model = model.eval()
    cfg = model.cfg
    names = state_names(cfg.arch)
    example = (torch.tensor([5, 7]), *(torch.zeros(1, 2, cfg.hidden_size) for _ in names))
    outputs = ["log_probs", *[f"{n}_out" for n in names]]
    axes = {"token": {0: "batch"}, "log_probs": {0: "batch"}}
    axes |= {n: {1: "batch"} for n in [*names, *outputs[1:]]}
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # exporter deprecation and RNN batch notes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ForwardStep(model),
            example,
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["token", *names],
            output_names=outputs,
            dynamic_axes=axes,
        )
    return onnx.load_from_string(buffer.getvalue())


def export_lm_step(model: BiLM, path: Path, tokenizer_sha256: str) -> Path:
    """Write the step graph with the identity serving checks (kind, arch, tokenizer digest)."""
    proto = to_onnx_step(model)
    cfg = model.cfg
    props = {"kind": KIND, "arch": cfg.arch, "tokenizer_sha256": tokenizer_sha256}
    props |= {"hidden_size": str(cfg.hidden_size), "vocab_size": str(cfg.vocab_size)}
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, tmp)
    return path
