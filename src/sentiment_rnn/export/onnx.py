"""A trained classifier as an ONNX graph: (token_ids, lengths) -> (probability, logit).

The graph has symbolic batch and time axes and carries the serving contract
(`serving.contract.ServingMeta`) in its metadata_props.
"""

import io
import warnings
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from sentiment_rnn.core.model import SentimentRNN
from sentiment_rnn.errors import UserError
from sentiment_rnn.files import atomic_path
from sentiment_rnn.serving.contract import INPUT_NAMES, OUTPUT_NAMES, ServingMeta


class ProbabilityAndLogit(nn.Module):
    """The graph that is exported: (token_ids, lengths) -> (sigmoid(logit), logit)."""

    def __init__(self, model: SentimentRNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, token_ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        logit = self.model(token_ids, lengths)  # (B,)
        return torch.sigmoid(logit), logit


def to_onnx(model: SentimentRNN, meta: ServingMeta, opset: int = 17) -> onnx.ModelProto:
    """Export through the TorchScript exporter, which keeps batch and time symbolic.

    (The dynamo exporter fixes the time axis of these recurrent layers without an error.)
    """
    wrapper = ProbabilityAndLogit(model).eval()  # export restores the wrapper's mode afterwards
    example = (torch.randint(2, model.cfg.vocab_size, (2, 8)), torch.tensor([8, 3]))
    buffer = io.BytesIO()
    axes = {"token_ids": {0: "batch", 1: "time"}, "lengths": {0: "batch"}}
    axes |= {name: {0: "batch"} for name in OUTPUT_NAMES}
    with warnings.catch_warnings():
        # Deprecation notes about this exporter, tracer notes and "batch size other than 1
        # with RNN" warnings: the parity gate checks what they warn about, at many shapes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            example,
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
        )
    model.eval()
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, meta.to_props())
    return proto


def check_onnx(proto: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(
            f"the exported graph fails onnx.checker ({first}): do not serve it"
        ) from None


def symbolic_dims(proto: onnx.ModelProto) -> dict[str, list[str | int]]:
    """Each graph input's dimensions: a name where symbolic, a number where fixed."""
    return {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in proto.graph.input
    }


def save_onnx(proto: onnx.ModelProto, path: Path) -> Path:
    """Write the graph atomically: a failed export leaves nothing under its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, tmp)
    return path
