"""Model tier: steering generated reviews toward a sentiment with the train lexicon."""

import math

import numpy as np
import pytest

from sentiment_rnn.core.generate import Sampling, generate, prompt_ids
from sentiment_rnn.core.steering import Steered, sentiment_weights, steering_bias
from sentiment_rnn.errors import UserError

VOCAB = 30


class Uniform:
    """A language model that finds every token equally likely: what is drawn is the bias."""

    def start(self, batch: int) -> None:
        return None

    def step(self, tokens: np.ndarray, state: None) -> tuple[np.ndarray, None]:
        return np.full((len(tokens), VOCAB), -math.log(VOCAB), dtype=np.float32), state


def test_weights_count_each_review_once_and_read_only_up_to_its_length() -> None:
    ids = np.array(
        [
            [10, 10, 10, 12, 0],  # positive: 10 three times counts as one review
            [10, 12, 0, 0, 0],  # positive
            [11, 12, 11, 0, 0],  # negative
            [11, 12, 13, 13, 13],  # negative, length 3: the last two 13s are not read
        ]
    )
    lengths, labels = np.array([4, 2, 3, 3]), np.array([1, 1, 0, 0])

    w = sentiment_weights(ids, lengths, labels, VOCAB, smoothing=1.0)

    assert w[10] == pytest.approx(math.log(3 / 3) - math.log(1 / 3))  # 2 of 2 positive, 0 negative
    assert w[11] == pytest.approx(-w[10])
    assert w[12] == pytest.approx(0.0)  # in every review
    assert w[13] == pytest.approx(math.log(1 / 3) - math.log(2 / 3))  # one negative review
    assert w[14] == pytest.approx(0.0)  # never seen
    assert not w[:7].any()  # the special tokens are never steered
    assert w.dtype == np.float32 and w.shape == (VOCAB,)


def test_weights_need_both_sentiments() -> None:
    with pytest.raises(UserError, match="both sentiments"):
        sentiment_weights(np.array([[10, 11]]), np.array([2]), np.array([1]), VOCAB)


def test_steering_adds_the_bias_and_stays_a_distribution() -> None:
    weights = np.zeros(VOCAB, dtype=np.float32)
    weights[10], weights[11] = 2.0, -2.0
    tokens = np.array([10, 11, 12])
    plain, _ = Uniform().step(tokens, None)

    for sentiment, favoured, shunned in (("positive", 10, 11), ("negative", 11, 10)):
        steered, _ = Steered(Uniform(), steering_bias(weights, sentiment, 1.5)).step(tokens, None)
        expected = plain + steering_bias(weights, sentiment, 1.5)
        expected -= np.logaddexp.reduce(expected, axis=1, keepdims=True)
        np.testing.assert_allclose(steered, expected, atol=1e-9)
        np.testing.assert_allclose(np.exp(steered).sum(axis=1), 1.0, atol=1e-9)
        assert (steered[:, favoured] > plain[:, favoured]).all()
        assert (steered[:, shunned] < plain[:, shunned]).all()
    unsteered, _ = Steered(Uniform(), steering_bias(weights, "positive", 0.0)).step(tokens, None)
    np.testing.assert_allclose(unsteered, plain, atol=1e-6)


def test_steered_generation_draws_the_favoured_words_and_is_deterministic() -> None:
    weights = np.zeros(VOCAB, dtype=np.float32)
    weights[10] = 1.0
    start = prompt_ids([], "positive")
    sampling = Sampling(temperature=1.0, top_p=1.0)

    def share_of_10(strength: float, seed: int = 3) -> float:
        stepper = Steered(Uniform(), steering_bias(weights, "positive", strength))
        ids = [i for s in generate(stepper, start, 50, 8, sampling, seed=seed) for i in s.ids]
        return ids.count(10) / len(ids)

    assert share_of_10(0.0) < 0.1  # about 1 in 23 drawable tokens
    assert share_of_10(5.0) > 0.8  # e^5 times likelier than any other token
    assert share_of_10(5.0) == share_of_10(5.0)


@pytest.mark.parametrize(("sentiment", "strength"), [("neutral", 1.0), ("positive", -1.0)])
def test_steering_needs_a_sentiment_and_a_strength_of_at_least_zero(
    sentiment: str, strength: float
) -> None:
    with pytest.raises(UserError, match="steering needs"):
        steering_bias(np.zeros(VOCAB), sentiment, strength)


def test_a_lexicon_of_another_size_than_the_model_is_refused() -> None:
    stepper = Steered(Uniform(), np.zeros(VOCAB + 1))
    with pytest.raises(UserError, match="different tokenizers"):
        stepper.step(np.array([10]), None)
