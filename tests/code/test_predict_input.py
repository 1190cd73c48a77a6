"""What a new user of `predict` hits: hostile bytes in every input format, ids, unknown scripts
and the temporaries of a killed run.

The readers are fuzzed with files built from the pieces that break CSV and JSON parsers
(quotes, separators, line breaks, NULs, bytes that are not UTF-8): every file must either give
one output row per input row or a one-line `UserError`, never another exception.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentiment_rnn.errors import UserError, exit_on_user_error
from sentiment_rnn.serving.model import OnnxSentimentModel, load_model
from sentiment_rnn.serving.predict import PredictOptions, PredictSummary, predict_file
from tests.model.predict_helpers import CPU_ONE_THREAD, make_model, make_tokenizer

PIECES = [
    b"text",
    b"id",
    b"great film",
    b"awful",
    b",",
    b'"',
    b'""',
    b"\n",
    b"\r\n",
    b"\r",
    b"\x00",
    b"\xe9",  # latin-1 e-acute: not UTF-8
    b"\xff\xfe",
    b"\xef\xbb\xbf",  # a byte-order mark, anywhere
    b"\xe4\xb8\xad",  # a CJK character in UTF-8
    b"{",
    b"}",
    b":",
    b'{"text": "fine"}',
    b'{"id": 3, "text": "ok"}',
    b"\\",
    b" ",
]
FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> OnnxSentimentModel:
    folder = tmp_path_factory.mktemp("predict-input")
    tokenizer = make_tokenizer(folder / "tokenizer.json")
    onnx_path, _ = make_model(folder / "models", tokenizer, "gru", max_length=32)
    return load_model(str(onnx_path), None, CPU_ONE_THREAD)


def score(model: OnnxSentimentModel, src: Path, out: Path, **options: object) -> PredictSummary:
    return predict_file(model, src, out, PredictOptions(progress=False, **options))  # type: ignore[arg-type]


def rows_out(path: Path) -> int:
    return pq.read_metadata(path).num_rows


def one_line_error(exc: UserError, capsys: pytest.CaptureFixture[str]) -> str:
    """What the CLI prints for `exc`: it must not itself fail on escaped bytes."""
    with pytest.raises(SystemExit) as exited, exit_on_user_error():
        raise exc
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    return err


# ---------------------------------------------------------------- fuzzed readers


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".txt"])
@FUZZ
@given(data=st.lists(st.sampled_from(PIECES), min_size=1, max_size=40).map(b"".join))
def test_any_bytes_give_one_row_per_row_or_a_one_line_error(
    model: OnnxSentimentModel,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    suffix: str,
    data: bytes,
) -> None:
    src, out = tmp_path / f"in{suffix}", tmp_path / "out.parquet"
    src.write_bytes(data)
    out.unlink(missing_ok=True)
    try:
        summary = score(model, src, out, chunk_rows=3)
    except UserError as exc:
        one_line_error(exc, capsys)
        assert not out.exists()
        return
    assert rows_out(out) == summary.rows > 0
    if suffix == ".txt":  # every line (ended by \n; a lone \r is inside one) is a row
        assert summary.rows == data.count(b"\n") + (not data.endswith(b"\n"))
    if suffix == ".jsonl":  # every non-blank line is a row; a leading byte-order mark is none
        lines = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
        assert summary.rows == sum(1 for line in lines if line.strip(b"\r\n").strip())
    if suffix == ".csv":  # pandas' own count of the rows, read the same way
        frame = pd.read_csv(
            src, dtype=object, keep_default_na=False, encoding_errors="surrogateescape"
        )
        assert summary.rows == len(frame)


@FUZZ
@given(data=st.binary(min_size=1, max_size=300))
def test_a_damaged_parquet_file_is_a_one_line_error(
    model: OnnxSentimentModel, tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes
) -> None:
    good = pa.table({"text": ["great film", "awful"] * 20})
    buffer = pa.BufferOutputStream()
    pq.write_table(good, buffer)
    whole = buffer.getvalue().to_pybytes()
    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    # the real header and footer around damaged middle bytes, or random bytes alone
    src.write_bytes(whole[:8] + data + whole[-300:] if len(data) % 2 else data)
    out.unlink(missing_ok=True)
    try:
        summary = score(model, src, out)
    except UserError as exc:
        one_line_error(exc, capsys)
        return
    assert rows_out(out) == summary.rows


def test_unterminated_quote_is_a_one_line_error(
    model: OnnxSentimentModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for body in ('text\n"great film\nawful\n', '"text\ngreat\n'):
        src = tmp_path / "quote.csv"
        src.write_text(body)
        with pytest.raises(UserError, match="malformed CSV.*quot") as raised:
            score(model, src, tmp_path / "out.csv")
        one_line_error(raised.value, capsys)


def test_a_latin1_csv_is_scored_with_its_bad_rows_flagged(
    model: OnnxSentimentModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "latin1.csv"
    src.write_bytes(b"id,text\nr1,caf\xe9 great film\nr\xe92,awful\nr3,fine\n")
    summary = score(model, src, tmp_path / "out.parquet")
    got = pq.read_table(tmp_path / "out.parquet").to_pandas()
    assert got["status"].tolist() == ["error: invalid utf-8", "ok", "ok"]
    assert got["id"].tolist() == ["r1", "r\ufffd2", "r3"]  # ids kept, bad bytes replaced
    assert summary.rows == 3
    # a header that is not UTF-8 cannot be read: say what to do
    src.write_bytes(b"t\xe9xt\ngreat film\n")
    with pytest.raises(UserError, match="header row is not UTF-8") as raised:
        score(model, src, tmp_path / "out.parquet")
    one_line_error(raised.value, capsys)
    # a column name with escaped bytes in a message is printed, not a crash
    assert "\\udce9" in one_line_error(UserError("no column 't\udce9xt'"), capsys)


# ---------------------------------------------------------------- ids


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_an_id_column_is_kept_without_a_flag(
    model: OnnxSentimentModel, tmp_path: Path, suffix: str
) -> None:
    frame = pd.DataFrame({"id": ["a1", "b2", "c3"], "text": ["great film", "awful", "fine"]})
    src = tmp_path / f"in{suffix}"
    if suffix == ".csv":
        frame.to_csv(src, index=False)
    elif suffix == ".jsonl":
        frame.to_json(src, orient="records", lines=True)
    else:
        frame.to_parquet(src, index=False)
    score(model, src, tmp_path / "out.parquet")
    assert pq.read_table(tmp_path / "out.parquet")["id"].to_pylist() == ["a1", "b2", "c3"]
    # an explicit --id-column still wins, and without an id column ids are row numbers
    frame.rename(columns={"id": "review"}).to_parquet(tmp_path / "other.parquet", index=False)
    score(model, tmp_path / "other.parquet", tmp_path / "rows.parquet")
    assert pq.read_table(tmp_path / "rows.parquet")["id"].to_pylist() == [0, 1, 2]
    score(model, tmp_path / "other.parquet", tmp_path / "named.parquet", id_column="review")
    assert pq.read_table(tmp_path / "named.parquet")["id"].to_pylist() == ["a1", "b2", "c3"]


# ---------------------------------------------------------------- unknown tokens


def test_a_review_in_an_unknown_script_is_scored_and_flagged(
    model: OnnxSentimentModel, tmp_path: Path
) -> None:
    src = tmp_path / "in.jsonl"
    texts = ["great film, really great", "这部电影非常好看，我很喜欢", "awful"]
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    summary = score(model, src, tmp_path / "out.parquet")
    got = pq.read_table(tmp_path / "out.parquet").to_pandas()
    assert got["status"].tolist() == ["ok"] * 3  # scored, not refused
    assert (
        got["unknown_fraction"][1]
        > 0.5
        > max(got["unknown_fraction"][0], got["unknown_fraction"][2])
    )
    assert summary.mostly_unknown == 1
    assert "1 rows mostly unknown tokens" in summary.line()


# ---------------------------------------------------------------- a killed run


def test_the_next_run_removes_the_temporary_a_killed_run_left(
    model: OnnxSentimentModel, tmp_path: Path
) -> None:
    src = tmp_path / "in.txt"
    src.write_text("great film\nawful\n")
    out = tmp_path / "out.csv"
    # A process killed while writing: inside atomic_path, never reaching its cleanup.
    killed = (
        "import os, sys; from sentiment_rnn.files import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('partial'); os.kill(os.getpid(), 9)\n"
    )
    subprocess.run([sys.executable, "-c", killed, str(out)], check=False)
    left = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".out.csv.")
    # a live process's temporary (a concurrent run) is not touched
    live = tmp_path / f".out.csv.{os.uname().nodename}-{os.getpid()}.x.tmp"
    live.write_text("mine")
    score(model, src, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.txt", "out.csv", live.name])
