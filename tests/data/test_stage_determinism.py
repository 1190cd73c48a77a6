"""Data tier: download, tokenize and embeddings give the same bytes when rerun in a new process.

DVC's promise (a fresh `dvc repro` matches `dvc.lock`) holds only if every stage before training is
a function of its inputs and params. Each stage here runs as DVC runs it, in its own process.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sentiment_rnn.testing import tiny_params

STAGES = ("download", "tokenize", "embeddings")
OUTPUTS = ("data/raw", "data/tokens", "data/embeddings", "reports/metrics")


def run_stage(root: Path, stage: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    done = subprocess.run(
        [sys.executable, "-m", f"sentiment_rnn.stages.{stage}"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{stage}:\n{done.stderr[-3000:]}"


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under the stages' outputs, by path."""
    found = {}
    for out in OUTPUTS:
        path = root / out
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            found[str(file.relative_to(root))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


@pytest.fixture
def project(tmp_path: Path, synthetic_imdb: Path) -> Path:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(synthetic_imdb)))
    return tmp_path


def test_rerunning_the_stages_in_new_processes_changes_no_byte(project: Path) -> None:
    for stage in STAGES:
        run_stage(project, stage)
    first = digests(project)
    assert any(p.startswith("data/tokens/") for p in first)
    assert any(p.startswith("data/embeddings/") for p in first)
    for stage in STAGES:
        run_stage(project, stage)
    assert digests(project) == first
