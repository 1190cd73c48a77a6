"""Units of sentiment_rnn.orchestration: stage graph, what to run, DVC output, params edits."""

import os
import sys
from pathlib import Path

import pytest

from sentiment_rnn import orchestration as orch
from sentiment_rnn import tracking
from sentiment_rnn.errors import UserError
from sentiment_rnn.paths import is_local_source

REPO_ROOT = Path(__file__).resolve().parents[2]

# `dvc dag --dot` of a pipeline shaped like ours, with `compare` listed before what it needs.
DOT = """strict digraph {
"download";
"compare";
"tokenize";
"train@rnn";
"train@gru";
"evaluate@rnn";
"evaluate@gru";
"download" -> "tokenize";
"tokenize" -> "train@rnn";
"tokenize" -> "train@gru";
"train@rnn" -> "evaluate@rnn";
"train@gru" -> "evaluate@gru";
"evaluate@rnn" -> "compare";
"evaluate@gru" -> "compare";
}
"""


@pytest.fixture
def graph() -> orch.StageGraph:
    return orch.parse_dag_dot(DOT)


def test_graph_runs_dependencies_first_and_keeps_dvc_yaml_order_among_peers(graph):
    assert graph.stages == ("download", "tokenize", "train@rnn", "train@gru", "evaluate@rnn",
                            "evaluate@gru", "compare")
    assert graph.parents["compare"] == {"evaluate@rnn", "evaluate@gru"}
    assert graph.ancestors("evaluate@gru") == {"train@gru", "tokenize", "download"}


def test_graph_of_a_single_stage_without_edges():
    assert orch.parse_dag_dot('strict digraph {\n"download";\n}\n').stages == ("download",)


@pytest.mark.parametrize(("stage", "arch"), [("train@lstm", "lstm"), ("download", None),
                                             ("evaluate@gru", "gru")])
def test_stage_arch(stage, arch):
    assert orch.stage_arch(stage) == arch


def test_archs_default_to_every_foreach_item(graph):
    assert orch.check_archs(graph, None) == ["rnn", "gru"]
    assert orch.check_archs(graph, ["gru", "gru"]) == ["gru"]


@pytest.mark.parametrize("archs", [["cnn"], []])
def test_unknown_archs_are_refused(graph, archs):
    with pytest.raises(UserError, match="dvc.yaml has stages for"):
        orch.check_archs(graph, archs)


def test_up_to_date_stages_need_no_repro(graph):
    assert orch.skip_reason("tokenize", graph, ["rnn", "gru"], set(), {}) == (
        orch.SKIPPED, "up to date (dvc status)")


def test_changed_stage_and_everything_after_a_stage_that_ran_need_repro(graph):
    assert orch.skip_reason("download", graph, ["rnn"], {"download"}, {}) is None
    ran = {"download": orch.RAN, "tokenize": orch.SKIPPED}
    assert orch.skip_reason("evaluate@rnn", graph, ["rnn"], {"download"}, ran) is None


def test_stages_of_other_archs_are_excluded(graph):
    assert orch.skip_reason("train@gru", graph, ["rnn"], {"train@gru"}, {})[0] == orch.EXCLUDED


def test_compare_runs_with_a_subset_when_the_other_archs_are_up_to_date(graph):
    assert orch.skip_reason("compare", graph, ["rnn"], {"train@rnn"}, {"train@rnn": orch.RAN}) \
        is None


def test_compare_is_blocked_by_an_out_of_date_excluded_arch(graph):
    outcome, detail = orch.skip_reason("compare", graph, ["rnn"], {"train@gru"}, {})
    assert outcome == orch.BLOCKED
    assert "train@gru" in detail


def test_compare_is_blocked_when_an_excluded_arch_went_stale_during_the_run(graph):
    outcomes = {"download": orch.RAN, "tokenize": orch.RAN}  # new tokens: gru's model is stale
    assert orch.skip_reason("compare", graph, ["rnn"], {"download"}, outcomes)[0] == orch.BLOCKED


@pytest.mark.parametrize(("lines", "outcome"), [
    (["Running stage 'train@rnn':", "> sentiment-rnn train rnn", "Updating lock file"], orch.RAN),
    (["Stage 'download' didn't change, skipping"], orch.SKIPPED),
    (["Stage 'train@rnn' is cached - skipping run, checking out outputs"], orch.RESTORED),
])
def test_repro_outcome(lines, outcome):
    assert orch.repro_outcome(lines) == outcome


def test_stage_error_prefers_the_stage_message_over_dvcs():
    lines = ["Running stage 'train@rnn':", "error: model.pooling must be one of (...)",
             "ERROR: failed to reproduce 'train@rnn': failed to run: ..., exited with 2"]
    assert orch.stage_error(lines, 255) == "model.pooling must be one of (...)"
    assert orch.stage_error(lines[::2], 255).startswith("failed to reproduce 'train@rnn'")
    assert orch.stage_error(["Traceback ...", "KeyError: 'x'", ""], 1) == "KeyError: 'x'"
    assert orch.stage_error([], 3) == "dvc repro exited with status 3"


def test_stream_lines_keeps_the_last_drawing_of_a_progress_bar(tmp_path):
    script = "import sys; print('a\\r 50%\\r100%'); print('\\x1b[1;31mred\\x1b[m', file=sys.stderr)"
    seen: list[str] = []
    code, lines = orch.stream_lines([sys.executable, "-c", script], tmp_path,
                                    orch.child_env({}), seen.append)
    assert (code, lines, seen) == (0, ["100%", "red"], ["100%", "red"])


def test_child_env_finds_this_venvs_scripts_first():
    env = orch.child_env({"X_EXTRA": "1"})
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["X_EXTRA"] == "1"
    assert Path(orch.dvc_command(env)).parent == Path(sys.executable).parent


@pytest.fixture
def params_copy(tmp_path: Path) -> Path:
    """The repository's params.yaml, with its comments and wrapped flow mappings."""
    path = tmp_path / "params.yaml"
    path.write_text((REPO_ROOT / "params.yaml").read_text())
    return path


def test_set_param_changes_only_that_value(params_copy):
    before = params_copy.read_text().splitlines()
    assert orch.set_param(params_copy, "data.source", "/data/my imdb")
    after = params_copy.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert len(changed) == 1
    assert changed[0][1].strip().startswith("source: /data/my imdb")
    assert orch.read_param(params_copy, "data.source") == "/data/my imdb"
    assert not orch.set_param(params_copy, "data.source", "/data/my imdb")


@pytest.mark.parametrize("value", ["a: b # c", "yes", "123", "", 0.02, 1e-5, 7, True])
def test_set_param_reads_back_the_same_value_and_type(params_copy, value):
    orch.set_param(params_copy, "train.gru.lr", value)
    got = orch.read_param(params_copy, "train.gru.lr")
    assert got == value and type(got) is type(value)


def test_set_param_names_what_is_missing(params_copy):
    with pytest.raises(UserError, match="missing 'nope'"):
        orch.set_param(params_copy, "train.nope.lr", 1.0)
    with pytest.raises(UserError, match="a section"):
        orch.set_param(params_copy, "train.gru", "x")


@pytest.mark.parametrize(("source", "remote"), [("stanfordnlp/imdb", True), ("data/imdb", True),
                                                ("./imdb", False), ("/x/imdb", False),
                                                ("imdb", False), ("a/b/c", False)])
def test_is_remote_source(tmp_path, source, remote):
    assert is_local_source(source, tmp_path) is not remote


def test_relative_sqlite_uri_is_anchored_at_the_project_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert orch.resolve_tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////abs/m.db")
    assert orch.resolve_tracking_uri(tmp_path) == "sqlite:////abs/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000")
    assert orch.resolve_tracking_uri(tmp_path) == "http://localhost:5000"


def test_new_experiments_keep_artifacts_beside_the_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.artifact_location(uri, "imdb sentiment") == str(
        tmp_path / "mlruns" / "imdb_sentiment")
    assert tracking.artifact_location("http://mlflow:5000", "imdb") is None


def test_a_folder_without_dvc_yaml_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="`dvc dag --dot` failed in"):
        orch.read_graph(tmp_path, orch.child_env({}))
    with pytest.raises(UserError, match="`dvc dag --dot` failed in"):
        orch.read_state(tmp_path, orch.child_env({}))


@pytest.mark.parametrize(("text", "stages"), [
    ("", set()), ("{}\n", set()), ('{"train@rnn": [{"changed deps": {}}]}', {"train@rnn"})])
def test_parse_status(text, stages):
    assert orch.parse_status(text) == stages
