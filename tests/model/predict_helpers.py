"""Tiny exported models for the prediction tests: the export stage's graph, the serving contract.

The graph and its metadata follow the ONNX contract of `models/<arch>.onnx`: inputs
`token_ids` / `lengths` (int64, symbolic batch and time), outputs `probability` / `logit`,
and `ServingMeta` as metadata_props, with the tokenizer saved beside it as
`<stem>.tokenizer.json`.
"""

import json
import shutil
from pathlib import Path

import onnx
import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

from sentiment_rnn.core.model import ModelConfig, SentimentRNN
from sentiment_rnn.core.tokenizer import PAD, UNK, TokenizeConfig, train_tokenizer
from sentiment_rnn.export.onnx import to_onnx
from sentiment_rnn.files import sha256_file
from sentiment_rnn.serving.contract import ServingMeta
from sentiment_rnn.serving.session import SessionConfig
from tests.conftest import FILLER, NEGATIVE, POSITIVE, synthetic_reviews

CPU = SessionConfig(providers=("cpu",))
CPU_ONE_THREAD = SessionConfig(providers=("cpu",), threads=1)


def make_tokenizer(path: Path, vocab_size: int = 200) -> Path:
    """The tokenize stage's tokenizer fitted on synthetic reviews, saved at `path`."""
    texts = synthetic_reviews(200, seed=3)["text"].tolist()
    cfg = TokenizeConfig(vocab_size=vocab_size, min_frequency=1, max_length=32)
    train_tokenizer(texts, cfg).save(str(path))
    return path


def fixed_tokenizer(path: Path) -> Path:
    """A fixed vocabulary, the synthetic reviews' words and `.`, for tests that compare with
    recorded probabilities: built by hand, so its ids stay those the recordings were made with
    whatever the tokenize stage's own tokenizer becomes."""
    words = sorted({w for phrase in FILLER + POSITIVE + NEGATIVE for w in phrase.split()})
    words = [w for w in words if not w.startswith(("<br", "/>"))]  # the normaliser drops <br />
    vocab = {w: i for i, w in enumerate([PAD, UNK, *words, "."])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(r"<br\s*/?>"), " "), normalizers.NFKC(), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.save(str(path))
    return path


def make_model(
    folder: Path,
    tokenizer: Path,
    arch: str = "lstm",
    max_length: int = 32,
    truncation_side: str = "right",
    seed: int = 0,
    name: str | None = None,
    hidden: int = 16,
    bidirectional: bool = True,
) -> tuple[Path, SentimentRNN]:
    """A randomly initialised tiny model as `<folder>/<name>.onnx` + its tokenizer copy."""
    torch.manual_seed(seed)
    vocab = json.loads(tokenizer.read_text())["model"]["vocab"]
    cfg = ModelConfig(
        arch=arch,
        vocab_size=len(vocab),
        embed_dim=hidden,
        hidden_size=hidden,
        bidirectional=bidirectional,
    )
    model = SentimentRNN(cfg).eval()
    meta = ServingMeta(
        arch=arch,
        tokenizer_sha256=sha256_file(tokenizer),
        max_length=max_length,
        truncation_side=truncation_side,
        pad_id=cfg.pad_id,
        best_val_acc=0.5,
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name or arch}.onnx"
    onnx.save(to_onnx(model, meta), str(path))
    shutil.copyfile(tokenizer, folder / f"{name or arch}.tokenizer.json")
    return path, model
