"""Stage `predict`: score a file of reviews with an exported ONNX model, streaming.

Input (CSV, JSON Lines, Parquet or plain text, one review per line) is read in chunks of
`chunk_rows`, so memory stays bounded whatever the file size. Within a chunk, reviews are
sorted by token count and batched, which cuts padding (a batch is as long as its longest
review), then the scores are put back in input order; the next chunk is read and tokenised in
a background thread meanwhile. Every input row gives exactly one
output row, in order: id, label, positive probability, `truncated` and `status` (`ok`, or
an `error: ...` and no prediction for a row that cannot be scored). Duplicate ids are kept
(no row is ever dropped) and counted in the summary. The output is written to a temporary
file beside the target and renamed at the end: a failed run leaves nothing under its name.
"""

import ctypes
import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from sentiment_rnn.errors import UserError
from sentiment_rnn.files import atomic_path
from sentiment_rnn.serving.encoding import OK, EncodedTexts, encode_texts, pad_batch, text_status
from sentiment_rnn.serving.io import (
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    Chunk,
    detect_format,
    open_writer,
    read_chunks,
)
from sentiment_rnn.serving.onnx_model import ServingMeta

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256
DEFAULT_CHUNK_ROWS = 8192
PROGRESS_LOG_SECONDS = 30.0  # a log line this often, for runs where no bar is seen (Prefect)


class ScoringModel(Protocol):
    """What scoring needs: the tokenizer, serving metadata, and ids -> probabilities."""

    meta: ServingMeta
    tokenizer: Tokenizer

    @property
    def provider(self) -> str: ...

    def __call__(self, token_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray: ...


@dataclass
class PredictSummary:
    """Counts for one scored file; `line()` is what the CLI prints."""

    input: str
    output: str
    provider: str
    rows: int = 0
    ok: int = 0
    errors: int = 0
    truncated: int = 0
    duplicate_ids: int = 0
    seconds: float = 0.0
    error_counts: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        errors = ", ".join(f"{k.removeprefix('error: ')} {v}" for k, v in self.error_counts.items())
        parts = [
            f"{self.rows} rows -> {self.output}", f"ok {self.ok}",
            f"errors {self.errors}" + (f" ({errors})" if errors else ""),
            f"truncated {self.truncated}",
        ]
        if self.duplicate_ids:
            parts.append(f"warning: {self.duplicate_ids} duplicate ids (all rows kept)")
        parts.append(f"{self.provider}, {self.rows_per_second:,.0f} rows/s")
        return " | ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"rows_per_second": round(self.rows_per_second, 1)}


@dataclass
class ScoredChunk:
    status: list[str]
    probability: np.ndarray  # (N,) float32, NaN where status is not ok
    truncated: np.ndarray  # (N,) bool


class DuplicateIds:
    """Counts ids seen before, keeping 8 bytes per row (a 64-bit hash) rather than the ids."""

    def __init__(self) -> None:
        self._hashes: list[np.ndarray] = []

    def add(self, ids: Sequence[str | None]) -> None:
        values = np.asarray([i for i in ids if i is not None], dtype=object)
        if len(values):
            self._hashes.append(pd.util.hash_array(values))

    def count(self) -> int:
        if not self._hashes:
            return 0
        hashes = np.concatenate(self._hashes)
        return len(hashes) - len(np.unique(hashes))


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where there is none (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory(model: object = None) -> bool:
    """Give the memory freed by the last chunk back to the OS; True if glibc could be asked.

    pyarrow's pool (mimalloc keeps freed pages for reuse), then the C heap: each chunk's
    texts, tokenizer encodings and batches are freed once it is written, but glibc keeps freed
    blocks in per-thread arenas, where they fragment; malloc_trim(0) returns the free pages
    of every arena. A few milliseconds per chunk. With a `model` that has `release_memory`,
    its own pool first (onnxruntime's arena: about 1 GB for a GRU at 256 x 1,024 tokens).
    """
    release = getattr(model, "release_memory", None)
    if release is not None:
        release()
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
    many-core machine the pool alone takes hundreds of MB. A RAYON_NUM_THREADS the user set
    wins; in a process that has already tokenised a batch, the pool is fixed and this is a
    no-op.
    """
    if threads > 0:
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))


def infer_sorted(model: ScoringModel, rows: list[np.ndarray], batch_size: int) -> np.ndarray:
    """Probabilities in the order of `rows`, computed over length-sorted batches."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    order = np.argsort(lengths, kind="stable")
    out = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        token_ids, batch_lengths = pad_batch([rows[i] for i in idx], model.meta.pad_id)
        out[idx] = model(token_ids, batch_lengths)
    return out


@dataclass
class PreparedChunk:
    """A chunk with its rows checked and its valid texts tokenised."""

    chunk: Chunk
    status: list[str]
    valid: np.ndarray  # positions of the rows to score
    encoded: EncodedTexts | None


def prepare_chunk(model: ScoringModel, chunk: Chunk) -> PreparedChunk:
    """Statuses for every row; token ids for the rows that can be scored."""
    status = [chunk.read_errors.get(i) or text_status(t) for i, t in enumerate(chunk.texts)]
    valid = np.flatnonzero(np.array([s == OK for s in status], dtype=bool))
    encoded = None
    if len(valid):
        meta = model.meta
        encoded = encode_texts(model.tokenizer, [chunk.texts[i] for i in valid],
                               meta.max_length, meta.truncation_side)
    return PreparedChunk(chunk, status, valid, encoded)


def infer_chunk(model: ScoringModel, prepared: PreparedChunk, batch_size: int) -> ScoredChunk:
    """Scores for the valid rows; NaN and no truncation flag for the others."""
    probability = np.full(len(prepared.chunk), np.nan, dtype=np.float32)
    truncated = np.zeros(len(prepared.chunk), dtype=bool)
    if prepared.encoded is not None:
        probability[prepared.valid] = infer_sorted(model, prepared.encoded.ids, batch_size)
        truncated[prepared.valid] = prepared.encoded.truncated
    return ScoredChunk(prepared.status, probability, truncated)


def score_chunk(model: ScoringModel, chunk: Chunk, batch_size: int) -> ScoredChunk:
    """Statuses for every row, and scores for the rows that can be scored."""
    return infer_chunk(model, prepare_chunk(model, chunk), batch_size)


def prepared_chunks(model: ScoringModel, chunks: Iterator[Chunk],
                    prefetch: bool = True) -> Iterator[PreparedChunk]:
    """Chunks, checked and tokenised. With `prefetch`, the next chunk is read and tokenised in
    a background thread while the caller scores the current one: tokenizers and onnxruntime
    both release the GIL, so reading and tokenising overlap with inference."""
    if not prefetch:
        yield from (prepare_chunk(model, chunk) for chunk in chunks)
        return

    def next_prepared() -> PreparedChunk | None:
        chunk = next(chunks, None)
        return None if chunk is None else prepare_chunk(model, chunk)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict-prefetch") as pool:
        future = pool.submit(next_prepared)
        while (prepared := future.result()) is not None:
            future = pool.submit(next_prepared)
            yield prepared


def output_schema(ids_from_column: bool) -> pa.Schema:
    """Ids taken from a column are strings; row numbers are int64."""
    return pa.schema([
        ("id", pa.string() if ids_from_column else pa.int64()),
        ("label", pa.string()),
        ("probability", pa.float32()),
        ("truncated", pa.bool_()),
        ("status", pa.string()),
    ])  # fmt: skip


def chunk_table(chunk: Chunk, scored: ScoredChunk, labels: tuple[str, str],
                schema: pa.Schema) -> pa.Table:
    """The output rows of one chunk; error rows have null label, probability and truncated."""
    failed = np.array([s != OK for s in scored.status], dtype=bool)
    ids = chunk.ids if chunk.ids is not None else np.arange(len(chunk)) + chunk.first_row
    # logit > 0, as the training accuracy counts it (sigmoid(0) = 0.5 is negative)
    label = np.where(scored.probability > 0.5, labels[1], labels[0]).astype(object)
    label[failed] = None
    return pa.table([
        pa.array(ids, schema.field("id").type),
        pa.array(label, pa.string()),
        pa.array(scored.probability, pa.float32(), mask=failed),
        pa.array(scored.truncated, pa.bool_(), mask=failed),
        pa.array(scored.status, pa.string()),
    ], schema=schema)  # fmt: skip


def check_output_path(output: Path, input_path: Path) -> None:
    """Fail before any work on an output that cannot or must not be written."""
    if not output.parent.is_dir():
        raise UserError(f"output folder {output.parent} does not exist: create it first")
    if output.resolve() == input_path.resolve():
        raise UserError(f"output {output} would overwrite the input: choose another name")
    if output.is_dir():
        raise UserError(f"output {output} is a folder: give a file name")


def _readable_by_others(path: Path) -> None:
    """mkstemp creates 0600 files: give the result the permissions a plain open() would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _row_total(path: Path, fmt: str) -> int | None:
    """Rows in the file when known without reading it (Parquet metadata), for the bar."""
    if fmt != "parquet":
        return None
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (pa.ArrowInvalid, OSError):
        return None  # the reader reports it


def _tally(summary: PredictSummary, scored: ScoredChunk) -> None:
    summary.rows += len(scored.status)
    for status in scored.status:
        if status != OK:
            summary.error_counts[status] = summary.error_counts.get(status, 0) + 1
    summary.errors = sum(summary.error_counts.values())
    summary.ok = summary.rows - summary.errors
    summary.truncated += int(scored.truncated.sum())


def predict_file(
    model: ScoringModel,
    input_path: Path,
    output_path: Path,
    *,
    text_column: str = "text",
    id_column: str | None = None,
    input_format: str | None = None,
    output_format: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: bool = True,
    prefetch: bool = True,
    release_memory: bool = False,
) -> PredictSummary:
    """Score every row of `input_path` into `output_path`; see the module docstring."""
    in_fmt = detect_format(input_path, input_format, INPUT_FORMATS, "input")
    out_fmt = detect_format(output_path, output_format, OUTPUT_FORMATS, "output")
    if batch_size < 1 or chunk_rows < 1:
        raise UserError("--batch-size and --chunk-rows must be >= 1")
    check_output_path(output_path, input_path)
    id_column = None if in_fmt == "text" else id_column
    schema = output_schema(id_column is not None)
    summary = PredictSummary(str(input_path), str(output_path), model.provider)
    duplicates = DuplicateIds()
    start = logged = time.perf_counter()
    bar = tqdm(total=_row_total(input_path, in_fmt), unit="rows", unit_scale=True,
               desc=f"predict {input_path.name}", dynamic_ncols=True, mininterval=0.5,
               disable=None if progress else True)
    with bar, atomic_path(output_path) as tmp:
        writer = open_writer(tmp, out_fmt, schema)
        try:
            chunks = read_chunks(input_path, in_fmt, text_column, id_column, chunk_rows)
            for prepared in prepared_chunks(model, chunks, prefetch):
                chunk = prepared.chunk
                scored = infer_chunk(model, prepared, batch_size)
                writer.write(chunk_table(chunk, scored, model.meta.label_names, schema))
                _tally(summary, scored)
                if chunk.ids is not None:
                    duplicates.add(chunk.ids)
                bar.update(len(chunk))
                del prepared, chunk, scored  # free this chunk before trimming
                release_freed_memory(model if release_memory else None)
                if time.perf_counter() - logged > PROGRESS_LOG_SECONDS:
                    logged = time.perf_counter()
                    log.info("scored %d rows, %.0f rows/s", summary.rows,
                             summary.rows / (logged - start))
        finally:
            writer.close()
        _readable_by_others(tmp)
    summary.duplicate_ids = duplicates.count()
    summary.seconds = time.perf_counter() - start
    return summary


def run_predict(
    model: str,
    input_path: Path,
    output_path: Path,
    *,
    tokenizer: Path | None = None,
    providers: Sequence[str] | None = None,
    threads: int = 0,
    parallel: bool = False,
    int8: bool = False,
    **options: Any,
) -> PredictSummary:
    """The command's entry: load the model (a file or a `models:/` URI), then score."""
    from sentiment_rnn.serving.onnx_model import load_model

    size_tokenizer_pool(threads)
    scoring_model = load_model(model, tokenizer, providers, threads, parallel=parallel, int8=int8)
    return predict_file(scoring_model, input_path, output_path, **options)
