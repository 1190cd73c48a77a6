"""An exported model ready to score: onnxruntime session, serving metadata and its tokenizer.

A model is named by an ONNX file or by an MLflow registry URI (`models:/<name>@<alias>` or
`models:/<name>/<version>`). Its tokenizer is looked up in this order:
  1. `--tokenizer PATH`, when given;
  2. beside a file `models/lstm.int8.onnx`: `lstm.int8.tokenizer.json`, `lstm.tokenizer.json`,
     then `tokenizer.json` in the same folder;
  3. for a registry URI: a `*tokenizer.json` inside the downloaded model folder (e.g. logged
     with `extra_files`), else one among the artifacts of the run that logged the model
     version, else this project's `models/<arch>.tokenizer.json` or `data/tokens/tokenizer.json`
     when its sha256 matches.
The tokenizer's sha256 must equal the model's `tokenizer_sha256` metadata, or it is refused.
"""

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from sentiment_rnn.errors import UserError
from sentiment_rnn.tokenize import tokenizer_sha256

log = logging.getLogger(__name__)

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
PROVIDER_ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": "TensorrtExecutionProvider"}
REQUIRED_META = ("arch", "tokenizer_sha256", "max_length", "truncation_side", "pad_id",
                 "label_names")
REGISTRY_SCHEME = "models:/"
_SHRINK_CPU_ARENA = ort.RunOptions()
_SHRINK_CPU_ARENA.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


@dataclass(frozen=True)
class ServingMeta:
    """The model's metadata_props that serving relies on, typed."""

    arch: str
    tokenizer_sha256: str
    max_length: int
    truncation_side: str
    pad_id: int
    label_names: tuple[str, str]
    mlflow_run_id: str = ""
    best_val_acc: str = ""

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> "ServingMeta":
        missing = [k for k in REQUIRED_META if k not in props]
        if missing:
            raise UserError(f"{source} lacks serving metadata {missing}: export it with "
                            f"`sentiment-rnn export` (found keys: {sorted(props)})")
        labels = json.loads(props["label_names"])
        if props["truncation_side"] not in ("left", "right") or len(labels) != 2:
            raise UserError(f"{source} has invalid serving metadata: {props}")
        return cls(props["arch"], props["tokenizer_sha256"], int(props["max_length"]),
                   props["truncation_side"], int(props["pad_id"]), (labels[0], labels[1]),
                   props.get("mlflow_run_id", ""), props.get("best_val_acc", ""))


def resolve_providers(requested: Sequence[str] | None) -> tuple[list[str], bool]:
    """(providers to ask for, strict). None or ["auto"]: CUDA then CPU, falling back quietly."""
    available = ort.get_available_providers()
    if not requested or list(requested) == ["auto"]:
        return ([CUDA, CPU] if CUDA in available else [CPU]), False
    names = [PROVIDER_ALIASES.get(p.lower(), p) for p in requested]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UserError(f"execution provider(s) {unknown} not available; available: {available}")
    return names, True


def session_options(threads: int = 0, parallel: bool = False) -> ort.SessionOptions:
    """All graph optimisations; `threads` intra-op threads (0: onnxruntime's default).

    `parallel` runs independent nodes at once, each on one thread: the forward and backward
    recurrent layers of a bidirectional model are independent, and one thread each beats
    two threads sharing every small per-step matrix product.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Every batch has its own (batch, time) shape. A memory pattern is planned and cached per
    # input shape, each a differently sized block from the arena: over a long file the arena
    # fragments and RSS crept up (833 -> 1065 MB over 172k reviews). Without patterns it stays
    # flat, at no measured cost in speed.
    options.enable_mem_pattern = False
    if threads > (os.cpu_count() or 1):
        # More threads than cores: an idle thread that spins for work takes a core from one
        # that has work (16 threads on 2 cores ran 30 reviews/s with spinning).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if parallel:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.inter_op_num_threads = threads or 2
        options.intra_op_num_threads = 1
    else:
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads
    return options


def model_bytes(path: Path, rewrite_rnn: bool = True) -> bytes:
    """The serialised graph, with RNN nodes rewritten for speed (see `optimize`) if asked."""
    import onnx

    from sentiment_rnn.serving.optimize import rnn_to_scan

    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends
        raise UserError(f"{path} is not a valid ONNX model ({type(exc).__name__})") from None
    if rewrite_rnn:
        proto, rewritten = rnn_to_scan(proto)
        if rewritten:
            log.info("%s: %d RNN node(s) served as Scan (vectorised tanh)", path, rewritten)
    return proto.SerializeToString()


@contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """Silence onnxruntime's own log for the block: a CUDA provider that cannot load (no GPU,
    no CUDA 13 / cuDNN 9) prints a red error before falling back to CPU, which the caller
    reports itself in one line."""
    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)


def create_session(path: Path, providers: Sequence[str] | None = None, threads: int = 0,
                   parallel: bool = False, rewrite_rnn: bool = True) -> ort.InferenceSession:
    """A session on the requested providers; says which one really runs."""
    names, strict = resolve_providers(providers)
    # In auto mode a CUDA provider that cannot load is expected: it is reported once, below.
    quiet = quiet_onnxruntime() if not strict and CUDA in names else nullcontext()
    try:
        with quiet:
            session = ort.InferenceSession(model_bytes(path, rewrite_rnn),
                                           session_options(threads, parallel), providers=names)
    except UserError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types from pybind
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a valid ONNX model ({first})") from None
    running = session.get_providers()
    if strict and running[0] != names[0]:
        raise UserError(f"{names[0]} was requested but did not load; running: {running}")
    if CUDA in names and CUDA not in running:
        log.info("CUDAExecutionProvider is installed but did not load (no GPU, or CUDA 13 / "
                    "cuDNN 9 missing): running on %s", running[0])
    return session


class OnnxSentimentModel:
    """Callable (token_ids (B, T) int64, lengths (B,) int64) -> positive probability (B,)."""

    def __init__(self, session: ort.InferenceSession, meta: ServingMeta, tokenizer: Tokenizer,
                 source: str) -> None:
        self.session, self.meta, self.tokenizer, self.source = session, meta, tokenizer, source
        names = [i.name for i in session.get_inputs()]
        if names != ["token_ids", "lengths"]:
            raise UserError(f"{source} takes inputs {names}, expected ['token_ids', 'lengths']")

    @property
    def provider(self) -> str:
        """The provider that really runs (the first of the session's list)."""
        return str(self.session.get_providers()[0])

    def __call__(self, token_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        feed = {"token_ids": token_ids, "lengths": lengths}
        return self.session.run(["probability"], feed)[0]

    def release_memory(self) -> None:
        """Hand the CPU arena's free regions back to the OS.

        onnxruntime keeps every region its arena ever allocated, about 1 GB for a GRU at
        256 x 1,024 tokens, also while the caller reads and writes between batches. It
        shrinks an arena only at the end of a run that asks for it, so this runs one
        single-token review with that run option. (Over 1,000,000 reviews the peak stayed
        the same with and without it: 1,625 vs 1,646 MB.)
        """
        one = np.full((1, 1), self.meta.pad_id, dtype=np.int64)
        self.session.run(["probability"], {"token_ids": one, "lengths": np.ones(1, np.int64)},
                         _SHRINK_CPU_ARENA)


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
    digest = tokenizer_sha256(path)
    if digest != meta.tokenizer_sha256:
        raise UserError(
            f"tokenizer {path} (sha256 {digest[:12]}...) is not the one {model_source} was "
            f"trained with (sha256 {meta.tokenizer_sha256[:12]}...): pass the model's own "
            "tokenizer.json with --tokenizer"
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception
        raise UserError(f"{path} is not a tokenizers JSON file ({exc})") from None


def load_onnx_model(onnx_path: Path, tokenizer_path: Path | None = None,
                    providers: Sequence[str] | None = None, threads: int = 0,
                    source: str | None = None, parallel: bool = False,
                    rewrite_rnn: bool = True) -> OnnxSentimentModel:
    """Open a local ONNX file with its tokenizer (found beside it unless given)."""
    source = source or str(onnx_path)
    if not onnx_path.is_file():
        raise UserError(f"model file {onnx_path} not found")
    session = create_session(onnx_path, providers, threads, parallel, rewrite_rnn)
    meta = ServingMeta.from_props(session.get_modelmeta().custom_metadata_map, source)
    tokenizer_path = tokenizer_path or local_tokenizer(onnx_path)
    if tokenizer_path is None:
        raise UserError(f"no tokenizer found beside {source} (looked for "
                        f"<stem>.tokenizer.json and tokenizer.json): pass --tokenizer")
    return OnnxSentimentModel(session, meta, load_tokenizer(tokenizer_path, meta, source), source)


def load_model(spec: str, tokenizer_path: Path | None = None,
               providers: Sequence[str] | None = None, threads: int = 0,
               parallel: bool = False, int8: bool = False,
               rewrite_rnn: bool = True) -> OnnxSentimentModel:
    """A model from an ONNX file or a `models:/` registry URI (see the module docstring).

    `int8` serves an int8 dynamically quantized copy, made on the fly (about a second);
    `rewrite_rnn` serves RNN nodes as an equivalent, faster Scan (`optimize.rnn_to_scan`).
    """
    with tempfile.TemporaryDirectory(prefix="sentiment-rnn-model-") as tmp:
        if spec.startswith(REGISTRY_SCHEME):
            onnx_file, found = download_registered(spec, Path(tmp))
            tokenizer_path = tokenizer_path or found or project_tokenizer(onnx_file)
        else:
            onnx_file = Path(spec)
            if not onnx_file.is_file():
                raise UserError(f"model file {onnx_file} not found")
            tokenizer_path = tokenizer_path or local_tokenizer(onnx_file)
        if int8:
            from sentiment_rnn.serving.quantize import quantize_int8

            onnx_file = quantize_int8(_checked_onnx(onnx_file), Path(tmp) / "int8.onnx")
        # The session and tokenizer are read into memory, so the temporary files can go.
        return load_onnx_model(onnx_file, tokenizer_path, providers, threads, spec, parallel,
                               rewrite_rnn)


def _checked_onnx(path: Path) -> Path:
    """`path` if onnx can parse it (the quantizer's own errors are less clear)."""
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, and others
        raise UserError(f"{path} is not a valid ONNX model ({type(exc).__name__})") from None
    return path


def project_tokenizer(onnx_file: Path, root: Path = Path(".")) -> Path | None:
    """This project's copy of the tokenizer a registered model was trained with, if any."""
    meta = ServingMeta.from_props(_read_props(onnx_file), str(onnx_file))
    for candidate in (root / "models" / f"{meta.arch}.tokenizer.json",
                      root / "data" / "tokens" / "tokenizer.json"):
        if candidate.is_file() and tokenizer_sha256(candidate) == meta.tokenizer_sha256:
            return candidate
    return None


def _read_props(onnx_file: Path) -> dict[str, str]:
    import onnx

    proto = onnx.load(str(onnx_file), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def _first_file(folder: Path, pattern: str) -> Path | None:
    return next(iter(sorted(folder.rglob(pattern))), None)


def download_registered(uri: str, dst: Path) -> tuple[Path, Path | None]:
    """Download a registered model's folder; returns (its .onnx file, a tokenizer or None)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from sentiment_rnn import tracking

    mlflow.set_tracking_uri(tracking.tracking_uri())
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars: noise
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst / "m"))
        folder = Path(local)
        onnx_file = _first_file(folder, "*.onnx")
        if onnx_file is None:
            raise UserError(f"{uri} holds no .onnx file (is it an ONNX model?)")
        tokenizer = _first_file(folder, "*tokenizer.json") or run_tokenizer(uri, dst / "run")
    except MlflowException as exc:
        where = tracking.tracking_uri()
        raise UserError(f"cannot load {uri} from {where}: {exc.message}") from None
    return onnx_file, tokenizer


def _model_version(client: Any, uri: str) -> Any:
    """The registry entry for `models:/<name>@<alias>` or `models:/<name>/<version>`."""
    ref = uri.removeprefix(REGISTRY_SCHEME)
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, _, version = ref.partition("/")
    return client.get_model_version(name, version)


def run_tokenizer(uri: str, dst: Path) -> Path | None:
    """A `*tokenizer.json` logged in the run that produced the model version, downloaded."""
    import mlflow

    client = mlflow.MlflowClient()
    run_id = _model_version(client, uri).run_id
    if not run_id:
        return None
    pending = [""]
    while pending:  # breadth-first over the run's artifact folders
        for item in client.list_artifacts(run_id, pending.pop(0) or None):
            if item.is_dir:
                pending.append(item.path)
            elif item.path.endswith("tokenizer.json"):
                local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=item.path,
                                                            dst_path=str(dst))
                return Path(local)
    return None
