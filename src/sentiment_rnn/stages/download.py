"""Stage `download`: load IMDB through Hugging Face `datasets`, validate it, carve a val split.

Writes `train` / `val` / `test` parquet files and a metrics file with row and label counts.
"""

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import huggingface_hub
import pandas as pd
from huggingface_hub.errors import RepositoryNotFoundError
from sklearn.model_selection import train_test_split

from sentiment_rnn import paths
from sentiment_rnn.errors import UserError
from sentiment_rnn.files import write_json
from sentiment_rnn.params import section, validate
from sentiment_rnn.paths import UNLABELLED, is_local_source
from sentiment_rnn.stages import entry

log = logging.getLogger(__name__)

STAGE = "download"
LABELS = (0, 1)
LOCAL_HINT = (
    "point data.source in params.yaml at a local copy in the hub layout "
    "(e.g. ../shared/data/imdb) or at a folder of parquet files"
)


@dataclass(frozen=True)
class DataConfig:
    """params.yaml `data`: where IMDB comes from and how the validation split is carved."""

    source: str  # a Hugging Face hub id or a local copy in the hub's layout
    val_fraction: float
    seed: int


def load_source(source: str) -> dict[str, pd.DataFrame]:
    """The `train`, `test` and (where present) `unsupervised` splits of `source` as DataFrames."""
    if is_local_source(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(f"data.source '{source}' does not exist: {LOCAL_HINT}")
        try:
            loaded = dict(datasets.load_dataset(str(path)))
            loaded |= _local_unlabelled(path, loaded)
        except (ValueError, FileNotFoundError, datasets.exceptions.DatasetGenerationError) as exc:
            raise UserError(
                f"cannot read data.source '{source}' as a dataset: {_root_cause(exc)}"
            ) from None
    else:
        loaded = _load_hub(source)
    missing = [s for s in ("train", "test") if s not in loaded]
    if missing:
        raise UserError(
            f"data.source '{source}' has no split(s) {missing} (found {sorted(loaded)}): "
            "it needs train and test"
        )
    frames = {name: loaded[name].to_pandas() for name in ("train", "test")}
    if UNLABELLED in loaded:
        frames[UNLABELLED] = loaded[UNLABELLED].to_pandas()
    return frames


def _local_unlabelled(path: Path, loaded: dict[str, Any]) -> dict[str, Any]:
    """The unlabelled split of a local copy in the hub's layout.

    Without the hub's dataset card, `datasets` names splits from file names and knows only
    train / test / validation, so `unsupervised-*.parquet` files are loaded explicitly here.
    """
    files = sorted(str(f) for f in path.rglob(f"{UNLABELLED}*.parquet"))
    if UNLABELLED in loaded or not files:
        return {}
    return {
        UNLABELLED: datasets.load_dataset("parquet", data_files={UNLABELLED: files})[UNLABELLED]
    }


def _root_cause(exc: BaseException) -> str:
    """The innermost error's first and last lines: `datasets` wraps the useful part."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def _load_hub(source: str) -> Any:
    """Load a hub dataset; without network, fail fast with a message that says what to do."""
    try:
        huggingface_hub.HfApi().dataset_info(source, timeout=10)
    except RepositoryNotFoundError:
        raise UserError(
            f"no dataset '{source}' on the Hugging Face hub: check data.source"
        ) from None
    except Exception as exc:  # any other failure here means the hub is unusable
        raise UserError(
            f"cannot reach the Hugging Face hub for '{source}' ({type(exc).__name__}); "
            f"offline, {LOCAL_HINT}"
        ) from None
    return datasets.load_dataset(source)


def _row_list(index: pd.Index, limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in index[:limit])
    return shown + (f" and {len(index) - limit} more" if len(index) > limit else "")


def validate_split(df: pd.DataFrame, split: str) -> pd.DataFrame:
    """Check schema and values; return the `text` and `label` columns or raise naming bad rows."""
    missing = [c for c in ("text", "label") if c not in df.columns]
    if missing:
        raise UserError(
            f"split '{split}' lacks column(s) {missing} (found {list(df.columns)}): "
            "the data needs a text column 'text' and an integer column 'label'"
        )
    text_ok = df["text"].map(lambda t: isinstance(t, str) and t.strip() != "")
    if not text_ok.all():
        bad = df.index[~text_ok]
        raise UserError(
            f"split '{split}': {len(bad)} row(s) with missing or empty text (rows {_row_list(bad)})"
        )
    label_ok = df["label"].isin(LABELS)
    if not label_ok.all():
        bad = df.index[~label_ok]
        values = sorted({str(v) for v in df.loc[bad, "label"]})[:5]
        raise UserError(
            f"split '{split}': {len(bad)} row(s) with labels outside {{0, 1}} "
            f"(rows {_row_list(bad)}; values {values})"
        )
    return df[["text", "label"]].astype({"label": "int64"}).reset_index(drop=True)


def unlabelled_texts(df: pd.DataFrame | None) -> pd.DataFrame:
    """The unlabelled reviews as one `text` column; empty where the source has none.

    Rows without text are left out here: they carry no label and no words, and only the
    stages that learn from unlabelled text read this file (the count is in the data metrics).
    """
    if df is None:
        log.warning("data.source has no '%s' split: word vectors use train only", UNLABELLED)
        return pd.DataFrame({"text": pd.Series([], dtype=str)})
    if "text" not in df.columns:
        raise UserError(
            f"split '{UNLABELLED}' lacks column 'text' (found {list(df.columns)}): "
            "it needs the review text"
        )
    text = df["text"]
    keep = text.map(lambda t: isinstance(t, str) and bool(t.strip()))
    return pd.DataFrame({"text": text[keep].astype(str).reset_index(drop=True)})


def split_train_val(
    train: pd.DataFrame, val_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Carve a seeded validation split from train, stratified by label."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    tr, va = train_test_split(
        train, test_size=val_fraction, random_state=seed, stratify=train["label"]
    )
    return tr.reset_index(drop=True), va.reset_index(drop=True)


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _digests(texts: pd.Series) -> set[str]:
    return {_digest(t) for t in texts}


def without_held_out(
    unlabelled: pd.DataFrame, held_out: dict[str, set[str]]
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The unlabelled reviews minus those identical to a validation or test review, and how
    many each split removed: a model that learns from them must never see a held-out text."""
    digests = unlabelled["text"].map(_digest)
    removed = {
        f"removed_same_as_{name}": int(digests.isin(d).sum()) for name, d in held_out.items()
    }
    keep = ~digests.isin(set().union(*held_out.values()))
    return unlabelled[keep].reset_index(drop=True), removed


def split_stats(splits: dict[str, pd.DataFrame], digests: dict[str, set[str]]) -> dict[str, Any]:
    """Row and label counts per split, plus duplicates within and overlap across splits
    (`digests`: each split's text digests)."""
    stats: dict[str, Any] = {}
    for name, df in splits.items():
        counts = df["label"].value_counts()
        stats[name] = {
            "rows": int(len(df)),
            "neg": int(counts.get(0, 0)),
            "pos": int(counts.get(1, 0)),
            "duplicate_texts": int(len(df) - len(digests[name])),
        }
    stats["overlap"] = {
        "train_val": len(digests["train"] & digests["val"]),
        "train_test": len(digests["train"] & digests["test"]),
        "val_test": len(digests["val"] & digests["test"]),
    }
    return stats


def download(cfg: DataConfig, out_dir: Path) -> dict[str, Any]:
    """Load, validate, split; write the parquet files; return the data report."""
    raw = load_source(paths.resolve_source(cfg.source))
    train = validate_split(raw["train"], "train")
    test = validate_split(raw["test"], "test")
    train, val = split_train_val(train, cfg.val_fraction, cfg.seed)
    splits = {"train": train, "val": val, "test": test}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, df in splits.items():
        df.to_parquet(out_dir / f"{name}.parquet", index=False)
    digests = {name: _digests(df["text"]) for name, df in splits.items()}
    stats = split_stats(splits, digests)
    unlabelled = unlabelled_texts(raw.get(UNLABELLED))
    kept, removed = without_held_out(unlabelled, {k: digests[k] for k in ("val", "test")})
    kept.to_parquet(out_dir / f"{UNLABELLED}.parquet", index=False)
    stats[UNLABELLED] = {"rows_read": len(unlabelled), **removed, "rows": len(kept)}
    stats["source"] = cfg.source
    log.info("wrote %s", ", ".join(f"{n}={len(d)}" for n, d in splits.items()))
    return stats


def run(params: Mapping[str, Any]) -> dict[str, Any]:
    """The stage: `data` params -> data/raw/*.parquet and reports/metrics/data.json."""
    cfg = validate(DataConfig, section(params, "data", STAGE), "data", STAGE)
    stats = download(cfg, paths.RAW_DIR)
    write_json(paths.metrics_file("data"), stats)
    return stats


if __name__ == "__main__":
    entry.main(STAGE, run)
