"""The training pipeline as a Prefect flow: each DVC stage of dvc.yaml is one task.

DVC decides what is out of date and records what ran (dvc.lock); the flow adds schedules,
logs, retries for the download, one MLflow parent run that the stages' runs nest under, and
Prefect artifacts: a table of the stages that ran or were skipped, and the model comparison.

    python flows/pipeline.py [--archs lstm,gru] [--data-source PATH] [--project-root DIR]

With PREFECT_API_URL set (`make pipeline` sets it to a standing local server that it starts
once with `prefect server start --background`), the run is recorded there. With none set,
Prefect itself starts a temporary local server for the run and stops it at exit.
"""

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from sentiment_rnn.errors import UserError
from sentiment_rnn.params import read_param, set_param
from sentiment_rnn.paths import is_local_source

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make the `flows` package importable
    sys.path.insert(0, str(REPO_ROOT))

from flows import dvc_plan as plan  # noqa: E402
from flows import dvc_runner as dvc  # noqa: E402
from flows.prefect_defaults import command_settings  # noqa: E402

PARAMS = "params.yaml"
COMPARISON = Path("reports/comparison.md")  # written by the `compare` stage
NETWORK_STAGES = {"download"}  # the only stage whose I/O can fail transiently (the hub)
DOWNLOAD_RETRY_DELAYS = [10.0, 60.0]


@task(cache_policy=NO_CACHE)
def read_dvc_state(root: Path) -> tuple[plan.StageGraph, set[str]]:
    """The stages of dvc.yaml as DVC sees them (stages added later run too), and those that
    `dvc status` finds out of date."""
    return dvc.read_state(root, dvc.child_env({}))


@task(cache_policy=NO_CACHE)
def set_data_source(root: Path, source: str) -> bool:
    """Whether params.yaml changed."""
    logger = get_run_logger()
    if set_param(root / PARAMS, "data.source", source):
        logger.info("set data.source to %r in %s", source, root / PARAMS)
        return True
    logger.info("data.source in %s is already %r", root / PARAMS, source)
    return False


@task(cache_policy=NO_CACHE)
def out_of_date_stages(root: Path) -> set[str]:
    return dvc.changed_stages(root, dvc.child_env({}))


@task(cache_policy=NO_CACHE, task_run_name="{stage}")
def run_stage(stage: str, root: Path, extra_env: dict[str, str], up_to_date: bool = False) -> str:
    """`dvc repro --single-item stage`, its output streamed into this task's log.

    A stage that `dvc status` found up to date (and nothing upstream has run since) is not
    asked again: `dvc repro` would start DVC only to say "didn't change, skipping".
    """
    logger = get_run_logger()
    if up_to_date:
        logger.info("%s: skipped, up to date (dvc status)", stage)
        return plan.SKIPPED
    outcome = dvc.repro_stage(stage, root, dvc.child_env(extra_env), logger.info)
    logger.info("%s: %s", stage, outcome)
    return outcome


def stage_task(stage: str, root: Path) -> Task[..., str]:
    """Retries only for a download from the hub: a missing local folder will not reappear."""
    source = str(read_param(root / PARAMS, "data.source"))
    if stage in NETWORK_STAGES and not is_local_source(source, root):
        return run_stage.with_options(
            retries=len(DOWNLOAD_RETRY_DELAYS), retry_delay_seconds=DOWNLOAD_RETRY_DELAYS
        )
    return run_stage


def run_stages(
    graph: plan.StageGraph,
    archs: list[str],
    changed: set[str],
    root: Path,
    extra_env: dict[str, str],
    outcomes: dict[str, str],
    details: dict[str, str],
) -> None:
    """Each stage in order, filling `outcomes` as it goes; the first failure stops the run.

    Excluded and blocked stages get no task: they are not part of this run, only of its table.
    """
    logger = get_run_logger()
    for stage in graph.stages:
        skip = plan.skip_reason(stage, graph, archs, changed, outcomes)
        if skip is not None and skip[0] != plan.SKIPPED:
            outcomes[stage], details[stage] = skip
            logger.info("%s: %s (%s)", stage, *skip)
            continue
        start = time.perf_counter()
        try:
            outcomes[stage] = stage_task(stage, root)(stage, root, extra_env, skip is not None)
        except Exception as exc:
            outcomes[stage], details[stage] = plan.FAILED, str(exc)
            raise
        details[stage] = skip[1] if skip else f"dvc repro, {time.perf_counter() - start:.1f} s"


def publish(
    root: Path, graph: plan.StageGraph, outcomes: dict[str, str], details: dict[str, str]
) -> None:
    """The stage table, and the comparison report when the compare stage has written one."""
    create_table_artifact(
        table=plan.outcome_table(graph.stages, outcomes, details),
        key="pipeline-stages",
        description="DVC stages: ran, skipped, excluded",
    )
    comparison = root / COMPARISON
    if comparison.is_file():
        create_markdown_artifact(
            markdown=comparison.read_text(),
            key="model-comparison",
            description=f"{COMPARISON}, written by the compare stage",
        )


@flow(name="sentiment-pipeline")
def pipeline(
    archs: list[str] | None = None, data_source: str | None = None, project_root: str | None = None
) -> dict[str, str]:
    """Run the DVC stages in order; returns each stage's outcome (ran, skipped, ...).

    archs: the model families to train (default: all foreach items of dvc.yaml). Per-arch stages
        (`<stage>@<arch>`) of the others are excluded; a stage over all archs (`compare`) runs
        only if the excluded archs' stages are up to date, else it is reported as blocked.
    data_source: if given, written to `data.source` in params.yaml first (comments kept).
    project_root: the folder with dvc.yaml (default: this repository).
    """
    root = Path(project_root).resolve() if project_root else REPO_ROOT
    graph, changed = read_dvc_state(root)
    chosen = plan.check_archs(graph, archs)
    if data_source is not None and set_data_source(root, data_source):
        changed = out_of_date_stages(root)  # the status above predates the new data source
    parent = ParentRun.open(root, chosen) if changed else None
    if parent is None:
        get_run_logger().info("every stage is up to date (dvc status): no MLflow run opened")
    extra_env = parent.env() if parent else {}
    outcomes: dict[str, str] = {}
    details: dict[str, str] = {}
    try:
        run_stages(graph, chosen, changed, root, extra_env, outcomes, details)
    except BaseException:  # interrupted too: the parent run must not stay RUNNING
        if parent:
            parent.close(outcomes, failed=True)
        publish(root, graph, outcomes, details)
        raise
    exported = sorted(
        plan.stage_arch(s) or "" for s, o in outcomes.items()
        if s.startswith("export@") and o in (plan.RAN, plan.RESTORED)
    )  # fmt: skip
    if exported:
        promote(root, exported, extra_env)
    if parent:
        parent.close(outcomes, failed=False)
    publish(root, graph, outcomes, details)
    return outcomes


@task(cache_policy=NO_CACHE)
def promote(root: Path, archs: list[str], extra_env: dict[str, str]) -> None:
    """`sentiment-rnn promote` for the freshly exported models: register them in MLflow and
    move `champion`. Outside DVC's stages: a cached stage would skip this side effect."""
    logger = get_run_logger()
    env = dvc.child_env(extra_env)
    cmd = [str(dvc.bin_dir() / "sentiment-rnn"), "promote", *archs]
    returncode, lines = dvc.stream_lines(cmd, root, env, logger.info)
    if returncode != 0:
        raise dvc.StageFailed("promote", dvc.stage_error(lines, returncode))


@dataclass(frozen=True)
class ParentRun:
    """This flow run's MLflow run, which the stages' runs nest under.

    Opened only when a stage is out of date: a run where everything is up to date trains
    nothing, so it adds no run to the experiment and does not import MLflow at all.
    """

    uri: str
    run_id: str

    @classmethod
    def open(cls, root: Path, archs: list[str]) -> "ParentRun":
        """A run in params.yaml's experiment, in the store at the project root, where the
        stages run, wherever the flow started."""
        from sentiment_rnn.tracking import runs  # imports MLflow: only when a stage will run

        uri = runs.tracking_uri(root)
        experiment = str(read_param(root / PARAMS, "mlflow.experiment"))
        tags = {
            "prefect_flow_run_id": str(flow_run.id),
            "archs": ",".join(archs),
            "data_source": str(read_param(root / PARAMS, "data.source")),
        }
        name = f"pipeline {flow_run.name or ''}".strip()
        run_id = runs.open_parent_run(uri, experiment, name, tags)
        get_run_logger().info("MLflow parent run %s in experiment %s (%s)", run_id, experiment, uri)
        return cls(uri, run_id)

    def env(self) -> dict[str, str]:
        """What the stages' processes need to log under this run."""
        from sentiment_rnn.tracking import runs

        return {"MLFLOW_TRACKING_URI": self.uri, runs.PARENT_RUN_ENV: self.run_id}

    def close(self, outcomes: dict[str, str], failed: bool) -> None:
        from sentiment_rnn.tracking import runs

        runs.close_parent_run(self.uri, self.run_id, plan.stages_by_outcome(outcomes), failed)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the DVC pipeline (dvc.yaml) as a Prefect flow, tracked in MLflow."
    )
    parser.add_argument(
        "--archs",
        type=lambda text: [a for a in text.split(",") if a],
        help="comma-separated model families, e.g. lstm,gru (default: all)",
    )
    parser.add_argument(
        "--data-source", help="set data.source in params.yaml to this hub id or local folder first"
    )
    parser.add_argument("--project-root", help=f"the folder with dvc.yaml (default: {REPO_ROOT})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with command_settings():
            outcomes = pipeline(
                archs=args.archs, data_source=args.data_source, project_root=args.project_root
            )
    except (dvc.StageFailed, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    width = max(map(len, outcomes), default=0)
    print("\n".join(f"{stage:<{width}}  {outcome}" for stage, outcome in outcomes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
