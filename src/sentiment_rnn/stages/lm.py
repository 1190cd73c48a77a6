"""Stage `lm@<arch>`: a bidirectional recurrent language model of reviews for one family.

Reads `lm.<arch>` and `mlflow` from params.yaml, the language-model corpus (`lm_corpus`) and,
optionally, the word vectors; writes `models/lm-<arch>/` (weights, the ONNX step graph of the
forward direction for generation), its metrics and curves, and a few generated reviews per
epoch; logs params, per-epoch metrics and the samples to an MLflow run. The train stage can
start a classifier from it (`train.<arch>.lm_init`).
"""

import hashlib
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np

from sentiment_rnn import paths, reports
from sentiment_rnn.core.generate import Sampling, generate, prompt_ids
from sentiment_rnn.core.lm import (
    ARCHS,
    BiLM,
    LMConfig,
    TorchStepper,
    build_lm,
    frequency_ranks,
    save_lm,
)
from sentiment_rnn.core.lm_data import LMCorpus
from sentiment_rnn.core.lm_training import LMEpoch, LMFitResult, LMTrainConfig, fit_lm
from sentiment_rnn.core.model import count_parameters
from sentiment_rnn.core.tokenizer import load_tokenizer
from sentiment_rnn.errors import UserError
from sentiment_rnn.export.lm_onnx import export_lm_step
from sentiment_rnn.files import read_json, write_json
from sentiment_rnn.params import section, validate
from sentiment_rnn.stages import common, entry
from sentiment_rnn.tracking import runs

SAMPLE_TOKENS = 60
SAMPLE_SEED = 0


@dataclass(frozen=True)
class LMModelParams:
    """params.yaml `lm.<arch>.model`: the sizes (the arch and vocabulary come from the stage)."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("cell", "div_value")

    embed_dim: int
    hidden_size: int
    dropout: float
    cutoffs: list[int]
    cell: str = "fused"
    div_value: float = 4.0


@dataclass(frozen=True)
class LMStageParams:
    """params.yaml `lm.<arch>` without `model`: what the stage does besides training."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("samples_per_epoch",)

    pretrained_embeddings: bool  # start the embedding from the embeddings stage's vectors
    samples_per_epoch: int = 4  # generated reviews logged after each epoch (half per sentiment)


def configs(
    arch: str, params: Mapping[str, Any]
) -> tuple[LMModelParams, LMStageParams, LMTrainConfig]:
    """The three parts of `lm.<arch>`, validated."""
    where, stage = f"lm.{arch}", f"lm@{arch}"
    lm = section(params, where, stage)
    if not isinstance(lm, Mapping) or "model" not in lm:
        raise UserError(f"params.yaml: missing key '{where}.model' (stage {stage})")
    model = validate(LMModelParams, lm["model"], f"{where}.model", stage)
    rest = {k: v for k, v in lm.items() if k != "model"}
    mine = {f.name for f in fields(LMStageParams)}
    stage_params = validate(
        LMStageParams, {k: v for k, v in rest.items() if k in mine}, where, stage
    )
    train = validate(LMTrainConfig, {k: v for k, v in rest.items() if k not in mine}, where, stage)
    return model, stage_params, train


def samples_text(model: BiLM, tok: Any, epoch: int, count: int) -> str:
    """`count` generated reviews (half asked positive, half negative), as Markdown."""
    lines = [f"# Samples after epoch {epoch}", ""]
    sampling = Sampling(temperature=0.9, top_p=0.95)
    for sentiment in ("positive", "negative"):
        n = max(1, count // 2)
        for i, sample in enumerate(
            generate(
                TorchStepper(model), prompt_ids([], sentiment), SAMPLE_TOKENS, n, sampling,
                SAMPLE_SEED,
            )
        ):  # fmt: skip
            lines.append(f"- **{sentiment} {i}**: {tok.decode(sample.ids)}")
    return "\n".join(lines) + "\n"


def write_history(arch: str, history: list[LMEpoch]) -> None:
    cols = [f.name for f in fields(LMEpoch)]
    rows = ([getattr(h, c) for c in cols] for h in history)
    reports.write_csv(paths.plot_file("lm", arch, "csv"), cols, rows)


def summary(arch: str, result: LMFitResult, model: BiLM, corpus: dict[str, Any]) -> dict:
    last = result.history[-1]
    return {
        "arch": arch,
        "val_loss": last.val_loss,
        "val_ppl": last.val_ppl,
        "val_word_ppl": last.val_word_ppl,
        "val_loss_forward": last.val_loss_forward,
        "val_loss_backward": last.val_loss_backward,
        "epochs_run": len(result.history),
        "train_seconds": round(result.seconds, 1),
        "tokens_per_second": round(last.tokens_per_second, 1),
        "parameters": count_parameters(model),
        "train_tokens": corpus["train_tokens"],
        "val_words": corpus["val_words"],
    }


def train_lm(
    arch: str,
    model_params: LMModelParams,
    stage_params: LMStageParams,
    cfg: LMTrainConfig,
    experiment: str,
) -> LMFitResult:
    """Train the family's language model, track it, write its outputs."""
    meta = common.tokens_meta()
    tok = load_tokenizer(paths.TOKENIZER_FILE)
    corpus_meta = read_json(paths.LM_CORPUS_DIR / "meta.json")
    counts = np.asarray(corpus_meta.pop("token_counts"), dtype=np.int64)
    lm_cfg = LMConfig(arch=arch, vocab_size=meta.vocab_size, **asdict(model_params) | {
        "cutoffs": tuple(model_params.cutoffs), "rank_of": frequency_ranks(counts)})  # fmt: skip
    train_docs = LMCorpus.load(paths.LM_CORPUS_DIR / "train.npz").docs()
    val_docs = LMCorpus.load(paths.LM_CORPUS_DIR / "val.npz").docs()
    vectors = common.word_vectors() if stage_params.pretrained_embeddings else None
    model = build_lm(lm_cfg, cfg.seed, vectors)
    vectors_sha = hashlib.sha256(vectors.tobytes()).hexdigest() if vectors is not None else ""
    out = paths.lm_dir(arch)
    out.mkdir(parents=True, exist_ok=True)
    tags = {"arch": arch, "dvc_stage": f"lm@{arch}", "model_kind": "language model"}
    with runs.start_run(experiment, run_name=f"lm-{arch}", tags=tags) as run:
        runs.log_params(
            runs.flatten({"model": asdict(model_params), "train": asdict(cfg)})
            | {"parameters": count_parameters(model), "tokenizer_sha256": meta.tokenizer_sha256}
        )

        def on_epoch(stats: LMEpoch) -> None:
            runs.log_metrics(stats.as_metrics(), step=stats.epoch)
            text = samples_text(model, tok, stats.epoch, stage_params.samples_per_epoch)
            runs.log_text(text, f"samples/epoch-{stats.epoch}.md")
            model.train()

        result = fit_lm(
            model,
            train_docs,
            val_docs,
            corpus_meta["val_words"],
            cfg,
            paths.checkpoint_file(f"lm-{arch}"),
            on_epoch,
            job_key=meta.tokenizer_sha256 + vectors_sha,
        )
        info = {"tokenizer_sha256": meta.tokenizer_sha256, "mlflow_run_id": run.info.run_id}
        info |= {"val_ppl": result.history[-1].val_ppl}
        save_lm(model.cpu(), out / "lm.pt", info)
        export_lm_step(model, out / "lm.onnx", meta.tokenizer_sha256)
        shutil.copyfile(paths.TOKENIZER_FILE, out / "tokenizer.json")
        write_json(out / "info.json", info | {"max_tokens": meta.max_length, "arch": arch})
        report = summary(arch, result, model, corpus_meta)
        write_json(paths.metrics_file("lm", arch), report)
        write_history(arch, result.history)
        (out / "samples.md").write_text(
            samples_text(model, tok, result.history[-1].epoch, stage_params.samples_per_epoch)
        )
        runs.log_metrics({k: v for k, v in report.items() if k.startswith("val_")})
        runs.log_artifact(out / "samples.md")
        for name in ("lm.pt", "lm.onnx", "tokenizer.json", "info.json"):
            runs.log_artifact(out / name, "model")  # what `sentiment-rnn generate --model` reads
    paths.checkpoint_file(f"lm-{arch}").unlink(missing_ok=True)
    return result


def run(arch: str, params: Mapping[str, Any]) -> LMFitResult:
    """The stage: `lm.<arch>` and `mlflow` params -> models/lm-<arch>/, metrics, curves."""
    model_params, stage_params, cfg = configs(arch, params)
    return train_lm(arch, model_params, stage_params, cfg, common.experiment(params, f"lm@{arch}"))


if __name__ == "__main__":
    entry.main("lm", run, ARCHS)
