"""Steering generation toward a requested sentiment with a token lexicon (weighted decoding).

Each token gets a sentiment weight learnt from the labelled train reviews: its naive-Bayes
log-count ratio (Wang & Manning, 2012),

    w(t) = log((df_pos(t) + a) / (n_pos + a)) - log((df_neg(t) + a) / (n_neg + a)),

where df counts the reviews a token appears in and `a` smooths rare tokens toward 0. While
sampling a review asked positive, each next-token log-probability gets `strength * w(t)` added
(asked negative: subtracted) and is renormalised: weighted decoding (Ghazvininejad et al.,
2017; Holtzman et al., 2018; See et al., 2019). The language model itself is unchanged; the
weights only shift which of its likely tokens is drawn. Like `core.generate`, numpy only.
"""

import numpy as np

from sentiment_rnn.core.generate import Stepper
from sentiment_rnn.core.tokenizer import SPECIALS, valid_mask
from sentiment_rnn.errors import UserError

SMOOTHING = 5.0  # reviews added to each count: a token seen in a handful of reviews stays near 0


def sentiment_weights(
    ids: np.ndarray,
    lengths: np.ndarray,
    labels: np.ndarray,
    vocab_size: int,
    smoothing: float = SMOOTHING,
) -> np.ndarray:
    """(V,) float32 weights: > 0 for tokens of positive reviews, < 0 for negative ones, 0 for
    the special tokens. `ids` (N, T) padded token ids, `lengths` (N,), `labels` (N,) 0/1."""
    if not len(ids) or set(np.unique(labels).tolist()) != {0, 1}:
        raise UserError("the lexicon needs labelled reviews of both sentiments")
    valid = valid_mask(lengths, ids.shape[1])
    rows = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)[valid].astype(np.int64)
    pairs = np.unique(rows * vocab_size + ids[valid].astype(np.int64))  # (review, token) once
    review, token = np.divmod(pairs, vocab_size)
    positive = np.asarray(labels)[review] == 1
    df_pos = np.bincount(token[positive], minlength=vocab_size)
    df_neg = np.bincount(token[~positive], minlength=vocab_size)
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    weights = np.log((df_pos + smoothing) / (n_pos + smoothing)) - np.log(
        (df_neg + smoothing) / (n_neg + smoothing)
    )
    weights[: len(SPECIALS)] = 0.0
    return weights.astype(np.float32)


class Steered:
    """A `Stepper` whose next-token log-probabilities lean toward a sentiment:
    `log p(t) + bias(t)`, renormalised, with bias = +-strength * weights."""

    def __init__(self, inner: Stepper, bias: np.ndarray) -> None:
        self.inner, self.bias = inner, bias.astype(np.float64)

    def start(self, batch: int) -> object:
        return self.inner.start(batch)

    def step(self, tokens: np.ndarray, state: object) -> tuple[np.ndarray, object]:
        log_probs, state = self.inner.step(tokens, state)
        if log_probs.shape[1] != len(self.bias):
            raise UserError(
                f"the lexicon has {len(self.bias)} tokens, the language model "
                f"{log_probs.shape[1]}: they come from different tokenizers"
            )
        steered = log_probs.astype(np.float64) + self.bias
        return steered - np.logaddexp.reduce(steered, axis=1, keepdims=True), state


def steering_bias(weights: np.ndarray, sentiment: str, strength: float) -> np.ndarray:
    """The bias that leans toward `sentiment` ("positive" or "negative") by `strength` >= 0."""
    signs = {"positive": 1.0, "negative": -1.0}
    if sentiment not in signs or not strength >= 0:
        raise UserError(
            f"steering needs a positive or negative sentiment and a strength >= 0, got "
            f"{sentiment!r} and {strength}"
        )
    return signs[sentiment] * strength * weights
