"""Shared by tests and benchmarks: synthetic IMDB in the hub layout, tiny params, a throwaway DVC
project.

Nothing here reads ../shared or the network. `build_dvc_project` needs a source checkout of this
repository (an editable install): it copies the checkout's dvc.yaml, params.yaml and stage code.
"""

import random
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
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

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT = PACKAGE_DIR.parents[1]  # src/sentiment_rnn -> the repository root


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
    lm = {
        "model": {"embed_dim": 16, "hidden_size": 16, "dropout": 0.1, "cutoffs": [40, 120]},
        "pretrained_embeddings": True,
        "epochs": 2,
        "batch_size": 8,
        "bptt": 16,
        "lr": 0.01,
        "weight_decay": 0.0,
        "clip_grad_norm": 1.0,
        "warmup_fraction": 0.1,
        "seed": 0,
        "device": "cpu",
        "samples_per_epoch": 2,
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
        "evaluate": {"batch_size": 64, "device": "cpu"},
        "export": {"opset": 17, "parity_tolerance": 1.0e-4, "seed": 0},
        "promote": {"registered_model_prefix": "imdb-sentiment"},
        "baseline": {"max_ngram": 2, "min_df": 1, "max_df": 1.0, "c_values": [1.0, 4.0]},
        "lm": {arch: dict(lm) for arch in ARCHS},
    }


def build_dvc_project(root: Path, source: Path, epochs: int = 1) -> Path:
    """A git + DVC repository with this checkout's dvc.yaml, tiny params and a copy of the stage
    code.

    The code is copied because dvc.yaml lists it as the stages' deps; the commands themselves run
    the installed `sentiment-rnn`.
    """
    if not (CHECKOUT / "dvc.yaml").is_file():
        raise FileNotFoundError(f"no dvc.yaml in {CHECKOUT}: needs a source checkout")
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(CHECKOUT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(
        PACKAGE_DIR,
        root / "src" / "sentiment_rnn",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    params = project_params(source, epochs)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "--quiet"], [_venv_dvc(), "init", "--quiet"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root


def project_params(source: Path, epochs: int) -> dict[str, Any]:
    """`tiny_params`, plus the checkout's own sections for stages it does not cover yet (they must
    exist for DVC), on the CPU."""
    params = tiny_params(source)
    for section in params["train"].values():
        section["epochs"] = epochs
    repo = yaml.safe_load((CHECKOUT / "params.yaml").read_text())
    for name, section in repo.items():
        params.setdefault(name, section)
    if isinstance(params.get("evaluate"), dict) and "device" in params["evaluate"]:
        params["evaluate"]["device"] = "cpu"
    return params


def _venv_dvc() -> str:
    """This interpreter's `dvc` script, not whichever one PATH finds first."""
    found = shutil.which("dvc", path=str(Path(sys.executable).parent))
    return found or "dvc"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prefect_free_env(base: Mapping[str, str], home: Path, **prefect: str) -> dict[str, str]:
    """`base` without any PREFECT_ setting but `prefect`, with a throwaway PREFECT_HOME (no
    profile, and not the user's database)."""
    env = {k: v for k, v in base.items() if not k.startswith("PREFECT_")}
    return {**env, "PREFECT_HOME": str(home), **prefect}
