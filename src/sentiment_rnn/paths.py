"""Where each stage reads and writes, relative to the project root (the folder with dvc.yaml).

The one module that knows the project's folder layout; `dvc.yaml` lists the same paths.
"""

import os
from pathlib import Path

RAW_DIR = Path("data/raw")
TOKENS_DIR = Path("data/tokens")
TOKENIZER_FILE = TOKENS_DIR / "tokenizer.json"
TOKENS_META = TOKENS_DIR / "meta.json"  # vocabulary size, tokenizer sha256, max_length, side
EMBEDDINGS_FILE = Path("data/embeddings/vectors.npy")
LM_CORPUS_DIR = Path("data/lm")  # the language models' tokenised reviews
MODELS_DIR = Path("models")
CHECKPOINT_DIR = Path("checkpoints")
METRICS_DIR = Path("reports/metrics")
PLOTS_DIR = Path("reports/plots")
COMPARISON_MD = Path("reports/comparison.md")
COMPARISON_PNG = Path("reports/comparison.png")
BASELINE = Path("reports/benchmarks/tfidf_baseline.json")  # benchmarks/tfidf_baseline.py
UNLABELLED = "unsupervised"  # IMDB's unlabelled split, as the download stage names its file


def project_root() -> Path:
    """The project's root: DVC_ROOT, which DVC sets for every stage command (during
    `dvc exp run --queue` or `--temp` it names the original repository, not the temporary copy
    the stage runs in), else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def resolve_source(source: str) -> str:
    """`data.source` as given when it is a hub id or an absolute path; a relative local path is
    taken from the project root (so an experiment in a temporary copy reads the same data)."""
    if not is_local_source(source, project_root()) or Path(source).expanduser().is_absolute():
        return source
    return str(project_root() / source)


def is_local_source(source: str, root: Path = Path(".")) -> bool:
    """`data.source` is a local copy if it exists under `root` or looks like a path; otherwise
    it is an `owner/name` Hugging Face hub id, which needs the network."""
    return (
        (root / source).expanduser().exists()
        or source.startswith((".", "/", "~"))
        or (source.count("/") != 1)
    )


def split_file(split: str) -> Path:
    """`data/raw/<split>.parquet`: train, val, test or unsupervised."""
    return RAW_DIR / f"{split}.parquet"


def tokens_file(split: str) -> Path:
    return TOKENS_DIR / f"{split}.npz"


def model_dir(arch: str) -> Path:
    return MODELS_DIR / arch


def model_file(arch: str) -> Path:
    """The trained weights, config and identity (`core.model.save_model`)."""
    return model_dir(arch) / "model.pt"


def checkpoint_file(arch: str) -> Path:
    return CHECKPOINT_DIR / f"{arch}.pt"


def lm_dir(arch: str) -> Path:
    """`models/lm-<arch>/`: the language model of a family (weights, ONNX step graph)."""
    return MODELS_DIR / f"lm-{arch}"


def onnx_path(arch: str) -> Path:
    """`models/<arch>.onnx`: beside the train stage's `models/<arch>/` output, not inside it."""
    return MODELS_DIR / f"{arch}.onnx"


def tokenizer_copy_path(arch: str) -> Path:
    """The tokenizer the exported model was trained with, beside it."""
    return MODELS_DIR / f"{arch}.tokenizer.json"


def metrics_file(kind: str, arch: str | None = None) -> Path:
    """`reports/metrics/<kind>[-<arch>].json`, e.g. train-lstm, eval-gru, data."""
    return METRICS_DIR / (f"{kind}-{arch}.json" if arch else f"{kind}.json")


def plot_file(name: str, arch: str, suffix: str) -> Path:
    """`reports/plots/<name>-<arch>.<suffix>`, e.g. train-lstm.csv, roc-gru.csv."""
    return PLOTS_DIR / f"{name}-{arch}.{suffix}"
