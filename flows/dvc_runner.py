"""DVC as a subprocess: read the stage graph and status, run one stage, stream its output.

Stages run through DVC's CLI (its stable interface), one `dvc repro --single-item <stage>` at a
time, in the project root; DVC stays the judge of what changed and `dvc.lock` the record.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from flows.dvc_plan import RAN, RESTORED, SKIPPED, StageGraph, parse_dag_dot
from sentiment_rnn.errors import UserError

DAG = ["dag", "--dot"]
STATUS = ["status", "--json"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colours (onnxruntime) read badly in logs


class StageFailed(Exception):
    """A DVC stage (or a DVC command the flow needs) failed; the message is the stage's own."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"stage '{stage}' failed: {reason}")
        self.stage = stage
        self.reason = reason


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


def stream_lines(
    cmd: list[str], cwd: Path, env: dict[str, str], on_line: Callable[[str], None]
) -> tuple[int, list[str]]:
    """Run `cmd`, passing each output line (stdout and stderr together) to `on_line` as it comes.

    Progress bars redraw a line with carriage returns; only the last drawing is kept.
    """
    lines: list[str] = []
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = _ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\r\n")
            drawn = [part for part in text.split("\r") if part]
            line = drawn[-1].rstrip() if drawn else ""
            lines.append(line)
            on_line(line)
    return proc.returncode, lines


def start_dvc(args: list[str], root: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start a DVC command whose output the flow reads (not a stage); `dvc_output` collects it."""
    return subprocess.Popen(
        [dvc_command(env), *args],
        cwd=root,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )


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
    """`read_graph` and `changed_stages` at once: two DVC processes side by side, since most of
    each one's time is DVC starting up. Both only read; only `dvc status` takes the repo lock."""
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


def repro_stage(stage: str, root: Path, env: dict[str, str], on_line: Callable[[str], None]) -> str:
    """`dvc repro --single-item stage` in `root`: RAN, RESTORED or SKIPPED, or StageFailed."""
    cmd = [dvc_command(env), "repro", "--single-item", stage]
    returncode, lines = stream_lines(cmd, root, env, on_line)
    if returncode != 0:
        raise StageFailed(stage, stage_error(lines, returncode))
    return repro_outcome(lines)
