"""Reading `params.yaml`: done once, at each stage's entry point."""

from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sentiment_rnn.errors import UserError

C = TypeVar("C")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Load the whole params file, with a clear error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"params file {path} not found: run from the project root or pass --params")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"params file {path} is not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise UserError(f"params file {path} must hold a mapping of sections")
    return params


def section(params: dict[str, Any], dotted: str) -> dict[str, Any]:
    """Return one section, e.g. `train.lstm`, or say which key is missing."""
    node: Any = params
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise UserError(f"params.yaml has no section '{dotted}' (missing '{key}')")
        node = node[key]
    return node


def build_config(cls: type[C], data: dict[str, Any], where: str) -> C:
    """Build a config dataclass from a params section, refusing keys it does not know."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"unknown {where} option(s) {unknown}; known: {sorted(known)}")
    return cls(**data)
