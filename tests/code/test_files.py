"""The atomic writes every stage uses: permissions of a plain open(), nothing left behind."""

import os
from pathlib import Path

import pytest

from sentiment_rnn import files
from sentiment_rnn.files import atomic_path, read_json, write_json


@pytest.fixture
def umask_022(monkeypatch: pytest.MonkeyPatch):
    """The umask 022 for plain opens and for the one files.py read at import."""
    previous = os.umask(0o022)
    monkeypatch.setattr(files, "_UMASK", 0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path: Path, umask_022: None) -> None:
    write_json(tmp_path / "m.json", {"a": 1})
    with atomic_path(tmp_path / "t.txt") as tmp:
        tmp.write_text("x")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert mode(plain) == 0o644
    assert [mode(tmp_path / n) for n in ("m.json", "t.txt")] == [0o644] * 2
    assert read_json(tmp_path / "m.json") == {"a": 1}


def test_a_failed_block_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("killed")
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
