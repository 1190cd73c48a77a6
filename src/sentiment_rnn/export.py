"""Stage `export`: one trained model to ONNX, checked against torch, registered in MLflow.

Writes `models/<arch>.onnx` and, beside it, the tokenizer it was trained with
(`models/<arch>.tokenizer.json`). The ONNX graph takes `token_ids` (int64, [batch, time]) and
`lengths` (int64, [batch]) with symbolic batch / time axes and returns `probability` (positive
class) and `logit` (float32, [batch]). Its metadata_props carry what serving needs to refuse a
wrong pairing (`SERVING_KEYS`).

The export is trusted only after a parity gate: onnxruntime and torch run the same batches of
mixed lengths (real test rows and random ones, batch 1 to 64, length 1 to max_length) and any
probability gap above the tolerance, or any changed predicted class, fails the stage. Only
then is the file written, logged to the training run and registered; the registered version
whose training run has the best validation accuracy carries the alias `champion`.

The file written is the graph served: for a one-layer fused model, the folded-Scan graph of
`serving.fast_graph` (input projection folded into the embedding; same inputs, outputs and
metadata, `serving_graph: folded-scan`), once it has passed the same gate; else, or if it
does not pass, the exported graph itself.
"""

import hashlib
import io
import json
import logging
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sentiment_rnn.errors import UserError
from sentiment_rnn.model import SentimentRNN

log = logging.getLogger(__name__)

INPUT_NAMES = ("token_ids", "lengths")
OUTPUT_NAMES = ("probability", "logit")
LABEL_NAMES = ("negative", "positive")
SERVING_KEYS = (
    "arch", "tokenizer_sha256", "max_length", "truncation_side", "pad_id", "label_names",
    "mlflow_run_id", "best_val_acc",
)  # fmt: skip
CHAMPION = "champion"
ORT_PROVIDER = "CPUExecutionProvider"
# (batch, time) shapes the parity gate runs; None stands for max_length.
PARITY_SHAPES: tuple[tuple[int, int | None], ...] = (
    (1, 1), (1, None), (2, 5), (7, 17), (16, 64), (33, None), (64, 1), (64, None),
)  # fmt: skip


def onnx_path(models_dir: Path, arch: str) -> Path:
    """`models/<arch>.onnx`: beside the train stage's `models/<arch>/` output, not inside it."""
    return models_dir / f"{arch}.onnx"


def tokenizer_copy_path(models_dir: Path, arch: str) -> Path:
    return models_dir / f"{arch}.tokenizer.json"


class ProbabilityAndLogit(nn.Module):
    """The graph that is exported: (token_ids, lengths) -> (sigmoid(logit), logit)."""

    def __init__(self, model: SentimentRNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, token_ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        logit = self.model(token_ids, lengths)  # (B,)
        return torch.sigmoid(logit), logit


def to_onnx(model: SentimentRNN, opset: int = 17) -> onnx.ModelProto:
    """Export through the TorchScript exporter, which keeps batch and time symbolic.

    (The dynamo exporter fixes the time axis of these recurrent layers without an error.)
    """
    wrapper = ProbabilityAndLogit(model).eval()  # export restores the wrapper's mode afterwards
    example = (torch.randint(2, model.cfg.vocab_size, (2, 8)), torch.tensor([8, 3]))
    buffer = io.BytesIO()
    axes = {"token_ids": {0: "batch", 1: "time"}, "lengths": {0: "batch"}}
    axes |= {name: {0: "batch"} for name in OUTPUT_NAMES}
    with warnings.catch_warnings():
        # Deprecation notes about this exporter, tracer notes and "batch size other than 1
        # with RNN" warnings: the parity gate checks what they warn about, at many shapes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, example, buffer, dynamo=False, opset_version=opset,
            input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
        )  # fmt: skip
    model.eval()
    return onnx.load_from_string(buffer.getvalue())


@dataclass(frozen=True)
class ServingInfo:
    """What serving checks before it pairs this graph with a tokenizer and settings."""

    arch: str
    tokenizer_sha256: str
    max_length: int
    truncation_side: str
    pad_id: int
    mlflow_run_id: str
    best_val_acc: float
    label_names: tuple[str, ...] = LABEL_NAMES

    def as_props(self) -> dict[str, str]:
        """ONNX metadata_props are strings: numbers as text, label names as a JSON list."""
        props = {k: str(v) for k, v in asdict(self).items()}
        props["label_names"] = json.dumps(list(self.label_names))
        return props


def with_metadata(proto: onnx.ModelProto, props: dict[str, str]) -> onnx.ModelProto:
    onnx.helper.set_model_props(proto, props)
    return proto


def check_onnx(proto: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(
            f"the exported graph fails onnx.checker ({first}): do not serve it"
        ) from None


def ort_session(model_bytes: bytes) -> Any:
    """An onnxruntime session on the CPU provider (see `session.get_providers()` for the truth)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(model_bytes, options, providers=[ORT_PROVIDER])


def symbolic_dims(proto: onnx.ModelProto) -> dict[str, list[str | int]]:
    """Each graph input's dimensions: a name where symbolic, a number where fixed."""
    return {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in proto.graph.input
    }


@dataclass
class ParityBatch:
    token_ids: np.ndarray  # (B, T) int64
    lengths: np.ndarray  # (B,) int64
    source: str  # "test" rows or "random" ids

    def feed(self) -> dict[str, np.ndarray]:
        return {"token_ids": self.token_ids, "lengths": self.lengths}


def random_batch(
    rng: np.random.Generator, batch: int, steps: int, vocab_size: int, pad_id: int
) -> ParityBatch:
    """Random ids with random lengths in [1, steps]; the first row fills all `steps`."""
    ids = rng.integers(0, vocab_size, (batch, steps), dtype=np.int64)
    lengths = rng.integers(1, steps + 1, batch, dtype=np.int64)
    lengths[0] = steps
    ids[np.arange(steps)[None, :] >= lengths[:, None]] = pad_id
    return ParityBatch(ids, lengths, "random")


def rows_batch(
    rng: np.random.Generator, ids: np.ndarray, lengths: np.ndarray, batch: int, steps: int
) -> ParityBatch:
    """`batch` real rows cut to their first `steps` positions (lengths capped to match)."""
    idx = rng.choice(len(lengths), batch, replace=len(lengths) < batch)
    cut = np.minimum(lengths[idx], steps).astype(np.int64)
    return ParityBatch(ids[idx, :steps].astype(np.int64), cut, "test")


def parity_batches(
    ids: np.ndarray | None,
    lengths: np.ndarray | None,
    max_length: int,
    vocab_size: int,
    pad_id: int = 0,
    seed: int = 0,
) -> list[ParityBatch]:
    """For each shape of PARITY_SHAPES: real rows (when given) and random ones."""
    rng = np.random.default_rng(seed)
    batches = []
    for batch, steps in PARITY_SHAPES:
        steps = min(steps or max_length, max_length)
        if ids is not None and lengths is not None and len(lengths):
            batches.append(rows_batch(rng, ids, lengths, batch, steps))
        batches.append(random_batch(rng, batch, steps, vocab_size, pad_id))
    return batches


@dataclass
class ParityReport:
    max_abs_diff: float = 0.0  # probabilities
    max_abs_logit_diff: float = 0.0
    class_mismatches: int = 0
    rows: int = 0
    shapes: list[list[int]] = field(default_factory=list)

    def update(self, torch_out: tuple[np.ndarray, np.ndarray], ort_out: list[np.ndarray]) -> None:
        (t_prob, t_logit), (o_prob, o_logit) = torch_out, ort_out[:2]
        self.rows += len(t_prob)
        if o_prob.shape != t_prob.shape or o_logit.shape != t_logit.shape:
            self.max_abs_diff = self.max_abs_logit_diff = float("inf")  # broadcasting would hide it
            return
        self.max_abs_diff = max(self.max_abs_diff, max_gap(t_prob, o_prob))
        self.max_abs_logit_diff = max(self.max_abs_logit_diff, max_gap(t_logit, o_logit))
        self.class_mismatches += int(((t_logit > 0) != (o_logit > 0)).sum())


def max_gap(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference; infinite if either side holds NaN or inf (never hidden)."""
    gap = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(gap.max()) if np.isfinite(gap).all() else float("inf")


@torch.inference_mode()
def torch_outputs(model: SentimentRNN, batch: ParityBatch) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    logit = model(torch.from_numpy(batch.token_ids), torch.from_numpy(batch.lengths)).float()
    return torch.sigmoid(logit).numpy(), logit.numpy()


def _bar(total: int, desc: str) -> tqdm:
    disable = None if sys.stderr.isatty() else True
    return tqdm(total=total, desc=desc, unit="batch", mininterval=1.0, disable=disable, leave=False)


def compare_outputs(session: Any, model: SentimentRNN, batches: list[ParityBatch]) -> ParityReport:
    """Run torch and onnxruntime on every batch and record the largest disagreements."""
    report = ParityReport()
    with _bar(len(batches), "parity") as bar:
        for batch in batches:
            report.update(
                torch_outputs(model, batch), session.run(list(OUTPUT_NAMES), batch.feed())
            )
            if list(batch.token_ids.shape) not in report.shapes:
                report.shapes.append(list(batch.token_ids.shape))
            bar.update(1)
    return report


def assert_parity(report: ParityReport, tolerance: float) -> None:
    """The gate: fail on any probability gap above `tolerance` or any changed class."""
    if report.max_abs_diff > tolerance or report.class_mismatches:
        raise UserError(
            f"the ONNX graph disagrees with torch: max |probability diff| "
            f"{report.max_abs_diff:.2e} (tolerance {tolerance:g}), {report.class_mismatches} of "
            f"{report.rows} predicted classes differ; not written. Check the export"
            " (eval mode, opset, dynamic axes) before serving it"
        )


def timing_batches(
    ids: np.ndarray, lengths: np.ndarray, rows: int = 1024, batch_size: int = 64
) -> list[ParityBatch]:
    """A fixed set: the first `rows` rows, length-sorted, each batch trimmed to its longest."""
    order = np.argsort(lengths[:rows], kind="stable")
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        steps = int(lengths[idx].max())
        batches.append(
            ParityBatch(ids[idx, :steps].astype(np.int64), lengths[idx].astype(np.int64), "test")
        )
    return batches


def ort_throughput(session: Any, batches: list[ParityBatch]) -> float:
    """Reviews per second over `batches`, after one warm-up batch."""
    session.run(None, batches[-1].feed())
    start = time.perf_counter()
    for batch in batches:
        session.run(None, batch.feed())
    return sum(len(b.lengths) for b in batches) / (time.perf_counter() - start)


def torch_throughput(model: SentimentRNN, batches: list[ParityBatch]) -> float:
    """The same measure for the torch model, for scale."""
    torch_outputs(model, batches[-1])
    start = time.perf_counter()
    for batch in batches:
        torch_outputs(model, batch)
    return sum(len(b.lengths) for b in batches) / (time.perf_counter() - start)


def signature() -> Any:
    """Tensor signature with -1 for the batch and time axes."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([
            TensorSpec(np.dtype(np.int64), (-1, -1), "token_ids"),
            TensorSpec(np.dtype(np.int64), (-1,), "lengths"),
        ]),
        outputs=Schema([
            TensorSpec(np.dtype(np.float32), (-1,), "probability"),
            TensorSpec(np.dtype(np.float32), (-1,), "logit"),
        ]),
    )  # fmt: skip


def serving_requirements() -> list[str]:
    """Pinned from this environment; MLflow's own inference runs a slow subprocess and may name
    `onnxruntime` where `onnxruntime-gpu` is installed (both cannot be installed together)."""
    from importlib import metadata

    pins = []
    for choices in (("mlflow",), ("onnx",), ("onnxruntime-gpu", "onnxruntime"), ("numpy",)):
        for dist in choices:  # the first one installed
            try:
                pins.append(f"{dist}=={metadata.version(dist)}")
                break
            except metadata.PackageNotFoundError:
                continue
    return pins


def log_and_register(
    proto: onnx.ModelProto,
    registered_name: str,
    example: ParityBatch,
    tags: dict[str, str],
    extra_files: list[Path] | None = None,
) -> int:
    """Log the graph to the active MLflow run, register it; returns the new version number.

    `extra_files` (the tokenizer) travel inside the logged model, so a registry URI alone
    is enough to serve it.
    """
    import mlflow
    import mlflow.onnx

    from sentiment_rnn.serving.onnx_model import quiet_onnxruntime

    # MLflow loads the logged model on its default providers (CUDA, then CPU) to check the
    # input example; where CUDA cannot load, MLflow's own warning says the CPU provider ran.
    with quiet_onnxruntime():
        info = mlflow.onnx.log_model(
            proto, name="onnx-model", signature=signature(), input_example=example.feed(),
            registered_model_name=registered_name, save_as_external_data=False,
            pip_requirements=serving_requirements(),
            extra_files=[str(p) for p in extra_files] if extra_files else None,
        )  # fmt: skip
    version = int(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(registered_name, str(version), key, value)
    return version


def choose_champion(candidates: dict[int, float | None]) -> int | None:
    """The version with the best validation accuracy; the newest wins a tie; None if no scores."""
    scored = [(acc, version) for version, acc in candidates.items() if acc is not None]
    return max(scored)[1] if scored else None


def version_scores(
    client: Any, registered_name: str, metric: str = "best_val_acc"
) -> dict[int, float | None]:
    """Each registered version's `metric`, read from the run that produced it."""
    from mlflow.exceptions import MlflowException

    scores: dict[int, float | None] = {}
    for mv in client.search_model_versions(f"name='{registered_name}'"):
        try:
            scores[int(mv.version)] = client.get_run(mv.run_id).data.metrics.get(metric)
        except MlflowException:  # the source run was deleted: it cannot compete
            scores[int(mv.version)] = None
    return scores


def update_champion(registered_name: str) -> int | None:
    """Point the `champion` alias at the best registered version; returns that version."""
    import mlflow

    client = mlflow.MlflowClient()
    best = choose_champion(version_scores(client, registered_name))
    if best is not None:
        client.set_registered_model_alias(registered_name, CHAMPION, str(best))
    return best


def check_pairing(extra: dict[str, Any], tokenizer: Path, arch: str) -> str:
    """The tokenizer's sha256, after checking it is the one the model was trained with."""
    if not tokenizer.is_file():
        raise UserError(f"{tokenizer} not found: run the tokenize stage first (dvc repro tokenize)")
    digest = hashlib.sha256(tokenizer.read_bytes()).hexdigest()
    if extra.get("tokenizer_sha256") != digest:
        raise UserError(
            f"models/{arch} was trained with another tokenizer than {tokenizer}: "
            f"rerun the train stage (dvc repro train@{arch})"
        )
    return digest


def export_model(
    model: SentimentRNN,
    info: ServingInfo,
    opset: int,
    tolerance: float,
    test_ids: np.ndarray | None,
    test_lengths: np.ndarray | None,
    seed: int = 0,
    fold: bool = True,
) -> tuple[onnx.ModelProto, Any, ParityReport]:
    """Export, add metadata, check, and pass the parity gate; returns (graph, session, report).

    With `fold`, the graph returned is the folded-Scan serving graph (`serving.fast_graph`)
    when the model allows it and that graph passes the same gate; else the exported one.
    """
    proto = with_metadata(to_onnx(model, opset), info.as_props())
    check_onnx(proto)
    session = ort_session(proto.SerializeToString())
    batches = parity_batches(
        test_ids, test_lengths, info.max_length, model.cfg.vocab_size, info.pad_id, seed
    )
    report = compare_outputs(session, model, batches)
    assert_parity(report, tolerance)
    if fold and foldable(model):
        return folded_graph(model, proto, batches, tolerance) or (proto, session, report)
    return proto, session, report


def foldable(model: SentimentRNN) -> bool:
    """One-layer models with the fused cells: what `serving.fast_graph` can rebuild."""
    return model.cfg.num_layers == 1 and model.cfg.cell == "fused"


def folded_graph(
    model: SentimentRNN, exported: onnx.ModelProto, batches: list[ParityBatch], tolerance: float
) -> tuple[onnx.ModelProto, Any, ParityReport] | None:
    """The folded-Scan graph (same inputs, outputs and metadata, about 1.3-2x faster on the
    CPU) if it passes the same parity gate against torch; None, with a warning, if not."""
    from sentiment_rnn.serving.fast_graph import build_fast_graph

    props = {p.key: p.value for p in exported.metadata_props}
    proto = build_fast_graph(model, props)
    check_onnx(proto)
    session = ort_session(proto.SerializeToString())
    report = compare_outputs(session, model, batches)
    if report.max_abs_diff > tolerance or report.class_mismatches:
        log.warning(
            "the folded serving graph disagrees with torch (max diff %.1e, %d classes):"
            " serving the exported graph",
            report.max_abs_diff,
            report.class_mismatches,
        )
        return None
    return proto, session, report


def run_export(
    arch: str,
    experiment: str,
    *,
    max_length: int,
    truncation_side: str,
    opset: int = 17,
    registered_model_prefix: str = "imdb-sentiment",
    parity_tolerance: float = 1e-4,
    seed: int = 0,
) -> dict[str, Any]:
    """The stage's entry: export models/<arch>, gate it, write it, log and register it."""
    from sentiment_rnn import paths, tracking
    from sentiment_rnn.files import write_json
    from sentiment_rnn.model import ARCHS, load_model
    from sentiment_rnn.tokenize import load_encoded

    if arch not in ARCHS:
        raise UserError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
    model, extra = load_model(paths.model_dir(arch) / "model.pt")
    tokenizer = paths.TOKENS_DIR / "tokenizer.json"
    info = ServingInfo(
        arch=arch, tokenizer_sha256=check_pairing(extra, tokenizer, arch), max_length=max_length,
        truncation_side=truncation_side, pad_id=model.cfg.pad_id,
        mlflow_run_id=tracking.read_run_id(paths.run_file(arch)),
        best_val_acc=float(extra.get("best_val_acc", float("nan"))),
    )  # fmt: skip
    test = load_encoded(paths.TOKENS_DIR / "test.npz")
    if test.ids.shape[1] != max_length:
        raise UserError(f"data/tokens holds {test.ids.shape[1]} tokens per row but "
                        f"tokenize.max_length is {max_length}: rerun dvc repro")  # fmt: skip
    proto, session, parity = export_model(
        model, info, opset, parity_tolerance, test.ids, test.lengths, seed
    )
    out = write_export(proto, tokenizer, paths.MODELS_DIR, arch)
    report = export_report(arch, opset, out, proto, session, parity, parity_tolerance)
    report |= throughput_report(session, model, timing_batches(test.ids, test.lengths))
    name = f"{registered_model_prefix}-{arch}"
    with tracking.resume_run(paths.run_file(arch), experiment) as run:
        tracking.setup(experiment).log_metrics(export_metrics(report))
        tags = {"arch": arch, "tokenizer_sha256": info.tokenizer_sha256,
                "source_run": run.info.run_id}  # fmt: skip
        example = parity_example(test.ids, test.lengths)
        version = log_and_register(
            proto, name, example, tags, [tokenizer_copy_path(paths.MODELS_DIR, arch)]
        )
        champion = update_champion(name)
    report |= {"registered_model": name, "model_version": version, "champion_version": champion}
    write_json(paths.METRICS_DIR / f"export-{arch}.json", report)
    log.info("%s: %s (%d bytes), parity max diff %.1e, onnxruntime %.0f reviews/s, %s v%d",
             arch, out, report["onnx_bytes"], parity.max_abs_diff,
             report["ort_reviews_per_second"], name, version)  # fmt: skip
    return report


def write_export(proto: onnx.ModelProto, tokenizer: Path, models_dir: Path, arch: str) -> Path:
    """`models/<arch>.onnx` (atomically) and the tokenizer copy beside it."""
    from sentiment_rnn.files import atomic_path

    out = onnx_path(models_dir, arch)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        onnx.save_model(proto, tmp)
    shutil.copyfile(tokenizer, tokenizer_copy_path(models_dir, arch))
    return out


def export_report(
    arch: str,
    opset: int,
    out: Path,
    proto: onnx.ModelProto,
    session: Any,
    parity: ParityReport,
    tolerance: float,
) -> dict[str, Any]:
    """The export metrics file's content, but throughput and registry."""
    return {
        "arch": arch, "opset": opset, "onnx_bytes": out.stat().st_size,
        "onnx_sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "inputs": symbolic_dims(proto),
        "serving_graph": {p.key: p.value for p in proto.metadata_props}.get(
            "serving_graph", "exported"),
        "parity": {**asdict(parity), "tolerance": tolerance},
        "ort_provider": session.get_providers()[0], "ort_providers": session.get_providers(),
    }  # fmt: skip


def throughput_report(
    session: Any, model: SentimentRNN, batches: list[ParityBatch]
) -> dict[str, Any]:
    return {
        "ort_reviews_per_second": round(ort_throughput(session, batches), 1),
        "torch_reviews_per_second": round(torch_throughput(model, batches), 1),
        "throughput_rows": sum(len(b.lengths) for b in batches),
        "throughput_batch_size": len(batches[0].lengths),
    }


def export_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The numbers of the export report that go to the training run, prefixed `export/`."""
    parity = report["parity"]
    return {
        "export/onnx_bytes": float(report["onnx_bytes"]),
        "export/parity_max_abs_diff": parity["max_abs_diff"],
        "export/parity_class_mismatches": float(parity["class_mismatches"]),
        "export/ort_reviews_per_second": report["ort_reviews_per_second"],
        "export/torch_reviews_per_second": report["torch_reviews_per_second"],
    }


def parity_example(ids: np.ndarray, lengths: np.ndarray) -> ParityBatch:
    """Two real rows, trimmed, as MLflow's input example."""
    steps = int(lengths[:2].max())
    return ParityBatch(ids[:2, :steps].astype(np.int64), lengths[:2].astype(np.int64), "test")
