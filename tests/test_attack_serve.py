"""Attack pass on report / predict / export: crafted run folders, names and model outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.errors import AvakitError
from avakit.inference.predict import score_images
from avakit.inference.preprocess import PreprocessSpec
from avakit.inference.scorer import Scorer
from avakit.report.build import build_report
from avakit.training.rundir import read_predictions

runner = CliRunner()


@pytest.fixture
def run(trained_run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(trained_run, dest, ignore=shutil.ignore_patterns("report", "*.pt"))
    return dest


def _rewrite(run: Path, name: str, change) -> Path:  # noqa: ANN001 - a frame -> frame callable
    path = run / "predictions" / name
    change(pd.read_parquet(path)).to_parquet(path)
    return path


def _one_error_line(result) -> str:  # noqa: ANN001 - typer's Result
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda df: df.assign(pred_mean="x"), "column 'pred_mean' must hold numbers"),
        (lambda df: df.assign(pred_mean=df["pred_mean"].astype(str)), "column 'pred_mean' must hold numbers"),
        (lambda df: df.assign(image_id=float("nan")), "column 'image_id', row 0: expected an integer"),
        (lambda df: df.assign(image_id="../../x"), "column 'image_id' must hold numbers"),
        (lambda df: df.assign(pred_mean=1e300), "column 'pred_mean', row 0: expected a mean score in 1..10"),
        (lambda df: df.assign(pred_dist_3="x"), "column 'pred_dist_3' must hold numbers"),
        (lambda df: df.drop(columns=[f"pred_dist_{k}" for k in range(6, 11)]), "lacks pred_dist_6"),
        (lambda df: df.drop(columns=["gt_dist_1"]), "lacks gt_dist_1"),
        (lambda df: df.drop(columns=[f"gt_dist_{k}" for k in range(1, 11)]), "but no gt_dist_1..10"),
        (lambda df: df.assign(pred_mean=[[1.0]] * len(df)), "column 'pred_mean' must hold numbers"),
    ],
)
def test_report_refuses_a_malformed_predictions_table_in_one_line(run: Path, change, words: str) -> None:  # noqa: ANN001
    path = _rewrite(run, "test.parquet", change)
    line = _one_error_line(runner.invoke(app, ["report", str(run)]))
    assert str(path) in line and words in line


def test_report_counts_rows_with_a_non_finite_score(run: Path) -> None:
    def poison(df: pd.DataFrame) -> pd.DataFrame:
        return df.assign(pred_mean=[float("inf"), float("nan"), *df["pred_mean"][2:]])

    _rewrite(run, "test.parquet", poison)
    summary = build_report(run)
    note = "test.parquet: 2 row(s) with a NaN or infinite mean score left out"
    assert any(note in n for n in summary["notes"])
    assert summary["test"]["n"] == len(pd.read_parquet(run / "predictions/test.parquet")) - 2


def test_report_leaves_out_a_broken_epoch_file_with_a_note(run: Path) -> None:
    _rewrite(run, "val_epoch_000.parquet", lambda df: df.assign(pred_mean="x"))
    summary = build_report(run)
    assert any("val_epoch_000.parquet" in n and "left out of SRCC over epochs" in n for n in summary["notes"])


def test_a_folder_named_like_a_predictions_file_is_an_error(run: Path) -> None:
    path = run / "predictions" / "test.parquet"
    path.unlink()
    path.mkdir()
    with pytest.raises(AvakitError, match="test.parquet: not a file"):
        read_predictions(path)


def test_report_prints_markup_in_names_as_text(run: Path, tmp_path: Path) -> None:
    (run / "eval").mkdir()
    (run / "eval" / "a.json").write_text(
        json.dumps({"split": "test", "checkpoint": "[/x]", "tta": "[/y]", "metrics": {"srcc": 0.5}})
    )
    odd = run.rename(tmp_path / "r[bold]z")
    result = runner.invoke(app, ["report", str(odd)])
    assert result.exit_code == 0, result.output
    assert "r[bold]z" in result.stdout and "[/x]" in result.stdout


class _NanScorer(Scorer):
    spec = PreprocessSpec(32, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    output_mode = "distribution"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.full((len(batch), 10), np.nan, dtype=np.float32)


def test_predict_never_reports_a_nan_score(tmp_path: Path) -> None:
    Image.new("RGB", (40, 40), (10, 20, 30)).save(tmp_path / "a.jpg")
    [p] = score_images(_NanScorer(), [tmp_path / "a.jpg"])
    assert p.mean_score is None and "NaN or infinite" in (p.error or "")


def test_predict_prints_markup_in_file_names_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("[").mkdir()
    Path("[/x].jpg").write_text("not an image")  # a folder "[" and a file "x].jpg": "[/x]" is markup
    Image.new("RGB", (40, 40)).save("ok.jpg")
    scorer = _NanScorer()
    monkeypatch.setattr("avakit.inference.predict.load_scorer", lambda *a: scorer)
    result = runner.invoke(app, ["predict", "[/x].jpg", "ok.jpg", "--run", "r"])
    assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit)
    assert "could not score [/x].jpg:" in result.stderr


@pytest.mark.parametrize("step", [str(10**30), "inf", "-5", "2.5"])
def test_telemetry_rows_with_a_bad_step_are_dropped_and_counted(
    trained_run: Path, tmp_path: Path, step: str
) -> None:
    from avakit.training.rundir import read_telemetry_csv

    path = tmp_path / "gradient_norms.csv"
    good = (trained_run / "telemetry" / "gradient_norms.csv").read_text()
    path.write_text(good + step + ",1,1,1,1,1,1\n")
    df = read_telemetry_csv(path)
    assert df["batch_idx"].min() >= 0 and df.attrs["dropped"] == 1
    assert len(df) == len(good.strip().splitlines()) - 1


def test_report_notes_dropped_telemetry_rows(run: Path) -> None:
    path = run / "telemetry" / "learning_rates.csv"
    path.write_text(path.read_text() + "inf,0,1,1\n")
    summary = build_report(run)
    assert any("learning_rates.csv: 1 malformed row(s)" in n for n in summary["notes"])


def test_a_bool_best_epoch_is_not_an_epoch(run: Path) -> None:
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "best_epoch": True}))
    summary = build_report(run)
    assert summary["best_epoch"] is not True
    assert any("results.json has no best epoch" in n for n in summary["notes"])


def test_report_skips_shard_members_with_non_ascii_digit_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import tarfile

    from avakit.report.shard_stats import read_split_samples

    folder = tmp_path / "shards"
    (folder / "val").mkdir(parents=True)
    with tarfile.open(folder / "val" / "val-000000.tar", "w") as tar:
        for name, data in (("².json", b"{}"), ("7.json", b'{"tags": [1]}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setattr("avakit.report.shard_stats.shard_files", lambda d, s: sorted((d / s).glob("*.tar")))
    labels, _, problems = read_split_samples(folder, "val", set())
    assert labels == {7: {"tags": [1]}} and problems == []


@pytest.mark.parametrize("name", ["best_model.pt", "config.yaml", "model"])
def test_export_refuses_an_output_that_is_not_an_onnx_name(run: Path, name: str) -> None:
    target = run / name
    before = target.read_bytes() if target.is_file() else None
    line = _one_error_line(runner.invoke(app, ["export", str(run), "--output", str(target)]))
    assert "give a file name ending in .onnx" in line
    assert (target.read_bytes() if target.is_file() else None) == before


@pytest.mark.parametrize(
    ("text", "words"),
    [("{", "invalid JSON"), ("[1]", "expected a JSON object, got list"), ("\udcff", "not UTF-8")],
)
def test_export_metadata_from_a_broken_results_json_is_one_line(
    trained_run: Path, tmp_path: Path, text: str, words: str
) -> None:
    from avakit.inference.export import build_metadata
    from avakit.training.checkpoint import load_checkpoint

    ckpt_path = tmp_path / "best_model.pt"
    shutil.copy(trained_run / "best_model.pt", ckpt_path)
    (tmp_path / "results.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(AvakitError, match=words):
        build_metadata(load_checkpoint(ckpt_path), ckpt_path)


def test_export_metadata_ignores_fields_of_the_wrong_type(trained_run: Path, tmp_path: Path) -> None:
    from avakit.inference.export import build_metadata
    from avakit.training.checkpoint import load_checkpoint

    ckpt_path = tmp_path / "best_model.pt"
    shutil.copy(trained_run / "best_model.pt", ckpt_path)
    (tmp_path / "results.json").write_text(
        json.dumps({"checkpoint": "best_model.pt", "val": "x", "test": {"srcc": True}, "finished_at": 5})
    )
    meta = build_metadata(load_checkpoint(ckpt_path), ckpt_path)
    assert meta["val_srcc"] is None and meta["test_srcc"] is None and isinstance(meta["trained_at"], str)


@pytest.mark.parametrize("stray", ["thumbs_file", "png_folder"])
def test_report_clears_stray_entries_in_its_own_folder(run: Path, stray: str) -> None:
    out = run / "report"
    out.mkdir()
    if stray == "thumbs_file":
        (out / "thumbs").write_text("x")
    else:
        (out / "old.png").mkdir()
    summary = build_report(run)
    assert summary["report"].is_file() and not (out / "old.png").exists()


def test_predict_names_a_fifo_as_not_a_regular_file(tmp_path: Path) -> None:
    import os

    from avakit.inference.preprocess import find_images

    os.mkfifo(tmp_path / "p.jpg")
    with pytest.raises(AvakitError, match=r"p\.jpg: not a regular file or folder"):
        find_images([tmp_path / "p.jpg"])
