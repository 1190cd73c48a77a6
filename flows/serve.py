"""Serve the scheduled deployments: the weekly retrain and the batch scoring.

Schedules need a real Prefect server (the temporary one started for a single run cannot
schedule), so start one first, then serve from the repository root (the scoring flow's
default folders are relative to it):

    prefect server start                                            # terminal 1, UI on :4200
    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/serve.py  # terminal 2

Runs can also be started by hand, from the UI or with e.g.
`prefect deployment run 'sentiment-pipeline/weekly-retrain'`.
"""

import sys
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.settings import PREFECT_API_URL

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows import score  # noqa: E402
from flows.pipeline import pipeline  # noqa: E402

RETRAIN_CRON = "0 3 * * 1"  # Mondays 03:00 UTC


def retrain_deployment() -> RunnerDeployment:
    """Every DVC stage, weekly; DVC skips what has not changed since the last run."""
    # One run at a time: two `dvc repro` in one workspace fail on DVC's lock.
    return pipeline.to_deployment(
        name="weekly-retrain",
        cron=RETRAIN_CRON,
        concurrency_limit=1,
        description=retrain_deployment.__doc__,
        tags=["dvc", "train"],
    )


def deployments() -> list[RunnerDeployment]:
    """The weekly retrain, and flows/score.py's scoring of new files (every 15 minutes)."""
    return [retrain_deployment(), score.deployment()]


def main() -> int:
    if not PREFECT_API_URL.value():
        print(
            "error: schedules need a Prefect server: run `prefect server start`, then "
            "PREFECT_API_URL=http://127.0.0.1:4200/api python flows/serve.py",
            file=sys.stderr,
        )
        return 2
    serve(*deployments())
    return 0


if __name__ == "__main__":
    sys.exit(main())
