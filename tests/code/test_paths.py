"""`sentiment_rnn.paths`: a local copy of the data, or a hub id that needs the network."""

import pytest

from sentiment_rnn.paths import is_local_source


@pytest.mark.parametrize(
    ("source", "local"),
    [
        ("stanfordnlp/imdb", False),
        ("data/imdb", False),
        ("./imdb", True),
        ("/x/imdb", True),
        ("~/imdb", True),
        ("imdb", True),
        ("a/b/c", True),
    ],
)
def test_a_source_is_local_when_it_looks_like_a_path(tmp_path, source, local):
    assert is_local_source(source, tmp_path) is local


def test_an_existing_folder_is_local_even_when_shaped_like_a_hub_id(tmp_path):
    (tmp_path / "data" / "imdb").mkdir(parents=True)
    assert is_local_source("data/imdb", tmp_path)
