"""Code tier: what `pyproject.toml` declares installs on every platform the README names.

Every third-party package that `src/` or `flows/` imports is declared, and exactly one
onnxruntime build is chosen per platform (the GPU build where it exists, never both: they
write the same package folder).
"""

import ast
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
REQUIREMENTS = [Requirement(r) for r in PROJECT["dependencies"]]
# import name -> distribution name, where they differ
DISTRIBUTIONS = {
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "ruamel": "ruamel.yaml",
    "onnxruntime": "onnxruntime-gpu",
    "prefect_dask": "prefect-dask",
    "dask": "dask",
    "distributed": "distributed",
}


@pytest.mark.parametrize(
    ("platform", "machine"), [("linux", "x86_64"), ("win32", "AMD64"), ("darwin", "arm64")]
)
def test_exactly_one_onnxruntime_build_per_platform(platform: str, machine: str) -> None:
    env = {"sys_platform": platform, "platform_machine": machine}
    chosen = {r.name for r in REQUIREMENTS if r.marker is None or r.marker.evaluate(env)}
    runtimes = chosen & {"onnxruntime", "onnxruntime-gpu"}
    assert runtimes == ({"onnxruntime"} if platform == "darwin" else {"onnxruntime-gpu"})


def third_party_imports(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    own = {"sentiment_rnn", "flows", "tests", "benchmarks"}
    return {n for n in names if n not in sys.stdlib_module_names and n not in own}


def test_every_imported_package_is_declared() -> None:
    declared = {canonicalize_name(r.name) for r in REQUIREMENTS}
    imported = third_party_imports(ROOT / "src") | third_party_imports(ROOT / "flows")
    missing = {
        name
        for name in imported
        if canonicalize_name(DISTRIBUTIONS.get(name, name)) not in declared
    }
    assert not missing, f"imported but not in pyproject.toml dependencies: {sorted(missing)}"
