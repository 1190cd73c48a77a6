"""Review generation from a language model: temperature, top-k and nucleus (top-p) sampling.

The model is read one token at a time with its recurrent state carried (O(1) per step for an
RNN, unlike re-reading the prefix). A `Stepper` is whatever turns (last tokens, state) into
next-token log-probabilities: the torch model (`core.lm.TorchStepper`) or its ONNX export
(`serving.lm_onnx.OnnxStepper`). Sampling itself is numpy with a seeded generator, so the same
seed gives the same text whichever stepper runs (and greedy decoding the same tokens); this
module needs no torch.

A requested sentiment is strengthened by classifier-free guidance (Ho & Salimans, 2022;
Sanchez et al., 2023, for language models): the model also reads the prompt as `[NEUTRAL]`,
and the next-token log-probabilities move away from that reading,
`log p(x | s) + g * (log p(x | s) - log p(x | neutral))`, renormalised. No classifier is
involved: the LM was trained with the neutral token on the unlabelled reviews.
"""

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sentiment_rnn.core.tokenizer import (
    BOS_ID,
    EOS_ID,
    NEGATIVE_ID,
    NEUTRAL_ID,
    POSITIVE_ID,
    SENTIMENT_IDS,
    UNK_ID,
)
from sentiment_rnn.errors import UserError


class Stepper(Protocol):
    def start(self, batch: int) -> Any: ...

    def step(self, tokens: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        """(B,) int64 tokens -> ((B, V) float log-probabilities of the next token, state)."""
        ...


@dataclass(frozen=True)
class Sampling:
    """How the next token is drawn; `top_k=1` is greedy decoding."""

    temperature: float = 0.9
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 0.95  # nucleus: the smallest set of tokens holding this much probability
    guidance: float = 0.0  # classifier-free guidance of a requested sentiment; 0: off

    def __post_init__(self) -> None:
        if not self.guidance >= 0:
            raise UserError(f"--guidance must be >= 0 (0: off), got {self.guidance}")
        if not self.temperature > 0:
            raise UserError(f"--temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0 (0: off), got {self.top_k}")


def filtered_probs(log_probs: np.ndarray, sampling: Sampling) -> np.ndarray:
    """(B, V) probabilities after temperature, top-k and top-p; never [PAD], [UNK] or [BOS]."""
    scaled = log_probs.astype(np.float64) / sampling.temperature
    scaled[:, : BOS_ID + 1] = -np.inf  # padding, unknown and a second start are never drawn
    scaled[:, [i for i in SENTIMENT_IDS.values()]] = -np.inf
    if sampling.top_k:
        kth = np.sort(scaled, axis=1)[:, -min(sampling.top_k, scaled.shape[1])][:, None]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    if sampling.top_p < 1:
        order = np.argsort(-probs, axis=1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=1)
        before = np.cumsum(sorted_probs, axis=1) - sorted_probs  # mass of the better tokens
        drop = np.zeros_like(probs, dtype=bool)
        np.put_along_axis(drop, order, before >= sampling.top_p, axis=1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(axis=1, keepdims=True)
    return probs


def draw(probs: np.ndarray, rng: np.random.Generator, greedy: bool) -> np.ndarray:
    if greedy:
        return probs.argmax(axis=1)
    cumulative = probs.cumsum(axis=1)
    u = rng.random((len(probs), 1)) * cumulative[:, -1:]
    return (cumulative < u).sum(axis=1).clip(max=probs.shape[1] - 1)


def prompt_ids(encoded: list[int], sentiment: str) -> list[int]:
    """`[BOS] <sentiment>` and the prompt's tokens; a prompt of unknown words only is refused."""
    if encoded and all(i == UNK_ID for i in encoded):
        raise UserError("the prompt holds only words the tokenizer does not know: write another")
    return [BOS_ID, SENTIMENT_IDS[sentiment], *encoded]


class Guided:
    """A `Stepper` that reads each row twice, as asked and as `[NEUTRAL]`, and returns the
    guided log-probabilities of the rows as asked."""

    def __init__(self, inner: Stepper, scale: float) -> None:
        self.inner, self.scale = inner, scale

    def start(self, batch: int) -> Any:
        return self.inner.start(2 * batch)

    def step(self, tokens: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        neutral = np.where(np.isin(tokens, (POSITIVE_ID, NEGATIVE_ID)), NEUTRAL_ID, tokens)
        both, state = self.inner.step(np.concatenate([tokens, neutral]), state)
        asked, plain = np.split(both.astype(np.float64), 2)
        guided = asked + self.scale * (asked - plain)
        return guided - np.logaddexp.reduce(guided, axis=1, keepdims=True), state


@dataclass
class Generated:
    ids: list[int]  # the new tokens, without [EOS]
    ended: bool  # True: the model wrote [EOS]; False: `max_tokens` ran out first


def generate(
    stepper: Stepper,
    prompt: list[int],
    max_tokens: int,
    samples: int,
    sampling: Sampling,
    seed: int,
) -> list[Generated]:
    """`samples` continuations of `prompt` (ids from `prompt_ids`), each stopping at [EOS]
    or after `max_tokens` tokens."""
    rng = np.random.default_rng(seed)
    greedy = sampling.top_k == 1
    if sampling.guidance and {POSITIVE_ID, NEGATIVE_ID} & set(prompt):
        stepper = Guided(stepper, sampling.guidance)
    state = stepper.start(samples)
    tokens = np.full(samples, prompt[0], dtype=np.int64)
    for token in prompt[1:]:  # read the prompt, keeping only the state
        _, state = stepper.step(tokens, state)
        tokens = np.full(samples, token, dtype=np.int64)
    out = [Generated([], False) for _ in range(samples)]
    for _ in range(max_tokens):
        log_probs, state = stepper.step(tokens, state)
        tokens = draw(filtered_probs(log_probs, sampling), rng, greedy).astype(np.int64)
        for i, sample in enumerate(out):
            if sample.ended:
                continue
            if tokens[i] == EOS_ID:
                sample.ended = True
            else:
                sample.ids.append(int(tokens[i]))
        if all(sample.ended for sample in out):
            break
    return out
