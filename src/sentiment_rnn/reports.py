"""Writers for what the stages report: CSV files for DVC plots, PNG figures."""

import csv
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A CSV with a header row; None becomes an empty cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(["" if v is None else v for v in row] for row in rows)


@contextmanager
def figure(path: Path, **subplots: Any) -> Iterator[tuple[Figure, Any]]:
    """A figure and its axes (`Figure.subplots(**subplots)`) for the block, then saved to `path`
    as a PNG. No pyplot: nothing global, no window, no backend to choose."""
    size = subplots.pop("figsize", None)
    fig = Figure(figsize=size)
    axes = fig.subplots(**subplots)
    yield fig, axes
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
