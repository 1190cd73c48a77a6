"""`sentiment-rnn promote`: register what the export stage wrote and move the `champion` alias.

Not a DVC stage: registering a model version is a side effect that a cached stage would skip
and that every `dvc exp run` would repeat. The Prefect flow runs it after a successful
pipeline, and a user can run it by hand. Each version is the text model
(`tracking.text_model`: review text in, label and probability out) over `models/<arch>.onnx`
and its tokenizer, with a description of its data, metrics and limits. Registering is
idempotent: an ONNX file already registered as a text model (same sha256) is not registered
again. `champion` then points at the text-model version whose training run has the best
validation accuracy.
"""

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sentiment_rnn import paths
from sentiment_rnn.errors import UserError
from sentiment_rnn.files import read_json, sha256_file
from sentiment_rnn.params import section, validate
from sentiment_rnn.serving.contract import ServingMeta, check_pairing, read_props
from sentiment_rnn.stages.common import experiment
from sentiment_rnn.tracking import registry, runs
from sentiment_rnn.tracking.text_model import TextModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromoteConfig:
    """params.yaml `promote`."""

    registered_model_prefix: str  # MLflow registered model: <prefix>-<arch>


@dataclass(frozen=True)
class Promotion:
    arch: str
    registered_model: str
    version: int
    newly_registered: bool
    champion_version: int | None

    def line(self) -> str:
        how = "registered" if self.newly_registered else "already registered"
        return (
            f"{self.arch}: {self.registered_model} v{self.version} ({how}); "
            f"champion v{self.champion_version}"
        )


def model_description(name: str, arch: str) -> str:
    """The registered model's description: what it takes and returns, how to use it."""
    return (
        f"Sentiment of English IMDB movie reviews (`sentiment-rnn`, {arch} family). "
        "Input: review text, a `text` column or the texts alone. Output, one row "
        "per input row: `label` (negative / positive), `probability` (of positive), "
        "`truncated`, `unknown_fraction` (share of tokens outside the vocabulary: filter "
        "rows near 1, e.g. another language), `status` (`ok`, or `error: ...` with no "
        "prediction: empty text, not "
        "text, invalid utf-8, missing text). The `champion` alias is the version with the "
        "best validation accuracy.\n\n"
        f"Serve: `mlflow models serve -m models:/{name}@champion`; score a file: "
        f"`sentiment-rnn predict -m models:/{name}@champion -i reviews.csv -o out.parquet`; "
        "for `mlflow.models.evaluate(model_type='classifier')` load it with "
        "`model_config={'output': 'label'}` and label targets `negative` / `positive`."
    )


def _splits_line() -> str:
    data = paths.metrics_file("data")
    if not data.is_file():
        return "IMDB (stanfordnlp/imdb)."
    stats = read_json(data)
    sizes = ", ".join(
        f"{split} {stats[split]['rows']:,}" for split in ("train", "val", "test") if split in stats
    )
    return f"IMDB (stanfordnlp/imdb, from `{stats.get('source', '?')}`): {sizes} reviews."


def version_description(meta: ServingMeta, metrics: Mapping[str, float], onnx_sha: str) -> str:
    """A model card for one version: data, metrics, intended use, limits."""
    scores = [f"validation accuracy {meta.best_val_acc:.4f}"] if meta.best_val_acc else []
    for key, label in (("accuracy", "test accuracy"), ("f1", "F1"), ("roc_auc", "ROC-AUC")):
        if f"test/{key}" in metrics:
            scores.append(f"{label} {metrics[f'test/{key}']:.4f}")
    kept = "first" if meta.truncation_side == "right" else "last"
    return "\n".join(
        [
            f"**Data**: {_splits_line()} Validation carved from train; test used once.",
            f"**Metrics**: {', '.join(scores) or 'not recorded'}.",
            "**Intended use**: binary sentiment of English movie reviews, one review per row.",
            f"**Limits**: trained on IMDB only (English, movie reviews); a review longer than "
            f"{meta.max_length} tokens is scored on its {kept} {meta.max_length} tokens and "
            f"flagged `truncated`; a served request takes at most "
            f"{TextModelConfig().max_rows:,} rows (`model_config` max_rows).",
            f"**Identity**: arch {meta.arch}, graph {meta.serving_graph}, tokenizer sha256 "
            f"`{meta.tokenizer_sha256}`, ONNX sha256 `{onnx_sha}`, training run "
            f"`{meta.mlflow_run_id or 'unknown'}`.",
        ]
    )


def promote(arch: str, cfg: PromoteConfig, experiment_name: str) -> Promotion:
    """Register models/<arch>.onnx (once) and move `champion` to the best registered version."""
    onnx_file = paths.onnx_path(arch)
    if not onnx_file.is_file():
        raise UserError(
            f"{onnx_file} not found: run the export stage first (dvc repro export@{arch})"
        )
    meta = ServingMeta.from_props(read_props(onnx_file), str(onnx_file))
    tokenizer = paths.tokenizer_copy_path(arch)
    check_pairing(tokenizer, meta.tokenizer_sha256, str(onnx_file), f"dvc repro export@{arch}")
    name = f"{cfg.registered_model_prefix}-{arch}"
    digest = sha256_file(onnx_file)
    key, value = registry.TEXT_INPUT_TAG
    version = registry.version_with_tags(name, {"onnx_sha256": digest, key: value})
    if version is None:
        tags = {"arch": arch, "promoted": "true"}
        with runs.resume_run(meta.mlflow_run_id, experiment_name, arch, tags) as run:
            version_tags = {
                "arch": arch,
                "tokenizer_sha256": meta.tokenizer_sha256,
                "onnx_sha256": digest,
                "source_run": run.info.run_id,
            }
            version = registry.log_text_model(onnx_file, tokenizer, name, version_tags)
            metrics = runs.run_metrics(run.info.run_id)
        registry.describe(
            name, version, model_description(name, arch), version_description(meta, metrics, digest)
        )
        newly = True
    else:
        newly = False
    result = Promotion(arch, name, version, newly, registry.update_champion(name))
    log.info(result.line())
    return result


def run(params: Mapping[str, Any], archs: list[str]) -> list[dict[str, Any]]:
    """Promote each of `archs`, reading params.yaml's `promote` and `mlflow` sections once."""
    cfg = validate(PromoteConfig, section(params, "promote", "promote"), "promote", "promote")
    name = experiment(params, "promote")
    return [asdict(promote(arch, cfg, name)) for arch in archs]
