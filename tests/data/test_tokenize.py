"""Data tier: the tokenizer sees only train, normalises HTML, and encodes every split exactly."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sentiment_rnn.core.tokenizer import (
    PAD_ID,
    UNK_ID,
    TokenizeConfig,
    TokensMeta,
    encode,
    load_encoded,
    train_tokenizer,
    valid_mask,
)
from sentiment_rnn.files import read_json
from sentiment_rnn.stages.tokenize import tokenize

CFG = TokenizeConfig(vocab_size=300, min_frequency=1, max_length=8)


def _raw(tmp_path: Path, train: list[str], other: list[str]) -> Path:
    """A project folder with data/raw splits, as the working directory."""
    raw = tmp_path / "data/raw"
    raw.mkdir(parents=True)
    pd.DataFrame({"text": train, "label": [i % 2 for i in range(len(train))]}).to_parquet(
        raw / "train.parquet"
    )
    for split in ("val", "test"):
        pd.DataFrame({"text": other, "label": [i % 2 for i in range(len(other))]}).to_parquet(
            raw / f"{split}.parquet"
        )
    return raw


def test_vocabulary_comes_from_train_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _raw(tmp_path, ["a good film", "a bad film"] * 20, ["zyzzyvaword zyzzyvaword"] * 20)
    monkeypatch.chdir(tmp_path)
    tokenize(CFG)
    vocab = json.loads(Path("data/tokens/tokenizer.json").read_text())["model"]["vocab"]
    assert "▁good" in vocab and "▁zyzzyvaword" not in vocab


def test_html_line_breaks_spaces_and_case_are_normalised() -> None:
    tok = train_tokenizer(["great movie <br /><br /> really great", "Bad MOVIE"] * 10, CFG)
    pieces = tok.encode("Great<br />movie<br/>  BAD", add_special_tokens=False).tokens
    assert pieces == ["▁great", "▁movie", "▁bad"]


def test_punctuation_is_its_own_token_and_decoding_restores_the_text() -> None:
    texts = ["what a film, really! the end... fine.", "a film"] * 20
    tok = train_tokenizer(texts, TokenizeConfig(vocab_size=300, min_frequency=1, max_length=8))
    enc = tok.encode("What a film, really!", add_special_tokens=False)
    assert enc.tokens == ["▁what", "▁a", "▁film", ",", "▁really", "!"]
    assert tok.decode(enc.ids) == "what a film, really!"


# Fits a tokenizer in a fresh process and prints its digest. The texts hold hundreds of words
# of equal frequency: many ties between merges, which a hash-ordered trainer breaks at random.
FIT = """
import hashlib, random, sys
sys.path[:0] = [{src!r}, {here!r}]
from {module} import TokenizeConfig, train_tokenizer
rng = random.Random(0)
words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 8))) for _ in range(400)]
texts = [" ".join(rng.choice(words) for _ in range(12)) + " ." for _ in range(300)]
cfg = TokenizeConfig(vocab_size=300, min_frequency=1)
print(hashlib.sha256(train_tokenizer(texts, cfg).to_str().encode()).hexdigest())
"""

# The tokenize stage's trainer before it moved to BPE.
WORDPIECE = """
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from sentiment_rnn.core.tokenizer import PAD, UNK, TokenizeConfig

def train_tokenizer(texts, cfg):
    tok = Tokenizer(models.WordPiece(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                        special_tokens=[PAD, UNK], show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok
"""


def fit_in_fresh_processes(folder: Path, module: str, runs: int = 3) -> set[str]:
    """The sha256 of the tokenizer `module` fits on the same texts in `runs` processes."""
    src = str(Path(__file__).resolve().parents[2] / "src")
    script = FIT.format(src=src, here=str(folder), module=module)
    digests = set()
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=folder, capture_output=True, text=True, check=True
        )
        digests.add(done.stdout.strip())
    return digests


def test_the_fitted_tokenizer_is_the_same_in_every_process(tmp_path: Path) -> None:
    assert len(fit_in_fresh_processes(tmp_path, "sentiment_rnn.core.tokenizer")) == 1


def test_the_same_check_catches_the_wordpiece_trainer(tmp_path: Path) -> None:
    """The check above can fail: WordPiece breaks ties in hash-map order (tokenizers#1794)."""
    (tmp_path / "wordpiece_fit.py").write_text(WORDPIECE)
    assert len(fit_in_fresh_processes(tmp_path, "wordpiece_fit", runs=4)) > 1


@pytest.mark.parametrize("side", ["right", "left"])
def test_encode_pads_truncates_and_keeps_full_lengths(side: str) -> None:
    tok = train_tokenizer(["one two three four five six seven eight nine ten"] * 5, CFG)
    texts = ["one two three", "one two three four five six seven eight nine ten", "<br />"]
    ids, lengths, full = encode(tok, texts, max_length=8, side=side)
    assert ids.shape == (3, 8) and ids.dtype == np.int32
    assert lengths.tolist() == [3, 8, 1] and full.tolist() == [3, 10, 1]
    assert (ids[0, 3:] == PAD_ID).all() and ids[2, 0] == UNK_ID
    assert (valid_mask(lengths, ids.shape[1]) == (ids != PAD_ID)).all()
    kept = tok.decode(ids[1].tolist()).split()
    assert kept[0] == ("one" if side == "right" else "three")


def test_stage_writes_arrays_meta_and_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _raw(
        tmp_path,
        ["a good film with a plot"] * 30,
        ["a film", "good good good good good good good good good"],
    )
    monkeypatch.chdir(tmp_path)
    metrics = tokenize(CFG)
    test = load_encoded(Path("data/tokens/test.npz"))
    assert test.ids.shape == (2, 8) and test.labels.tolist() == [0, 1]
    assert metrics["test"]["truncation_rate"] == 0.5
    assert len(metrics["tokenizer_sha256"]) == 64
    for key in ("vocab_size", "train", "val", "test"):
        assert key in metrics
    meta = TokensMeta.from_dict(read_json("data/tokens/meta.json"))
    assert meta == TokensMeta(metrics["vocab_size"], metrics["tokenizer_sha256"], 8, "right")


def test_bad_truncation_side_is_a_user_error() -> None:
    from sentiment_rnn.errors import UserError

    with pytest.raises(UserError, match="truncation_side"):
        TokenizeConfig(truncation_side="middle")
