"""Units of flows/dvc_plan.py: the stage graph, which stages a run needs, the stage table."""

import pytest

from flows import dvc_plan as plan
from sentiment_rnn.errors import UserError

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
def graph() -> plan.StageGraph:
    return plan.parse_dag_dot(DOT)


def test_graph_runs_dependencies_first_and_keeps_dvc_yaml_order_among_peers(graph):
    assert graph.stages == (
        "download",
        "tokenize",
        "train@rnn",
        "train@gru",
        "evaluate@rnn",
        "evaluate@gru",
        "compare",
    )
    assert graph.parents["compare"] == {"evaluate@rnn", "evaluate@gru"}
    assert graph.ancestors("evaluate@gru") == {"train@gru", "tokenize", "download"}


def test_graph_of_a_single_stage_without_edges():
    assert plan.parse_dag_dot('strict digraph {\n"download";\n}\n').stages == ("download",)


def test_a_cycle_is_refused():
    parents = {"a": frozenset({"b"}), "b": frozenset({"a"})}
    with pytest.raises(ValueError, match="cycle"):
        plan.topological(["a", "b"], parents)


@pytest.mark.parametrize(
    ("stage", "arch"), [("train@lstm", "lstm"), ("download", None), ("evaluate@gru", "gru")]
)
def test_stage_arch(stage, arch):
    assert plan.stage_arch(stage) == arch


def test_archs_default_to_every_foreach_item(graph):
    assert plan.check_archs(graph, None) == ["rnn", "gru"]
    assert plan.check_archs(graph, ["gru", "gru"]) == ["gru"]


@pytest.mark.parametrize("archs", [["cnn"], []])
def test_unknown_archs_are_refused(graph, archs):
    with pytest.raises(UserError, match="dvc.yaml has stages for"):
        plan.check_archs(graph, archs)


def test_up_to_date_stages_need_no_repro(graph):
    assert plan.skip_reason("tokenize", graph, ["rnn", "gru"], set(), {}) == (
        plan.SKIPPED,
        "up to date (dvc status)",
    )


def test_changed_stage_and_everything_after_a_stage_that_ran_need_repro(graph):
    assert plan.skip_reason("download", graph, ["rnn"], {"download"}, {}) is None
    ran = {"download": plan.RAN, "tokenize": plan.SKIPPED}
    assert plan.skip_reason("evaluate@rnn", graph, ["rnn"], {"download"}, ran) is None


def test_stages_of_other_archs_are_excluded(graph):
    assert plan.skip_reason("train@gru", graph, ["rnn"], {"train@gru"}, {})[0] == plan.EXCLUDED


def test_compare_runs_with_a_subset_when_the_other_archs_are_up_to_date(graph):
    outcomes = {"train@rnn": plan.RAN}
    assert plan.skip_reason("compare", graph, ["rnn"], {"train@rnn"}, outcomes) is None


def test_compare_is_blocked_by_an_out_of_date_excluded_arch(graph):
    outcome, detail = plan.skip_reason("compare", graph, ["rnn"], {"train@gru"}, {})
    assert outcome == plan.BLOCKED
    assert "train@gru" in detail


def test_compare_is_blocked_when_an_excluded_arch_went_stale_during_the_run(graph):
    outcomes = {"download": plan.RAN, "tokenize": plan.RAN}  # new tokens: gru's model is stale
    assert plan.skip_reason("compare", graph, ["rnn"], {"download"}, outcomes)[0] == plan.BLOCKED


def test_outcome_table_marks_stages_after_a_failure_as_not_run(graph):
    rows = plan.outcome_table(graph.stages[:2], {"download": plan.FAILED}, {"download": "boom"})
    assert rows == [
        {"stage": "download", "outcome": plan.FAILED, "detail": "boom"},
        {"stage": "tokenize", "outcome": plan.NOT_RUN, "detail": ""},
    ]


def test_stages_by_outcome_lists_every_tracked_outcome_in_run_order():
    outcomes = {"download": plan.SKIPPED, "train@rnn": plan.RAN, "train@gru": plan.EXCLUDED}
    assert plan.stages_by_outcome({**outcomes, "compare": plan.RAN}) == {
        plan.RAN: ["train@rnn", "compare"],
        plan.RESTORED: [],
        plan.SKIPPED: ["download"],
    }
