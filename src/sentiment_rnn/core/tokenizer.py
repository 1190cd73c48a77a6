"""The tokenizer: fitted on the train split, then encoding every split as padded id matrices.

A byte-pair encoding (BPE) over words split at whitespace and punctuation, SentencePiece style
(`▁` marks a word start, so decoding restores the text). It is a function of its corpus and
params: the same texts give a byte-identical `tokenizer.json` in any process. (The WordPiece
trainer breaks ties between equally frequent merges in hash-map order, which changes from
process to process: huggingface/tokenizers#1794.) The tokenizer carries its own normaliser
(HTML line breaks, whitespace, unicode, case), so serving that loads `tokenizer.json`
normalises text exactly as training did. Encoded splits are padded id matrices with true
lengths (`Encoded`, saved as `.npz`), which training reads directly.
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from sentiment_rnn.errors import UserError
from sentiment_rnn.files import write_npz

PAD, UNK = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1
# Reserved for the language models: a review's start and end, and the sentiment it was
# written with (positive, negative, or unknown for the unlabelled reviews).
BOS, EOS, POSITIVE, NEGATIVE, NEUTRAL = "[BOS]", "[EOS]", "[POS]", "[NEG]", "[NEUTRAL]"
SPECIALS = (PAD, UNK, BOS, EOS, POSITIVE, NEGATIVE, NEUTRAL)  # ids 0..6, in this order
BOS_ID, EOS_ID, POSITIVE_ID, NEGATIVE_ID, NEUTRAL_ID = 2, 3, 4, 5, 6
SENTIMENT_IDS = {"positive": POSITIVE_ID, "negative": NEGATIVE_ID, "neutral": NEUTRAL_ID}
TRUNCATION_SIDES = ("right", "left")  # right keeps the start of a review, left its end


@dataclass(frozen=True)
class TokenizeConfig:
    vocab_size: int = 20000
    min_frequency: int = 2
    max_length: int = 400
    lowercase: bool = True
    truncation_side: str = "right"

    def __post_init__(self) -> None:
        if self.truncation_side not in TRUNCATION_SIDES:
            raise UserError(
                f"tokenize.truncation_side must be 'right' or 'left', got {self.truncation_side!r}"
            )
        if self.max_length < 1 or self.vocab_size < 10:
            raise UserError("tokenize.max_length must be >= 1 and tokenize.vocab_size >= 10")


@dataclass(frozen=True)
class TokensMeta:
    """What the stages after `tokenize` need to know of the tokens (`data/tokens/meta.json`)."""

    vocab_size: int
    tokenizer_sha256: str
    max_length: int
    truncation_side: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TokensMeta":
        return cls(**data)


@dataclass
class Encoded:
    """A split as padded ids `ids` (N, T) int32, `lengths` after truncation, `full_lengths`."""

    ids: np.ndarray
    lengths: np.ndarray
    full_lengths: np.ndarray
    labels: np.ndarray


def build_tokenizer(cfg: TokenizeConfig) -> Tokenizer:
    """An untrained BPE tokenizer with the review normaliser."""
    steps = [
        normalizers.Replace(Regex(r"<br\s*/?>"), " "),
        normalizers.Replace(Regex(r"\s+"), " "),  # one space: no empty word pieces
        normalizers.Strip(),
        normalizers.NFKC(),
    ]
    if cfg.lowercase:
        steps += [normalizers.Lowercase(), normalizers.NFD(), normalizers.StripAccents()]
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence(steps)
    # Punctuation apart from words; `▁` where a space was (and before the first word), so
    # the decoder puts every space back and no other.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Punctuation(), pre_tokenizers.Metaspace(prepend_scheme="first")]
    )
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    return tok


def train_tokenizer(texts: list[str], cfg: TokenizeConfig) -> Tokenizer:
    """Fit the vocabulary on `texts` (the train split only).

    No `limit_alphabet`: the alphabet is every character of the corpus, so no count ties at
    its cut-off can vary between processes.
    """
    tok = build_tokenizer(cfg)
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIALS),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def load_tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise UserError(f"{path} is missing: run the tokenize stage first (dvc repro tokenize)")
    return Tokenizer.from_file(str(path))


def encode(
    tok: Tokenizer, texts: list[str], max_length: int, side: str = "right"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode texts into (ids (N, T) int32 padded with PAD_ID, lengths, full lengths).

    A text that normalises to nothing becomes a single UNK token, so every row has length >= 1.
    """
    encodings = tok.encode_batch(texts, add_special_tokens=False)
    ids = np.full((len(texts), max_length), PAD_ID, dtype=np.int32)
    lengths = np.empty(len(texts), dtype=np.int64)
    full = np.empty(len(texts), dtype=np.int64)
    for i, enc in enumerate(encodings):
        row = enc.ids or [UNK_ID]
        full[i] = len(row)
        row = row[:max_length] if side == "right" else row[-max_length:]
        ids[i, : len(row)] = row
        lengths[i] = len(row)
    return ids, lengths, full


def valid_mask(lengths: np.ndarray, steps: int) -> np.ndarray:
    """(N, steps) bool: True at positions [0, length) of each row, False on padding."""
    return np.arange(steps)[None, :] < np.asarray(lengths)[:, None]


def encode_split(
    tok: Tokenizer, texts: list[str], labels: np.ndarray, cfg: TokenizeConfig
) -> Encoded:
    ids, lengths, full = encode(tok, texts, cfg.max_length, cfg.truncation_side)
    return Encoded(ids, lengths, full, labels.astype(np.int64))


def split_metrics(enc: Encoded) -> dict[str, Any]:
    valid = valid_mask(enc.lengths, enc.ids.shape[1])
    tokens = int(valid.sum())
    return {
        "rows": int(len(enc.lengths)),
        "unk_rate": float(((enc.ids == UNK_ID) & valid).sum() / max(tokens, 1)),
        "truncation_rate": float((enc.full_lengths > enc.lengths).mean()),
        "length_p50": float(np.percentile(enc.full_lengths, 50)),
        "length_p90": float(np.percentile(enc.full_lengths, 90)),
        "length_p95": float(np.percentile(enc.full_lengths, 95)),
        "length_p99": float(np.percentile(enc.full_lengths, 99)),
        "length_max": int(enc.full_lengths.max()),
    }


def save_encoded(path: Path, enc: Encoded) -> None:
    write_npz(path, asdict(enc))


def load_encoded(path: str | Path) -> Encoded:
    """Load a split saved by `save_encoded`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: run the tokenize stage first (dvc repro tokenize)")
    with np.load(path) as z:
        return Encoded(z["ids"], z["lengths"], z["full_lengths"], z["labels"])
