"""Stage `lm_corpus`: the reviews the language models read, tokenised once for all families.

Training text: the train split (each review framed with its sentiment, `[POS]` or `[NEG]`) and
the unlabelled reviews (`[NEUTRAL]`; those identical to a validation or test review were
already removed by the download stage). Held-out text: the validation split, for perplexity.
Test texts are never read. Writes `data/lm/{train,val}.npz` (every review's framed token ids,
flat, with offsets) and `data/lm/meta.json` (token counts over the training text, words in the
held-out text, sizes).
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from tokenizers import Tokenizer

from sentiment_rnn import paths
from sentiment_rnn.core.lm import frame
from sentiment_rnn.core.lm_data import LMCorpus
from sentiment_rnn.core.progress import bar
from sentiment_rnn.core.tokenizer import EOS_ID, load_tokenizer
from sentiment_rnn.errors import UserError
from sentiment_rnn.files import write_json
from sentiment_rnn.paths import UNLABELLED
from sentiment_rnn.stages import entry

STAGE = "lm_corpus"
SENTIMENT_OF_LABEL = {0: "negative", 1: "positive"}
CHUNK = 2000  # reviews per encode_batch call


def read_texts(split: str) -> pd.DataFrame:
    path = paths.split_file(split)
    if not path.is_file():
        raise UserError(f"{path} not found: run the download stage first (dvc repro download)")
    return pd.read_parquet(path)


def encode_framed(tok: Tokenizer, texts: list[str], sentiments: list[str], desc: str) -> LMCorpus:
    """Every text as `[BOS] <sentiment> ids [EOS]`."""
    docs: list[np.ndarray] = []
    for start in bar(None, desc, unit="chunk", iterable=range(0, len(texts), CHUNK)):
        batch = tok.encode_batch(texts[start : start + CHUNK], add_special_tokens=False)
        for enc, sentiment in zip(batch, sentiments[start : start + CHUNK], strict=True):
            docs.append(frame(np.asarray(enc.ids, dtype=np.int32), sentiment))
    return LMCorpus.from_docs(docs)


def word_starts(tok: Tokenizer) -> np.ndarray:
    """(V,) bool: the tokens that begin a word (SentencePiece's `▁`), and [EOS], which ends a
    review and counts as a word as in the usual per-word perplexity."""
    starts = np.zeros(tok.get_vocab_size(), dtype=bool)
    for token, index in tok.get_vocab().items():
        starts[index] = token.startswith("▁")
    starts[EOS_ID] = True
    return starts


def run(params: Mapping[str, Any]) -> dict[str, Any]:
    """The stage: data/raw + the tokenizer -> data/lm/ and reports/metrics/lm_corpus.json."""
    tok = load_tokenizer(paths.TOKENIZER_FILE)
    train, unlabelled, val = (read_texts(s) for s in ("train", UNLABELLED, "val"))
    texts = train["text"].tolist() + unlabelled["text"].tolist()
    sentiments = [SENTIMENT_OF_LABEL[int(v)] for v in train["label"]]
    sentiments += ["neutral"] * len(unlabelled)
    corpus = encode_framed(tok, texts, sentiments, "lm train text")
    held_out = encode_framed(
        tok, val["text"].tolist(), [SENTIMENT_OF_LABEL[int(v)] for v in val["label"]], "lm val"
    )
    paths.LM_CORPUS_DIR.mkdir(parents=True, exist_ok=True)
    corpus.save(paths.LM_CORPUS_DIR / "train.npz")
    held_out.save(paths.LM_CORPUS_DIR / "val.npz")
    counts = np.bincount(corpus.tokens, minlength=tok.get_vocab_size())
    words = int(word_starts(tok)[held_out.tokens].sum())
    meta = {"train_reviews": len(corpus), "train_tokens": int(len(corpus.tokens))}
    meta |= {"labelled_reviews": len(train), "unlabelled_reviews": len(unlabelled)}
    meta |= {"val_reviews": len(held_out), "val_tokens": int(len(held_out.tokens))}
    meta |= {"val_words": words}
    write_json(paths.LM_CORPUS_DIR / "meta.json", meta | {"token_counts": counts.tolist()})
    write_json(paths.metrics_file(STAGE), meta)
    return meta


if __name__ == "__main__":
    entry.main(STAGE, run)
