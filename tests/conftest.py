"""Shared fixtures: a small synthetic IMDB in the hub's layout, tiny params, tiny trained models.

Nothing here reads ../shared or the network; every output lands under pytest's tmp folders.
"""

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

ARCHS = ("rnn", "lstm", "gru")
POSITIVE = ["great", "wonderful", "superb", "moving", "brilliant", "loved", "fun", "touching"]
NEGATIVE = ["awful", "boring", "terrible", "dull", "waste", "hated", "clumsy", "weak"]
FILLER = [
    "the",
    "movie",
    "plot",
    "actors",
    "film",
    "was",
    "and",
    "story",
    "scenes",
    "it",
    "a",
    "director",
    "script",
    "ending",
    "<br /><br />",
    "really",
    "quite",
    "music",
]


def rss_mb() -> float:
    """This process's resident set size in MB, from /proc (Linux)."""
    status = Path("/proc/self/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS:")).split()[1]) / 1024


def synthetic_reviews(n: int, seed: int) -> pd.DataFrame:
    """Balanced reviews whose label is carried by sentiment words among filler of random length."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 40))]
        cues = POSITIVE if label else NEGATIVE
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(cues))
        rows.append({"text": " ".join(words).capitalize() + ".", "label": label})
    return pd.DataFrame(rows)


def write_hub_layout(
    root: Path, train: pd.DataFrame, test: pd.DataFrame, unlabelled: pd.DataFrame | None = None
) -> Path:
    """Write parquet files laid out like stanfordnlp/imdb (config plain_text)."""
    folder = root / "plain_text"
    folder.mkdir(parents=True, exist_ok=True)
    train.to_parquet(folder / "train-00000-of-00001.parquet", index=False)
    test.to_parquet(folder / "test-00000-of-00001.parquet", index=False)
    if unlabelled is not None:  # the hub's unsupervised split: label -1
        unlabelled.assign(label=-1).to_parquet(
            folder / "unsupervised-00000-of-00001.parquet", index=False
        )
    return root


def tiny_params(source: str | Path) -> dict[str, Any]:
    """params.yaml for fast tests: tiny vocabulary, short reviews, small models, two epochs."""
    model = {
        "embed_dim": 16,
        "hidden_size": 16,
        "num_layers": 1,
        "bidirectional": True,
        "dropout": 0.1,
        "pooling": "max",
        "cell": "fused",
    }
    train = {
        "model": model,
        "epochs": 2,
        "batch_size": 16,
        "lr": 0.01,
        "weight_decay": 0.0,
        "clip_grad_norm": 1.0,
        "warmup_fraction": 0.1,
        "patience": 2,
        "seed": 0,
        "device": "cpu",
        "pretrained_embeddings": True,
        "ema_decay": 0.9,
    }
    return {
        "data": {"source": str(source), "val_fraction": 0.2, "seed": 0},
        "tokenize": {
            "vocab_size": 200,
            "min_frequency": 1,
            "max_length": 32,
            "lowercase": True,
            "truncation_side": "right",
        },
        "embeddings": {"dim": 16, "window": 3, "smoothing": 0.75, "eig_power": 0.5, "seed": 0},
        "mlflow": {"experiment": "test-experiment"},
        "train": {arch: {**train, "model": dict(model)} for arch in ARCHS},
    }


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
    """A project folder with tiny params.yaml after download, tokenize and embeddings (stage
    cores, no DVC)."""
    from sentiment_rnn import paths
    from sentiment_rnn.download import run_download
    from sentiment_rnn.embeddings import EmbeddingConfig, run_embeddings
    from sentiment_rnn.tokenize import TokenizeConfig, run_tokenize

    params = tiny_params(source)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with working_dir(root):
        run_download(str(source), 0.2, 0, paths.RAW_DIR, paths.METRICS_DIR / "data.json")
        run_tokenize(
            TokenizeConfig(**params["tokenize"]),
            paths.RAW_DIR,
            paths.TOKENS_DIR,
            paths.METRICS_DIR / "tokenize.json",
        )
        run_embeddings(
            EmbeddingConfig(**params["embeddings"]),
            paths.RAW_DIR,
            paths.TOKENS_DIR / "tokenizer.json",
            paths.EMBEDDINGS_FILE,
            paths.METRICS_DIR / "embeddings.json",
        )
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
    from sentiment_rnn.train import run_train

    root = make_project(tmp_path_factory.mktemp("trained"), synthetic_imdb)
    params = yaml.safe_load((root / "params.yaml").read_text())
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    try:
        with working_dir(root):
            for arch in ARCHS:
                run_train(arch, params["train"][arch], params["mlflow"]["experiment"])
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return root


@contextmanager
def trained_copy(
    tokenized: Path, root: Path, archs: tuple[str, ...], experiment: str
) -> Iterator[Path]:
    """A writable copy of the tiny tokenized project with `archs` trained into its own MLflow
    store, as the working directory. (Not a copy of `trained_project`: MLflow caches artifact
    locations by run id in-process, so copied run ids would write into the original.)"""
    import shutil

    from sentiment_rnn.train import run_train

    shutil.copytree(tokenized, root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        for arch in archs:
            run_train(arch, params["train"][arch], experiment)
        yield root
