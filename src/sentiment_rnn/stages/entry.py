"""The command line of a stage module: `python -m sentiment_rnn.stages.<stage> [ARCH]`."""

import argparse
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sentiment_rnn.errors import exit_on_user_error
from sentiment_rnn.params import load_params

PerArch = Callable[[str, Mapping[str, Any]], object]
Whole = Callable[[Mapping[str, Any]], object]


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def main(
    stage: str,
    run: PerArch | Whole,
    archs: Sequence[str] | None = None,
    argv: list[str] | None = None,
) -> None:
    """Parse the arguments, read params.yaml once, run the stage; user errors exit with 2.

    A stage run once per model family (`train@lstm`) takes the family as its argument, one of
    `archs`.
    """
    parser = argparse.ArgumentParser(prog=f"python -m sentiment_rnn.stages.{stage}")
    per_arch = archs is not None
    if per_arch:
        parser.add_argument("arch", choices=archs, help="model family")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    configure_logging()
    with exit_on_user_error():
        params = load_params(args.params)
        if per_arch:
            run(args.arch, params)  # type: ignore[call-arg]
        else:
            run(params)  # type: ignore[call-arg]
