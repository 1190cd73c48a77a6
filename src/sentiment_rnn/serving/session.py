"""onnxruntime sessions: execution providers, session options, and the one session factory.

What a caller may choose (providers, threads, parallel execution, the RNN rewrite) travels as
one `SessionConfig`. `create_session` builds a session from an ONNX file or a serialized graph
and reports the provider that really runs: onnxruntime-gpu falls back to the CPU without an
error when the CUDA provider cannot load, so a provider asked for by name that did not load is
refused, and a fallback in auto mode is logged.
"""

import ctypes
import io
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import onnxruntime as ort

from sentiment_rnn.errors import UserError
from sentiment_rnn.serving.contract import invalid_model, load_proto

log = logging.getLogger(__name__)

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
PROVIDER_ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": "TensorrtExecutionProvider"}
AUTO = "auto"


@dataclass(frozen=True)
class SessionConfig:
    """How a graph is run.

    `providers`: names or aliases (`cpu`, `cuda`), in order of preference, all required to be
    installed; `("auto",)` or empty: CUDA when it loads, else CPU. `threads`: intra-op threads
    (0: onnxruntime's default, one per core). `parallel`: run independent nodes at once, one
    thread each. `rewrite_rnn`: serve RNN nodes as an equivalent Scan (see `rnn_scan`).
    """

    providers: tuple[str, ...] = (AUTO,)
    threads: int = 0
    parallel: bool = False
    rewrite_rnn: bool = True


def resolve_providers(requested: Sequence[str] | None) -> tuple[list[str], bool]:
    """(providers to ask for, strict). None, empty or ["auto"]: CUDA then CPU, quietly."""
    available = ort.get_available_providers()
    if not requested or list(requested) == [AUTO]:
        return ([CUDA, CPU] if CUDA in available else [CPU]), False
    names = [PROVIDER_ALIASES.get(p.lower(), p) for p in requested]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UserError(f"execution provider(s) {unknown} not available; available: {available}")
    return names, True


def session_options(config: SessionConfig) -> ort.SessionOptions:
    """All graph optimisations, quiet logs, and the threading that `config` asks for.

    `parallel` runs independent nodes at once, each on one thread: the forward and backward
    recurrent layers of a bidirectional model are independent, and one thread each beats
    two threads sharing every small per-step matrix product.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Every batch has its own (batch, time) shape. A memory pattern is planned and cached per
    # input shape, each a differently sized block from the arena: over a long file the arena
    # fragments and resident memory creeps up. Without patterns it stays flat.
    options.enable_mem_pattern = False
    if config.threads > (os.cpu_count() or 1):
        # More threads than cores: an idle thread that spins for work takes a core from one
        # that has work.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if config.parallel:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.inter_op_num_threads = config.threads or 2
        options.intra_op_num_threads = 1
    else:
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = config.threads
    return options


def model_bytes(model: Path | bytes, rewrite_rnn: bool = True) -> bytes:
    """The serialized graph, with RNN nodes rewritten for speed (see `rnn_scan`) if asked."""
    from sentiment_rnn.serving.rnn_scan import rnn_to_scan  # imports onnx, which takes long

    if isinstance(model, bytes) and not rewrite_rnn:
        return model
    proto = load_proto(model)
    if rewrite_rnn:
        proto, rewritten = rnn_to_scan(proto)
        if rewritten:
            name = "graph" if isinstance(model, bytes) else model
            log.info("%s: %d RNN node(s) served as Scan (vectorised tanh)", name, rewritten)
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


@cache
def preload_cuda_libraries() -> bool:
    """Load the CUDA 13 and cuDNN 9 libraries of the nvidia-* wheels before a CUDA session.

    onnxruntime-gpu does not search those wheels by itself, so without this its CUDA provider
    falls back to the CPU even on a GPU machine. Only tried where a GPU driver (libcuda) loads:
    elsewhere `preload_dlls` would print a failure per library. True when it ran.
    """
    if not hasattr(ort, "preload_dlls"):
        return False
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    said = io.StringIO()
    with redirect_stdout(said), redirect_stderr(said):
        ort.preload_dlls()
    if said.getvalue().strip():
        log.info("onnxruntime.preload_dlls: %s", said.getvalue().strip().splitlines()[0])
    return True


def create_session(model: Path | bytes, config: SessionConfig) -> ort.InferenceSession:
    """A session on the providers `config` asks for; says which one really runs.

    `model` is an ONNX file or a serialized graph. A provider requested by name that did not
    load is a UserError; in auto mode a CUDA provider that did not load is logged once.
    """
    names, strict = resolve_providers(config.providers)
    graph = model_bytes(model, config.rewrite_rnn)
    # In auto mode a CUDA provider that cannot load is expected: it is reported once, below.
    quiet = quiet_onnxruntime() if not strict and CUDA in names else nullcontext()
    if CUDA in names:
        preload_cuda_libraries()
    try:
        with quiet:
            session = ort.InferenceSession(graph, session_options(config), providers=names)
    except Exception as exc:  # onnxruntime raises its own exception types from pybind
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        source = "the serialized graph" if isinstance(model, bytes) else model
        raise invalid_model(source, first) from None
    running = session.get_providers()
    if strict and running[0] != names[0]:
        raise UserError(f"{names[0]} was requested but did not load; running: {running}")
    if CUDA in names and CUDA not in running:
        log.info(
            "CUDAExecutionProvider is installed but did not load (no GPU, or CUDA 13 / "
            "cuDNN 9 missing): running on %s",
            running[0],
        )
    return session
