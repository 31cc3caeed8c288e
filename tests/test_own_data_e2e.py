"""Your own data as a user runs it: shard -> train -> evaluate -> report -> predict -> export ->
predict --onnx on a 1-7 vote table and on a lower-is-better 0-100 MOS table, every number in the
dataset's own units and nothing that speaks of AVA's 1-10 scale."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.dataset.synthetic import make_synthetic_table
from avakit.scores import Scale

runner = CliRunner()
CASES = {
    "votes": (["--val-ratio", "0.2"], (), Scale("votes", 1.0, 7.0, 7, True, None)),
    "mos": (
        ["--scale", "0:100", "--lower-is-better", "--val-ratio", "0.2"],
        ("model.output_mode=regression", "training.loss_type=mse"),
        Scale("mos", 0.0, 100.0, None, False, None),
    ),
}


def run(*argv: str) -> str:
    result = runner.invoke(app, list(argv))
    assert result.exit_code == 0, result.output
    assert "1-10" not in result.output, result.output
    return result.output


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["votes", "mos"])
def test_the_whole_loop_speaks_the_data_units(tiny_train: tuple[str, ...], tmp_path: Path, kind: str) -> None:
    shard_extra, train_extra, scale = CASES[kind]
    table = make_synthetic_table(
        tmp_path / "data", n=80, seed=11, kind=kind, k=7, scale=(0, 100), lower_is_better=True, groups=20
    )
    shards = tmp_path / "shards"
    out = run(
        "shard",
        "--labels",
        str(table.labels),
        "--images",
        str(table.images),
        "--out",
        str(shards),
        "--short-side",
        "40",
        "--workers",
        "1",
        *shard_extra,
    )
    assert scale.score_name in flat(out)
    sets = [
        x
        for item in (
            *tiny_train,
            "training.warmup_epochs=0",
            *train_extra,
            f"data.shards={shards}",
            f"output_dir={tmp_path / 'runs'}",
            "name=mine",
        )
        for x in ("--set", item)
    ]
    out = run("train", *sets)
    run_dir = next((tmp_path / "runs").glob("mine-*"))
    results = json.loads((run_dir / "results.json").read_text())
    assert Scale.from_dict(results["labels"], "labels") == scale
    assert "accuracy" not in results["test"] and results["threshold"] is None  # no cut unless set
    preds = pd.read_parquet(run_dir / "predictions" / "test.parquet")
    assert (
        preds["pred_mean"].between(scale.lo, scale.hi).all()
        and preds["gt_mean"].between(scale.lo, scale.hi).all()
    )
    if kind == "votes":
        assert [c for c in preds.columns if c.startswith("pred_dist_")] == scale.point_names("pred_dist_")

    out = run("evaluate", str(run_dir), "--split", "test", "--threshold", "4" if kind == "votes" else "50")
    report = json.loads(next((run_dir / "eval").glob("test_best_*.json")).read_text())
    assert report["labels"] == scale.as_dict() and report["metrics"]["threshold"] in (4.0, 50.0)
    assert {"accuracy", "majority_baseline", "srcc_ci", "plcc_ci"} <= set(report["metrics"])

    out = run("report", str(run_dir))
    html = (run_dir / "report" / "report.html").read_text()
    assert scale.score_name in html and "1-10" not in html and "above 5" not in html

    photos = sorted(table.images.glob("*.*"))[:3]
    out = run("predict", *map(str, photos), "--run", str(run_dir))
    assert scale.score_name in flat(out)
    torch_rows = json.loads(run("predict", *map(str, photos), "--run", str(run_dir), "--format", "json"))
    assert all(scale.lo <= r["mean_score"] <= scale.hi and r["score"] == scale.score_name for r in torch_rows)
    assert len([k for k in torch_rows[0] if k.startswith("dist_")]) == (7 if kind == "votes" else 0)

    onnx = tmp_path / "model.onnx"
    out = run("export", str(run_dir), "--output", str(onnx))
    onnx_rows = json.loads(run("predict", *map(str, photos), "--onnx", str(onnx), "--format", "json"))
    for a, b in zip(torch_rows, onnx_rows, strict=True):
        assert b["mean_score"] == pytest.approx(a["mean_score"], abs=1e-3 * (scale.hi - scale.lo))
        assert b["score"] == a["score"]
