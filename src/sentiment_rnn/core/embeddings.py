"""Word vectors pretrained on unlabelled reviews: PPMI + truncated SVD over the model's own tokens.

The labelled train split holds 22,500 reviews; the IMDB `unsupervised` split holds 50,000 more
without labels. Counting which tokens occur near each other over both, weighting the counts by
positive pointwise mutual information (with context-distribution smoothing) and keeping the top
singular vectors gives embeddings that already place "great" near "excellent" before training
(Levy, Goldberg & Dagan 2015: as good as word2vec's skip-gram at this scale). The train stage can
start its embedding layer from them. Validation and test texts are never read here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import sparse
from tokenizers import Tokenizer

from sentiment_rnn.core.progress import bar
from sentiment_rnn.errors import UserError

log = logging.getLogger(__name__)

PROBES = ("great", "terrible", "boring", "funny", "actor", "ending")


@dataclass(frozen=True)
class EmbeddingConfig:
    dim: int = 128
    window: int = 5  # tokens either side that count as context, weighted 1/distance
    smoothing: float = 0.75  # context counts raised to this power (word2vec's negative sampling)
    eig_power: float = 0.5  # vectors = U * S**eig_power
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dim < 1 or self.window < 1:
            raise UserError("embeddings.dim and embeddings.window must be >= 1")
        if not 0.0 < self.smoothing <= 1.0:
            raise UserError(f"embeddings.smoothing must be in (0, 1], got {self.smoothing}")


@dataclass
class WordVectors:
    vectors: np.ndarray  # (vocab, dim) float32, row 0 (padding) zero
    stats: dict[str, Any] = field(default_factory=dict)


def token_stream(tok: Tokenizer, texts: list[str], chunk: int = 2000) -> tuple[np.ndarray, ...]:
    """All texts' token ids as one flat array, with the index of the text each token came from."""
    ids, docs = [], []
    for start in bar(None, "tokenize", unit="chunk", iterable=range(0, len(texts), chunk)):
        for i, enc in enumerate(
            tok.encode_batch(texts[start : start + chunk], add_special_tokens=False)
        ):
            ids.append(np.asarray(enc.ids, dtype=np.int32))
            docs.append(np.full(len(enc.ids), start + i, dtype=np.int32))
    if not ids:
        return np.empty(0, np.int32), np.empty(0, np.int32)
    return np.concatenate(ids), np.concatenate(docs)


def cooccurrence(ids: np.ndarray, docs: np.ndarray, vocab: int, window: int) -> sparse.csr_matrix:
    """Symmetric (vocab, vocab) counts of tokens within `window` of each other in one text."""
    counts = sparse.csr_matrix((vocab, vocab), dtype=np.float64)
    for d in range(1, window + 1):
        same = docs[:-d] == docs[d:]
        pairs = sparse.coo_matrix(
            (np.full(int(same.sum()), 1.0 / d), (ids[:-d][same], ids[d:][same])),
            shape=(vocab, vocab),
        ).tocsr()
        counts = counts + pairs + pairs.T
    return counts


def ppmi(counts: sparse.csr_matrix, smoothing: float) -> sparse.csr_matrix:
    """Positive PMI with context counts raised to `smoothing`, as a sparse matrix."""
    counts = counts.tocoo()
    total = counts.sum()
    rows = np.asarray(counts.sum(axis=1)).ravel()
    context = np.asarray(counts.sum(axis=0)).ravel() ** smoothing
    p_context = context / context.sum()
    pmi = (
        np.log(counts.data / total)
        - np.log(rows[counts.row] / total)
        - np.log(p_context[counts.col])
    )
    keep = pmi > 0
    return sparse.csr_matrix((pmi[keep], (counts.row[keep], counts.col[keep])), shape=counts.shape)


def truncated_svd(matrix: sparse.csr_matrix, dim: int, power: float, seed: int) -> np.ndarray:
    """Top `dim` left singular vectors scaled by singular values**power (randomised SVD).

    On one thread: a multi-threaded sparse product sums in an order that depends on the thread
    count, which changed the vectors' last bits (and the stage's digest) between machines.
    """
    coo = matrix.tocoo()
    tensor = torch.sparse_coo_tensor(
        np.vstack([coo.row, coo.col]),
        coo.data.astype(np.float32),
        coo.shape,
        check_invariants=False,
    ).coalesce()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        u, s, _ = torch.svd_lowrank(tensor, q=dim, niter=4)
        return (u * s.pow(power)).numpy()
    finally:
        torch.set_num_threads(threads)


def word_id(tok: Tokenizer, word: str) -> int | None:
    """The id of `word` as a whole word: its one token, as encoded on its own, if it is one."""
    ids = tok.encode(word, add_special_tokens=False).ids
    return ids[0] if len(ids) == 1 else None


def nearest(vectors: np.ndarray, tok: Tokenizer, words: tuple[str, ...], k: int = 5) -> dict:
    """The k nearest tokens (cosine) of each probe word that is one token of the vocabulary,
    decoded as text (a word-start token reads as the word)."""
    norms = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-8)
    out = {}
    for word in words:
        idx = word_id(tok, word)
        if idx is None:
            continue
        sims = norms @ norms[idx]
        sims[idx] = -np.inf
        out[word] = [tok.decode([int(j)]) for j in np.argsort(-sims)[:k]]
    return out


def fit_embeddings(tok: Tokenizer, texts: list[str], cfg: EmbeddingConfig) -> WordVectors:
    """Word vectors for every token of `tok`, from `texts` (never validation or test)."""
    if not texts:
        raise UserError("no texts to pretrain word vectors on: the train split is empty")
    vocab = tok.get_vocab_size()
    if cfg.dim >= vocab:
        raise UserError(f"embeddings.dim ({cfg.dim}) must be below the vocabulary size ({vocab})")
    t0 = time.perf_counter()
    ids, docs = token_stream(tok, texts)
    counts = cooccurrence(ids, docs, vocab, cfg.window)
    weights = ppmi(counts, cfg.smoothing)
    vectors = truncated_svd(weights, cfg.dim, cfg.eig_power, cfg.seed)
    seen = np.bincount(ids, minlength=vocab) > 0
    vectors[~seen] = 0.0
    vectors[0] = 0.0  # padding
    scale = vectors[seen].std() if seen.any() else 1.0
    vectors = (vectors / max(float(scale), 1e-8)).astype(np.float32)  # unit std, like N(0, 1)
    stats = {
        "texts": len(texts),
        "tokens": int(len(ids)),
        "vocab_seen": int(seen.sum()),
        "cooccurrence_nnz": int(counts.nnz),
        "ppmi_nnz": int(weights.nnz),
        "nearest": nearest(vectors, tok, PROBES),
    }
    # the time is logged, not kept: the stage's outputs must be a function of its inputs
    seconds = time.perf_counter() - t0
    log.info("word vectors %s from %d tokens in %.1f s", vectors.shape, len(ids), seconds)
    return WordVectors(vectors, stats)
