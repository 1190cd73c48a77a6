"""The DVC stage graph and the plan of a flow run: what to run, skip or leave out, and how it went.

Pure functions over `dvc dag` and `dvc status` output; no subprocess and no Prefect here.
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sentiment_rnn.errors import UserError

# What became of a stage in one flow run.
RAN = "ran"  # DVC ran the stage's command
RESTORED = "restored"  # DVC's run cache had this exact run: outputs checked out, nothing ran
SKIPPED = "skipped"  # up to date: nothing ran
EXCLUDED = "excluded"  # a per-arch stage of an arch not asked for
BLOCKED = "blocked"  # would mix fresh results with stale or missing ones of an excluded arch
FAILED = "failed"
NOT_RUN = "not run"  # an earlier stage failed

TRACKED = (RAN, RESTORED, SKIPPED)  # the outcomes the flow's MLflow parent run records

_NODE = re.compile(r'^"(?P<name>[^"]+)";$')
_EDGE = re.compile(r'^"(?P<src>[^"]+)" -> "(?P<dst>[^"]+)";$')


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


def topological(nodes: list[str], parents: Mapping[str, frozenset[str]]) -> tuple[str, ...]:
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


def may_have_changed(
    stage: str, graph: StageGraph, changed: set[str], outcomes: Mapping[str, str]
) -> bool:
    """Whether DVC must look at `stage` again: `dvc status` flagged it before the run started,
    or a stage upstream has run since (its outputs are this stage's inputs)."""
    if stage in changed:
        return True
    return any(outcomes.get(a) in (RAN, RESTORED) for a in graph.ancestors(stage))


def blocked_by(
    stage: str, graph: StageGraph, archs: list[str], changed: set[str], outcomes: Mapping[str, str]
) -> list[str]:
    """Excluded per-arch stages upstream of `stage` that are out of date.

    A stage over all archs (e.g. `compare`) runs with a subset of archs only when the other
    archs' stages are up to date, so it never compares fresh results with stale or missing ones.
    """
    return sorted(
        a
        for a in graph.ancestors(stage)
        if stage_arch(a) not in (None, *archs) and may_have_changed(a, graph, changed, outcomes)
    )


def skip_reason(
    stage: str, graph: StageGraph, archs: list[str], changed: set[str], outcomes: Mapping[str, str]
) -> tuple[str, str] | None:
    """(outcome, detail) for a stage that needs no `dvc repro` call; None when it does.

    `dvc status` before the run already tells which stages are up to date; asking `dvc repro`
    about each of them again would change nothing and cost a DVC start-up per stage.
    """
    if stage_arch(stage) not in (None, *archs):
        return EXCLUDED, "arch not selected"
    waits_for = blocked_by(stage, graph, archs, changed, outcomes)
    if waits_for:
        return BLOCKED, f"out of date and not selected: {', '.join(waits_for)}"
    if not may_have_changed(stage, graph, changed, outcomes):
        return SKIPPED, "up to date (dvc status)"
    return None


def outcome_table(
    stages: Iterable[str], outcomes: Mapping[str, str], details: Mapping[str, str]
) -> list[dict[str, str]]:
    """Rows for the stage table artifact, in run order."""
    return [
        {"stage": s, "outcome": outcomes.get(s, NOT_RUN), "detail": details.get(s, "")}
        for s in stages
    ]


def stages_by_outcome(
    outcomes: Mapping[str, str], kept: Iterable[str] = TRACKED
) -> dict[str, list[str]]:
    """{outcome: stages with it, in run order} for each outcome of `kept`, empty ones too."""
    return {outcome: [s for s, o in outcomes.items() if o == outcome] for outcome in kept}
