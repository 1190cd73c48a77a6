"""Data tier: the tokenizer sees only train, normalises HTML, and encodes every split exactly."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sentiment_rnn.tokenize import (
    PAD_ID,
    UNK_ID,
    TokenizeConfig,
    encode,
    load_encoded,
    run_tokenize,
    train_tokenizer,
)

CFG = TokenizeConfig(vocab_size=300, min_frequency=1, max_length=8)


def _raw(tmp_path: Path, train: list[str], other: list[str]) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    pd.DataFrame({"text": train, "label": [i % 2 for i in range(len(train))]}).to_parquet(
        raw / "train.parquet"
    )
    for split in ("val", "test"):
        pd.DataFrame({"text": other, "label": [i % 2 for i in range(len(other))]}).to_parquet(
            raw / f"{split}.parquet"
        )
    return raw


def test_vocabulary_comes_from_train_only(tmp_path: Path) -> None:
    raw = _raw(tmp_path, ["a good film", "a bad film"] * 20, ["zyzzyvaword zyzzyvaword"] * 20)
    run_tokenize(CFG, raw, tmp_path / "tokens", tmp_path / "tok.json")
    vocab = json.loads((tmp_path / "tokens/tokenizer.json").read_text())["model"]["vocab"]
    assert "good" in vocab and "zyzzyvaword" not in vocab


def test_html_line_breaks_and_case_are_normalised() -> None:
    tok = train_tokenizer(["great movie <br /><br /> really great", "Bad MOVIE"] * 10, CFG)
    pieces = tok.encode("Great<br />movie<br/>BAD", add_special_tokens=False).tokens
    assert pieces == ["great", "movie", "bad"]


@pytest.mark.parametrize("side", ["right", "left"])
def test_encode_pads_truncates_and_keeps_full_lengths(side: str) -> None:
    tok = train_tokenizer(["one two three four five six seven eight nine ten"] * 5, CFG)
    texts = ["one two three", "one two three four five six seven eight nine ten", "<br />"]
    ids, lengths, full = encode(tok, texts, max_length=8, side=side)
    assert ids.shape == (3, 8) and ids.dtype == np.int32
    assert lengths.tolist() == [3, 8, 1] and full.tolist() == [3, 10, 1]
    assert (ids[0, 3:] == PAD_ID).all() and ids[2, 0] == UNK_ID
    kept = tok.decode(ids[1].tolist()).split()
    assert kept[0] == ("one" if side == "right" else "three")


def test_stage_writes_arrays_and_metrics(tmp_path: Path) -> None:
    raw = _raw(
        tmp_path,
        ["a good film with a plot"] * 30,
        ["a film", "good good good good good good good good good"],
    )
    metrics = run_tokenize(CFG, raw, tmp_path / "tokens", tmp_path / "tok.json")
    test = load_encoded(tmp_path / "tokens/test.npz")
    assert test.ids.shape == (2, 8) and test.labels.tolist() == [0, 1]
    assert metrics["test"]["truncation_rate"] == 0.5
    assert metrics["reviews_per_second"] > 0 and len(metrics["tokenizer_sha256"]) == 64
    for key in ("vocab_size", "train", "val", "test"):
        assert key in json.loads((tmp_path / "tok.json").read_text())


def test_bad_truncation_side_is_a_user_error() -> None:
    from sentiment_rnn.errors import UserError

    with pytest.raises(UserError, match="truncation_side"):
        TokenizeConfig(truncation_side="middle")
