"""The CLI only parses, calls the library and prints: choices come from the library, Typer rejects
bad values with one line (exit 2), and predict / demo work as library functions."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from avakit import config
from avakit.cli.app import app
from avakit.errors import AvakitError

runner = CliRunner()


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["evaluate", "RUN", "--split", "dev"], "--split"),
        (["evaluate", "RUN", "--device", "tpu"], "--device"),
        (["evaluate", "RUN", "--tta", "ten-crop"], "--tta"),
        (["evaluate", "RUN", "--checkpoint", "middle"], "--checkpoint"),
        (["predict", "x.jpg", "--format", "xml"], "--format"),
        (["features", "--splits", "train,dev"], "--splits"),
        (["shard", "--ava-txt", "a", "--images", "b", "--split", "weird"], "--split"),
        (["shard", "--ava-txt", "a", "--images", "b", "--short-side", "0"], "--short-side"),
        (["shard", "--ava-txt", "a", "--images", "b", "--seed", "-1"], "--seed"),
        (["train", "--quick-experiment", "1.5"], "--quick-experiment"),
        (["export", "RUN", "--parity-images", "0"], "--parity-images"),
    ],
)
def test_typer_rejects_bad_values_in_one_line(tmp_path: Path, args: list[str], flag: str) -> None:
    args = [str(tmp_path) if a == "RUN" else a for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = _error_lines(result.output)
    assert len(lines) == 1 and f"Invalid value for '{flag}'" in lines[0], result.output
    assert "Traceback" not in result.output


def test_choices_are_the_library_definitions() -> None:
    from avakit import scores
    from avakit.cli import options as cli

    assert [m.value for m in cli.Device] == list(config.DEVICES)
    assert [m.value for m in cli.Split] == list(scores.SPLITS)
    assert [m.value for m in cli.Tta] == list(config.TTA_MODES)
    assert [m.value for m in cli.Checkpoint] == list(config.CHECKPOINTS)
    assert [m.value for m in cli.Format] == list(config.PREDICT_FORMATS)
    assert [m.value for m in cli.ShardSplit] == list(config.SHARD_SPLITS)
    assert str(cli.Tta("five-crop")) == "five-crop" and f"{cli.Split('val')}" == "val"


def test_library_errors_name_parameters_not_flags(tmp_path: Path) -> None:
    from avakit.dataset.plan import ShardOptions, validate_options
    from avakit.inference.predict import check_output

    with pytest.raises(AvakitError, match=r"^format must be table, json or csv, got 'xml'$"):
        check_output("xml")
    with pytest.raises(AvakitError, match=r"^output .*: is a folder; give a file name"):
        check_output("json", tmp_path)
    with pytest.raises(AvakitError, match=r"^quality must be in 1\.\.100, got 0$"):
        validate_options(ShardOptions(quality=0), None)


class _Scorer:
    """A stand-in model: every image scores 5.0 (regression mode)."""

    spec = None
    output_mode = "regression"

    def __call__(self, batch: Any) -> Any:
        return np.full(len(batch), 5.0, dtype=np.float32)


def test_predict_rows_from_the_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import avakit.inference.predict as predict

    monkeypatch.setattr(predict, "load_scorer", lambda *a, **k: _Scorer())
    monkeypatch.setattr(predict, "prepare", lambda path, spec: np.zeros((3, 4, 4), "float32"))
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    job = predict.plan_prediction([tmp_path / "a.jpg", tmp_path / "missing.jpg"], run=tmp_path, fmt="csv")
    rows = job.run(batch_size=4)
    assert [r.path for r in rows] == [str(tmp_path / "a.jpg"), str(tmp_path / "missing.jpg")]
    assert rows[0].mean_score == pytest.approx(5.0) and rows[0].error is None
    assert rows[1].mean_score is None and rows[1].error
    text = predict.format_predictions(rows, "csv")
    assert text.splitlines()[0].startswith("path,mean_score,std,dist_1")


def test_rich_progress_task_stops_its_bar() -> None:
    from avakit.cli.console import RichProgress

    progress = RichProgress()
    with pytest.raises(RuntimeError), progress.task("x", 3) as advance:
        advance(1)
        raise RuntimeError
    assert progress.bar is None
    with progress.task("y", None) as advance:  # one RichProgress serves every epoch and evaluation
        advance(2, loss=0.5)
    assert progress.bar is None and progress.loss == 0.5


def test_demo_refuses_a_file_as_out_without_printing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from avakit.demo import run_demo

    (tmp_path / "f").write_text("x")
    with pytest.raises(AvakitError, match="^out .*: exists and is not a folder$"):
        run_demo(tmp_path / "f", Path("configs/demo.yaml"))
    assert capsys.readouterr().out == ""


def test_demo_is_a_library_function(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """run_demo reports its steps to a reporter and prints nothing itself (training stubbed)."""
    import avakit.training.fit
    from avakit.dataset.synthetic import make_synthetic_ava
    from avakit.demo import run_demo

    class Stop(Exception):
        pass

    def fake_fit(cfg: Any, **_: Any) -> Path:
        raise Stop

    events: list[str] = []

    class Reporter:
        def line(self, text: str) -> None:
            events.append(text)

        @contextmanager
        def sharding(self, total: int):  # noqa: ANN202
            events.append(f"sharding {total}")
            yield lambda n: None

        def sharded(self, manifest: dict, folder: Path) -> None:
            events.append(f"sharded {manifest['counts']['samples_written']}")

        def training(self) -> None:
            events.append("training")

        def trained(self, run_dir: Path) -> None:
            events.append("trained")

    monkeypatch.setattr(avakit.training.fit, "fit", fake_fit)
    make_synthetic_ava(tmp_path / "d" / "ava", n=20, seed=3, long_side=(40, 80))
    config_path = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    with pytest.raises(Stop):
        run_demo(tmp_path / "d", config_path, reporter=Reporter())
    assert events[0].startswith("1/6 using the synthetic dataset") and events[1].startswith("2/6 sharding")
    assert events[2].startswith("sharding ") and events[3].startswith("sharded ")
    assert events[4].startswith("3/6 training") and events[5] == "training"
