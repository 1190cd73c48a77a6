"""`params.yaml`: read once at each stage's entry, validated the same way for every stage.

`validate` checks a section against the stage's config dataclass with pydantic (strict types,
no unknown keys, every key without a default present) and turns the first problem into a
one-line `UserError` naming the key and the stage. `set_param` edits one value in place,
keeping every other byte of the file.
"""

import dataclasses
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import pydantic
import yaml
from ruamel.yaml import YAML
from ruamel.yaml.nodes import ScalarNode

from sentiment_rnn.errors import UserError

C = TypeVar("C")
Scalar = str | int | float | bool


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


def section(params: Mapping[str, Any], dotted: str, stage: str | None = None) -> Any:
    """One section or value, e.g. `train.lstm`, or a UserError naming what is missing."""
    node: Any = params
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            for_stage = f" (stage {stage})" if stage else ""
            raise UserError(f"params.yaml has no '{dotted}'{for_stage}: missing key '{key}'")
        node = node[key]
    return node


@functools.cache
def _schema(cls: type) -> type[pydantic.BaseModel]:
    """A strict pydantic model with the fields of the config dataclass `cls`.

    Every field is required in params.yaml (DVC should see every value a stage uses), but
    those the dataclass lists in its `OPTIONAL` class variable, which keep their defaults.
    """
    hints = get_type_hints(cls)
    optional = set(getattr(cls, "OPTIONAL", ()))
    fields = {
        f.name: (hints[f.name], f.default if f.name in optional else ...)
        for f in dataclasses.fields(cls)
        if f.init
    }
    config = pydantic.ConfigDict(strict=True, extra="forbid")
    return pydantic.create_model(f"{cls.__name__}Params", __config__=config, **fields)  # type: ignore[call-overload]


def _problem(error: Mapping[str, Any], where: str) -> str:
    key = ".".join([where, *(str(part) for part in error["loc"])])
    if error["type"] == "missing":
        return f"missing key '{key}'"
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    return f"'{key}': {error['msg'].lower()}, got {error.get('input')!r}"


def validate(
    cls: type[C], data: Any, where: str, stage: str, filled: Mapping[str, Any] | None = None
) -> C:
    """`data` (the params section `where`) as an instance of the config dataclass `cls`.

    `filled` supplies fields the stage knows itself (e.g. the arch, the vocabulary size); the
    section may not set them too.
    """
    if not isinstance(data, Mapping):
        raise UserError(f"params.yaml: '{where}' must be a mapping of keys (stage {stage})")
    filled = dict(filled or {})
    clash = sorted(set(data) & set(filled))
    if clash:
        raise UserError(
            f"params.yaml: unknown key '{where}.{clash[0]}' (stage {stage}): the stage sets it"
        )
    try:
        checked = _schema(cls).model_validate({**data, **filled})
    except pydantic.ValidationError as exc:
        # an unknown key first: a misspelt key is also reported missing under its real name
        order = {"extra_forbidden": 0, "missing": 2}
        errors = sorted(exc.errors(), key=lambda e: order.get(e["type"], 1))
        problems = [_problem(e, where) for e in errors]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"params.yaml: {problems[0]}{more} (stage {stage})") from None
    return cls(**dict(checked))


def scalar_text(value: Scalar) -> str:
    """`value` as YAML that both loaders here (ruamel for DVC, PyYAML for the stages) read back
    unchanged: plain when possible, else double-quoted (JSON strings are valid YAML)."""
    for text in (_plain(value), json.dumps(value)):
        try:
            loaded = [YAML(typ="safe").load(f"k: {text}\n"), yaml.safe_load(f"k: {text}\n")]
        except Exception:  # not valid YAML as written: try the next form
            continue
        if all(isinstance(d, dict) and _same(d.get("k"), value) for d in loaded):
            return text
    raise UserError(f"cannot write {value!r} to params.yaml so that it reads back the same")


def _plain(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):  # PyYAML reads 1e-05 as a string, 1.0e-05 as a float
        mantissa, e, exponent = repr(value).partition("e")
        return mantissa + (".0" if e and "." not in mantissa else "") + e + exponent
    return value if isinstance(value, str) else repr(value)


def _same(a: object, b: object) -> bool:
    return a == b and type(a) is type(b)  # 1 == True == 1.0, but they are different params


def set_param(path: Path, dotted: str, value: Scalar) -> bool:
    """Set one value in params.yaml, keeping every other byte (comments, flow-style wrapping).

    ruamel's round-trip dump would re-indent wrapped flow mappings, so the new scalar is spliced
    in at the position ruamel's composer reports. Returns False when the value was already set.
    """
    if _same(read_param(path, dotted), value):
        return False
    text = path.read_text()
    node = YAML().compose(text)
    for key in dotted.split("."):
        node = next(v for k, v in node.value if k.value == key)  # read_param checked the keys
    if not isinstance(node, ScalarNode):
        raise UserError(f"{path}: '{dotted}' is a section, not a value")
    start, end = node.start_mark.index, node.end_mark.index
    path.write_text(text[:start] + scalar_text(value) + text[end:])
    return True


def read_param(path: Path, dotted: str) -> Any:
    """One value of the params file at `path`."""
    return section(load_params(path), dotted)
