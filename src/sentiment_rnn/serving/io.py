"""Streaming readers and writers for batch prediction.

Readers yield bounded chunks, so memory does not grow with the file: pyarrow's
`ParquetFile.iter_batches`, pandas' `read_csv(chunksize=...)`, and plain line iteration for
JSON Lines and text. Bytes that are not UTF-8 are decoded with `surrogateescape`: the row
survives, and the lone surrogates they become (which valid UTF-8 can never produce) mark it
`error: invalid utf-8` downstream. Writers append one table per chunk to a single open file,
with one output row per input row (`output_schema`, `chunk_table`).
"""

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sentiment_rnn.errors import UserError
from sentiment_rnn.serving.encoding import INVALID_UTF8, MALFORMED_JSON, OK

if TYPE_CHECKING:  # batching reads chunks from here: a runtime import would be circular
    from sentiment_rnn.serving.batching import ScoredChunk

INPUT_FORMATS = ("csv", "jsonl", "parquet", "text")
OUTPUT_FORMATS = ("csv", "jsonl", "parquet")
EXTENSIONS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".text": "text",
}
_BOM = b"\xef\xbb\xbf"


@dataclass
class Chunk:
    """Consecutive input rows: raw text values, ids (None: use row numbers) and read errors."""

    first_row: int
    texts: list[Any]
    ids: list[str | None] | None = None
    read_errors: dict[int, str] = field(default_factory=dict)  # position in chunk -> status

    def __len__(self) -> int:
        return len(self.texts)


def detect_format(path: Path, override: str | None, allowed: tuple[str, ...], role: str) -> str:
    """The format named by `override`, else by the file extension."""
    fmt = override or EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(
            f"cannot tell the {role} format from {path.name!r}: use one of the extensions "
            f"{sorted(k for k, v in EXTENSIONS.items() if v in allowed)} or --{role}-format"
        )
    if fmt not in allowed:
        raise UserError(f"{role} format must be one of {list(allowed)}, got {fmt!r}")
    return fmt


def _clean_id(value: Any) -> str | None:
    """Ids are written as strings; undecodable bytes in them become U+FFFD."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def _missing_column(path: Path, what: str, name: str, found: list[str]) -> UserError:
    return UserError(f"{path}: no {what} column {name!r}; columns found: {found}")


def _require_rows(path: Path, rows: int) -> None:
    if rows == 0:
        raise UserError(f"{path} has no rows to score (empty, or a header only)")


DEFAULT_ID_COLUMN = "id"


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"input file {path} not found")
    if path.stat().st_size == 0:
        raise UserError(f"input file {path} is empty")


def input_columns(path: Path, fmt: str) -> list[str]:
    """The column names (JSON Lines: the first record's keys) of an input; none for text."""
    _check_file(path)
    if fmt == "csv":
        return _csv_header(path)
    if fmt == "parquet":
        with _open_parquet(path) as parquet:
            return list(parquet.schema_arrow.names)
    if fmt == "jsonl":
        first = next((line for line in _lines(path) if line.strip()), b"")
        record, _ = _parse_json_line(first)
        return [str(key) for key in record]
    return []


def resolve_id_column(path: Path, fmt: str, requested: str | None) -> str | None:
    """The column copied to the output ids: the one asked for, else `id` when the input has
    one (a user's own ids survive without a flag), else none (row numbers)."""
    if fmt == "text":
        return None
    if requested is not None:
        return requested
    return DEFAULT_ID_COLUMN if DEFAULT_ID_COLUMN in input_columns(path, fmt) else None


def read_chunks(
    path: Path,
    fmt: str,
    text_column: str,
    id_column: str | None,
    chunk_rows: int,
    row_groups: tuple[int, ...] | None = None,
) -> Iterator[Chunk]:
    """Stream `path` as chunks of at most `chunk_rows` rows; raises UserError on a bad file.

    `row_groups` (Parquet only): read just that contiguous range of row groups, one shard of a
    large file; row numbers stay those of the whole file.
    """
    _check_file(path)
    if row_groups is not None:
        if fmt != "parquet":
            raise UserError(f"{path}: row groups can only be read from a Parquet file")
        return _parquet_chunks(path, text_column, id_column, chunk_rows, row_groups)
    readers = {"csv": _csv_chunks, "parquet": _parquet_chunks, "jsonl": _jsonl_chunks}
    if fmt == "text":
        return _text_chunks(path, chunk_rows)
    return readers[fmt](path, text_column, id_column, chunk_rows)


# Everything as Python str (object dtype: arrow strings reject the escaped bytes), and no NA
# parsing, so a review reading "NA" stays a review; an empty field is an empty text.
_CSV_OPTIONS: dict[str, Any] = dict(
    dtype=object,
    keep_default_na=False,
    na_filter=False,
    index_col=False,
    encoding="utf-8-sig",
    encoding_errors="surrogateescape",
)
# What pandas raises on bytes it cannot parse as CSV (unterminated quote, a NUL, a bad field).
_CSV_ERRORS = (pd.errors.ParserError, csv.Error, UnicodeError, ValueError)


def _malformed_csv(path: Path, exc: Exception) -> UserError:
    if isinstance(exc, UnicodeError):  # pandas cannot escape bytes in the header row
        return UserError(
            f"{path}: the header row is not UTF-8: save the file as UTF-8 (e.g. `iconv -f "
            "latin1 -t utf-8`); in the other rows such bytes only flag their row"
        )
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return UserError(
        f"{path}: malformed CSV ({detail}); check quoting (every opening quote needs a closing "
        "one) and that the file is comma-separated"
    )


def _csv_header(path: Path) -> list[str]:
    try:
        return [str(c) for c in pd.read_csv(path, nrows=0, **_CSV_OPTIONS).columns]
    except pd.errors.EmptyDataError:
        raise UserError(f"input file {path} is empty") from None
    except _CSV_ERRORS as exc:
        raise _malformed_csv(path, exc) from None


def _csv_chunks(
    path: Path, text_column: str, id_column: str | None, chunk_rows: int
) -> Iterator[Chunk]:
    header = _csv_header(path)
    for name, what in ((text_column, "text"), (id_column, "id")):
        if name is not None and name not in header:
            raise _missing_column(path, what, name, header)
    first = 0
    try:
        # All columns are parsed (no usecols): only then does pandas reject a row with too
        # many fields, such as a review with an unquoted comma, instead of cutting it short.
        with pd.read_csv(path, chunksize=chunk_rows, **_CSV_OPTIONS) as reader:
            for frame in reader:
                if frame.empty:  # a header-only file still yields one empty frame
                    continue
                ids = [_clean_id(v) for v in frame[id_column]] if id_column else None
                yield Chunk(first, frame[text_column].tolist(), ids)
                first += len(frame)
    except _CSV_ERRORS as exc:
        raise _malformed_csv(path, exc) from None
    _require_rows(path, first)


def _parquet_texts(column: pa.Array) -> list[Any]:
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        values = column.to_pylist()
        return [None if b is None else b.decode("utf-8", "surrogateescape") for b in values]
    return column.to_pylist()  # strings, or other types that the scorer flags as not text


def _open_parquet(path: Path) -> pq.ParquetFile:
    try:
        # No pre-buffering: the buffers it caches for one row group after another were kept,
        # and pyarrow's allocation grew with the rows read; without it, flat
        # (tests/code/test_predict_io.py reproduces it).
        return pq.ParquetFile(path, pre_buffer=False)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path} is not a readable Parquet file ({exc})") from None


def _parquet_chunks(
    path: Path,
    text_column: str,
    id_column: str | None,
    chunk_rows: int,
    row_groups: tuple[int, ...] | None = None,
) -> Iterator[Chunk]:
    parquet = _open_parquet(path)
    names = parquet.schema_arrow.names
    for name, what in ((text_column, "text"), (id_column, "id")):
        if name is not None and name not in names:
            raise _missing_column(path, what, name, names)
    sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    first = 0
    if row_groups is not None:
        start = row_groups[0] if row_groups else -1
        if list(row_groups) != list(range(start, start + len(row_groups))) or not (
            start >= 0 and start + len(row_groups) <= len(sizes)
        ):
            raise UserError(f"{path}: row groups {row_groups} are not a range of {len(sizes)}")
        first = sum(sizes[:start])
    _require_rows(path, sum(sizes[i] for i in row_groups) if row_groups else sum(sizes))
    columns = list(dict.fromkeys([text_column] + ([id_column] if id_column else [])))
    with parquet:
        batches = parquet.iter_batches(chunk_rows, row_groups=row_groups, columns=columns)
        for batch in batches:
            ids = [_clean_id(v) for v in batch.column(id_column).to_pylist()] if id_column else None
            yield Chunk(first, _parquet_texts(batch.column(text_column)), ids)
            first += batch.num_rows


def _lines(path: Path) -> Iterator[bytes]:
    """Lines without their line ending; a UTF-8 byte-order mark at the start is dropped."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle):
            line = line.rstrip(b"\r\n")
            yield line[len(_BOM) :] if number == 0 and line.startswith(_BOM) else line


def _text_chunks(path: Path, chunk_rows: int) -> Iterator[Chunk]:
    """Plain text: every line is a review, an empty line an empty one."""
    lines = _lines(path)
    first = 0
    while batch := list(islice(lines, chunk_rows)):
        yield Chunk(first, [line.decode("utf-8", "surrogateescape") for line in batch])
        first += len(batch)
    _require_rows(path, first)


def _parse_json_line(line: bytes) -> tuple[dict[str, Any], str | None]:
    """(record, None), or ({}, error status). Undecodable bytes inside strings survive."""
    try:
        record = json.loads(line.decode("utf-8", "surrogateescape"))
    except (json.JSONDecodeError, RecursionError):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return {}, INVALID_UTF8
        return {}, MALFORMED_JSON
    return (record, None) if isinstance(record, dict) else ({}, MALFORMED_JSON)


def _jsonl_chunks(
    path: Path, text_column: str, id_column: str | None, chunk_rows: int
) -> Iterator[Chunk]:
    """JSON Lines: one object per line; blank lines carry nothing and are not rows."""
    records = (_parse_json_line(line) for line in _lines(path) if line.strip())
    first = 0
    while batch := list(islice(records, chunk_rows)):
        if first == 0:
            _check_json_keys(path, text_column, batch)
        ids = [_clean_id(r.get(id_column)) for r, _ in batch] if id_column else None
        errors = {i: error for i, (_, error) in enumerate(batch) if error}
        yield Chunk(first, [r.get(text_column) for r, _ in batch], ids, errors)
        first += len(batch)
    _require_rows(path, first)


def _check_json_keys(
    path: Path, text_column: str, batch: list[tuple[dict[str, Any], str | None]]
) -> None:
    """A text key absent from every parsed record of the first chunk means a wrong --text-column."""
    keys = sorted({key for record, _ in batch for key in record})
    if keys and text_column not in keys:
        raise _missing_column(path, "text", text_column, keys)


class TableWriter(Protocol):
    def write(self, table: pa.Table) -> None: ...

    def close(self) -> None: ...


class JsonLinesWriter:
    """One JSON object per row; pyarrow has no JSON writer."""

    def __init__(self, path: Path) -> None:
        self._handle = path.open("w", encoding="utf-8")

    def write(self, table: pa.Table) -> None:
        for i, column in enumerate(table.columns):
            if pa.types.is_float32(column.type):
                # Through text, so 0.7312345 (float32) is written as such, not 0.73123449087.
                shortest = column.cast(pa.string()).cast(pa.float64())
                table = table.set_column(i, table.field(i).with_type(pa.float64()), shortest)
        rows = table.to_pylist()
        self._handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)

    def close(self) -> None:
        self._handle.close()


class ArrowWriter:
    """Parquet (one row group per chunk) or CSV through pyarrow's streaming writers."""

    def __init__(self, path: Path, fmt: str, schema: pa.Schema) -> None:
        if fmt == "parquet":
            self._writer: Any = pq.ParquetWriter(path, schema)
        else:
            self._writer = pacsv.CSVWriter(path, schema)

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def close(self) -> None:
        self._writer.close()


def open_writer(path: Path, fmt: str, schema: pa.Schema) -> TableWriter:
    return JsonLinesWriter(path) if fmt == "jsonl" else ArrowWriter(path, fmt, schema)


def row_total(path: Path, fmt: str) -> int | None:
    """Rows in the file when known without reading it (Parquet metadata), for a progress bar."""
    if fmt != "parquet":
        return None
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (pa.ArrowInvalid, OSError):
        return None  # the reader reports it


def check_output_path(output: Path, input_path: Path) -> None:
    """Fail before any work on an output that cannot or must not be written."""
    if not output.parent.is_dir():
        raise UserError(f"output folder {output.parent} does not exist: create it first")
    if output.resolve() == input_path.resolve():
        raise UserError(f"output {output} would overwrite the input: choose another name")
    if output.is_dir():
        raise UserError(f"output {output} is a folder: give a file name")


def output_schema(ids_from_column: bool) -> pa.Schema:
    """Ids taken from a column are strings; row numbers are int64."""
    return pa.schema(
        [
            ("id", pa.string() if ids_from_column else pa.int64()),
            ("label", pa.string()),
            ("probability", pa.float32()),
            ("truncated", pa.bool_()),
            ("unknown_fraction", pa.float32()),
            ("status", pa.string()),
        ]
    )


def chunk_table(
    chunk: Chunk, scored: "ScoredChunk", labels: tuple[str, str], schema: pa.Schema
) -> pa.Table:
    """The output rows of one chunk; error rows have null label, probability, truncated and
    unknown_fraction (the share of kept tokens outside the vocabulary: near 1 for a review in
    a script the tokenizer never saw, scored but not to be trusted)."""
    failed = np.array([s != OK for s in scored.status], dtype=bool)
    ids = chunk.ids if chunk.ids is not None else np.arange(len(chunk)) + chunk.first_row
    # logit > 0, as the training accuracy counts it (sigmoid(0) = 0.5 is negative)
    label = np.where(scored.probability > 0.5, labels[1], labels[0]).astype(object)
    label[failed] = None
    columns = [
        pa.array(ids, schema.field("id").type),
        pa.array(label, pa.string()),
        pa.array(scored.probability, pa.float32(), mask=failed),
        pa.array(scored.truncated, pa.bool_(), mask=failed),
        pa.array(scored.unknown_fraction, pa.float32(), mask=failed),
        pa.array(scored.status, pa.string()),
    ]
    return pa.table(columns, schema=schema)
