"""The batch-scoring flow (flows/score.py): task logic through `.fn`, then real flow runs.

The flow runs need a Prefect API: one temporary server for the whole session, shared with
any other flow tests that already started one (harnesses must not nest).
"""

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from prefect.states import Completed, Failed

from flows import score as score_flow
from sentiment_rnn.errors import UserError
from tests.conftest import synthetic_reviews
from tests.model.predict_helpers import make_model, make_tokenizer


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A temporary Prefect server, unless one is already up for this session."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    if PREFECT_API_URL.value():
        yield
        return
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("flow-model")
    onnx_file, _ = make_model(folder, make_tokenizer(folder / "tokenizer.json"), "gru", 24)
    return onnx_file


def inbox(root: Path) -> Path:
    folder = root / "inbox"
    folder.mkdir()
    reviews = synthetic_reviews(12, seed=5)
    reviews.to_csv(folder / "a.csv", index=False)
    (folder / "b.txt").write_text("".join(f"{t}\n" for t in reviews["text"]))
    (folder / ".partial.csv").write_text("text\nhidden files are not read\n")
    (folder / "notes.md").write_text("not an input format")
    return folder


def test_shards_are_scored_by_content_not_by_time(tmp_path: Path, model_file: Path) -> None:
    src, out = inbox(tmp_path), tmp_path / "out"
    out.mkdir()
    shards = score_flow.plan_shards(str(src), out)
    assert [(s.name, s.output(out, "parquet").name) for s in shards] == [
        ("a", "a.predictions.parquet"),
        ("b", "b.predictions.parquet"),
    ]
    model = score_flow.identify_model(str(model_file))
    options = {"text_column": "text", "id_column": None, "output_format": "parquet"}
    a = shards[0]
    digest = score_flow.input_digest(a)
    record = score_flow.score_shard.fn(a, out, digest, model, options)
    assert record["rows_in"] == record["rows_out"] == record["ok"] == 12
    assert score_flow.is_scored(a, out, digest, model, options) == record
    later = (out / "a.predictions.parquet").stat().st_mtime + 10
    os.utime(src / "a.csv", (later, later))  # touched, not changed: still scored
    assert score_flow.is_scored(a, out, score_flow.input_digest(a), model, options)
    with (src / "a.csv").open("a") as handle:
        handle.write("one more review,1\n")  # changed: scored no more
    assert not score_flow.is_scored(a, out, score_flow.input_digest(a), model, options)
    assert not score_flow.is_scored(a, out, digest, model, options | {"text_column": "review"})
    other = score_flow.ModelIdentity(model.ref, None, "0" * 64, model.tokenizer_sha256)
    assert not score_flow.is_scored(a, out, digest, other, options)
    (out / "a.predictions.parquet").write_bytes(b"replaced")  # not the output recorded
    assert not score_flow.is_scored(a, out, digest, model, options)
    with pytest.raises(UserError, match="must differ"):
        score_flow.plan_shards(str(src), src)


def test_a_task_run_again_in_the_same_run_does_not_score_twice(
    tmp_path: Path, model_file: Path
) -> None:
    """Dask reruns a task whose result died with its worker: the shard is not scored again."""
    src, out = inbox(tmp_path), tmp_path / "out"
    out.mkdir()
    shard = score_flow.plan_shards(str(src), out)[0]
    model = score_flow.identify_model(str(model_file))
    options = {"text_column": "text", "id_column": None, "output_format": "parquet"}
    digest = score_flow.input_digest(shard)
    first = score_flow.score_shard.fn(shard, out, digest, model, options, run_id="run-1")
    output = shard.output(out, "parquet")
    inode = output.stat().st_ino  # an atomic rewrite gives the name another inode
    assert score_flow.score_shard.fn(shard, out, digest, model, options, run_id="run-1") == first
    assert output.stat().st_ino == inode  # not written again
    again = score_flow.score_shard.fn(shard, out, digest, model, options, run_id="run-2")
    assert again["flow_run"] == "run-2" and output.stat().st_ino != inode  # another run: force


def test_a_glob_and_row_group_digests(tmp_path: Path) -> None:
    src = inbox(tmp_path)
    shards = score_flow.plan_shards(str(src / "*.csv"), tmp_path / "out")
    assert [s.name for s in shards] == ["a"]
    big = tmp_path / "big.parquet"
    synthetic_reviews(30, seed=2).to_parquet(big, row_group_size=10)
    parts = score_flow.plan_shards(str(big), tmp_path / "out", row_groups_per_shard=2)
    assert [(s.name, s.row_groups) for s in parts] == [
        ("big.rg00000-00001", (0, 1)),
        ("big.rg00002-00002", (2,)),
    ]
    first = [score_flow.input_digest(s) for s in parts]
    synthetic_reviews(30, seed=2).to_parquet(big, row_group_size=10)  # the same content again
    assert [score_flow.input_digest(s) for s in parts] == first
    assert first[0] != first[1]
    (src / "a.txt").write_text("same stem as a.csv\n")
    with pytest.raises(UserError, match="share an output name"):
        score_flow.plan_shards(str(src), tmp_path / "out")


def test_only_io_errors_are_retried() -> None:
    assert score_flow.is_transient(OSError("share unavailable"))
    assert score_flow.is_transient(TimeoutError())
    assert not score_flow.is_transient(UserError("input file is empty"))
    assert not score_flow.is_transient(ValueError("bug"))
    assert not score_flow.is_transient(None)
    assert score_flow.retry_on_io(None, None, Failed(data=OSError("blink")))  # type: ignore[arg-type]
    assert not score_flow.retry_on_io(None, None, Failed(data=UserError("bad")))  # type: ignore[arg-type]
    assert not score_flow.retry_on_io(None, None, Completed(data=1))  # type: ignore[arg-type]


def test_flow_scores_new_files_then_skips_them(
    tmp_path: Path, model_file: Path, prefect_api: None
) -> None:
    src, out = inbox(tmp_path), tmp_path / "out"
    first = score_flow.score_folder(str(src), str(out), str(model_file))
    assert sorted(s["input"] for s in first) == [str(src / "a.csv"), str(src / "b.txt")]
    assert sorted(p.name for p in out.iterdir()) == [
        "_records",
        "a.predictions.parquet",
        "b.predictions.parquet",
        "manifest.json",
    ]
    assert score_flow.score_folder(str(src), str(out), str(model_file)) == []  # nothing new
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(e["shard"], e["status"]) for e in manifest["shards"]] == [
        ("a", "skipped"),
        ("b", "skipped"),
    ]

    (src / "c.jsonl").write_text('{"text": "a wonderful film"}\n{"text": ""}\n')
    (src / "empty.csv").write_text("")  # a bad file: reported, and the others still scored
    state = score_flow.score_folder(str(src), str(out), str(model_file), return_state=True)
    assert state.is_failed()
    assert "empty.csv" in state.message or "empty.csv" in str(state.result(raise_on_failure=False))
    scored = pd.read_parquet(out / "c.predictions.parquet")
    assert scored["status"].tolist() == ["ok", "error: empty text"]
    assert not (out / "empty.predictions.parquet").exists()


def test_deployment_carries_the_schedule_and_parameters(model_file: Path) -> None:
    deployment = score_flow.deployment(
        "0 * * * *", input_dir="in", output_dir="out", model=str(model_file)
    )
    assert deployment.name == "score-folder"
    assert [s.schedule.cron for s in deployment.schedules] == ["0 * * * *"]
    assert deployment.parameters == {
        "input_dir": "in",
        "output_dir": "out",
        "model": str(model_file),
    }
