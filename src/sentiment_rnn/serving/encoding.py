"""Text checks and tokenisation for serving, identical to the tokenize stage's `encode`.

Long reviews are encoded from a prefix (or suffix) only: tokenising a 1 MB review in full takes
seconds, yet only `max_length` tokens survive truncation. The shortcut is exact: pre-tokenisation
splits on whitespace and punctuation, so tokens that end well before the cut are the same as in
the full text; when too few such tokens exist the whole text is encoded instead.
"""

import re
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from sentiment_rnn.core.tokenizer import PAD_ID, UNK_ID, valid_mask

OK = "ok"
MISSING = "error: missing text"
EMPTY = "error: empty text"
NOT_TEXT = "error: not text"
INVALID_UTF8 = "error: invalid utf-8"
MALFORMED_JSON = "error: malformed json"

CHARS_PER_TOKEN = 10  # IMDB averages ~4.3 chars per token: a 10-per-token prefix holds plenty
# Tokens within this many chars of the cut may differ from the full text's (a split `<br />`).
CUT_MARGIN = 64
# Lone surrogates mark bytes that were not UTF-8 (decoded with errors="surrogateescape").
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_status(value: object) -> str:
    """`ok` for a scorable review, else the error status its output row carries."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return MISSING
    if not isinstance(value, str):
        return NOT_TEXT
    if _SURROGATE.search(value):
        return INVALID_UTF8
    if not value.strip():
        return EMPTY
    return OK


ENCODE_SLICE = 512  # texts per encode_batch call: tokenizers' Encoding objects are heavy


@dataclass
class EncodedTexts:
    """Token ids per text (already truncated, int32) and whether truncation dropped tokens."""

    ids: list[np.ndarray]
    truncated: np.ndarray  # (N,) bool

    @property
    def unknown_fraction(self) -> np.ndarray:
        """(N,) float32: the share of each text's kept tokens that are the unknown token."""
        return np.fromiter(
            (np.count_nonzero(row == UNK_ID) / len(row) for row in self.ids),
            dtype=np.float32,
            count=len(self.ids),
        )

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(row) for row in self.ids), dtype=np.int64, count=len(self.ids))


def _cut(text: str, chars: int, side: str) -> str:
    return text[:chars] if side == "right" else text[-chars:]


def _exact_from_cut(
    enc_ids: list[int], offsets: list[tuple[int, int]], cut_len: int, max_length: int, side: str
) -> list[int] | None:
    """The kept tokens if the cut text provably yields them (and more), else None."""
    if side == "right":
        limit = cut_len - CUT_MARGIN
        safe = [i for i, (_, end) in zip(enc_ids, offsets, strict=True) if end <= limit]
        return safe[:max_length] if len(safe) > max_length else None
    safe = [i for i, (start, _) in zip(enc_ids, offsets, strict=True) if start >= CUT_MARGIN]
    return safe[-max_length:] if len(safe) > max_length else None


def _encode_slice(
    tok: Tokenizer,
    texts: list[str],
    max_length: int,
    side: str,
    ids: list[np.ndarray],
    truncated: list[bool],
) -> None:
    """Encode `texts`, appending each one's kept ids and truncation flag."""
    budget = CHARS_PER_TOKEN * max_length + CUT_MARGIN
    is_cut = [len(t) > budget for t in texts]
    encodings = tok.encode_batch(
        [_cut(t, budget, side) if c else t for t, c in zip(texts, is_cut, strict=True)],
        add_special_tokens=False,
    )
    for text, cut, enc in zip(texts, is_cut, encodings, strict=True):
        if cut:
            kept = _exact_from_cut(enc.ids, enc.offsets, budget, max_length, side)
            if kept is not None:
                ids.append(np.asarray(kept, dtype=np.int32))
                truncated.append(True)
                continue
            enc = tok.encode(text, add_special_tokens=False)  # too few tokens in the cut
        row = enc.ids or [UNK_ID]
        truncated.append(len(row) > max_length)
        ids.append(
            np.asarray(row[:max_length] if side == "right" else row[-max_length:], dtype=np.int32)
        )


def encode_texts(
    tok: Tokenizer, texts: list[str], max_length: int, side: str = "right"
) -> EncodedTexts:
    """Tokenise valid texts like `tokenize.encode`: no special tokens, empty -> [UNK], truncated."""
    ids: list[np.ndarray] = []
    truncated: list[bool] = []
    for start in range(0, len(texts), ENCODE_SLICE):
        _encode_slice(tok, texts[start : start + ENCODE_SLICE], max_length, side, ids, truncated)
    return EncodedTexts(ids, np.array(truncated, dtype=bool))


def pad_batch(rows: list[np.ndarray], pad_id: int = PAD_ID) -> tuple[np.ndarray, np.ndarray]:
    """(B, T_max) int64 ids padded with `pad_id`, and (B,) int64 lengths."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    ids = np.full((len(rows), int(lengths.max())), pad_id, dtype=np.int64)
    # Row-major boolean assignment fills each row's first `length` slots in order.
    ids[valid_mask(lengths, ids.shape[1])] = np.concatenate(rows)
    return ids, lengths
