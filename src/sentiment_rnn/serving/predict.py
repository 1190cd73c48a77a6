"""Batch prediction: score a file of reviews with an exported ONNX model, streaming.

Input (CSV, JSON Lines, Parquet or plain text, one review per line) is read in chunks of
`chunk_rows`, so memory stays bounded whatever the file size. Each chunk is checked,
tokenised and scored in length-sorted batches (`batching`), the next chunk being read and
tokenised in a background thread meanwhile. Every input row gives exactly one output row, in
order: id, label, positive probability, `truncated` and `status` (`ok`, or an `error: ...`
and no prediction for a row that cannot be scored). Duplicate ids are kept (no row is ever
dropped) and counted in the summary. The output is written to a temporary file beside the
target and renamed at the end: a failed run leaves nothing under its name.
"""

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from sentiment_rnn.errors import UserError
from sentiment_rnn.files import atomic_path
from sentiment_rnn.serving import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_ROWS
from sentiment_rnn.serving.batching import ScoredChunk, ScoringModel, infer_chunk, prepared_chunks
from sentiment_rnn.serving.encoding import OK
from sentiment_rnn.serving.io import (
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    check_output_path,
    chunk_table,
    detect_format,
    open_writer,
    output_schema,
    read_chunks,
    resolve_id_column,
    row_total,
)
from sentiment_rnn.serving.memory import release_freed_memory, size_tokenizer_pool
from sentiment_rnn.serving.model import load_model
from sentiment_rnn.serving.session import SessionConfig

log = logging.getLogger(__name__)

PROGRESS_LOG_SECONDS = 30.0  # a log line this often, for runs where no bar is seen (Prefect)
MOSTLY_UNKNOWN = 0.5  # rows above this unknown-token share are counted in the summary


@dataclass(frozen=True)
class PredictOptions:
    """How a file is read, batched and written; the model and its session are chosen apart.

    Formats default to the file extensions; ids to the input's `id` column when it has one,
    else the 0-based row numbers. `prefetch` reads
    and tokenises the next chunk in the background; `release_memory` shrinks onnxruntime's
    arena after each chunk (less held between chunks, the same peak, somewhat slower).
    """

    text_column: str = "text"
    id_column: str | None = None
    input_format: str | None = None
    output_format: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    progress: bool = True
    prefetch: bool = True
    release_memory: bool = False
    row_groups: tuple[int, ...] | None = None  # Parquet: one contiguous range (a shard)


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
    mostly_unknown: int = 0
    duplicate_ids: int = 0
    seconds: float = 0.0
    error_counts: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        errors = ", ".join(f"{k.removeprefix('error: ')} {v}" for k, v in self.error_counts.items())
        parts = [
            f"{self.rows} rows -> {self.output}",
            f"ok {self.ok}",
            f"errors {self.errors}" + (f" ({errors})" if errors else ""),
            f"truncated {self.truncated}",
        ]
        if self.mostly_unknown:
            parts.append(
                f"warning: {self.mostly_unknown} rows mostly unknown tokens "
                f"(unknown_fraction > {MOSTLY_UNKNOWN})"
            )
        if self.duplicate_ids:
            parts.append(f"warning: {self.duplicate_ids} duplicate ids (all rows kept)")
        parts.append(f"{self.provider}, {self.rows_per_second:,.0f} rows/s")
        return " | ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"rows_per_second": round(self.rows_per_second, 1)}


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


def _tally(summary: PredictSummary, scored: ScoredChunk) -> None:
    summary.rows += len(scored.status)
    for status in scored.status:
        if status != OK:
            summary.error_counts[status] = summary.error_counts.get(status, 0) + 1
    summary.errors = sum(summary.error_counts.values())
    summary.ok = summary.rows - summary.errors
    summary.truncated += int(scored.truncated.sum())
    summary.mostly_unknown += int(np.count_nonzero(scored.unknown_fraction > MOSTLY_UNKNOWN))


def predict_file(
    model: ScoringModel, input_path: Path, output_path: Path, options: PredictOptions
) -> PredictSummary:
    """Score every row of `input_path` into `output_path`; see the module docstring."""
    in_fmt = detect_format(input_path, options.input_format, INPUT_FORMATS, "input")
    out_fmt = detect_format(output_path, options.output_format, OUTPUT_FORMATS, "output")
    if options.batch_size < 1 or options.chunk_rows < 1:
        raise UserError("--batch-size and --chunk-rows must be >= 1")
    check_output_path(output_path, input_path)
    id_column = resolve_id_column(input_path, in_fmt, options.id_column)
    schema = output_schema(id_column is not None)
    summary = PredictSummary(str(input_path), str(output_path), model.provider)
    duplicates = DuplicateIds()
    start = logged = time.perf_counter()
    bar = tqdm(
        total=row_total(input_path, in_fmt),
        unit="rows",
        unit_scale=True,
        desc=f"predict {input_path.name}",
        dynamic_ncols=True,
        mininterval=0.5,
        disable=None if options.progress else True,
    )
    with bar, atomic_path(output_path) as tmp:
        writer = open_writer(tmp, out_fmt, schema)
        try:
            chunks = read_chunks(
                input_path,
                in_fmt,
                options.text_column,
                id_column,
                options.chunk_rows,
                options.row_groups,
            )
            for prepared in prepared_chunks(model, chunks, options.prefetch):
                chunk = prepared.chunk
                scored = infer_chunk(model, prepared, options.batch_size)
                writer.write(chunk_table(chunk, scored, model.meta.label_names, schema))
                _tally(summary, scored)
                if chunk.ids is not None:
                    duplicates.add(chunk.ids)
                bar.update(len(chunk))
                del prepared, chunk, scored  # free this chunk before trimming
                release_freed_memory(model if options.release_memory else None)
                if time.perf_counter() - logged > PROGRESS_LOG_SECONDS:
                    logged = time.perf_counter()
                    rate = summary.rows / (logged - start)
                    log.info("scored %d rows, %.0f rows/s", summary.rows, rate)
        finally:
            writer.close()
    summary.duplicate_ids = duplicates.count()
    summary.seconds = time.perf_counter() - start
    return summary


def run_predict(
    model: str,
    input_path: Path,
    output_path: Path,
    options: PredictOptions,
    session: SessionConfig,
    *,
    tokenizer: Path | None = None,
    int8: bool = False,
) -> PredictSummary:
    """The command's entry: load the model (a file or a `models:/` URI), then score.

    `tokenizer` overrides the lookup beside the model; `int8` serves a quantized copy.
    """
    size_tokenizer_pool(session.threads)
    scoring_model = load_model(model, tokenizer, session, int8)
    return predict_file(scoring_model, input_path, output_path, options)
