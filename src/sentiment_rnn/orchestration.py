"""Running the DVC pipeline from an orchestrator: the stage graph, what to run, how each went.

Plain functions with no Prefect import; `flows/pipeline.py` wraps them in thin tasks. DVC stays
the judge of what changed and `dvc.lock` the record: stages run through DVC's CLI (its stable
interface), one `dvc repro --single-item <stage>` at a time, in the project root.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.nodes import ScalarNode

from sentiment_rnn import tracking
from sentiment_rnn.errors import UserError

# What became of a stage in one flow run.
RAN = "ran"  # DVC ran the stage's command
RESTORED = "restored"  # DVC's run cache had this exact run: outputs checked out, nothing ran
SKIPPED = "skipped"  # up to date: nothing ran
EXCLUDED = "excluded"  # a per-arch stage of an arch not asked for
BLOCKED = "blocked"  # would mix fresh results with stale or missing ones of an excluded arch
FAILED = "failed"
NOT_RUN = "not run"  # an earlier stage failed

_NODE = re.compile(r'^"(?P<name>[^"]+)";$')
_EDGE = re.compile(r'^"(?P<src>[^"]+)" -> "(?P<dst>[^"]+)";$')
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colours (onnxruntime) read badly in logs


class StageFailed(Exception):
    """A DVC stage (or a DVC command the flow needs) failed; the message is the stage's own."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"stage '{stage}' failed: {reason}")
        self.stage = stage
        self.reason = reason


@dataclass(frozen=True)
class StageGraph:
    """Stages in run order (dependencies first, dvc.yaml order among peers) and their parents."""

    stages: tuple[str, ...]
    parents: dict[str, frozenset[str]]

    def ancestors(self, stage: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.parents.get(stage, ()))
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(self.parents.get(node, ()))
        return seen


def parse_dag_dot(text: str) -> StageGraph:
    """Read `dvc dag --dot`: nodes in dvc.yaml order, edges from a dependency to its user."""
    nodes: list[str] = []
    parents: dict[str, set[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if edge := _EDGE.match(line):
            parents.setdefault(edge["dst"], set()).add(edge["src"])
        elif node := _NODE.match(line):
            nodes.append(node["name"])
    frozen = {name: frozenset(parents.get(name, ())) for name in nodes}
    return StageGraph(topological(nodes, frozen), frozen)


def topological(nodes: list[str], parents: dict[str, frozenset[str]]) -> tuple[str, ...]:
    """Order nodes so parents come first; ties keep the given order (people read dvc.yaml so)."""
    done: list[str] = []
    left = list(nodes)
    while left:
        ready = next((n for n in left if parents.get(n, frozenset()) <= set(done)), None)
        if ready is None:  # DVC refuses cycles, so this means the dot output was misread
            raise ValueError(f"no runnable stage among {left}: cycle in the stage graph?")
        done.append(ready)
        left.remove(ready)
    return tuple(done)


def stage_arch(stage: str) -> str | None:
    """The foreach item of a per-arch stage: `train@lstm` -> `lstm`; None for `download`."""
    return stage.rpartition("@")[2] if "@" in stage else None


def known_archs(graph: StageGraph) -> list[str]:
    archs = (stage_arch(s) for s in graph.stages)
    return list(dict.fromkeys(a for a in archs if a is not None))


def check_archs(graph: StageGraph, archs: Iterable[str] | None) -> list[str]:
    """The archs to run (all when None), or a UserError naming the ones dvc.yaml lacks."""
    known = known_archs(graph)
    if archs is None:
        return known
    chosen = list(dict.fromkeys(archs))
    unknown = [a for a in chosen if a not in known]
    if unknown or not chosen:
        raise UserError(f"unknown arch(s) {unknown or chosen}: dvc.yaml has stages for {known}")
    return chosen


def may_have_changed(stage: str, graph: StageGraph, changed: set[str],
                     outcomes: dict[str, str]) -> bool:
    """Whether DVC must look at `stage` again: `dvc status` flagged it before the run started,
    or a stage upstream has run since (its outputs are this stage's inputs)."""
    if stage in changed:
        return True
    return any(outcomes.get(a) in (RAN, RESTORED) for a in graph.ancestors(stage))


def blocked_by(stage: str, graph: StageGraph, archs: list[str], changed: set[str],
               outcomes: dict[str, str]) -> list[str]:
    """Excluded per-arch stages upstream of `stage` that are out of date.

    A stage over all archs (e.g. `compare`) runs with a subset of archs only when the other
    archs' stages are up to date, so it never compares fresh results with stale or missing ones.
    """
    return sorted(
        a for a in graph.ancestors(stage)
        if stage_arch(a) not in (None, *archs) and may_have_changed(a, graph, changed, outcomes)
    )


def skip_reason(stage: str, graph: StageGraph, archs: list[str], changed: set[str],
                outcomes: dict[str, str]) -> tuple[str, str] | None:
    """(outcome, detail) for a stage that needs no `dvc repro` call; None when it does.

    `dvc status` before the run already tells which stages are up to date; asking `dvc repro`
    about each of them again would cost about a second per stage and change nothing.
    """
    if stage_arch(stage) not in (None, *archs):
        return EXCLUDED, "arch not selected"
    waits_for = blocked_by(stage, graph, archs, changed, outcomes)
    if waits_for:
        return BLOCKED, f"out of date and not selected: {', '.join(waits_for)}"
    if not may_have_changed(stage, graph, changed, outcomes):
        return SKIPPED, "up to date (dvc status)"
    return None


def bin_dir() -> Path:
    """The folder of this interpreter's console scripts (`dvc`, `sentiment-rnn`)."""
    return Path(sys.executable).parent


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment for DVC: ours, this venv's scripts first on PATH, plus `extra`."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(bin_dir()), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"  # stage logs reach the flow's logs as they are written
    env.update(extra)
    return env


def dvc_command(env: dict[str, str]) -> str:
    return shutil.which("dvc", path=env["PATH"]) or "dvc"


def stream_lines(cmd: list[str], cwd: Path, env: dict[str, str],
                 on_line: Callable[[str], None]) -> tuple[int, list[str]]:
    """Run `cmd`, passing each output line (stdout and stderr together) to `on_line` as it comes.

    Progress bars redraw a line with carriage returns; only the last drawing is kept.
    """
    lines: list[str] = []
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = _ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\r\n")
            drawn = [part for part in text.split("\r") if part]
            line = drawn[-1].rstrip() if drawn else ""
            lines.append(line)
            on_line(line)
    return proc.returncode, lines


DAG = ["dag", "--dot"]
STATUS = ["status", "--json"]


def start_dvc(args: list[str], root: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start a DVC command whose output the flow reads (not a stage); `dvc_output` collects it."""
    return subprocess.Popen([dvc_command(env), *args], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)


def dvc_output(proc: subprocess.Popen[str], args: list[str], root: Path) -> str:
    """The command's stdout, or a UserError with DVC's message (e.g. no dvc.yaml in `root`)."""
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        message = " ".join((stderr or stdout).split()) or f"exit status {proc.returncode}"
        raise UserError(f"`dvc {' '.join(args)}` failed in {root}: {message}")
    return stdout


def run_dvc(args: list[str], root: Path, env: dict[str, str]) -> str:
    return dvc_output(start_dvc(args, root, env), args, root)


def read_graph(root: Path, env: dict[str, str]) -> StageGraph:
    """All stages of dvc.yaml (foreach expanded), so stages others add are picked up."""
    return parse_dag_dot(run_dvc(DAG, root, env))


def changed_stages(root: Path, env: dict[str, str]) -> set[str]:
    """Stages `dvc status` finds out of date now (changed deps, params, outs or command)."""
    return parse_status(run_dvc(STATUS, root, env))


def parse_status(text: str) -> set[str]:
    return set(json.loads(text)) if text.strip() else set()


def read_state(root: Path, env: dict[str, str]) -> tuple[StageGraph, set[str]]:
    """`read_graph` and `changed_stages` at once: two DVC processes side by side, as each spends
    about a second starting up. Both only read, and only `dvc status` takes the repo lock."""
    procs = [(args, start_dvc(args, root, env)) for args in (DAG, STATUS)]
    try:
        dot, status = (dvc_output(proc, args, root) for args, proc in procs)
    finally:
        for _, proc in procs:  # after an error, the other command is of no use
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return parse_dag_dot(dot), parse_status(status)


def repro_outcome(lines: list[str]) -> str:
    """How `dvc repro` went for one stage, from DVC's own messages."""
    for line in lines:
        if line.startswith("Running stage "):
            return RAN
        if line.startswith("Stage ") and "is cached - skipping run" in line:
            return RESTORED
    return SKIPPED  # "Stage 'x' didn't change, skipping"


def stage_error(lines: list[str], returncode: int) -> str:
    """The stage's own message: the CLI's last `error: ...` line, else DVC's, else the last line."""
    text = [line.strip() for line in lines if line.strip()]
    for prefix in ("error: ", "ERROR: "):
        found = [line for line in text if line.startswith(prefix)]
        if found:
            return found[-1].removeprefix(prefix)
    return text[-1] if text else f"dvc repro exited with status {returncode}"


def repro_stage(stage: str, root: Path, env: dict[str, str],
                on_line: Callable[[str], None]) -> str:
    """`dvc repro --single-item stage` in `root`: RAN, RESTORED or SKIPPED, or StageFailed."""
    cmd = [dvc_command(env), "repro", "--single-item", stage]
    returncode, lines = stream_lines(cmd, root, env, on_line)
    if returncode != 0:
        raise StageFailed(stage, stage_error(lines, returncode))
    return repro_outcome(lines)


Scalar = str | int | float | bool


def scalar_text(value: Scalar) -> str:
    """`value` as YAML that both loaders here (ruamel for DVC, PyYAML for the stages) read back
    unchanged: plain when possible, else double-quoted (JSON strings are valid YAML)."""
    import yaml

    for text in (_plain(value), json.dumps(value)):
        try:
            loaded = [YAML(typ="safe").load(f"k: {text}\n"), yaml.safe_load(f"k: {text}\n")]
        except Exception:  # not valid YAML as written: try the next form
            continue
        if all(isinstance(d, dict) and _same(d.get("k"), value) for d in loaded):
            return text
    raise UserError(f"cannot write {value!r} to params.yaml so that it reads back the same")


def _plain(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):  # PyYAML reads 1e-05 as a string, 1.0e-05 as a float
        mantissa, e, exponent = repr(value).partition("e")
        return mantissa + (".0" if e and "." not in mantissa else "") + e + exponent
    return value if isinstance(value, str) else repr(value)


def _same(a: object, b: object) -> bool:
    return a == b and type(a) is type(b)  # 1 == True == 1.0, but they are different params


def set_param(path: Path, dotted: str, value: Scalar) -> bool:
    """Set one value in params.yaml, keeping every other byte (comments, flow-style wrapping).

    ruamel's round-trip dump would re-indent wrapped flow mappings, so the new scalar is spliced
    in at the position ruamel's composer reports. Returns False when the value was already set.
    """
    if _same(read_param(path, dotted), value):
        return False
    text = path.read_text()
    node = YAML().compose(text)
    for key in dotted.split("."):
        node = next(v for k, v in node.value if k.value == key)  # read_param checked the keys
    if not isinstance(node, ScalarNode):
        raise UserError(f"{path}: '{dotted}' is a section, not a value")
    start, end = node.start_mark.index, node.end_mark.index
    path.write_text(text[:start] + scalar_text(value) + text[end:])
    return True


def read_param(path: Path, dotted: str) -> object:
    data = YAML(typ="safe").load(path.read_text())
    for key in dotted.split("."):
        if not isinstance(data, dict) or key not in data:
            raise UserError(f"{path} has no '{dotted}' (missing '{key}')")
        data = data[key]
    return data


def resolve_tracking_uri(root: Path) -> str:
    """`tracking.tracking_uri()`, with a relative SQLite path anchored at the project root.

    SQLite paths resolve against the working directory; stages run in the root, and so must the
    flow's own parent run point there, wherever the flow was started from.
    """
    uri = tracking.tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((root / uri.removeprefix(prefix)).resolve())
    return uri


def preload_tracking() -> None:
    """Import MLflow's client and SQL store ahead of `open_parent_run`, while the caller waits on
    something else (a server, DVC): about 2.5 s on two cores. Later calls cost nothing."""
    from mlflow.store.tracking import sqlalchemy_store  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401


def open_parent_run(uri: str, experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """Start the flow's MLflow run that the stages' runs nest under; returns its id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(
        experiment, artifact_location=tracking.artifact_location(uri, experiment))
    run = client.create_run(experiment_id, run_name=run_name,
                            tags={"git_commit": tracking.git_commit(), **tags})
    return str(run.info.run_id)


def close_parent_run(uri: str, run_id: str, outcomes: dict[str, str], failed: bool) -> None:
    """Record which stages ran and end the run FINISHED, or FAILED when a stage failed."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for outcome in (RAN, RESTORED, SKIPPED):
        names = [s for s, o in outcomes.items() if o == outcome]
        client.set_tag(run_id, f"stages_{outcome}", ", ".join(names) or "-")
        client.log_metric(run_id, f"stages_{outcome}", len(names))
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def outcome_table(stages: Iterable[str], outcomes: dict[str, str],
                  details: dict[str, str]) -> list[dict[str, str]]:
    """Rows for the stage table artifact, in run order."""
    return [{"stage": s, "outcome": outcomes.get(s, NOT_RUN), "detail": details.get(s, "")}
            for s in stages]
