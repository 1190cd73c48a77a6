"""A throwaway DVC project on synthetic IMDB, for the flow's tests and its overhead benchmark.

Not a test module: imported by tests/code/test_flow_pipeline.py and benchmarks/flow_overhead.py.
"""

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from sentiment_rnn import orchestration
from tests.conftest import tiny_params

REPO_ROOT = Path(__file__).resolve().parents[2]


def build_dvc_project(root: Path, source: Path, epochs: int = 1) -> Path:
    """A git + DVC repository with this repo's dvc.yaml, tiny params and a copy of the stage code.

    The code is copied because dvc.yaml lists it as the stages' deps; the commands themselves run
    the installed `sentiment-rnn`.
    """
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO_ROOT / "src" / "sentiment_rnn", root / "src" / "sentiment_rnn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    params = project_params(source, epochs)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = orchestration.dvc_command(orchestration.child_env({}))  # this venv's, not PATH's
    for cmd in (["git", "init", "--quiet"], [dvc, "init", "--quiet"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root


def project_params(source: Path, epochs: int) -> dict[str, Any]:
    """`tiny_params`, plus the repo's own sections for stages it does not cover yet (they must
    exist for DVC), on the CPU."""
    params = tiny_params(source)
    for section in params["train"].values():
        section["epochs"] = epochs
    repo = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for name, section in repo.items():
        params.setdefault(name, section)
    if isinstance(params.get("evaluate"), dict) and "device" in params["evaluate"]:
        params["evaluate"]["device"] = "cpu"
    return params
