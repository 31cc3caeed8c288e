"""Sweep files (avakit.training.sweep): parsing, run names, errors naming FILE:LINE, `avakit sweep`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.cli.console import console
from avakit.errors import AvakitError
from avakit.training.sweep import MAX_NAME, MAX_SLUG, read_sweep, slug_of, sweep_config

runner = CliRunner()

SWEEP = """\
# learning rate x dropout
training.learning_rate=1e-4 model.dropout=0.3

--set training.learning_rate=3e-4   # a --set per token is allowed, and comments
  training.learning_rate=1e-3 --set=training.weight_decay=0.01
"""


def _write(tmp_path: Path, text: str, name: str = "sweep.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_lines_runs_and_names(tmp_path: Path) -> None:
    runs = read_sweep(_write(tmp_path, SWEEP))
    assert [(r.index, r.line) for r in runs] == [(1, 2), (2, 4), (3, 5)]
    assert runs[0].overrides == ("training.learning_rate=1e-4", "model.dropout=0.3")
    assert runs[1].overrides == ("training.learning_rate=3e-4",)
    assert runs[2].overrides == ("training.learning_rate=1e-3", "training.weight_decay=0.01")
    assert runs[0].slug == "learning_rate=1e-4_dropout=0.3"
    assert runs[0].run_name("ava") == "ava-learning_rate=1e-4_dropout=0.3"


def test_config_applies_line_after_set(tmp_path: Path) -> None:
    path = _write(tmp_path, SWEEP)
    sets = ["training.learning_rate=5e-2", "model.dropout=0.1", "name=lr"]
    cfg = sweep_config(None, sets, path, 1)
    assert cfg.training.learning_rate == pytest.approx(1e-4)
    assert cfg.model.dropout == pytest.approx(0.3)
    assert cfg.name == "lr-learning_rate=1e-4_dropout=0.3"
    cfg2 = sweep_config(None, sets, path, 2, resume="auto")
    assert (cfg2.training.learning_rate, cfg2.model.dropout) == (pytest.approx(3e-4), pytest.approx(0.1))
    assert cfg2.name == "lr-learning_rate=3e-4"


def test_names_are_safe_bounded_and_distinct(tmp_path: Path) -> None:
    lines = [
        "model.dropout=0.3",
        "training.dropout=0.3",  # same last key part and value: both get a hash
        "model.mlp_hidden_dims=[256,128]",
        "'model.mlp_hidden_dims=[256, 128]' training.learning_rate=1e-4",  # quoted like a shell word
        "name=a/b",  # a slash in a value never reaches the folder name
        " ".join(f"training.learning_rate=1e-{i}" for i in range(1, 12)),
        " ".join(f"training.learning_rate=1e-{i}" for i in range(1, 13)),
    ]
    runs = read_sweep(_write(tmp_path, "\n".join(lines)))
    slugs = [r.slug for r in runs]
    assert len(set(slugs)) == len(slugs), slugs
    for run in runs:
        assert len(run.slug) <= MAX_SLUG and "/" not in run.slug and " " not in run.slug
        assert len(run.run_name("x" * 100)) == MAX_NAME
    assert slugs[0].startswith("dropout=0.3-") and slugs[1].startswith("dropout=0.3-")
    assert slugs[2] == "mlp_hidden_dims=256,128"
    assert slug_of(["a.b=1"]) == "b=1"
    # the same line read again names the same run (a requeued array task finds its run folder)
    assert [r.slug for r in read_sweep(_write(tmp_path, "\n".join(lines), "again.txt"))] == slugs


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "training.learning_rate=1e-4\nlearning_rate 1e-4\n",
            r"sweep.txt:2: 'learning_rate' is not an override",
        ),
        ("training.learning_rate=1e-4 --set\n", r"sweep.txt:1: --set at the end"),
        ("model.dropout='0.3\n", r"sweep.txt:1: cannot split the line"),
        ("# only comments\n\n", r"sweep.txt: no run lines"),
        (
            "a.b=1\n\na.b=2\nmodel.dropout=0.3 a.b=1\na.b=1   # again\n",
            r"sweep.txt:5: the same overrides as line 1",
        ),
        ("=3\n", r"sweep.txt:1: '=3' is not an override"),
    ],
)
def test_parse_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(AvakitError, match=message):
        read_sweep(_write(tmp_path, text))


def test_unreadable_sweep_files_are_one_line(tmp_path: Path) -> None:
    binary = tmp_path / "sweep.bin"
    binary.write_bytes(b"model.dropout=0.3\ntraining.learning_rate=1e-3 \xff\xfe\n")
    with pytest.raises(AvakitError, match=r"sweep.bin:2: not UTF-8 text"):
        read_sweep(binary)
    with pytest.raises(AvakitError, match=r"missing.txt: cannot read"):
        read_sweep(tmp_path / "missing.txt")


@pytest.mark.parametrize(
    ("text", "index", "message"),
    [
        ("model.dropout=0.3\ntraining.nope=1\n", 2, r"sweep.txt:2: unknown key 'training.nope'"),
        (
            "model.dropout=0.3\n\ntraining.batch_size=0\n",
            2,
            r"sweep.txt:3: training.batch_size: must be > 0",
        ),
        ("model.dropout=0.3\n", 2, r"sweep.txt: --sweep-line 2 is out of range: the file has runs 1-1"),
    ],
)
def test_config_errors_name_file_and_line(tmp_path: Path, text: str, index: int, message: str) -> None:
    with pytest.raises(AvakitError, match=message):
        sweep_config(None, [], _write(tmp_path, text), index)


def test_a_bad_set_is_not_blamed_on_the_line(tmp_path: Path) -> None:
    with pytest.raises(AvakitError, match=r"^unknown key 'training.nope'"):
        sweep_config(None, ["training.nope=1"], _write(tmp_path, "model.dropout=0.3\n"), 1)


def test_train_sweep_options_go_together(tmp_path: Path) -> None:
    path = _write(tmp_path, "model.dropout=0.3\n")
    for args in (
        ["--sweep", str(path)],
        ["--sweep-line", "1"],
        ["--sweep", str(path), "--sweep-line", "1", "--resume", str(tmp_path)],
    ):
        result = runner.invoke(app, ["train", *args])
        assert result.exit_code == 2, result.output
        assert "--sweep" in result.output and "Traceback" not in result.output


def test_sweep_command_table_and_submit_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "_width", 200)  # whole rows, whatever the terminal
    config = Path("configs/small.yaml")
    path = _write(tmp_path, SWEEP)
    result = runner.invoke(app, ["sweep", str(path), "--config", str(config), "--set", "name=lr"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "3 run(s)" in out
    for name in (
        "lr-learning_rate=1e-4_dropout=0.3",
        "lr-learning_rate=3e-4",
        "lr-learning_rate=1e-3_weight_decay=0.01",
    ):
        assert f" {name} " in out, out
    assert f"sbatch --array=1-3 scripts/slurm/sweep.sbatch {config} {path} --set name=lr" in out


def test_sweep_command_bad_line_exits_2(tmp_path: Path) -> None:
    path = _write(tmp_path, "model.dropout=0.3\nmodel.dropout=7\n")
    result = runner.invoke(app, ["sweep", str(path), "--config", "configs/small.yaml"])
    assert result.exit_code == 2
    assert f"{path}:2: model.dropout" in result.output.replace("\n", "")
