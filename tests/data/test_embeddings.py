"""Data tier: the embeddings stage's co-occurrence counts, PPMI weights and word vectors."""

import random
from pathlib import Path

import numpy as np
import pytest

from sentiment_rnn.core.embeddings import (
    EmbeddingConfig,
    cooccurrence,
    fit_embeddings,
    ppmi,
    word_id,
)
from sentiment_rnn.core.tokenizer import TokenizeConfig, train_tokenizer
from sentiment_rnn.errors import UserError
from sentiment_rnn.params import validate
from sentiment_rnn.stages import common
from sentiment_rnn.stages import embeddings as stage


def test_cooccurrence_counts_within_a_text_weighted_by_distance() -> None:
    ids = np.array([2, 3, 4, 5, 6], dtype=np.int32)
    docs = np.array([0, 0, 0, 1, 1], dtype=np.int32)
    counts = cooccurrence(ids, docs, vocab=8, window=2).toarray()
    np.testing.assert_allclose(counts, counts.T)
    assert counts[2, 3] == 1.0 and counts[3, 4] == 1.0 and counts[5, 6] == 1.0
    assert counts[2, 4] == 0.5  # two apart
    assert counts[4, 5] == 0.0  # different texts never count
    assert counts.sum() == 2 * (1 + 1 + 1 + 0.5)


def test_ppmi_keeps_only_positive_associations() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 30, size=2000).astype(np.int32)
    weights = ppmi(cooccurrence(ids, np.zeros_like(ids), 30, 3), smoothing=0.75)
    assert weights.nnz > 0 and (weights.data > 0).all()


def _corpus(n: int, seed: int) -> list[str]:
    """Texts where 'great' and 'superb' share their contexts and 'awful' has others."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        if rng.random() < 0.5:
            word = rng.choice(["great", "superb"])
            texts.append(f"the film was {word} and the cast was lovely")
        else:
            texts.append("what a dull plot it was awful from start to end")
    return texts


def test_words_used_alike_get_similar_vectors() -> None:
    texts = _corpus(400, seed=0)
    tok = train_tokenizer(texts, TokenizeConfig(vocab_size=300, min_frequency=1))
    result = fit_embeddings(tok, texts, EmbeddingConfig(dim=8, window=2))
    vec = result.vectors / np.maximum(np.linalg.norm(result.vectors, axis=1, keepdims=True), 1e-8)
    great, superb, awful = (vec[word_id(tok, w)] for w in ("great", "superb", "awful"))
    assert great @ superb > great @ awful + 0.3
    assert result.vectors.shape == (tok.get_vocab_size(), 8)
    assert not result.vectors[0].any()  # padding stays zero
    assert abs(float(result.vectors[result.vectors.any(axis=1)].std()) - 1.0) < 0.05
    assert result.stats["nearest"]["great"][0] == "superb"


@pytest.mark.parametrize(
    ("texts", "cfg", "message"),
    [([], EmbeddingConfig(dim=4), "no texts"), (["a b c"] * 5, EmbeddingConfig(dim=500), "below")],
)
def test_bad_settings_get_a_clear_error(texts: list[str], cfg: EmbeddingConfig, message: str):
    tok = train_tokenizer(_corpus(20, 1), TokenizeConfig(vocab_size=300, min_frequency=1))
    with pytest.raises(UserError, match=message):
        fit_embeddings(tok, texts, cfg)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(UserError, match="smoothing"):
        EmbeddingConfig(smoothing=0.0)
    with pytest.raises(UserError, match="unknown key 'embeddings.dims'"):
        validate(EmbeddingConfig, {"dims": 3}, "embeddings", "embeddings")


def test_stage_writes_vectors_and_metrics(tokenized_project: Path) -> None:
    vectors = np.load(tokenized_project / "data/embeddings/vectors.npy")
    assert vectors.shape[1] == 16 and not vectors[0].any()
    metrics = (tokenized_project / "reports/metrics/embeddings.json").read_text()
    assert '"texts": 352' in metrics  # 192 train + 160 unlabelled: never val or test


def test_missing_inputs_say_which_stage_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="dvc repro download"):
        stage.corpus()
    with pytest.raises(UserError, match="dvc repro embeddings"):
        common.word_vectors()
