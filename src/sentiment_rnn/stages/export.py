"""Stage `export@<arch>`: one trained model to ONNX, checked against torch.

Writes `models/<arch>.onnx` (the graph served: see `export.graph`) and, beside it, the
tokenizer it was trained with (`models/<arch>.tokenizer.json`). The graph is written only after
the parity gate passed; its parity and speed figures go to the training run. Registering it in
the MLflow Model Registry is a side effect DVC's cache would skip, so it is a step of its own
(`sentiment-rnn promote`, see `sentiment_rnn.promote`).
"""

import logging
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sentiment_rnn import paths
from sentiment_rnn.core.model import ARCHS
from sentiment_rnn.core.tokenizer import load_encoded
from sentiment_rnn.errors import UserError
from sentiment_rnn.export.graph import ServedGraph, export_model
from sentiment_rnn.export.onnx import save_onnx, symbolic_dims
from sentiment_rnn.export.parity import throughput, timing_batches
from sentiment_rnn.files import sha256_file, write_json
from sentiment_rnn.params import section, validate
from sentiment_rnn.serving.contract import ServingMeta, metadata_props
from sentiment_rnn.stages import common, entry
from sentiment_rnn.tracking import runs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportConfig:
    """params.yaml `export`."""

    opset: int
    parity_tolerance: float  # max |probability| gap between onnxruntime and torch
    seed: int  # which test rows and random batches the gate runs


def report(arch: str, cfg: ExportConfig, served: ServedGraph) -> dict[str, Any]:
    """The export metrics file's content, but throughput and registry."""
    out = paths.onnx_path(arch)
    providers = served.session.get_providers()
    return {
        "arch": arch,
        "opset": cfg.opset,
        "onnx_bytes": out.stat().st_size,
        "onnx_sha256": sha256_file(out),
        "inputs": symbolic_dims(served.proto),
        "serving_graph": ServingMeta.from_props(
            metadata_props(served.proto), str(out)
        ).serving_graph,
        "parity": {**asdict(served.parity), "tolerance": cfg.parity_tolerance},
        "ort_provider": providers[0],
        "ort_providers": providers,
    }


def mlflow_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The numbers of the export report that go to the training run, prefixed `export/`."""
    parity = report["parity"]
    return {
        "export/onnx_bytes": float(report["onnx_bytes"]),
        "export/parity_max_abs_diff": parity["max_abs_diff"],
        "export/parity_class_mismatches": float(parity["class_mismatches"]),
        "export/ort_reviews_per_second": report["ort_reviews_per_second"],
        "export/torch_reviews_per_second": report["torch_reviews_per_second"],
    }


def export(arch: str, cfg: ExportConfig, experiment: str) -> dict[str, Any]:
    """Export models/<arch>, gate it, write it, log its figures to the training run."""
    model, info = common.trained_model(arch)
    tokens = common.tokens_meta()
    meta = ServingMeta(
        arch=arch,
        tokenizer_sha256=info.tokenizer_sha256,
        max_length=tokens.max_length,
        truncation_side=tokens.truncation_side,
        pad_id=model.cfg.pad_id,
        mlflow_run_id=info.mlflow_run_id,
        best_val_acc=info.best_val_acc,
    )
    test = load_encoded(paths.tokens_file("test"))
    if test.ids.shape[1] != tokens.max_length:
        raise UserError(
            f"data/tokens holds {test.ids.shape[1]} tokens per row but its meta says "
            f"{tokens.max_length}: rerun dvc repro tokenize"
        )
    served = export_model(
        model, meta, cfg.opset, cfg.parity_tolerance, test.ids, test.lengths, cfg.seed
    )
    save_onnx(served.proto, paths.onnx_path(arch))
    shutil.copyfile(paths.TOKENIZER_FILE, paths.tokenizer_copy_path(arch))
    result = report(arch, cfg, served)
    result |= throughput(served.session, model, timing_batches(test.ids, test.lengths))
    tags = {"arch": arch, "dvc_stage": f"export@{arch}"}
    with runs.resume_run(info.mlflow_run_id, experiment, arch, tags):
        runs.log_metrics(mlflow_metrics(result))
    write_json(paths.metrics_file("export", arch), result)
    log.info(
        "%s: %s (%d bytes), parity max diff %.1e, onnxruntime %.0f reviews/s",
        arch,
        paths.onnx_path(arch),
        result["onnx_bytes"],
        served.parity.max_abs_diff,
        result["ort_reviews_per_second"],
    )
    return result


def run(arch: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The stage: `export` and `mlflow` params -> models/<arch>.onnx, its tokenizer, metrics."""
    stage = f"export@{arch}"
    cfg = validate(ExportConfig, section(params, "export", stage), "export", stage)
    return export(arch, cfg, common.experiment(params, stage))


if __name__ == "__main__":
    entry.main("export", run, ARCHS)
