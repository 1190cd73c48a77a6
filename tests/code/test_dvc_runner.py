"""Units of flows/dvc_runner.py: DVC's output read back, stage logs streamed, its environment."""

import os
import sys
from pathlib import Path

import pytest

from flows import dvc_plan as plan
from flows import dvc_runner as dvc
from sentiment_rnn.errors import UserError


@pytest.mark.parametrize(
    ("lines", "outcome"),
    [
        (
            ["Running stage 'train@rnn':", "> sentiment-rnn train rnn", "Updating lock file"],
            plan.RAN,
        ),
        (["Stage 'download' didn't change, skipping"], plan.SKIPPED),
        (["Stage 'train@rnn' is cached - skipping run, checking out outputs"], plan.RESTORED),
    ],
)
def test_repro_outcome(lines, outcome):
    assert dvc.repro_outcome(lines) == outcome


def test_stage_error_prefers_the_stage_message_over_dvcs():
    lines = [
        "Running stage 'train@rnn':",
        "error: model.pooling must be one of (...)",
        "ERROR: failed to reproduce 'train@rnn': failed to run: ..., exited with 2",
    ]
    assert dvc.stage_error(lines, 255) == "model.pooling must be one of (...)"
    assert dvc.stage_error(lines[::2], 255).startswith("failed to reproduce 'train@rnn'")
    assert dvc.stage_error(["Traceback ...", "KeyError: 'x'", ""], 1) == "KeyError: 'x'"
    assert dvc.stage_error([], 3) == "dvc repro exited with status 3"


def test_stream_lines_keeps_the_last_drawing_of_a_progress_bar(tmp_path):
    script = "import sys; print('a\\r 50%\\r100%'); print('\\x1b[1;31mred\\x1b[m', file=sys.stderr)"
    seen: list[str] = []
    code, lines = dvc.stream_lines(
        [sys.executable, "-c", script], tmp_path, dvc.child_env({}), seen.append
    )
    assert (code, lines, seen) == (0, ["100%", "red"], ["100%", "red"])


def test_child_env_finds_this_venvs_scripts_first():
    env = dvc.child_env({"X_EXTRA": "1"})
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["X_EXTRA"] == "1"
    assert Path(dvc.dvc_command(env)).parent == Path(sys.executable).parent


def test_a_folder_without_dvc_yaml_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="`dvc dag --dot` failed in"):
        dvc.read_graph(tmp_path, dvc.child_env({}))
    with pytest.raises(UserError, match="`dvc dag --dot` failed in"):
        dvc.read_state(tmp_path, dvc.child_env({}))


@pytest.mark.parametrize(
    ("text", "stages"),
    [("", set()), ("{}\n", set()), ('{"train@rnn": [{"changed deps": {}}]}', {"train@rnn"})],
)
def test_parse_status(text, stages):
    assert dvc.parse_status(text) == stages
