"""An exported model ready to score: onnxruntime session, serving metadata and its tokenizer.

A model is named by an ONNX file or by an MLflow registry URI (`models:/<name>@<alias>` or
`models:/<name>/<version>`). Its tokenizer is looked up in this order:
  1. `--tokenizer PATH`, when given;
  2. beside a file `models/lstm.int8.onnx`: `lstm.int8.tokenizer.json`, `lstm.tokenizer.json`,
     then `tokenizer.json` in the same folder;
  3. for a registry URI: a `*tokenizer.json` inside the downloaded model folder (e.g. logged
     with `extra_files`), else one among the artifacts of the run that logged the model
     version, else this project's copy (`paths.tokenizer_copy_path`, then
     `paths.TOKENIZER_FILE`) when its sha256 matches.
The tokenizer's sha256 must equal the model's `tokenizer_sha256` metadata, or it is refused.
"""

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from sentiment_rnn import paths
from sentiment_rnn.errors import UserError
from sentiment_rnn.serving.contract import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    ServingMeta,
    check_pairing,
    load_proto,
    read_props,
)
from sentiment_rnn.serving.session import SessionConfig, create_session

REGISTRY_SCHEME = "models:/"
PROBABILITY = OUTPUT_NAMES[0]
_SHRINK_CPU_ARENA = ort.RunOptions()
_SHRINK_CPU_ARENA.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
_TOKENIZER_FIX = "pass the model's own tokenizer.json with --tokenizer"


class OnnxSentimentModel:
    """Callable (token_ids (B, T) int64, lengths (B,) int64) -> positive probability (B,).

    It satisfies `batching.ScoringModel`.
    """

    def __init__(
        self, session: ort.InferenceSession, meta: ServingMeta, tokenizer: Tokenizer, source: str
    ) -> None:
        self.session, self.meta, self.tokenizer, self.source = session, meta, tokenizer, source
        names = tuple(i.name for i in session.get_inputs())
        if names != INPUT_NAMES:
            raise UserError(f"{source} takes inputs {list(names)}, expected {list(INPUT_NAMES)}")

    @property
    def provider(self) -> str:
        """The provider that really runs (the first of the session's list)."""
        return str(self.session.get_providers()[0])

    def __call__(self, token_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        feed = dict(zip(INPUT_NAMES, (token_ids, lengths), strict=True))
        return self.session.run([PROBABILITY], feed)[0]

    def release_memory(self) -> None:
        """Hand the CPU arena's free regions back to the OS.

        onnxruntime keeps every region its arena ever allocated, also while the caller reads
        and writes between batches. It shrinks an arena only at the end of a run that asks
        for it, so this runs one single-token review with that run option. It lowers what is
        held between batches, not the peak.
        """
        one = np.full((1, 1), self.meta.pad_id, dtype=np.int64)
        feed = dict(zip(INPUT_NAMES, (one, np.ones(1, np.int64)), strict=True))
        self.session.run([PROBABILITY], feed, _SHRINK_CPU_ARENA)


def local_tokenizer(onnx_path: Path) -> Path | None:
    """`<stem>.tokenizer.json` for the stem and its dotted prefixes, else `tokenizer.json`."""
    parts = onnx_path.name.removesuffix(".onnx").split(".")
    names = [".".join(parts[:n]) + ".tokenizer.json" for n in range(len(parts), 0, -1)]
    for name in [*names, "tokenizer.json"]:
        if (onnx_path.parent / name).is_file():
            return onnx_path.parent / name
    return None


def load_tokenizer(path: Path, meta: ServingMeta, model_source: str) -> Tokenizer:
    """The tokenizer at `path`, after checking it is the one the model was trained with."""
    check_pairing(path, meta.tokenizer_sha256, model_source, _TOKENIZER_FIX)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception
        raise UserError(f"{path} is not a tokenizers JSON file ({exc})") from None


def project_tokenizer(onnx_file: Path, root: Path = Path(".")) -> Path | None:
    """This project's copy of the tokenizer a registered model was trained with, if any."""
    meta = ServingMeta.from_props(read_props(onnx_file), str(onnx_file))
    for candidate in (root / paths.tokenizer_copy_path(meta.arch), root / paths.TOKENIZER_FILE):
        try:
            check_pairing(candidate, meta.tokenizer_sha256, str(onnx_file), _TOKENIZER_FIX)
        except UserError:  # absent, or another tokenizer: try the next one
            continue
        return candidate
    return None


def load_onnx_model(
    onnx_path: Path, tokenizer_path: Path | None, config: SessionConfig, source: str | None = None
) -> OnnxSentimentModel:
    """Open a local ONNX file with its tokenizer (found beside it when None)."""
    source = source or str(onnx_path)
    if not onnx_path.is_file():
        raise UserError(f"model file {onnx_path} not found")
    session = create_session(onnx_path, config)
    meta = ServingMeta.from_props(session.get_modelmeta().custom_metadata_map, source)
    tokenizer_path = tokenizer_path or local_tokenizer(onnx_path)
    if tokenizer_path is None:
        raise UserError(
            f"no tokenizer found beside {source} (looked for "
            f"<stem>.tokenizer.json and tokenizer.json): pass --tokenizer"
        )
    return OnnxSentimentModel(session, meta, load_tokenizer(tokenizer_path, meta, source), source)


def load_model(
    spec: str, tokenizer: Path | None, config: SessionConfig, int8: bool = False
) -> OnnxSentimentModel:
    """A model from an ONNX file or a `models:/` registry URI (see the module docstring).

    `tokenizer`, when not None, overrides the lookup; `int8` serves an int8 dynamically
    quantized copy, made on the fly (see `quantize`).
    """
    with tempfile.TemporaryDirectory(prefix="sentiment-rnn-model-") as tmp:
        if spec.startswith(REGISTRY_SCHEME):
            from sentiment_rnn.tracking import registry  # MLflow only for a registry URI

            onnx_file, found = registry.download_registered(spec, Path(tmp))
            tokenizer = tokenizer or found or project_tokenizer(onnx_file)
        else:
            onnx_file = Path(spec)
            if not onnx_file.is_file():
                raise UserError(f"model file {onnx_file} not found")
            tokenizer = tokenizer or local_tokenizer(onnx_file)
        if int8:
            from sentiment_rnn.serving.quantize import quantize_int8  # onnx: slow to import

            load_proto(onnx_file, external_data=False)  # the quantizer's errors are less clear
            onnx_file = quantize_int8(onnx_file, Path(tmp) / "int8.onnx")
        # The session and tokenizer are read into memory, so the temporary files can go.
        return load_onnx_model(onnx_file, tokenizer, config, spec)
