"""Data tier: the download stage's splits, schema validation and errors on bad sources."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sentiment_rnn.errors import UserError
from sentiment_rnn.stages.download import DataConfig, download, split_train_val, validate_split
from tests.conftest import synthetic_reviews, tiny_params, write_hub_layout


def _download(tmp_path: Path, source: Path | str) -> dict:
    return download(DataConfig(str(source), 0.2, 0), tmp_path / "raw")


def test_splits_are_stratified_disjoint_and_complete(tmp_path: Path, synthetic_imdb: Path) -> None:
    stats = _download(tmp_path, synthetic_imdb)
    train = pd.read_parquet(tmp_path / "raw/train.parquet")
    val = pd.read_parquet(tmp_path / "raw/val.parquet")
    test = pd.read_parquet(tmp_path / "raw/test.parquet")
    assert len(train) + len(val) == 240 and len(test) == 120
    assert len(val) == 48
    for df in (train, val, test):
        assert list(df.columns) == ["text", "label"]
        assert df["label"].value_counts().to_dict() == {0: len(df) // 2, 1: len(df) // 2}
    assert stats["train"]["rows"] == len(train) and stats["val"]["pos"] == 24
    assert stats["test"]["rows"] == 120


def test_split_is_seeded() -> None:
    df = synthetic_reviews(100, seed=3)
    a_train, a_val = split_train_val(df, 0.2, seed=7)
    b_train, b_val = split_train_val(df, 0.2, seed=7)
    _, c_val = split_train_val(df, 0.2, seed=8)
    pd.testing.assert_frame_equal(a_val, b_val)
    assert not a_val.equals(c_val)
    assert set(a_train["text"]).isdisjoint(set(a_val["text"])) or len(a_train) == 80


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"review": ["good"], "label": [1]}), "lacks column(s) ['text']"),
        (pd.DataFrame({"text": ["good", "bad", "meh"], "label": [1, 0, 2]}), "labels outside"),
        (pd.DataFrame({"text": ["good", "  ", None], "label": [1, 0, 1]}), "rows 1, 2"),
    ],
)
def test_validate_names_the_bad_rows(frame: pd.DataFrame, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        validate_split(frame, "train")


def test_missing_folder_says_how_to_use_a_local_copy(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist: point data.source"):
        _download(tmp_path, tmp_path / "no-such-folder")


def test_splits_with_different_columns(tmp_path: Path) -> None:
    train = pd.DataFrame({"text": ["fine film"] * 4, "stars": [1, 0, 1, 0]})
    source = write_hub_layout(tmp_path / "bad", train, synthetic_reviews(10, 1))
    with pytest.raises(UserError, match="cannot read data.source .*column names don't match"):
        _download(tmp_path, source)


def test_folder_without_test_split(tmp_path: Path) -> None:
    folder = tmp_path / "only-train"
    folder.mkdir()
    synthetic_reviews(20, 0).to_parquet(folder / "train.parquet")
    with pytest.raises(UserError, match="no split"):
        _download(tmp_path, folder)


def test_unknown_hub_dataset_fails_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(UserError, match="hub"):
        _download(tmp_path, "no-such-owner-zz/no-such-dataset-zz")
    assert time.perf_counter() - start < 60


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (pd.DataFrame({"text": ["fine film"] * 4, "stars": [1, 0, 1, 0]}), "lacks column"),
        (pd.DataFrame({"text": ["fine film"] * 4, "label": [1, 0, 5, 0]}), "outside {0, 1}"),
        (pd.DataFrame({"text": ["fine film", "", "ok", "x"], "label": [1, 0, 1, 0]}), "empty text"),
    ],
)
def test_cli_prints_one_line_error(tmp_path: Path, train: pd.DataFrame, message: str) -> None:
    source = write_hub_layout(tmp_path / "bad", train, train)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(source)))
    cli = Path(sys.executable).parent / "sentiment-rnn"
    done = subprocess.run([str(cli), "download"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert "Traceback" not in done.stderr


def test_unlabelled_reviews_are_kept_for_word_vectors(tmp_path: Path, synthetic_imdb: Path) -> None:
    stats = _download(tmp_path, synthetic_imdb)
    unlabelled = pd.read_parquet(tmp_path / "raw/unsupervised.parquet")
    assert list(unlabelled.columns) == ["text"] and len(unlabelled) == 160
    assert stats["unsupervised"] == {
        "rows_read": 160, "removed_same_as_val": 0, "removed_same_as_test": 0, "rows": 160
    }  # fmt: skip


def test_unlabelled_reviews_identical_to_held_out_ones_are_removed(tmp_path: Path) -> None:
    train, test = synthetic_reviews(60, 1), synthetic_reviews(30, 2)
    unlabelled = pd.concat([synthetic_reviews(20, 3), test.iloc[:4], train.iloc[:7]])[["text"]]
    source = write_hub_layout(tmp_path / "imdb", train, test, unlabelled)
    stats = _download(tmp_path, source)
    val = pd.read_parquet(tmp_path / "raw/val.parquet")
    kept = pd.read_parquet(tmp_path / "raw/unsupervised.parquet")
    in_val = int(train.iloc[:7]["text"].isin(val["text"]).sum())
    assert stats["unsupervised"] == {
        "rows_read": 31, "removed_same_as_val": in_val, "removed_same_as_test": 4,
        "rows": 31 - 4 - in_val,
    }  # fmt: skip
    assert set(kept["text"]).isdisjoint(set(val["text"]) | set(test["text"]))


def test_source_without_unlabelled_split_gives_an_empty_file(tmp_path: Path) -> None:
    source = write_hub_layout(tmp_path / "imdb", synthetic_reviews(40, 1), synthetic_reviews(20, 2))
    stats = _download(tmp_path, source)
    assert len(pd.read_parquet(tmp_path / "raw/unsupervised.parquet")) == 0
    assert stats["unsupervised"]["rows"] == 0


def test_a_relative_source_is_read_from_the_project_root_in_a_dvc_experiment(
    tmp_path: Path, synthetic_imdb: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dvc exp run --queue` runs the stage in a temporary copy; DVC_ROOT names the project."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data/imdb").symlink_to(synthetic_imdb, target_is_directory=True)
    copy = project / ".dvc/tmp/exps/run/x"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(project))
    stats = download(DataConfig("data/imdb", 0.2, 0), Path("data/raw"))
    assert stats["test"]["rows"] == 120 and (copy / "data/raw/train.parquet").is_file()
