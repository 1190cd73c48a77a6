"""Tiny exported models for the prediction tests, built by the export stage's own functions.

The graph and its metadata follow the ONNX contract of `models/<arch>.onnx`: inputs
`token_ids` / `lengths` (int64, symbolic batch and time), outputs `probability` / `logit`,
and string metadata_props, with the tokenizer saved beside it as `<stem>.tokenizer.json`.
"""

import json
import shutil
from pathlib import Path

import onnx
import torch

from sentiment_rnn.export import ServingInfo, to_onnx, with_metadata
from sentiment_rnn.model import ModelConfig, SentimentRNN
from sentiment_rnn.tokenize import TokenizeConfig, tokenizer_sha256, train_tokenizer
from tests.conftest import synthetic_reviews


def make_tokenizer(path: Path, vocab_size: int = 200) -> Path:
    """A WordPiece tokenizer fitted on synthetic reviews, saved at `path`."""
    texts = synthetic_reviews(200, seed=3)["text"].tolist()
    cfg = TokenizeConfig(vocab_size=vocab_size, min_frequency=1, max_length=32)
    train_tokenizer(texts, cfg).save(str(path))
    return path


def make_model(folder: Path, tokenizer: Path, arch: str = "lstm", max_length: int = 32,
               truncation_side: str = "right", seed: int = 0, name: str | None = None,
               hidden: int = 16, bidirectional: bool = True) -> tuple[Path, SentimentRNN]:
    """A randomly initialised tiny model as `<folder>/<name>.onnx` + its tokenizer copy."""
    torch.manual_seed(seed)
    vocab = json.loads(tokenizer.read_text())["model"]["vocab"]
    cfg = ModelConfig(arch=arch, vocab_size=len(vocab), embed_dim=hidden, hidden_size=hidden,
                      bidirectional=bidirectional)
    model = SentimentRNN(cfg).eval()
    info = ServingInfo(arch=arch, tokenizer_sha256=tokenizer_sha256(tokenizer),
                       max_length=max_length, truncation_side=truncation_side,
                       pad_id=cfg.pad_id, mlflow_run_id="", best_val_acc=0.5)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name or arch}.onnx"
    onnx.save(with_metadata(to_onnx(model), info.as_props()), str(path))
    shutil.copyfile(tokenizer, folder / f"{name or arch}.tokenizer.json")
    return path, model
