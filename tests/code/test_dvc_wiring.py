"""Code tier: dvc.yaml declares what each stage really depends on.

Every stage runs a module of `sentiment_rnn.stages` (`python -m ...`); every project module that
module imports, directly or through others, at module level or inside a function, must be
among the stage's `deps` (as a file or a folder above it), or DVC cannot tell when to rerun it.
"""

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
COMMAND = "python -m sentiment_rnn.stages."


def stages() -> dict[str, dict]:
    """dvc.yaml's stages, `foreach` expanded (`train@lstm`), with `${item}` filled in."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    expanded: dict[str, dict] = {}
    for name, stage in spec.items():
        if "foreach" not in stage:
            expanded[name] = stage
            continue
        for item in stage["foreach"]:
            text = yaml.safe_dump(stage["do"]).replace("${item}", item)
            expanded[f"{name}@{item}"] = yaml.safe_load(text)
    return expanded


def module_file(name: str) -> Path | None:
    path = SRC / Path(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def project_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in found if n.split(".")[0] == "sentiment_rnn"}


def imports_nothing(path: Path) -> bool:
    """A package `__init__` with only a docstring and constants pulls in no code."""
    tree = ast.parse(path.read_text())
    return not any(isinstance(n, ast.Import | ast.ImportFrom) for n in ast.walk(tree))


def code_closure(module: str) -> set[Path]:
    """The files of `module` and every project module it reaches, with parent packages."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += project_imports(path)
    return {p for p in seen if not (p.name == "__init__.py" and imports_nothing(p))}


def declared(stage: dict) -> list[Path]:
    return [ROOT / (dep if isinstance(dep, str) else next(iter(dep))) for dep in stage["deps"]]


def covered(path: Path, deps: list[Path]) -> bool:
    return any(path == d or d in path.parents for d in deps)


STAGES = stages()


@pytest.mark.parametrize("name", list(STAGES))
def test_every_imported_project_module_is_a_dep(name: str) -> None:
    stage = STAGES[name]
    assert stage["cmd"].startswith(COMMAND), stage["cmd"]
    module = "sentiment_rnn.stages." + stage["cmd"].removeprefix(COMMAND).split()[0]
    deps = declared(stage)
    missing = sorted(str(p.relative_to(ROOT)) for p in code_closure(module) if not covered(p, deps))
    assert not missing, f"{name}: add to its deps in dvc.yaml: {missing}"


@pytest.mark.parametrize("name", list(STAGES))
def test_declared_code_deps_exist(name: str) -> None:
    code = [d for d in declared(STAGES[name]) if "src" in d.relative_to(ROOT).parts[:1]]
    assert [str(d) for d in code if not d.exists()] == []


def test_the_check_finds_a_missing_dep() -> None:
    """The closure reaches through function-level imports and across packages."""
    closure = {str(p.relative_to(SRC)) for p in code_closure("sentiment_rnn.stages.train")}
    assert {"sentiment_rnn/core/training.py", "sentiment_rnn/tracking/runs.py"} <= closure
    stage = dict(STAGES["train@lstm"])
    stage["deps"] = [d for d in stage["deps"] if not str(d).endswith("core/training.py")]
    assert not all(covered(p, declared(stage)) for p in code_closure("sentiment_rnn.stages.train"))
