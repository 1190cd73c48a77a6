"""Code tier: the package's layers hold by structure, not by convention.

- the core (`core/`) and the export-time graph code (`export/`) import nothing of MLflow,
  Prefect, DVC or the project's file layout, and import with those packages made unimportable;
- every `import mlflow` of `src/` lives in `tracking/`;
- serving imports no torch.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "sentiment_rnn"
PURE = ("core", "export")
# What the pure layers must not reach: orchestration and tracking libraries, and the modules
# that know the project (its folders, params.yaml, its stages, its MLflow runs).
FORBIDDEN = (
    "mlflow",
    "prefect",
    "dvc",
    "sentiment_rnn.paths",
    "sentiment_rnn.params",
    "sentiment_rnn.stages",
    "sentiment_rnn.tracking",
    "sentiment_rnn.cli",
)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at module level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _reaches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def modules_of(*layers: str) -> list[Path]:
    return sorted(p for layer in layers for p in (PACKAGE / layer).rglob("*.py"))


@pytest.mark.parametrize("path", modules_of(*PURE), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_layers_import_no_tracking_orchestration_or_project_layout(path: Path) -> None:
    bad = sorted(n for n in imported_modules(path) if _reaches(n, FORBIDDEN))
    assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"mlflow", "prefect", "dvc"}:
            raise ImportError(f"{name} is blocked: the pure core must not need it")
        return None
sys.meta_path.insert(0, Block())
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
print("imported", len(sys.argv) - 1)
"""


def test_pure_layers_import_where_mlflow_prefect_and_dvc_are_absent() -> None:
    names = [
        ".".join(("sentiment_rnn", *p.relative_to(PACKAGE).with_suffix("").parts))
        for p in modules_of(*PURE)
    ]
    done = subprocess.run(
        [sys.executable, "-c", BLOCKER, *names], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"imported {len(names)}"


def test_mlflow_is_imported_only_by_the_tracking_package() -> None:
    outside = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.parent.name != "tracking" and _reaches_any(p, ("mlflow",))
    ]
    assert outside == []


def test_serving_imports_no_torch() -> None:
    assert [p.name for p in modules_of("serving") if _reaches_any(p, ("torch",))] == []


def _reaches_any(path: Path, prefixes: tuple[str, ...]) -> bool:
    return any(_reaches(n, prefixes) for n in imported_modules(path))
