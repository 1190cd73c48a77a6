"""Orchestration overhead: a no-change run of the pipeline flow against a no-change `dvc repro`.

    python benchmarks/flow_overhead.py [--project-root DIR] [--repeats 3] [--before CHECKOUT]

Without --project-root it builds the tests' tiny synthetic project in a temporary folder and
brings it up to date with one `dvc repro` (minutes on two cores) before timing. Writes
<out>.json and <out>.md.

Timed in one run, each on a project where nothing changed:
- dvc_repro: `dvc repro`, DVC alone (the baseline);
- flow_standing: `python flows/pipeline.py` with PREFECT_API_URL naming a Prefect server that is
  already up, as `make pipeline` runs it (its first run starts one with `prefect server start
  --background`; here one is started in a throwaway PREFECT_HOME before timing);
- flow_temporary: the same command with no PREFECT_API_URL: Prefect starts a temporary server
  for the run and stops it at exit;
- flow_in_process: the flow called in a process whose Prefect API is already up (what a served
  deployment pays per run);
- with --before CHECKOUT: flow_temporary and flow_standing of another checkout of this
  repository (e.g. a `git worktree` of the commit before a change), on the same project.

Wall times go with the machine's load (two cores here), so each command's CPU time (user +
system, its child processes included) is recorded too, and the 1-minute load average before
and after.
"""

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _common

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `flows` importable
    sys.path.insert(0, str(REPO_ROOT))

from flows.dvc_runner import bin_dir, child_env, dvc_command  # noqa: E402
from sentiment_rnn.testing import free_port, prefect_free_env  # noqa: E402

DEFAULT_OUT = Path("reports/benchmarks/flow_overhead")
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


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env or child_env({}), capture_output=True, text=True)
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
    run([dvc_command(child_env({})), "repro"], root)
    return root


def prefect_env(home: Path, api_url: str | None) -> dict[str, str]:
    """Our environment with no PREFECT_ setting but a throwaway PREFECT_HOME (and the API)."""
    home.mkdir(parents=True, exist_ok=True)  # Prefect makes only the last folder
    return prefect_free_env(
        child_env({}), home, **({"PREFECT_API_URL": api_url} if api_url else {})
    )


@contextmanager
def standing_server(home: Path) -> Iterator[str]:
    """A Prefect server started as `make pipeline` starts one; stopped at the end."""
    prefect, port = str(bin_dir() / "prefect"), free_port()
    env = prefect_env(home, None)
    start = [prefect, "server", "start", "--background", "--host", "127.0.0.1",
             "--port", str(port), "--analytics-off"]  # fmt: skip
    run(start, REPO_ROOT, env)
    api = f"http://127.0.0.1:{port}/api"
    try:
        run([prefect, "server", "status", "--wait", "--timeout", "120"], REPO_ROOT,
            prefect_env(home, api))  # fmt: skip
        yield api
    finally:
        subprocess.run([prefect, "server", "stop"], env=env, capture_output=True)


def in_process_times(root: Path, repeats: int) -> tuple[list[float], list[float]]:
    """The flow called directly, with a Prefect API already running (started outside timing)."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline

    with prefect_test_harness(server_startup_timeout=120):
        pipeline(project_root=str(root))  # warm-up: imports, Prefect's tables
        return timed(lambda: check_skipped(pipeline(project_root=str(root))), repeats)


def check_skipped(outcomes: dict[str, str]) -> None:
    ran = [stage for stage, outcome in outcomes.items() if outcome != "skipped"]
    if ran:
        raise SystemExit(f"error: the project was not up to date: {ran} did not skip")


def run_cli(checkout: Path, root: Path, env: dict[str, str]) -> None:
    """`checkout`'s flow command; its last lines are the table `stage  outcome`."""
    cmd = [sys.executable, str(checkout / "flows" / "pipeline.py"), "--project-root", str(root)]
    env = env | {"PYTHONPATH": str(checkout / "src")}
    rows = [line.split() for line in run(cmd, root, env).splitlines() if line.strip()]
    check_skipped({row[0]: " ".join(row[1:]) for row in rows if len(row) >= 2})


def summary(name: str, walls: list[float], cpus: list[float], dvc_s: float) -> dict[str, Any]:
    median = statistics.median(walls)
    return {
        "wall_s": walls,
        "cpu_s": cpus,
        "median_s": median,
        "median_cpu_s": statistics.median(cpus),
        "overhead_s": round(median - dvc_s, 2),
    }


def measure(root: Path, repeats: int, before: Path | None, home: Path) -> dict[str, Any]:
    load_before = round(os.getloadavg()[0], 2)
    dvc_walls, dvc_cpus = timed(lambda: run([dvc_command(child_env({})), "repro"], root), repeats)
    dvc_s = statistics.median(dvc_walls)
    result: dict[str, Any] = {
        "project_root": str(root),
        "repeats": repeats,
        "dvc_repro": {"wall_s": dvc_walls, "cpu_s": dvc_cpus, "median_s": dvc_s},
    }
    checkouts = {"": REPO_ROOT} | ({"before_": before} if before else {})
    with standing_server(home / "standing") as api:
        for prefix, checkout in checkouts.items():
            standing = prefect_env(home / "standing", api)
            times = timed(lambda c=checkout, e=standing: run_cli(c, root, e), repeats)
            result[f"{prefix}flow_standing"] = summary("standing", *times, dvc_s)
    for prefix, checkout in checkouts.items():
        temporary = prefect_env(home / f"{prefix}temporary", None)
        times = timed(lambda c=checkout, e=temporary: run_cli(c, root, e), repeats)
        result[f"{prefix}flow_temporary"] = summary("temporary", *times, dvc_s)
    result["flow_in_process"] = summary("in_process", *in_process_times(root, repeats), dvc_s)
    return result | {
        "before_checkout": str(before) if before else None,
        "target_overhead_s": TARGET_S,
        "load_average_1min_before": load_before,
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def markdown(result: dict[str, Any]) -> str:
    names = {
        "flow_standing": "`python flows/pipeline.py`, standing server (`make pipeline`)",
        "flow_temporary": "`python flows/pipeline.py`, Prefect's temporary server",
        "before_flow_standing": "before: standing server",
        "before_flow_temporary": "before: temporary server",
        "flow_in_process": "the flow in a process with the API up",
    }
    rows = [
        f"| {label} | {', '.join(map(str, r['wall_s']))} | {r['median_s']} | "
        f"**{r['overhead_s']}** | {r['median_cpu_s']} |"
        for key, label in names.items()
        if (r := result.get(key))
    ]
    dvc = result["dvc_repro"]
    return "\n".join(
        [
            "# Orchestration overhead: no-change flow run vs no-change `dvc repro`",
            "",
            f"`{result['command']}` on {result['machine']}, {result['when']}; "
            f"load {result['load_average_1min_before']} -> {result['load_average_1min_after']}."
            " Project: the tests' tiny synthetic one, up to date before timing.",
            "",
            f"`dvc repro` (no change): {', '.join(map(str, dvc['wall_s']))} s, "
            f"median {dvc['median_s']} s.",
            "",
            "| command | wall (s) | median (s) | overhead over dvc repro (s) | CPU median (s) |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            f"Target: at most {TARGET_S:.0f} s over `dvc repro`.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, DEFAULT_OUT)
    parser.add_argument(
        "--project-root", type=Path, help="an up-to-date DVC project (default: build a tiny one)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", type=Path, help="another checkout to time the same way")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="flow-overhead-") as tmp:
        root = args.project_root.resolve() if args.project_root else tiny_project(Path(tmp))
        before = args.before.resolve() if args.before else None
        result = measure(root, args.repeats, before, Path(tmp) / "prefect")
    result |= {
        "command": _common.command(__file__, argv),
        "machine": _common.machine("prefect", "dvc", "mlflow"),
    }
    text = markdown(result)
    _common.write_result(args.out, result, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
