"""`avakit evaluate` and `avakit predict` on a tiny trained run (the session fixture)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.inference.scorer import FIELDS
from avakit.training.rundir import eval_outputs

runner = CliRunner()


@pytest.fixture
def run(trained_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


@pytest.fixture
def originals(trained_run: Path) -> Path:
    """The synthetic photos the fixture run was trained on (before sharding)."""
    return trained_run.parent / "ava" / "images"


@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluate_equals_train_results(run: Path, split: str) -> None:
    result = runner.invoke(app, ["evaluate", str(run), "--split", split])
    assert result.exit_code == 0, result.output
    assert "SRCC" in result.output and "majority" in result.output
    out = eval_outputs(run, split, "best", "none")
    found = json.loads(out.json.read_text())["metrics"]
    trained = json.loads((run / "results.json").read_text())[split]
    for key in ("srcc", "plcc", "accuracy", "emd", "mae", "rmse", "std_srcc", "n"):
        assert found[key] == pytest.approx(trained[key], abs=1e-5), key
    assert 0 < found["majority_baseline"] <= 1 and found["latency_ms_per_image"] > 0
    df = pd.read_parquet(out.parquet)
    assert len(df) == found["n"] and df["image_id"].is_unique


@pytest.mark.parametrize("tta", ["flip", "five-crop"])
def test_evaluate_tta_and_last(run: Path, tta: str) -> None:
    result = runner.invoke(
        app, ["evaluate", str(run), "--tta", tta, "--checkpoint", "last", "--batch-size", "7"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(eval_outputs(run, "test", "last", tta).json.read_text())
    assert report["tta"] == tta and report["checkpoint"] == "last.pt" and report["batch_size"] == 7
    assert -1 <= report["metrics"]["srcc"] <= 1


def test_evaluate_errors(run: Path, tmp_path: Path) -> None:
    assert runner.invoke(app, ["evaluate", str(tmp_path / "nope")]).exit_code == 2
    result = runner.invoke(app, ["evaluate", str(run), "--tta", "ten-crop"])
    assert result.exit_code == 2 and "'ten-crop' is not one of 'none', 'flip', 'five-crop'" in result.output
    result = runner.invoke(app, ["evaluate", str(run), "--checkpoint", "middle"])
    assert result.exit_code == 2 and "'middle' is not one of 'best', 'last'" in result.output


def photo_folder(tmp_path: Path, source: Path) -> Path:
    """A good JPEG, a PNG, grayscale, CMYK, EXIF-rotated, an empty file and a text file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    im = Image.open(source).convert("RGB")
    im.save(folder / "good.jpg")
    im.save(folder / "copy.PNG")
    im.convert("L").save(folder / "gray.jpeg")
    im.convert("CMYK").save(folder / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 8
    im.save(folder / "rotated.jpg", exif=exif)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a photo\n")
    (folder / "readme.txt").write_text("ignored: not an image suffix\n")
    return folder


def test_predict_folder_mixed_files(run: Path, originals: Path, tmp_path: Path) -> None:
    folder = photo_folder(tmp_path, next(originals.glob("*.jpg")))
    out = tmp_path / "scores.json"
    result = runner.invoke(
        app, ["predict", str(folder), "--run", str(run), "--format", "json", "--output", str(out)]
    )
    assert result.exit_code == 1, result.output
    rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
    good = ("good.jpg", "copy.PNG", "gray.jpeg", "cmyk.jpg", "rotated.jpg")
    assert set(rows) == {*good, "empty.jpg", "notes.jpg"}
    for name in good:
        r = rows[name]
        assert r["error"] is None and 1 <= r["mean_score"] <= 10 and r["std"] > 0
        assert sum(r[f"dist_{k}"] for k in range(1, 11)) == pytest.approx(1, abs=1e-4)
    assert rows["good.jpg"]["mean_score"] == pytest.approx(rows["copy.PNG"]["mean_score"], abs=0.05)
    assert rows["empty.jpg"]["error"].startswith("empty")
    assert rows["notes.jpg"]["error"].startswith("not an image")
    assert "could not score" in result.output and "notes.jpg" in result.output


def test_predict_csv_schema_and_table(run: Path, originals: Path) -> None:
    image = next(originals.glob("*.jpg"))
    result = runner.invoke(app, ["predict", str(image), "--run", str(run), "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == [*FIELDS, "score"] and len(rows) == 1 and rows[0]["error"] == ""
    table = runner.invoke(app, ["predict", str(image), "--checkpoint", str(run / "best_model.pt")])
    assert table.exit_code == 0 and f"{float(rows[0]['mean_score']):.3f}" in table.output


def test_predict_matches_evaluate(run: Path, originals: Path) -> None:
    """predict on the original photo ~= evaluate's score of the same image from the shards."""
    runner.invoke(app, ["evaluate", str(run), "--split", "test"])
    df = pd.read_parquet(run / "predictions" / "test.parquet").head(8)
    paths = [str(originals / f"{i}.jpg") for i in df["image_id"]]
    result = runner.invoke(app, ["predict", *paths, "--run", str(run), "--format", "json"])
    rows = json.loads(result.stdout)
    predicted = np.array([r["mean_score"] for r in rows])
    assert np.abs(predicted - df["pred_mean"].to_numpy()).max() < 0.05


def test_predict_bad_options(run: Path, originals: Path, tmp_path: Path) -> None:
    image = next(originals.glob("*.jpg"))
    result = runner.invoke(app, ["predict", str(image)])
    assert result.exit_code == 2 and "exactly one of run (a run folder)" in result.output
    result = runner.invoke(app, ["predict", str(image), "--run", str(run), "--format", "xml"])
    assert result.exit_code == 2 and "Invalid value for '--format'" in result.output
    result = runner.invoke(app, ["predict", str(image), "--run", str(run), "--output", str(tmp_path / "t")])
    assert result.exit_code == 2 and "choose format json or csv" in result.output
    result = runner.invoke(app, ["predict", str(image), "--run", str(tmp_path / "none")])
    assert result.exit_code == 2 and "run folder not found" in result.output
