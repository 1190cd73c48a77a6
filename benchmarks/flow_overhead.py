"""Orchestration overhead: a no-change run of the pipeline flow against a no-change `dvc repro`.

    python benchmarks/flow_overhead.py [--project-root DIR] [--repeats 3]

Without --project-root it builds the tests' tiny synthetic project in a temporary folder and
brings it up to date with one `dvc repro` (minutes on two cores) before timing. Writes
reports/benchmarks/flow_overhead.json.

Timed, each on a project where nothing changed:
- dvc_repro: `dvc repro`, DVC alone;
- flow_cli: `python flows/pipeline.py`, as `make pipeline` runs it: Python and Prefect start-up,
  Prefect's temporary server, the MLflow parent run, `dvc dag` and `dvc status`. With
  PREFECT_API_URL set (a `prefect server start` running), the flow uses that server instead and
  the figures go to flow_overhead_server.json;
- flow_in_process: the flow called in a process whose Prefect API is already up (what a served
  deployment pays per run).

Wall times go with the machine's load (two shared cores here), so each command's CPU time
(user + system, its child processes included) is recorded too, and the 1-minute load average
before and after.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `flows` importable
    sys.path.insert(0, str(REPO_ROOT))

OUT_DIR = REPO_ROOT / "reports" / "benchmarks"
TARGET_S = 15.0


def timed(fn: Callable[[], object], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each call; CPU counts this process and the children it waited for
    (servers and DVC processes the command starts included)."""
    walls, cpus = [], []
    for _ in range(repeats):
        cpu = cpu_seconds()
        start = time.perf_counter()
        fn()
        walls.append(round(time.perf_counter() - start, 2))
        cpus.append(round(cpu_seconds() - cpu, 2))
    return walls, cpus


def cpu_seconds() -> float:
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(cmd: list[str], cwd: Path) -> str:
    from flows.dvc_runner import child_env  # this venv's dvc and sentiment-rnn

    out = subprocess.run(cmd, cwd=cwd, env=child_env({}), capture_output=True, text=True)
    if out.returncode != 0:
        tail = (out.stdout + out.stderr)[-3000:]
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{tail}")
    return out.stdout


def tiny_project(folder: Path) -> Path:
    """The tests' synthetic project, brought up to date by DVC alone."""
    from sentiment_rnn.testing import build_dvc_project, synthetic_reviews, write_hub_layout

    data = write_hub_layout(
        folder / "imdb", synthetic_reviews(240, seed=1), synthetic_reviews(120, seed=2)
    )
    root = build_dvc_project(folder / "project", data)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"building {root}: dvc repro of every stage ...", flush=True)
    run([dvc(), "repro"], root)
    return root


def dvc() -> str:
    from flows.dvc_runner import child_env, dvc_command

    return dvc_command(child_env({}))


def in_process_times(root: Path, repeats: int) -> tuple[list[float], list[float]]:
    """The flow called directly, with a Prefect API already running (started outside timing)."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline

    with prefect_test_harness(server_startup_timeout=120):
        pipeline(project_root=str(root))  # warm-up: imports, MLflow's tables
        return timed(lambda: check_skipped(pipeline(project_root=str(root))), repeats)


def check_skipped(outcomes: dict[str, str]) -> None:
    ran = [stage for stage, outcome in outcomes.items() if outcome != "skipped"]
    if ran:
        raise SystemExit(f"error: the project was not up to date: {ran} did not skip")


def run_cli(cmd: list[str], root: Path) -> None:
    """The flow's command; its last lines are the table `stage  outcome`."""
    rows = [line.split() for line in run(cmd, root).splitlines() if line.strip()]
    check_skipped({row[0]: " ".join(row[1:]) for row in rows if len(row) >= 2})


def summary(name: str, walls: list[float], cpus: list[float]) -> dict[str, object]:
    return {
        f"{name}_s": walls,
        f"{name}_cpu_s": cpus,
        f"median_{name}_s": statistics.median(walls),
        f"spread_{name}_s": round(max(walls) - min(walls), 2),
        f"median_{name}_cpu_s": statistics.median(cpus),
    }


def measure(root: Path, repeats: int) -> dict[str, object]:
    cli = [sys.executable, str(REPO_ROOT / "flows" / "pipeline.py"), "--project-root", str(root)]
    load_before = round(os.getloadavg()[0], 2)
    result = {
        "project_root": str(root),
        "repeats": repeats,
        **summary("dvc_repro", *timed(lambda: run([dvc(), "repro"], root), repeats)),
        **summary("flow_cli", *timed(lambda: run_cli(cli, root), repeats)),
        **summary("flow_in_process", *in_process_times(root, repeats)),
    }
    dvc_s, cli_s, process_s = (
        result[f"median_{name}_s"] for name in ("dvc_repro", "flow_cli", "flow_in_process")
    )
    return {
        **result,
        "overhead_cli_s": round(cli_s - dvc_s, 2),
        "overhead_in_process_s": round(process_s - dvc_s, 2),
        "overhead_cli_cpu_s": round(
            result["median_flow_cli_cpu_s"] - result["median_dvc_repro_cpu_s"], 2
        ),
        "target_overhead_s": TARGET_S,
        "cli_within_target": cli_s - dvc_s < TARGET_S,
        "prefect_api": os.environ.get("PREFECT_API_URL") or "temporary server",
        "cpus": os.cpu_count(),
        "load_average_1min_before": load_before,
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--project-root", type=Path, help="an up-to-date DVC project (default: build a tiny one)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flow-overhead-") as tmp:
        root = args.project_root.resolve() if args.project_root else tiny_project(Path(tmp))
        result = measure(root, args.repeats)
    out = OUT_DIR / (
        "flow_overhead_server.json" if os.environ.get("PREFECT_API_URL") else "flow_overhead.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(
        f"overhead of `python flows/pipeline.py` over `dvc repro`: {result['overhead_cli_s']} s "
        f"(median of {args.repeats}; target < {TARGET_S:.0f} s; CPU: "
        f"{result['overhead_cli_cpu_s']} s); in a process with the API up: "
        f"{result['overhead_in_process_s']} s. Load average "
        f"{result['load_average_1min_before']} -> {result['load_average_1min_after']} on "
        f"{result['cpus']} CPUs. Written to {out.relative_to(REPO_ROOT)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
