"""Code tier: every command answers --help; params errors are clear."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sentiment_rnn.cli import app
from sentiment_rnn.errors import UserError
from sentiment_rnn.params import load_params, section

runner = CliRunner()


def _commands() -> list[str]:
    import typer.main

    return sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_expected_commands_exist() -> None:
    assert {"download", "tokenize", "train"} <= set(_commands())


@pytest.mark.parametrize("command", [None, *_commands()])
def test_help(command: str | None) -> None:
    result = runner.invoke(app, [command, "--help"] if command else ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_missing_section_names_the_key() -> None:
    with pytest.raises(UserError, match="missing key 'gru'"):
        section({"train": {"lstm": {}}}, "train.gru")
