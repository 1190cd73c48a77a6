"""Shared fixtures: a small synthetic IMDB in the hub's layout, tiny params, tiny trained models.

Nothing here reads ../shared or the network; every output lands under pytest's tmp folders.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

# Shared with the benchmarks; tests that import these from here keep working.
from sentiment_rnn.testing import (  # noqa: F401
    ARCHS,
    FILLER,
    NEGATIVE,
    POSITIVE,
    rss_mb,
    synthetic_reviews,
    tiny_params,
    write_hub_layout,
)


@contextmanager
def working_dir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    """Tiny models gain nothing from threads; keep tests from fighting over the two cores."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synthetic_imdb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 240 / 120 / 160 (train / test / unlabelled) IMDB look-alike in the hub's folder layout."""
    root = tmp_path_factory.mktemp("imdb")
    return write_hub_layout(
        root,
        synthetic_reviews(240, seed=1),
        synthetic_reviews(120, seed=2),
        synthetic_reviews(160, seed=3)[["text"]],
    )


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A throwaway MLflow tracking store for one test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def make_project(root: Path, source: Path) -> Path:
    """A project folder with tiny params.yaml after the download, tokenize and embeddings stages
    (their `run`, no DVC)."""
    from sentiment_rnn.stages import download, embeddings, tokenize

    params = tiny_params(source)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with working_dir(root):
        for stage in (download, tokenize, embeddings):
            stage.run(params)
    return root


@pytest.fixture(scope="session")
def tokenized_project(tmp_path_factory: pytest.TempPathFactory, synthetic_imdb: Path) -> Path:
    """Read-only for tests: a tiny project after the download and tokenize stages."""
    return make_project(tmp_path_factory.mktemp("project"), synthetic_imdb)


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory, synthetic_imdb: Path) -> Path:
    """Read-only for tests: a tiny project with all three archs trained and tracked in MLflow.

    Its MLflow store is `<root>/mlflow.db`; set MLFLOW_TRACKING_URI to it to read the runs.
    """
    from sentiment_rnn.stages import train

    root = make_project(tmp_path_factory.mktemp("trained"), synthetic_imdb)
    params = yaml.safe_load((root / "params.yaml").read_text())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        for arch in ARCHS:
            train.run(arch, params)
    return root


@contextmanager
def trained_copy(
    tokenized: Path, root: Path, archs: tuple[str, ...], experiment: str
) -> Iterator[Path]:
    """A writable copy of the tiny tokenized project with `archs` trained into its own MLflow
    store, as the working directory. (Not a copy of `trained_project`: MLflow caches artifact
    locations by run id in-process, so copied run ids would write into the original.)"""
    import shutil

    from sentiment_rnn.stages import train

    shutil.copytree(tokenized, root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["mlflow"]["experiment"] = experiment
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        for arch in archs:
            train.run(arch, params)
        yield root
