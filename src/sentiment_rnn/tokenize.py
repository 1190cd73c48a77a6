"""Stage `tokenize`: train a WordPiece tokenizer on the train split, encode every split once.

The tokenizer carries its own normaliser (HTML line breaks, unicode, case), so serving that
loads `tokenizer.json` normalises text exactly as training did. Encoded splits are saved as
padded id matrices with true lengths (`.npz`), which training reads directly.
"""

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from sentiment_rnn.errors import UserError
from sentiment_rnn.files import write_json

log = logging.getLogger(__name__)

PAD, UNK = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1


@dataclass(frozen=True)
class TokenizeConfig:
    vocab_size: int = 20000
    min_frequency: int = 2
    max_length: int = 400
    lowercase: bool = True
    truncation_side: str = "right"  # "right" keeps the start of a review, "left" its end

    def __post_init__(self) -> None:
        if self.truncation_side not in ("right", "left"):
            raise UserError(
                f"tokenize.truncation_side must be 'right' or 'left', got {self.truncation_side!r}"
            )
        if self.max_length < 1 or self.vocab_size < 10:
            raise UserError("tokenize.max_length must be >= 1 and tokenize.vocab_size >= 10")


@dataclass
class Encoded:
    """A split as padded ids `ids` (N, T) int32, `lengths` after truncation, `full_lengths`."""

    ids: np.ndarray
    lengths: np.ndarray
    full_lengths: np.ndarray
    labels: np.ndarray


def build_tokenizer(cfg: TokenizeConfig) -> Tokenizer:
    """An untrained WordPiece tokenizer with the review normaliser."""
    steps = [normalizers.Replace(Regex(r"<br\s*/?>"), " "), normalizers.NFKC()]
    if cfg.lowercase:
        steps += [normalizers.Lowercase(), normalizers.NFD(), normalizers.StripAccents()]
    tok = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=50))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def train_tokenizer(texts: list[str], cfg: TokenizeConfig) -> Tokenizer:
    """Fit the vocabulary on `texts` (the train split only)."""
    tok = build_tokenizer(cfg)
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[PAD, UNK],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


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


def tokenizer_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def split_metrics(enc: Encoded) -> dict[str, Any]:
    valid = np.arange(enc.ids.shape[1])[None, :] < enc.lengths[:, None]
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


def read_split(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path} not found: run the download stage first (dvc repro download)")
    return pd.read_parquet(path)


def save_encoded(path: Path, enc: Encoded) -> None:
    np.savez(
        path, ids=enc.ids, lengths=enc.lengths, full_lengths=enc.full_lengths, labels=enc.labels
    )


def load_encoded(path: str | Path) -> Encoded:
    """Load a split written by the tokenize stage."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: run the tokenize stage first (dvc repro tokenize)")
    with np.load(path) as z:
        return Encoded(z["ids"], z["lengths"], z["full_lengths"], z["labels"])


def run_tokenize(
    cfg: TokenizeConfig, raw_dir: Path, out_dir: Path, metrics_path: Path
) -> dict[str, Any]:
    """The stage's core: fit on train, encode every split, write arrays, tokenizer, metrics."""
    frames = {s: read_split(raw_dir / f"{s}.parquet") for s in ("train", "val", "test")}
    t0 = time.perf_counter()
    tok = train_tokenizer(frames["train"]["text"].tolist(), cfg)
    fit_seconds = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    tok_path = out_dir / "tokenizer.json"
    tok.save(str(tok_path))

    metrics: dict[str, Any] = {
        "vocab_size": tok.get_vocab_size(),
        "fit_seconds": round(fit_seconds, 3),
    }
    n_rows, encode_seconds = 0, 0.0
    for split, df in frames.items():
        t0 = time.perf_counter()
        ids, lengths, full = encode(tok, df["text"].tolist(), cfg.max_length, cfg.truncation_side)
        encode_seconds += time.perf_counter() - t0
        enc = Encoded(ids, lengths, full, df["label"].to_numpy(dtype=np.int64))
        save_encoded(out_dir / f"{split}.npz", enc)
        metrics[split] = split_metrics(enc)
        n_rows += len(df)
    metrics["encode_seconds"] = round(encode_seconds, 3)
    metrics["reviews_per_second"] = round(n_rows / encode_seconds, 1)
    metrics["tokenizer_sha256"] = tokenizer_sha256(tok_path)
    write_json(metrics_path, metrics)
    log.info(
        "vocab %d, %d reviews encoded at %.0f/s",
        metrics["vocab_size"],
        n_rows,
        metrics["reviews_per_second"],
    )
    return metrics
