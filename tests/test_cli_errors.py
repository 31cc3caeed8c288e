"""Errors the CLI itself raises (option values, JSON past Python's limits) are one line, no box."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.errors import AvakitError
from avakit.training.rundir import read_json

runner = CliRunner()


@pytest.mark.parametrize(
    "args",
    [
        ["evaluate", "RUN", "--device", "tpu"],
        ["predict", "x.jpg", "--run", "RUN", "--batch-size", "0"],
        ["shard", "--bogus"],
    ],
)
def test_bad_option_is_one_line(args: list[str]) -> None:
    result = runner.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "╭" not in result.output and "--help" in lines[0]


@pytest.mark.parametrize("text", ["[" * 100_000, "1" * 5000])
def test_json_past_python_limits_is_one_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "meta.json"
    path.write_text(text)
    with pytest.raises(AvakitError, match="invalid JSON"):
        read_json(path)
