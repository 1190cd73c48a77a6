"""`sentiment_rnn.params.set_param` / `read_param`: one value of params.yaml edited in place."""

from pathlib import Path

import pytest

from sentiment_rnn.errors import UserError
from sentiment_rnn.params import read_param, set_param

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def params_copy(tmp_path: Path) -> Path:
    """The repository's params.yaml, with its comments and wrapped flow mappings."""
    path = tmp_path / "params.yaml"
    path.write_text((REPO_ROOT / "params.yaml").read_text())
    return path


def test_set_param_changes_only_that_value(params_copy):
    before = params_copy.read_text().splitlines()
    assert set_param(params_copy, "data.source", "/data/my imdb")
    after = params_copy.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert len(changed) == 1
    assert changed[0][1].strip().startswith("source: /data/my imdb")
    assert read_param(params_copy, "data.source") == "/data/my imdb"
    assert not set_param(params_copy, "data.source", "/data/my imdb")


@pytest.mark.parametrize("value", ["a: b # c", "yes", "123", "", 0.02, 1e-5, 7, True])
def test_set_param_reads_back_the_same_value_and_type(params_copy, value):
    set_param(params_copy, "train.gru.lr", value)
    got = read_param(params_copy, "train.gru.lr")
    assert got == value and type(got) is type(value)


def test_set_param_names_what_is_missing(params_copy):
    with pytest.raises(UserError, match="missing key 'nope'"):
        set_param(params_copy, "train.nope.lr", 1.0)
    with pytest.raises(UserError, match="a section"):
        set_param(params_copy, "train.gru", "x")
