"""The one progress bar of long loops: drawn on a terminal, silent in logs and pipelines."""

import sys

from tqdm.auto import tqdm


def bar(total: int | None, desc: str, unit: str = "batch", **options: object) -> tqdm:
    """A tqdm bar that draws only when stderr is a terminal (DVC and Prefect logs stay clean)."""
    settings: dict[str, object] = {
        "dynamic_ncols": True,
        "mininterval": 1.0,
        "leave": False,
        "disable": None if sys.stderr.isatty() else True,
    }
    return tqdm(total=total, desc=desc, unit=unit, **(settings | options))
