"""Every benchmark script imports and answers `--help` as users run it, from the project root:
a renamed import fails here rather than in a benchmark run much later. The benchmarks
themselves are never run by tests (their figures come from running them)."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.stem.startswith("_"))


def test_benchmarks_found() -> None:
    assert {"predict_bench", "predict_memory", "sweep"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_imports(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as `python benchmarks/<name>.py` has it
    module = importlib.import_module(name)
    assert callable(module.main)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name: str) -> None:
    done = subprocess.run(
        [sys.executable, f"benchmarks/{name}.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:"), done.stdout


def test_generation_figures_count_what_they_say(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    generation = importlib.import_module("generation")
    from sentiment_rnn.generate import Sample

    def sample(text: str) -> Sample:
        return Sample(0, 0, "positive", "", text, len(text.split()), True)

    looping = [sample("a b c d a b c d")]  # 5 4-grams, one seen before: (a b c d)
    assert generation.repeated_4grams(looping) == 1 / 5
    assert generation.distinct_bigrams(looping) == 4 / 7  # ab bc cd da ab bc cd
    varied = [sample("great film"), sample("Great film"), sample("awful plot")]
    assert generation.distinct_bigrams(varied) == 2 / 3  # lower-cased words
    assert generation.repeated_4grams(varied) == 0.0
