"""Code tier: every stage validates its params.yaml section the same way.

An unknown, missing or mistyped key stops the stage before any work with one line,
`error: params.yaml: ... '<key>' ... (stage <stage>)`, and exit status 2.
"""

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sentiment_rnn.params import load_params, section
from sentiment_rnn.stages import (
    baseline,
    download,
    embeddings,
    entry,
    evaluate,
    export,
    tokenize,
    train,
)
from tests.conftest import tiny_params

STAGES = {  # stage: (module, arch or None, the section it reads, a key of it)
    "download": (download, None, "data", "val_fraction"),
    "tokenize": (tokenize, None, "tokenize", "vocab_size"),
    "embeddings": (embeddings, None, "embeddings", "window"),
    "train@lstm": (train, "lstm", "train.lstm", "lr"),
    "train@gru model": (train, "gru", "train.gru.model", "hidden_size"),
    "evaluate@rnn": (evaluate, "rnn", "evaluate", "batch_size"),
    "export@gru": (export, "gru", "export", "opset"),
    "baseline": (baseline, None, "baseline", "min_df"),
    "train@rnn mlflow": (train, "rnn", "mlflow", "experiment"),
}


def _edit(params: dict[str, Any], dotted: str, change) -> dict[str, Any]:
    edited = copy.deepcopy(params)
    change(section(edited, dotted))
    return edited


def _stage_error(
    tokenized_project: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    params: dict[str, Any],
) -> str:
    """Run the stage's command line on `params` in the tiny project; its one error line."""
    module, arch, _, _ = STAGES[name]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tokenized_project)  # read-only: a bad section stops before any write
    argv = [arch, "--params", str(path)] if arch else ["--params", str(path)]
    stage = name.split()[0].split("@")[0]
    with pytest.raises(SystemExit) as stopped:
        entry.main(stage, module.run, ("rnn", "lstm", "gru") if arch else None, argv)
    assert stopped.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("name", list(STAGES))
@pytest.mark.parametrize("fault", ["unknown", "missing", "mistyped"])
def test_a_bad_key_stops_the_stage_with_one_line_naming_it(
    tokenized_project: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    fault: str,
) -> None:
    _, arch, where, key = STAGES[name]
    good = tiny_params("unused") if name != "download" else tiny_params(tmp_path / "none")
    changes = {
        "unknown": lambda s: s.update({key + "_typo": s[key]}),
        "missing": lambda s: s.pop(key),
        "mistyped": lambda s: s.update({key: [s[key]]}),
    }
    line = _stage_error(
        tokenized_project, tmp_path, capsys, monkeypatch, name, _edit(good, where, changes[fault])
    )
    stage = name.split()[0]
    expected = {
        "unknown": f"unknown key '{where}.{key}_typo'",
        "missing": f"missing key '{where}.{key}'",
        "mistyped": f"'{where}.{key}': ",
    }[fault]
    assert line.startswith("error: params.yaml: ") and expected in line, line
    assert line.endswith(f"(stage {stage})"), line


def test_a_missing_section_names_it_and_the_stage(
    tokenized_project: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    params = tiny_params("unused")
    del params["evaluate"]
    line = _stage_error(tokenized_project, tmp_path, capsys, monkeypatch, "evaluate@rnn", params)
    assert (
        line == "error: params.yaml has no 'evaluate' (stage evaluate@rnn): missing key 'evaluate'"
    )


def test_the_module_command_line_prints_the_same_line(tmp_path: Path) -> None:
    """`python -m sentiment_rnn.stages.<stage>`, as dvc.yaml runs it."""
    params = tiny_params(tmp_path)
    params["tokenize"]["vocab_size"] = "200"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run(
        [sys.executable, "-m", "sentiment_rnn.stages.tokenize"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: params.yaml: 'tokenize.vocab_size': input should be a valid integer, got '200'"
        " (stage tokenize)"
    ]


def test_the_repository_params_are_valid_for_every_stage() -> None:
    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    for name, (_, _, where, _) in STAGES.items():
        assert section(params, where), name
    for arch in ("rnn", "lstm", "gru"):
        train.configs(arch, params, vocab_size=20000)
