"""Tests for avakit.report.build: the report of a finished tiny run, its degraded variants and errors."""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import pandas as pd
import pytest

from avakit import metrics
from avakit.errors import AvakitError
from avakit.report.build import build_report, group_stats

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CORE_PNGS = {
    "training_curves.png",
    "learning_rates.png",
    "gradient_norms.png",
    "srcc_by_epoch.png",
    *(
        f"{split}_{kind}.png"
        for split in ("val", "test")
        for kind in (
            "scatter",
            "residuals",
            "calibration",
            "error_by_score",
            "confusion",
            "score_distributions",
            "vote_histograms",
        )
    ),
}


def check_png(path: Path) -> None:
    """A real PNG of plausible pixel and byte size."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    assert 500 <= width <= 2400 and 300 <= height <= 1600, (path, width, height)
    assert 8_000 < len(data) < 2_000_000, (path, len(data))


def copy_run(trained_run: Path, dest: Path) -> Path:
    run = dest / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("*.pt"))
    return run


def linked_files(report: Path) -> list[str]:
    """Every src=/href= value of report.html except in-page anchors."""
    text = report.read_text(encoding="utf-8")
    return [v for v in re.findall(r'(?:src|href)="([^"]*)"', text) if not v.startswith("#")]


@pytest.fixture(scope="module")
def full(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A report of a copy of the tiny run, shards taken from its config, tag/challenge names given."""
    run = copy_run(trained_run, tmp_path_factory.mktemp("report"))
    ava = trained_run.parent / "ava"
    summary = build_report(run, tags=ava / "tags.txt", challenges=ava / "challenges.txt", min_group=2)
    return run, summary


def test_every_png_is_valid(full: tuple[Path, dict]) -> None:
    run, summary = full
    names = {p.name for p in summary["pngs"]}
    assert names >= CORE_PNGS
    assert any(n.endswith("_tags_mae.png") for n in names)
    assert any(n.endswith("_challenges_mae.png") for n in names)
    for path in summary["pngs"]:
        assert path.parent == run / "report"
        check_png(path)


def test_html_references_exist_and_sections_are_ordered(full: tuple[Path, dict]) -> None:
    run, summary = full
    report = summary["report"]
    assert report == run / "report" / "report.html" and report.is_file()
    links = linked_files(report)
    assert links and not [v for v in links if "://" in v or v.startswith("/")]
    for value in links:
        assert (report.parent / value).is_file(), value
    assert {p.name for p in summary["pngs"]} <= set(links)
    assert sum(v.startswith("thumbs/") for v in links) >= 16
    text = report.read_text(encoding="utf-8")
    assert f"<title>avakit report: {run.name}</title>" in text
    headings = [
        "Summary",
        "Training curves",
        "Telemetry",
        "Prediction analysis",
        "SRCC over epochs",
        "vote distributions",
        "Per semantic tag",
        "Best and worst",
    ]
    positions = [text.index(h) for h in headings]
    assert positions == sorted(positions)


def test_tag_and_challenge_tables_use_names(full: tuple[Path, dict], trained_run: Path) -> None:
    _, summary = full
    text = summary["report"].read_text(encoding="utf-8")
    tag_names = set((trained_run.parent / "ava" / "tags.txt").read_text().split()[1::2])
    cells = set(re.findall(r'<td class="name">([^<]*)</td>', text))
    assert cells & tag_names
    assert "Golden_Hour" in text or "Free_Study" in text or "Red" in cells


def test_summary_matches_best_epoch_predictions(full: tuple[Path, dict]) -> None:
    run, summary = full
    results = json.loads((run / "results.json").read_text())
    assert summary["best_epoch"] == results["best_epoch"]
    df = pd.read_parquet(run / "predictions" / f"val_epoch_{results['best_epoch']:03d}.parquet")
    assert summary["val"]["srcc"] == metrics.srcc(df["pred_mean"], df["gt_mean"])
    assert summary["val"]["srcc"] == pytest.approx(results["val"]["srcc"], abs=1e-6)
    assert summary["val"]["n"] == len(df)
    assert summary["test"]["n"] == results["test"]["n"]
    assert isinstance(summary["warnings"], list) and isinstance(summary["notes"], list)


def test_regression_without_test_or_shards(trained_run: Path, tmp_path: Path) -> None:
    run = copy_run(trained_run, tmp_path)
    for path in (run / "predictions").glob("*.parquet"):
        df = pd.read_parquet(path)
        df.drop(columns=[c for c in df.columns if c.startswith("pred_dist_")]).to_parquet(path)
    (run / "predictions" / "test.parquet").unlink()
    grad = run / "telemetry" / "gradient_norms.csv"
    pd.read_csv(grad).assign(backbone_layer4=0.0).to_csv(grad, index=False)
    summary = build_report(run, shards=tmp_path / "no-shards")
    assert any(w.startswith("backbone_layer4: gradient norm is near zero") for w in summary["warnings"])
    names = {p.name for p in summary["pngs"]}
    assert "val_scatter.png" in names and not any("vote" in n or n.startswith("test_") for n in names)
    assert summary["test"] is None and "emd" not in summary["val"]
    notes = " ".join(summary["notes"])
    assert "regression mode" in notes and "test.parquet" in notes and "no readable shards" in notes
    text = summary["report"].read_text(encoding="utf-8")
    assert "regression mode" in text and "thumbs/" not in text
    assert '<p class="warn">backbone_layer4: gradient norm is near zero' in text
    for value in linked_files(summary["report"]):
        assert (summary["report"].parent / value).is_file()


def test_no_telemetry_single_epoch(trained_run: Path, tmp_path: Path) -> None:
    run = copy_run(trained_run, tmp_path)
    shutil.rmtree(run / "telemetry")
    history = json.loads((run / "training_history.json").read_text())
    (run / "training_history.json").write_text(json.dumps(history[:1]))
    for path in (run / "predictions").glob("val_epoch_*.parquet"):
        if path.name != "val_epoch_000.parquet":
            path.unlink()
    (run / "results.json").unlink()
    (run / "predictions" / "test.parquet").unlink()  # fewer plots: keeps the test fast
    summary = build_report(run)
    names = {p.name for p in summary["pngs"]}
    assert "gradient_norms.png" not in names and "learning_rates.png" not in names
    assert {"training_curves.png", "srcc_by_epoch.png", "val_scatter.png"} <= names
    assert summary["best_epoch"] == 0 and summary["warnings"] == []
    notes = " ".join(summary["notes"])
    assert "gradient_norms.csv" in notes and "learning_rates.csv" in notes and "single point" in notes
    for path in summary["pngs"]:
        check_png(path)


@pytest.mark.parametrize("missing", ["training_history.json", "predictions"])
def test_missing_inputs_raise(trained_run: Path, tmp_path: Path, missing: str) -> None:
    run = copy_run(trained_run, tmp_path)
    target = run / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(AvakitError, match=re.escape(str(target))):
        build_report(run)
    assert not (run / "report" / "report.html").exists()


def test_bad_names_file_raises(trained_run: Path, tmp_path: Path) -> None:
    with pytest.raises(AvakitError, match="tags.txt"):
        build_report(trained_run, tags=tmp_path / "tags.txt")


def test_group_stats_counts_each_tag_once_and_skips_none() -> None:
    df = pd.DataFrame(
        {
            "image_id": [1, 2, 3, 4, 5],
            "pred_mean": [5.0, 6.0, 4.0, 5.5, 7.0],
            "gt_mean": [5.5, 6.0, 4.5, 5.0, 6.0],
        }
    )
    labels = {
        1: {"tags": [3, 7], "challenge": 101},
        2: {"tags": [3, 0], "challenge": 101},
        3: {"tags": [7, 7], "challenge": 102},
        4: {"tags": [0, 0], "challenge": 101},
    }
    tags = group_stats(df, labels, "tags", {3: "Architecture"}, min_group=2)
    assert tags[["id", "name", "count"]].values.tolist() == [[3, "Architecture", 2], [7, "#7", 2]]
    assert tags.loc[0, "mae"] == pytest.approx(0.25)
    challenges = group_stats(df, labels, "challenge", {}, min_group=3)
    assert challenges[["id", "count"]].values.tolist() == [[101, 3]]
