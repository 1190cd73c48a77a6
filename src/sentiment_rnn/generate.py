"""`sentiment-rnn generate`: reviews written by a language model of the `lm` stage.

The model is `models/lm-<arch>/lm.pt` (torch) or its ONNX step graph `lm.onnx` (onnxruntime,
no torch needed); its tokenizer is the copy beside it, checked against the model's digest.
Each sample starts from `[BOS]`, the requested sentiment's token and the prompt, and ends at
the end-of-review token or after `max_tokens` tokens. A requested sentiment is also steered by
a token lexicon learnt from the tokenised train split (`core.steering`, `--steer`).
"""

import functools
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from sentiment_rnn import paths
from sentiment_rnn.core.generate import Sampling, Stepper, generate, prompt_ids
from sentiment_rnn.core.steering import Steered, sentiment_weights, steering_bias
from sentiment_rnn.core.tokenizer import SENTIMENT_IDS, load_encoded
from sentiment_rnn.errors import UserError
from sentiment_rnn.files import atomic_path, read_json
from sentiment_rnn.serving.contract import check_pairing

log = logging.getLogger(__name__)

DEFAULT_ARCH = "lstm"
WORD_MARK = "▁"  # the tokenizer's word start, alone where the word's characters are unknown
DEFAULT_STEER = 1.0  # lexicon steering of a requested sentiment, chosen in README


@dataclass(frozen=True)
class Request:
    prompt: str = ""
    max_tokens: int = 80
    samples: int = 1
    seed: int = 0
    sentiment: str = "neutral"
    sampling: Sampling = Sampling()
    # Lean toward the sentiment by the train reviews' lexicon (0: off). None: DEFAULT_STEER
    # where the tokenised train split of the model's tokenizer is at hand, else off.
    steer: float | None = None


@dataclass(frozen=True)
class Sample:
    sample: int
    seed: int
    sentiment: str
    prompt: str
    text: str  # the prompt and its continuation, detokenised
    tokens: int  # tokens generated
    ended: bool  # the model ended the review itself


def load_stepper(model: Path) -> tuple[Stepper, str, int]:
    """(stepper, tokenizer digest, longest generation) of a `.pt` or `.onnx` language model."""
    if not model.is_file():
        raise UserError(f"language model {model} not found: run the lm stage (dvc repro lm@<arch>)")
    info = read_json(model.parent / "info.json") if (model.parent / "info.json").is_file() else {}
    if model.suffix == ".onnx":
        from sentiment_rnn.serving.lm_onnx import OnnxStepper

        stepper = OnnxStepper(model)
        digest = stepper.tokenizer_sha256
    elif model.suffix == ".pt":
        from sentiment_rnn.core.lm import TorchStepper, load_lm

        lm, saved = load_lm(model)
        stepper, digest = TorchStepper(lm), saved["tokenizer_sha256"]
    else:
        raise UserError(f"{model}: give a language model .pt or .onnx file")
    return stepper, digest, int(info.get("max_tokens", 1024))


def check_request(request: Request, limit: int) -> None:
    if not 1 <= request.max_tokens <= limit:
        raise UserError(f"--max-tokens must be between 1 and the model's limit {limit}")
    if request.samples < 1:
        raise UserError("--samples must be >= 1")
    if request.sentiment not in SENTIMENT_IDS:
        raise UserError(f"--sentiment must be one of {sorted(SENTIMENT_IDS)}")
    if request.steer is not None and not request.steer >= 0:
        raise UserError(f"--steer must be >= 0 (0: off), got {request.steer}")


def run_generate(model: Path | None, request: Request) -> list[Sample]:
    """Samples of `request` from `model` (default: the project's LSTM language model)."""
    model = model or paths.lm_dir(DEFAULT_ARCH) / "lm.pt"
    stepper, digest, limit = load_stepper(model)
    check_request(request, limit)
    tokenizer_file = model.parent / "tokenizer.json"
    check_pairing(tokenizer_file, digest, str(model), "rerun the lm stage")
    tok = Tokenizer.from_file(str(tokenizer_file))
    prompt = tok.encode(request.prompt, add_special_tokens=False).ids
    words = [i for i in prompt if tok.id_to_token(i) != WORD_MARK]  # a bare mark is no word
    prompt_ids(words, request.sentiment)  # refuses a prompt of unknown words only
    start = prompt_ids(prompt, request.sentiment)
    steered = steering(request, digest)
    if steered is not None:
        stepper = Steered(stepper, steered)
    found = generate(
        stepper, start, request.max_tokens, request.samples, request.sampling, request.seed
    )
    return [
        Sample(
            i,
            request.seed,
            request.sentiment,
            request.prompt,
            tok.decode(prompt + g.ids),
            len(g.ids),
            g.ended,
        )  # fmt: skip
        for i, g in enumerate(found)
    ]


def steering(request: Request, digest: str) -> np.ndarray | None:
    """The lexicon bias toward the requested sentiment, or None (neutral, or steering off).

    An explicit --steer without its lexicon is an error; the default steers only where the
    lexicon is at hand and says so in a warning where it is not."""
    strength = DEFAULT_STEER if request.steer is None else request.steer
    if request.sentiment == "neutral" or strength == 0:
        return None
    try:
        weights = lexicon_weights(digest)
    except UserError as exc:
        if request.steer is not None:
            raise
        log.warning("not steered toward %s: %s", request.sentiment, exc)
        return None
    return steering_bias(weights, request.sentiment, strength)


def lexicon_weights(digest: str, tokens: Path | None = None) -> np.ndarray:
    """Sentiment weights of every token, from the tokenised train split (`data/tokens`), which
    must come from the language model's tokenizer (`digest`)."""
    tokens = tokens or paths.tokens_file("train")
    meta_file = tokens.parent / "meta.json"
    if not tokens.is_file() or not meta_file.is_file():
        raise UserError(
            f"{tokens} not found: --steer learns its lexicon from the tokenised train split; "
            "run dvc repro tokenize, or pass --steer 0"
        )
    meta = read_json(meta_file)
    if meta.get("tokenizer_sha256") != digest:
        raise UserError(
            f"{tokens} was tokenised by another tokenizer than the language model's: rerun "
            "dvc repro (tokenize, then the lm stage), or pass --steer 0"
        )
    return _weights(str(tokens), digest, int(meta["vocab_size"]))


@functools.cache
def _weights(tokens: str, digest: str, vocab_size: int) -> np.ndarray:
    enc = load_encoded(tokens)
    return sentiment_weights(enc.ids, enc.lengths, enc.labels, vocab_size)


def write_jsonl(samples: list[Sample], path: Path) -> None:
    if not path.parent.is_dir():
        raise UserError(f"output folder {path.parent} does not exist: create it first")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(asdict(s), ensure_ascii=False) + "\n" for s in samples))


def as_text(samples: list[Sample]) -> str:
    return "\n\n".join(s.text for s in samples)
