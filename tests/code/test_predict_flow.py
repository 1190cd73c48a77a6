"""The batch-scoring flow (flows/score.py): task logic through `.fn`, then real flow runs.

The flow runs need a Prefect API: one temporary server for the whole session, shared with
any other flow tests that already started one (harnesses must not nest).
"""

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


def test_new_files_skips_scored_ones(tmp_path: Path, model_file: Path) -> None:
    src, out = inbox(tmp_path), tmp_path / "out"
    out.mkdir()
    pending = score_flow.new_files(src, out, "parquet", str(model_file))
    assert [(i.name, o.name) for i, o in pending] == [
        ("a.csv", "a.predictions.parquet"),
        ("b.txt", "b.predictions.parquet"),
    ]
    (out / "a.predictions.parquet").write_text("scored")
    pending = score_flow.new_files(src, out, "parquet", str(model_file))
    assert [i.name for i, _ in pending] == ["b.txt"]
    later = (out / "a.predictions.parquet").stat().st_mtime + 10
    os.utime(src / "a.csv", (later, later))  # the input changed after it was scored
    assert len(score_flow.new_files(src, out, "parquet", str(model_file))) == 2
    assert len(score_flow.new_files(src, out, "parquet", str(model_file), force=True)) == 2
    with pytest.raises(UserError, match="must differ"):
        score_flow.new_files(src, src, "parquet", str(model_file))


def test_only_io_errors_are_retried() -> None:
    assert score_flow.is_transient(OSError("share unavailable"))
    assert score_flow.is_transient(TimeoutError())
    assert not score_flow.is_transient(UserError("input file is empty"))
    assert not score_flow.is_transient(ValueError("bug"))
    assert not score_flow.is_transient(None)
    assert score_flow.retry_on_io(None, None, Failed(data=OSError("blink")))  # type: ignore[arg-type]
    assert not score_flow.retry_on_io(None, None, Failed(data=UserError("bad")))  # type: ignore[arg-type]
    assert not score_flow.retry_on_io(None, None, Completed(data=1))  # type: ignore[arg-type]


def test_score_file_task_logic(tmp_path: Path, model_file: Path) -> None:
    src = inbox(tmp_path)
    summary = score_flow.score_file.fn(
        str(model_file), src / "a.csv", tmp_path / "a.jsonl", {"output_format": "jsonl"}
    )
    assert summary["rows"] == summary["ok"] == 12
    assert len(pd.read_json(tmp_path / "a.jsonl", lines=True)) == 12


def test_flow_scores_new_files_then_skips_them(
    tmp_path: Path, model_file: Path, prefect_api: None
) -> None:
    src, out = inbox(tmp_path), tmp_path / "out"
    first = score_flow.score_folder(str(src), str(out), str(model_file))
    assert sorted(s["input"] for s in first) == [str(src / "a.csv"), str(src / "b.txt")]
    assert sorted(p.name for p in out.iterdir()) == [
        "a.predictions.parquet",
        "b.predictions.parquet",
    ]
    assert score_flow.score_folder(str(src), str(out), str(model_file)) == []  # nothing new

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
