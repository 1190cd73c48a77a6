"""Where each stage reads and writes, relative to the project root (the folder with dvc.yaml)."""

from pathlib import Path

RAW_DIR = Path("data/raw")
TOKENS_DIR = Path("data/tokens")
EMBEDDINGS_FILE = Path("data/embeddings/vectors.npy")
MODELS_DIR = Path("models")
CHECKPOINT_DIR = Path("checkpoints")
METRICS_DIR = Path("reports/metrics")
PLOTS_DIR = Path("reports/plots")


def is_local_source(source: str, root: Path = Path(".")) -> bool:
    """`data.source` is a local copy if it exists under `root` or looks like a path; otherwise
    it is an `owner/name` Hugging Face hub id, which needs the network."""
    return (root / source).expanduser().exists() or source.startswith((".", "/", "~")) or (
        source.count("/") != 1
    )


def model_dir(arch: str) -> Path:
    return MODELS_DIR / arch


def run_file(arch: str) -> Path:
    """The MLflow run id of the training run, read by evaluate and export."""
    return model_dir(arch) / "mlflow_run.json"
