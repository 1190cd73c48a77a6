"""Memory hygiene for long prediction runs: freed memory back to the OS, a bounded thread pool."""

import ctypes
import functools
import os
import sys
from collections.abc import Callable

import pyarrow as pa

from sentiment_rnn.serving.batching import ScoringModel


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where there is none (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory(model: ScoringModel | None = None) -> bool:
    """Give the memory freed by the last chunk back to the OS; True if glibc could be asked.

    pyarrow's pool (mimalloc keeps freed pages for reuse), then the C heap: each chunk's
    texts, tokenizer encodings and batches are freed once it is written, but glibc keeps freed
    blocks in per-thread arenas, where they fragment; malloc_trim(0) returns the free pages
    of every arena. A few milliseconds per chunk. With a `model`, its own pool first
    (`ScoringModel.release_memory`: onnxruntime's arena).
    """
    if model is not None:
        model.release_memory()
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def size_tokenizer_pool(threads: int) -> None:
    """Give the tokenizer's thread pool `threads` threads too (0: leave it at one per core).

    tokenizers encodes batches on a Rust (rayon) pool of one thread per core, sized from
    RAYON_NUM_THREADS when it is first used; each thread holds its own malloc arena, so on a
    many-core machine the pool alone holds much memory. A RAYON_NUM_THREADS the user set
    wins; in a process that has already tokenised a batch, the pool is fixed and this is a
    no-op.
    """
    if threads > 0:
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
