"""The chunk pipeline: check and tokenise a chunk's rows, then score them in length-sorted batches.

Within a chunk, reviews are sorted by token count and batched, which cuts padding (a batch is
as long as its longest review); the scores are then put back in input order. The next chunk
can be read and tokenised in a background thread meanwhile (`prepared_chunks`).
"""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from tokenizers import Tokenizer

from sentiment_rnn.serving.contract import ServingMeta
from sentiment_rnn.serving.encoding import OK, EncodedTexts, encode_texts, pad_batch, text_status
from sentiment_rnn.serving.io import Chunk


class ScoringModel(Protocol):
    """What scoring needs: the tokenizer, serving metadata, ids -> probabilities, and a way to
    hand memory held between batches back to the OS (`model.OnnxSentimentModel`)."""

    meta: ServingMeta
    tokenizer: Tokenizer

    @property
    def provider(self) -> str: ...

    def __call__(self, token_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray: ...

    def release_memory(self) -> None: ...


@dataclass
class PreparedChunk:
    """A chunk with its rows checked and its valid texts tokenised."""

    chunk: Chunk
    status: list[str]
    valid: np.ndarray  # positions of the rows to score
    encoded: EncodedTexts | None


@dataclass
class ScoredChunk:
    """One status per row of a chunk, and the scores of the rows that could be scored."""

    status: list[str]
    probability: np.ndarray  # (N,) float32, NaN where status is not ok
    truncated: np.ndarray  # (N,) bool
    unknown_fraction: np.ndarray  # (N,) float32, NaN where status is not ok


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


def prepare_chunk(model: ScoringModel, chunk: Chunk) -> PreparedChunk:
    """Statuses for every row; token ids for the rows that can be scored."""
    status = [chunk.read_errors.get(i) or text_status(t) for i, t in enumerate(chunk.texts)]
    valid = np.flatnonzero(np.array([s == OK for s in status], dtype=bool))
    encoded = None
    if len(valid):
        meta = model.meta
        encoded = encode_texts(
            model.tokenizer, [chunk.texts[i] for i in valid], meta.max_length, meta.truncation_side
        )
    return PreparedChunk(chunk, status, valid, encoded)


def infer_chunk(model: ScoringModel, prepared: PreparedChunk, batch_size: int) -> ScoredChunk:
    """Scores for the valid rows; NaN and no truncation flag for the others."""
    probability = np.full(len(prepared.chunk), np.nan, dtype=np.float32)
    unknown = np.full(len(prepared.chunk), np.nan, dtype=np.float32)
    truncated = np.zeros(len(prepared.chunk), dtype=bool)
    if prepared.encoded is not None:
        probability[prepared.valid] = infer_sorted(model, prepared.encoded.ids, batch_size)
        truncated[prepared.valid] = prepared.encoded.truncated
        unknown[prepared.valid] = prepared.encoded.unknown_fraction
    return ScoredChunk(prepared.status, probability, truncated, unknown)


def prepared_chunks(
    model: ScoringModel, chunks: Iterator[Chunk], prefetch: bool = True
) -> Iterator[PreparedChunk]:
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
