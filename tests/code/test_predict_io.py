"""Batch prediction I/O: every format in and out, and every kind of bad input.

Real onnxruntime on a tiny exported model, real files under tmp_path.
"""

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from sentiment_rnn import cli
from sentiment_rnn.core.tokenizer import encode
from sentiment_rnn.errors import UserError
from sentiment_rnn.serving.contract import ServingMeta, read_props
from sentiment_rnn.serving.encoding import encode_texts, text_status
from sentiment_rnn.serving.model import OnnxSentimentModel, load_model
from sentiment_rnn.serving.predict import PredictOptions, PredictSummary, predict_file
from sentiment_rnn.serving.session import SessionConfig, create_session, session_options
from tests.conftest import rss_mb, synthetic_reviews
from tests.model.predict_helpers import CPU, CPU_ONE_THREAD, make_model, make_tokenizer

MAX_LENGTH = 32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("predict-models")
    tokenizer = make_tokenizer(folder / "source-tokenizer.json")
    make_model(folder / "models", tokenizer, "gru", max_length=MAX_LENGTH)
    return folder / "models"


@pytest.fixture(scope="module")
def model(model_dir: Path) -> OnnxSentimentModel:
    return load_model(str(model_dir / "gru.onnx"), None, CPU_ONE_THREAD)


@pytest.fixture(scope="module")
def reviews() -> pd.DataFrame:
    frame = synthetic_reviews(40, seed=7)
    frame.insert(0, "review_id", [f"r{i:03d}" for i in range(len(frame))])
    return frame


def write_input(frame: pd.DataFrame, path: Path) -> Path:
    """`frame` as the format of `path`'s extension (plain text: the text column only)."""
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        path.write_text("".join(f"{t}\n" for t in frame["text"]), encoding="utf-8")
    return path


def read_output(path: Path, fmt: str | None = None) -> pd.DataFrame:
    fmt = fmt or path.suffix.lstrip(".")
    if fmt == "csv":
        return pd.read_csv(path, dtype={"id": str, "status": str, "label": str})
    if fmt == "jsonl":
        return pd.read_json(path, lines=True, dtype={"id": str})
    return pq.read_table(path).to_pandas()


def score(model: OnnxSentimentModel, src: Path, out: Path, **options: Any) -> PredictSummary:
    return predict_file(model, src, out, PredictOptions(progress=False, **options))


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet", ".txt"])
def test_every_input_format_gives_the_same_predictions(
    model: OnnxSentimentModel, reviews: pd.DataFrame, tmp_path: Path, suffix: str
) -> None:
    ref_src = write_input(reviews, tmp_path / "ref.parquet")
    reference = score(model, ref_src, tmp_path / "ref.out.parquet")
    src = write_input(reviews, tmp_path / f"in{suffix}")
    summary = score(model, src, tmp_path / "out.parquet", chunk_rows=7, batch_size=4)
    got, want = read_output(tmp_path / "out.parquet"), read_output(tmp_path / "ref.out.parquet")
    assert summary.rows == summary.ok == len(reviews) == reference.rows
    assert got["id"].tolist() == list(range(len(reviews)))  # row numbers, in input order
    np.testing.assert_allclose(got["probability"], want["probability"], atol=1e-6)
    assert (got["label"] == np.where(got["probability"] > 0.5, "positive", "negative")).all()
    assert (got["status"] == "ok").all()


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_every_output_format_round_trips(
    model: OnnxSentimentModel, reviews: pd.DataFrame, tmp_path: Path, fmt: str
) -> None:
    frame = reviews.copy()
    frame.loc[3, "text"] = None
    src = write_input(frame, tmp_path / "in.parquet")
    score(model, src, tmp_path / "ref.parquet", id_column="review_id")
    score(model, src, tmp_path / f"out.{fmt}", id_column="review_id")
    got, want = read_output(tmp_path / f"out.{fmt}"), read_output(tmp_path / "ref.parquet")
    assert list(got.columns) == [
        "id",
        "label",
        "probability",
        "truncated",
        "unknown_fraction",
        "status",
    ]
    assert got["id"].tolist() == reviews["review_id"].tolist()
    assert got["status"].tolist() == want["status"].tolist()
    np.testing.assert_allclose(
        got["probability"].astype(float), want["probability"].astype(float), atol=1e-6
    )  # NaN where the row failed, on both sides
    assert pd.isna(got.loc[3, "label"]) and pd.isna(got.loc[3, "probability"])


def test_output_format_override_and_unknown_extension(
    model: OnnxSentimentModel, reviews: pd.DataFrame, tmp_path: Path
) -> None:
    src = write_input(reviews, tmp_path / "in.parquet")
    score(model, src, tmp_path / "predictions.out", output_format="jsonl")
    assert len(read_output(tmp_path / "predictions.out", "jsonl")) == len(reviews)
    with pytest.raises(UserError, match="cannot tell the output format"):
        score(model, src, tmp_path / "predictions.out")
    with pytest.raises(UserError, match="cannot tell the input format"):
        score(model, tmp_path / "predictions.out", tmp_path / "x.csv")


def test_plain_text_keeps_every_line_as_a_row(model: OnnxSentimentModel, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"\xef\xbb\xbfa great film\r\n\n   \nawful and boring\nlast line, no newline")
    summary = score(model, src, tmp_path / "out.csv")
    got = read_output(tmp_path / "out.csv")
    assert got["status"].tolist() == ["ok", "error: empty text", "error: empty text", "ok", "ok"]
    assert summary.rows == 5 and summary.errors == 2


# ---------------------------------------------------------------- bad input: whole file


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet", ".txt"])
def test_empty_file_is_a_clear_error(
    model: OnnxSentimentModel, tmp_path: Path, suffix: str
) -> None:
    src = tmp_path / f"empty{suffix}"
    src.write_bytes(b"")
    with pytest.raises(UserError, match="is empty"):
        score(model, src, tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize(
    "name,content",
    [
        ("header.csv", b"review_id,text\n"),
        ("blank.jsonl", b"\n  \n"),
    ],
)
def test_header_only_is_a_clear_error(
    model: OnnxSentimentModel, tmp_path: Path, name: str, content: bytes
) -> None:
    src = tmp_path / name
    src.write_bytes(content)
    with pytest.raises(UserError, match="no rows to score"):
        score(model, src, tmp_path / "out.parquet")
    assert list(tmp_path.iterdir()) == [src]  # no output, no temporary file left


def test_parquet_with_no_rows_is_a_clear_error(model: OnnxSentimentModel, tmp_path: Path) -> None:
    src = tmp_path / "none.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), src)
    with pytest.raises(UserError, match="no rows to score"):
        score(model, src, tmp_path / "out.csv")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_missing_text_column_names_the_columns_found(
    model: OnnxSentimentModel, reviews: pd.DataFrame, tmp_path: Path, suffix: str
) -> None:
    src = write_input(reviews.rename(columns={"text": "body"}), tmp_path / f"in{suffix}")
    with pytest.raises(UserError, match=r"no text column 'text'; columns found: \[.*'body'"):
        score(model, src, tmp_path / "out.parquet")
    if suffix != ".jsonl":  # in JSON Lines a missing id is a null id, row by row
        with pytest.raises(UserError, match="no id column 'nope'"):
            score(model, src, tmp_path / "out.parquet", text_column="body", id_column="nope")
    assert not (tmp_path / "out.parquet").exists()


def test_malformed_csv_is_a_clear_error(model: OnnxSentimentModel, tmp_path: Path) -> None:
    src = tmp_path / "bad.csv"
    src.write_text('text,label\n"fine",1\n"too",1,many,fields\n')
    with pytest.raises(UserError, match="malformed CSV"):
        score(model, src, tmp_path / "out.parquet")


def test_output_folder_must_exist(
    model: OnnxSentimentModel, reviews: pd.DataFrame, tmp_path: Path
) -> None:
    src = write_input(reviews, tmp_path / "in.parquet")
    with pytest.raises(UserError, match="output folder .*missing.* does not exist"):
        score(model, src, tmp_path / "missing" / "out.parquet")
    assert not (tmp_path / "missing").exists()
    with pytest.raises(UserError, match="overwrite the input"):
        score(model, src, src)


def test_a_failed_run_leaves_nothing_under_the_output_name(
    model: OnnxSentimentModel, reviews: pd.DataFrame, tmp_path: Path
) -> None:
    """A crash after some chunks were written: the old output stays, no partial file appears."""

    class FailsOnThirdBatch:
        def __init__(self, inner: OnnxSentimentModel) -> None:
            self.inner, self.meta, self.tokenizer = inner, inner.meta, inner.tokenizer
            self.provider, self.calls = inner.provider, 0

        def __call__(self, token_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("simulated crash")
            return self.inner(token_ids, lengths)

    src = write_input(reviews, tmp_path / "in.parquet")
    out = tmp_path / "out.csv"
    out.write_text("previous results\n")
    with pytest.raises(RuntimeError, match="simulated crash"):
        score(FailsOnThirdBatch(model), src, out, chunk_rows=5, batch_size=5)  # type: ignore[arg-type]
    assert out.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "out.csv"]


# ---------------------------------------------------------------- bad input: per row


def test_null_empty_and_non_text_rows_get_a_status_not_dropped(
    model: OnnxSentimentModel, tmp_path: Path
) -> None:
    src = tmp_path / "in.jsonl"
    records = [
        {"id": 1, "text": "a great film"},
        {"id": 2, "text": None},
        {"id": 3, "text": ""},
        {"id": 4, "text": " \t "},
        {"id": 5, "text": 42},
        {"id": 6, "text": ["a", "b"]},
        {"id": 7},
        {"id": 8, "text": "boring"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = score(model, src, tmp_path / "out.parquet", id_column="id")
    got = read_output(tmp_path / "out.parquet")
    assert got["id"].tolist() == [str(r["id"]) for r in records]
    assert got["status"].tolist() == [
        "ok",
        "error: missing text",
        "error: empty text",
        "error: empty text",
        "error: not text",
        "error: not text",
        "error: missing text",
        "ok",
    ]
    failed = got["status"] != "ok"
    assert got.loc[failed, ["label", "probability", "truncated"]].isna().all().all()
    assert got.loc[~failed, "probability"].between(0, 1).all()
    assert summary.ok == 2 and summary.errors == 6
    assert summary.error_counts == {
        "error: missing text": 2,
        "error: empty text": 2,
        "error: not text": 2,
    }


def test_parquet_column_that_is_not_text(model: OnnxSentimentModel, tmp_path: Path) -> None:
    src = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2, None]}), src)
    score(model, src, tmp_path / "out.parquet")
    assert read_output(tmp_path / "out.parquet")["status"].tolist() == [
        "error: not text",
        "error: not text",
        "error: missing text",
    ]


def test_parquet_binary_text_column_is_decoded_per_row(
    model: OnnxSentimentModel, tmp_path: Path
) -> None:
    src = tmp_path / "bytes.parquet"
    values = [b"a great film", b"caf\xe9 awful", None, b"dull"]
    pq.write_table(pa.table({"text": pa.array(values, pa.binary())}), src)
    score(model, src, tmp_path / "out.parquet")
    assert read_output(tmp_path / "out.parquet")["status"].tolist() == [
        "ok",
        "error: invalid utf-8",
        "error: missing text",
        "ok",
    ]


def test_a_file_that_is_not_parquet_is_a_clear_error(
    model: OnnxSentimentModel, tmp_path: Path
) -> None:
    src = tmp_path / "fake.parquet"
    src.write_text("text\nnot parquet at all\n")
    with pytest.raises(UserError, match="not a readable Parquet file"):
        score(model, src, tmp_path / "out.csv")


def test_malformed_json_line_is_flagged_and_others_scored(
    model: OnnxSentimentModel, tmp_path: Path
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        b'{"text": "a great film"}\n{"text": "unterminated\n[1, 2]\n\n{"text": "awful"}\n'
    )
    summary = score(model, src, tmp_path / "out.csv")
    got = read_output(tmp_path / "out.csv")
    assert got["status"].tolist() == ["ok", "error: malformed json", "error: malformed json", "ok"]
    assert got["id"].tolist() == ["0", "1", "2", "3"]  # blank lines are not rows
    assert summary.rows == 4


def test_invalid_utf8_is_flagged_per_row(model: OnnxSentimentModel, tmp_path: Path) -> None:
    bad = b"caf\xe9 \xff\xfe awful"
    text_file = tmp_path / "in.txt"
    text_file.write_bytes(b"a great film\n" + bad + b"\nboring\n")
    jsonl_file = tmp_path / "in.jsonl"
    jsonl_file.write_bytes(
        b'{"id": "a", "text": "great"}\n{"id": "b", "text": "' + bad + b'"}\n'
        b'{"id": "c", "text": "dull"}\n\xff{"text": 1}\n'
    )
    csv_file = tmp_path / "in.csv"
    csv_file.write_bytes(b"id,text\na,great\nb\xff," + bad + b"\nc,dull\n")
    expected = ["ok", "error: invalid utf-8", "ok"]
    score(model, text_file, tmp_path / "t.parquet")
    assert read_output(tmp_path / "t.parquet")["status"].tolist() == expected
    score(model, jsonl_file, tmp_path / "j.parquet", id_column="id")
    got = read_output(tmp_path / "j.parquet")
    assert got["status"].tolist() == [*expected, "error: invalid utf-8"]
    assert got["id"].tolist()[:3] == ["a", "b", "c"]
    score(model, csv_file, tmp_path / "c.parquet", id_column="id")
    got = read_output(tmp_path / "c.parquet")
    assert got["status"].tolist() == expected
    assert got["id"].tolist() == ["a", "b\ufffd", "c"]  # the id survives, made printable


def test_a_one_megabyte_review_is_truncated_flagged_and_fast(
    model: OnnxSentimentModel, tmp_path: Path
) -> None:
    huge = " ".join(synthetic_reviews(8000, seed=9)["text"])[:1_000_000]
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": huge}) + "\n" + json.dumps({"text": "short and fun"}) + "\n")
    start = time.perf_counter()
    summary = score(model, src, tmp_path / "out.parquet")
    assert time.perf_counter() - start < 5.0
    got = read_output(tmp_path / "out.parquet")
    assert got["truncated"].tolist() == [True, False]
    assert got["status"].tolist() == ["ok", "ok"] and summary.truncated == 1


def test_emoji_cjk_and_html_are_scored(model: OnnxSentimentModel, tmp_path: Path) -> None:
    texts = [
        "Loved it 😍🎬🍿",
        "这部电影很好看",
        "<b>great</b><br /><br />film &amp; fun",
        "🙂",
        "<br />",
        "Ünïcödé çafé",
    ]
    src = write_input(pd.DataFrame({"text": texts}), tmp_path / "in.csv")
    score(model, src, tmp_path / "out.parquet")
    got = read_output(tmp_path / "out.parquet")
    assert (got["status"] == "ok").all()
    assert got["probability"].between(0, 1).all()


def test_duplicate_ids_are_kept_and_reported(
    model: OnnxSentimentModel, reviews: pd.DataFrame, tmp_path: Path
) -> None:
    frame = reviews.copy()
    frame.loc[[5, 9, 30], "review_id"] = "r000"
    src = write_input(frame, tmp_path / "in.csv")
    summary = score(model, src, tmp_path / "out.csv", id_column="review_id", chunk_rows=8)
    got = read_output(tmp_path / "out.csv")
    assert len(got) == len(frame) and (got["id"] == "r000").sum() == 4
    assert summary.duplicate_ids == 3
    assert "warning: 3 duplicate ids (all rows kept)" in summary.line()


# ---------------------------------------------------------------- models and tokenizers


def test_a_file_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "model.onnx"
    fake.write_text("not a model")
    with pytest.raises(UserError, match="is not a valid ONNX model"):
        load_model(str(fake), None, CPU)
    with pytest.raises(UserError, match="not found"):
        load_model(str(tmp_path / "missing.onnx"), None, CPU)


def test_a_model_without_serving_metadata_is_refused(model_dir: Path, tmp_path: Path) -> None:
    proto = onnx.load(str(model_dir / "gru.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(UserError, match="lacks serving metadata"):
        load_model(str(tmp_path / "bare.onnx"), None, CPU)


def test_a_tokenizer_that_does_not_match_is_refused(model_dir: Path, tmp_path: Path) -> None:
    other = make_tokenizer(tmp_path / "other.json", vocab_size=150)
    with pytest.raises(UserError, match="is not the one .* was trained with"):
        load_model(str(model_dir / "gru.onnx"), other, CPU)
    alone = tmp_path / "alone.onnx"
    alone.write_bytes((model_dir / "gru.onnx").read_bytes())
    with pytest.raises(UserError, match="no tokenizer found beside"):
        load_model(str(alone), None, CPU)
    (tmp_path / "tokenizer.json").write_bytes(other.read_bytes())  # found, but not its own
    with pytest.raises(UserError, match="is not the one"):
        load_model(str(alone), None, CPU)


def test_tokenizer_is_found_through_dotted_stems(model_dir: Path, tmp_path: Path) -> None:
    """`lstm.int8.onnx` (a quantized copy) finds `lstm.tokenizer.json`."""
    (tmp_path / "gru.int8.onnx").write_bytes((model_dir / "gru.onnx").read_bytes())
    (tmp_path / "gru.tokenizer.json").write_bytes((model_dir / "gru.tokenizer.json").read_bytes())
    assert load_model(str(tmp_path / "gru.int8.onnx"), None, CPU).meta.arch == "gru"


def test_providers(model_dir: Path) -> None:
    auto = load_model(str(model_dir / "gru.onnx"), None, SessionConfig())
    assert auto.provider in auto.session.get_providers()  # whatever really runs is reported
    cpu = load_model(str(model_dir / "gru.onnx"), None, CPU)
    assert cpu.provider == "CPUExecutionProvider"
    with pytest.raises(UserError, match="not available"):
        load_model(str(model_dir / "gru.onnx"), None, SessionConfig(providers=("nosuch",)))


NO_MLFLOW = """
import importlib.abc, sys
from pathlib import Path

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"mlflow", "torch"}:
            raise ImportError(f"{name} is blocked")

sys.meta_path.insert(0, Block())
import sentiment_rnn.cli
from sentiment_rnn.serving.model import load_model
from sentiment_rnn.serving.session import SessionConfig

print(load_model(sys.argv[1], None, SessionConfig(("cpu",))).meta.arch)
"""


def test_a_local_model_is_served_without_mlflow_or_torch(model_dir: Path) -> None:
    """MLflow is reached only for a registry URI, torch never: serving runs where neither is
    installed, and the predict command does not pay for importing them."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", NO_MLFLOW, str(model_dir / "gru.onnx")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "gru"


def test_serving_meta_round_trips_and_refuses_a_bad_truncation_side(model_dir: Path) -> None:
    known = ServingMeta(
        "gru", "ab" * 32, 400, "left", 0, ("neg", "pos"), "run-1", 0.875, "folded-scan"
    )
    unknown = ServingMeta("lstm", "cd" * 32, 12, "right", 0)  # no run, no accuracy
    for meta in (known, unknown):
        assert ServingMeta.from_props(meta.to_props(), "m.onnx") == meta
    with pytest.raises(UserError, match="m.onnx has invalid serving metadata"):
        ServingMeta.from_props(known.to_props() | {"truncation_side": "middle"}, "m.onnx")
    exported = read_props(model_dir / "gru.onnx")  # what the loader sees, read without a session
    assert (
        ServingMeta.from_props(exported, "gru.onnx")
        == load_model(str(model_dir / "gru.onnx"), None, CPU).meta
    )


def test_session_config_reaches_the_session(model_dir: Path) -> None:
    """Threads and parallel set the session's options; a serialized graph (as export passes
    it) makes the same session as its file."""
    onnx_file = model_dir / "gru.onnx"
    sequential = create_session(onnx_file, SessionConfig(providers=("cpu",), threads=3))
    options = sequential.get_session_options()
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.intra_op_num_threads == 3 and not options.enable_mem_pattern
    parallel = create_session(onnx_file, SessionConfig(("cpu",), threads=2, parallel=True))
    options = parallel.get_session_options()
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert options.inter_op_num_threads == 2 and options.intra_op_num_threads == 1
    from_bytes = create_session(onnx_file.read_bytes(), SessionConfig(("cpu",), rewrite_rnn=False))
    assert from_bytes.get_providers()[0] == "CPUExecutionProvider"
    feed = {"token_ids": np.array([[5, 6, 7]]), "lengths": np.array([3])}
    np.testing.assert_array_equal(from_bytes.run(None, feed)[0], sequential.run(None, feed)[0])
    with pytest.raises(UserError, match="the serialized graph is not a valid ONNX model"):
        create_session(b"not a graph", SessionConfig(("cpu",)))


# ---------------------------------------------------------------- encoding


def test_text_status() -> None:
    assert text_status("fine") == "ok"
    assert text_status(None) == text_status(float("nan")) == "error: missing text"
    assert text_status("  \n") == text_status("") == "error: empty text"
    assert text_status(3) == "error: not text"
    assert text_status(b"caf\xe9".decode("utf-8", "surrogateescape")) == "error: invalid utf-8"


WORDS = [
    "great",
    "awful",
    "film",
    "the",
    "<br />",
    "<br/>",
    "!",
    "...",
    "😀",
    "中文",
    "café",
    "x" * 60,
    "  ",
    "\n",
    "don't",
    "-",
    "A",
    "Élan",
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    words=st.lists(st.sampled_from(WORDS), min_size=0, max_size=400),
    side=st.sampled_from(["right", "left"]),
    max_length=st.sampled_from([1, 5, 32]),
)
def test_encoding_matches_the_tokenize_stage(
    model_dir: Path, words: list[str], side: str, max_length: int
) -> None:
    """The prefix shortcut for long texts gives exactly the tokenize stage's ids."""
    tok = Tokenizer.from_file(str(model_dir / "gru.tokenizer.json"))
    texts = [" ".join(words), "".join(words), "a " * 400 + "".join(words)]
    ids, lengths, full = encode(tok, texts, max_length, side)
    got = encode_texts(tok, texts, max_length, side)
    want = [ids[i, : lengths[i]].tolist() for i in range(len(texts))]
    assert [r.tolist() for r in got.ids] == want
    assert got.truncated.tolist() == (full > max_length).tolist()


# ---------------------------------------------------------------- command line


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "argv", ["sentiment-rnn", *args])
    try:
        cli.main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_scores_and_prints_a_summary(
    model_dir: Path,
    reviews: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    src = write_input(reviews, tmp_path / "in.csv")
    code = run_cli(
        [
            "predict",
            "-m",
            str(model_dir / "gru.onnx"),
            "-i",
            str(src),
            "-o",
            str(tmp_path / "out.jsonl"),
            "--id-column",
            "review_id",
            "--providers",
            "cpu",
            "--threads",
            "1",
            "--batch-size",
            "8",
            "--no-progress",
        ],
        monkeypatch,
    )
    assert code == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"{len(reviews)} rows" in line and "ok 40" in line and "CPUExecutionProvider" in line
    assert "rows/s" in line
    assert oct(os.stat(tmp_path / "out.jsonl").st_mode & 0o777) != oct(0o600)


def test_cli_bad_input_is_one_line_and_exit_2(
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "empty.csv").write_text("")
    code = run_cli(
        [
            "predict",
            "-m",
            str(model_dir / "gru.onnx"),
            "-i",
            str(tmp_path / "empty.csv"),
            "-o",
            str(tmp_path / "out.csv"),
            "--providers",
            "cpu",
        ],
        monkeypatch,
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: input file") and "is empty" in err[-1]
    assert not (tmp_path / "out.csv").exists()


def test_cli_flags_become_predict_options_and_session_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No flags: the defaults of PredictOptions and SessionConfig; every flag reaches one."""
    from typer.testing import CliRunner

    from sentiment_rnn.serving import predict as predict_module

    seen: list[dict[str, Any]] = []

    def fake_run_predict(
        model: str,
        input_path: Path,
        output_path: Path,
        options: PredictOptions,
        session: SessionConfig,
        **kwargs: Any,
    ) -> PredictSummary:
        seen.append({"options": options, "session": session, **kwargs})
        return PredictSummary(str(input_path), str(output_path), "fake")

    monkeypatch.setattr(predict_module, "run_predict", fake_run_predict)
    files = ["-m", "m.onnx", "-i", "in.csv", "-o", "out.csv"]
    flags = shlex.split(
        "--text-column body --id-column key --input-format csv --output-format jsonl"
        " --batch-size 8 --chunk-rows 99 --providers 'cuda, cpu' --threads 3 --parallel --int8"
        " --tokenizer t.json --no-progress --release-memory"
    )
    for args in (files, files + flags):
        result = CliRunner().invoke(cli.app, ["predict", *args])
        assert result.exit_code == 0, result.output
    assert seen[0] == {
        "options": PredictOptions(),
        "session": SessionConfig(),
        "tokenizer": None,
        "int8": False,
    }
    assert seen[1]["options"] == PredictOptions(
        "body", "key", "csv", "jsonl", 8, 99, progress=False, release_memory=True
    )
    assert seen[1]["session"] == SessionConfig(("cuda", "cpu"), threads=3, parallel=True)
    assert seen[1]["tokenizer"] == Path("t.json") and seen[1]["int8"] is True


@pytest.mark.slow  # mostly a test of glibc
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim, /proc")
def test_freed_memory_goes_back_to_the_os_between_chunks() -> None:
    """What predict does after each chunk: blocks freed in a worker thread's malloc arena,
    fragmented by a few survivors, stay resident until release_freed_memory() trims them."""
    import threading

    from sentiment_rnn.serving.memory import release_freed_memory

    survivors: list[bytes] = []

    def chunk_work() -> None:
        blocks = [b"x" * 5000 for _ in range(40_000)]  # ~200 MB in this thread's arena
        survivors.extend(blocks[::16])  # every 16th lives on, as a cache or a result would

    worker = threading.Thread(target=chunk_work)
    worker.start()
    worker.join()
    before = rss_mb()
    assert release_freed_memory()
    assert before - rss_mb() > 100, "malloc_trim released less than 100 MB of ~190 MB freed"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/task")
def test_threads_option_sizes_the_tokenizer_pool(tmp_path: Path) -> None:
    """`--threads N` gives the tokenizer's Rust thread pool N threads, whatever the core count:
    the pool grows by exactly the difference between two settings."""
    import subprocess

    tokenizer = make_tokenizer(tmp_path / "tokenizer.json")
    script = (
        "import os, sys\n"
        "from tokenizers import Tokenizer\n"
        "from sentiment_rnn.serving.memory import size_tokenizer_pool\n"
        "size_tokenizer_pool(int(sys.argv[2]))\n"
        "Tokenizer.from_file(sys.argv[1]).encode_batch(['a good film'] * 5000)\n"
        "print(len(os.listdir('/proc/self/task')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYON_")}
    env["TOKENIZERS_PARALLELISM"] = "true"

    def threads_with(pool: int) -> int:
        out = subprocess.run(
            [sys.executable, "-c", script, str(tokenizer), str(pool)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.strip())

    assert threads_with(5) - threads_with(2) == 3


def test_threads_beyond_the_cores_do_not_spin() -> None:
    """Oversubscribed onnxruntime threads wait for work asleep; up to one per core they keep
    onnxruntime's default (spinning, the fastest on a quiet machine)."""
    key = "session.intra_op.allow_spinning"
    many = SessionConfig(threads=(os.cpu_count() or 1) + 1)
    assert session_options(many).get_session_config_entry(key) == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):
        session_options(SessionConfig(threads=1)).get_session_config_entry(key)


def test_parquet_reading_does_not_accumulate_buffers(tmp_path: Path) -> None:
    """Streaming a Parquet file of many row groups holds about one chunk at a time in pyarrow's
    pool. With pre-buffering (pyarrow's default) the buffers of the row groups already read
    stayed allocated: 53 MB more between the 6th and the 60th chunk of this file."""
    from sentiment_rnn.serving.io import read_chunks

    rng = np.random.default_rng(0)
    path = tmp_path / "many-groups.parquet"
    with pq.ParquetWriter(path, pa.schema([("text", pa.string())])) as writer:
        for _ in range(30):  # row groups of 2,000 distinct reviews, 2.8 MB each
            text = [rng.bytes(700).hex() for _ in range(2000)]
            writer.write_table(pa.table({"text": text}))
    allocated = []
    for chunk in read_chunks(path, "parquet", "text", None, chunk_rows=1000):
        assert len(chunk) == 1000
        allocated.append(pa.total_allocated_bytes())
    assert len(allocated) == 60
    assert allocated[-1] - allocated[5] < 8 * 2**20, f"pyarrow holds {allocated[-1]:,} bytes"
