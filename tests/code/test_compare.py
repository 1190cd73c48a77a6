"""The compare stage: a table and a figure from the metrics files only."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sentiment_rnn.errors import UserError
from sentiment_rnn.files import write_json
from sentiment_rnn.stages.compare import Baseline, compare, load_rows, markdown_table

BASELINE = Baseline("TF-IDF bigrams + logistic regression", 0.9084, 0.906, 31.0)
BASELINE_METRICS = {"model": BASELINE.name, "val_acc": 0.9084, "test_acc": 0.906,
                    "fit_and_select_seconds": 31.0}  # fmt: skip
NUMBERS = {  # arch: (parameters, best val acc, test acc, f1, auc, train s, onnx bytes, ort/s)
    "rnn": (2_600_000, 0.8312, 0.8201, 0.8150, 0.9012, 412.4, 10_480_000, 1510.2),
    "lstm": (2_800_000, 0.8904, 0.8855, 0.8866, 0.9533, 1530.0, 11_200_000, 820.0),
}


def write_metrics(metrics_dir: Path, arch: str, row: tuple) -> None:
    params, val, acc, f1, auc, seconds, size, ort = row
    train = {"arch": arch, "parameters": params, "best_val_acc": val, "train_seconds": seconds,
             "device": "NVIDIA H100"}  # fmt: skip
    write_json(metrics_dir / f"train-{arch}.json", train)
    ev = {"arch": arch, "accuracy": acc, "f1": f1, "roc_auc": auc, "log_loss": 0.3}
    write_json(metrics_dir / f"eval-{arch}.json", ev)
    ex = {"arch": arch, "onnx_bytes": size, "ort_reviews_per_second": ort}
    write_json(metrics_dir / f"export-{arch}.json", ex)


@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The metrics files of two archs and the baseline, in a project that is the working dir."""
    folder = tmp_path / "reports/metrics"
    for arch, row in NUMBERS.items():
        write_metrics(folder, arch, row)
    write_json(folder / "baseline.json", BASELINE_METRICS)
    monkeypatch.chdir(tmp_path)
    return folder


def test_rows_come_from_the_three_metrics_files(metrics_dir: Path) -> None:
    rnn, lstm = load_rows(["rnn", "lstm"])
    assert (rnn.arch, rnn.parameters, rnn.test_accuracy, rnn.onnx_bytes) == (
        "rnn", 2_600_000, 0.8201, 10_480_000,
    )  # fmt: skip
    assert (lstm.best_val_acc, lstm.roc_auc, lstm.train_seconds, lstm.device) == (
        0.8904, 0.9533, 1530.0, "NVIDIA H100",
    )  # fmt: skip


def test_markdown_table_formats_each_arch_and_labels_the_quoted_baseline(metrics_dir: Path) -> None:
    table = markdown_table(load_rows(["rnn", "lstm"]), BASELINE).splitlines()
    assert len(table) == 2 + 2 + 1  # header, rule, two archs, baseline
    assert table[2] == (
        "| rnn | 2,600,000 | 83.12% | 82.01% | 0.8150 | 0.9012 | 412 s | NVIDIA H100 "
        "| 10.48 MB | 1,510 |"
    )
    assert table[3].startswith("| lstm | 2,800,000 | 89.04% | 88.55% | 0.8866 | 0.9533 | 1,530 s")
    assert "baseline stage" in table[4] and "90.60%" in table[4] and "31 s" in table[4]
    assert "90.84%" in table[4]  # its validation accuracy
    assert table[4].startswith("| TF-IDF bigrams + logistic regression")


def test_compare_writes_markdown_and_figure(tmp_path: Path, metrics_dir: Path) -> None:
    md, png = tmp_path / "reports/comparison.md", tmp_path / "reports/comparison.png"
    compare(["rnn", "lstm"], md, png)
    text = md.read_text()
    assert "**lstm** (88.55%)" in text  # the best test accuracy is named
    assert "![comparison](comparison.png)" in text
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("kind", "stage"), [("train", "train"), ("eval", "evaluate"), ("export", "export")]
)
def test_a_missing_metrics_file_names_the_stage_to_run(
    tmp_path: Path, metrics_dir: Path, kind: str, stage: str
) -> None:
    (metrics_dir / f"{kind}-lstm.json").unlink()
    md = tmp_path / "reports/comparison.md"
    with pytest.raises(UserError, match=rf"run the {stage} stage first \(dvc repro {stage}@lstm\)"):
        compare(["rnn", "lstm"], md, tmp_path / "c.png")
    assert not md.exists()  # nothing half-written


def test_a_missing_baseline_names_its_stage(tmp_path: Path, metrics_dir: Path) -> None:
    (metrics_dir / "baseline.json").unlink()
    with pytest.raises(UserError, match=r"run the baseline stage first \(dvc repro baseline\)"):
        compare(["rnn", "lstm"], tmp_path / "c.md", tmp_path / "c.png")


def test_cli_compare_reports_missing_files(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"mlflow": {"experiment": "x"}}))
    write_json(tmp_path / "reports/metrics/baseline.json", BASELINE_METRICS)
    cli = [sys.executable, "-c", "from sentiment_rnn.cli import main; main()", "compare"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    failed = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert failed.returncode == 2
    assert "error: reports/metrics/train-rnn.json not found: run the train stage" in failed.stderr
    for arch in ("rnn", "lstm", "gru"):
        write_metrics(tmp_path / "reports/metrics", arch, NUMBERS.get(arch, NUMBERS["rnn"]))
    done = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "| gru |" in (tmp_path / "reports/comparison.md").read_text()
    assert (tmp_path / "reports/comparison.png").is_file()
