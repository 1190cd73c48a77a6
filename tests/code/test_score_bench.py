"""The sharded-scoring benchmark end to end on a tiny model and synthetic shards."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sentiment_rnn.testing import prefect_free_env
from tests.model.predict_helpers import make_model, make_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "benchmarks" / "score_bench.py"

pytestmark = pytest.mark.slow


def bench(tmp_path: Path, *args: str) -> dict:
    tokenizer = make_tokenizer(tmp_path / "tokenizer.json")
    model, _ = make_model(tmp_path, tokenizer, "gru", 24, name="tiny")
    env = prefect_free_env(os.environ, tmp_path / "prefect-home")
    out = tmp_path / "result"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--synthetic", "--model", str(model),
         "--tokenizer", str(tokenizer), "--shards", "4", "--rows-per-shard", "150",
         "--out", str(out), *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert out.with_suffix(".md").read_text().startswith("# Sharded scoring on Dask")
    return json.loads(out.with_suffix(".json").read_text())


def test_the_full_run_counts_every_row_and_reruns_exactly_once(tmp_path: Path) -> None:
    report = bench(tmp_path)
    for run in ("a_1x1", "b_2x1", "c_in_process"):
        assert report[run]["rows"] == 600
        assert report[run]["rows_in_equal_rows_out"] and report[run]["ids_unique"]
    assert sum(report["b_2x1"]["shards_per_worker"]) == 4
    assert report["outputs_a_equal_b"]
    kill = report["kill_and_rerun"]
    assert kill["outputs_equal_uninterrupted"] and kill["temporaries_left"] == 0
    assert kill["rerun_scored"] == 4 - kill["complete_at_kill"]
    assert report["bare_ceiling"]["two_over_one"] > 0


def test_scaling_only_runs_the_two_clusters_alone(tmp_path: Path) -> None:
    report = bench(tmp_path, "--scaling-only")
    assert report["c_in_process"] is None and report["b_over_c"] is None
    assert report["kill_and_rerun"] is None and report["bare_ceiling"] is None
    assert report["b_over_a"] > 0 and report["a_1x1"]["rows_in_equal_rows_out"]
    assert "not run (--scaling-only)" in (tmp_path / "result.md").read_text()
