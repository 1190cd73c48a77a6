"""The serving contract: what an exported ONNX graph carries so that serving can trust it.

One typed definition, written by the exporter (`ServingMeta.to_props`) into the graph's
`metadata_props` and read back by the loader (`ServingMeta.from_props`); the graph's input and
output names; the label names; the one reader of a graph and its metadata (`load_proto`,
`metadata_props`, `read_props`); and the one check that a tokenizer is the one the model was
trained with.
"""

import json
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from sentiment_rnn.core.tokenizer import TRUNCATION_SIDES
from sentiment_rnn.errors import UserError
from sentiment_rnn.files import sha256_file

if TYPE_CHECKING:  # onnx is imported where a graph is read: importing it takes long
    import onnx

INPUT_NAMES = ("token_ids", "lengths")  # int64 (batch, time), int64 (batch,)
OUTPUT_NAMES = ("probability", "logit")  # float32 (batch,): positive class
LABEL_NAMES = ("negative", "positive")


@dataclass(frozen=True)
class ServingMeta:
    """The ONNX metadata serving relies on. `metadata_props` are strings: numbers are written
    as text, label names as a JSON list; empty strings stand for unknown identity fields."""

    arch: str
    tokenizer_sha256: str
    max_length: int
    truncation_side: str
    pad_id: int
    label_names: tuple[str, str] = LABEL_NAMES
    mlflow_run_id: str = ""  # the run that trained the model
    best_val_acc: float | None = None  # its validation accuracy
    serving_graph: str = "exported"  # or "folded-scan" (see export.fast_graph)

    def to_props(self) -> dict[str, str]:
        props = {k: "" if v is None else str(v) for k, v in asdict(self).items()}
        props["label_names"] = json.dumps(list(self.label_names))
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str) -> "ServingMeta":
        """Parse the metadata of the graph at `source`, or a UserError saying what is wrong."""
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [k for k in required if k not in props]
        if missing:
            raise UserError(
                f"{source} lacks serving metadata {missing}: export it with "
                f"`sentiment-rnn export` (found keys: {sorted(props)})"
            )
        try:
            labels = json.loads(props.get("label_names", json.dumps(LABEL_NAMES)))
            accuracy = props.get("best_val_acc", "")
            meta = cls(
                arch=props["arch"],
                tokenizer_sha256=props["tokenizer_sha256"],
                max_length=int(props["max_length"]),
                truncation_side=props["truncation_side"],
                pad_id=int(props["pad_id"]),
                label_names=(str(labels[0]), str(labels[1])),
                mlflow_run_id=props.get("mlflow_run_id", ""),
                best_val_acc=float(accuracy) if accuracy else None,
                serving_graph=props.get("serving_graph", "exported"),
            )
        except (ValueError, TypeError, IndexError, KeyError):
            raise UserError(f"{source} has invalid serving metadata: {dict(props)}") from None
        if meta.truncation_side not in TRUNCATION_SIDES or len(labels) != 2 or meta.max_length < 1:
            raise UserError(f"{source} has invalid serving metadata: {dict(props)}")
        return meta


def invalid_model(source: object, reason: str) -> UserError:
    """The error for a file (or serialized graph) that onnx or onnxruntime cannot read."""
    return UserError(f"{source} is not a valid ONNX model ({reason})")


def load_proto(model: Path | bytes, external_data: bool = True) -> "onnx.ModelProto":
    """The graph in the file `model` (or serialized in `model`), or a UserError."""
    import onnx

    try:
        if isinstance(model, bytes):
            return onnx.load_from_string(model)
        return onnx.load(str(model), load_external_data=external_data)
    except Exception as exc:  # protobuf's DecodeError and friends
        source = "the serialized graph" if isinstance(model, bytes) else model
        raise invalid_model(source, type(exc).__name__) from None


def metadata_props(proto: "onnx.ModelProto") -> dict[str, str]:
    """The graph's `metadata_props` as a dict (parse it with `ServingMeta.from_props`)."""
    return {p.key: p.value for p in proto.metadata_props}


def read_props(path: Path) -> dict[str, str]:
    """The `metadata_props` of the ONNX file at `path`, without loading external weights."""
    return metadata_props(load_proto(path, external_data=False))


def check_pairing(tokenizer: Path, expected_sha256: str, model: str, fix: str) -> str:
    """The sha256 of `tokenizer` after checking it is the one `model` was trained with.

    `fix` says what to do when it is not (rerun a stage, pass another file).
    """
    if not Path(tokenizer).is_file():
        raise UserError(f"tokenizer {tokenizer} not found: {fix}")
    digest = sha256_file(tokenizer)
    if digest != expected_sha256:
        raise UserError(
            f"tokenizer {tokenizer} (sha256 {digest[:12]}...) is not the one {model} was trained "
            f"with (sha256 {expected_sha256[:12]}...): {fix}"
        )
    return digest
