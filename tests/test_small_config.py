"""configs/small.yaml: it loads as documented, and a tiny run with its keys works on a votes table."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.config import load_config
from avakit.dataset.synthetic import make_synthetic_table
from avakit.training.fit import fit

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "configs" / "small.yaml"
runner = CliRunner()


def test_small_config_loads_for_random_init_on_cpu() -> None:
    cfg = load_config(SMALL, [])
    assert cfg.model.backbone == "resnet18" and cfg.model.pretrained is False  # offline, random init
    assert cfg.transform.crop_size <= cfg.transform.resize_size
    assert cfg.model.output_mode == "distribution" and cfg.training.loss_type == "emd"
    assert cfg.training.early_stop_patience < cfg.training.max_epochs and cfg.eval.threshold is None


def test_small_config_switches_to_mos_as_its_header_says() -> None:
    header = SMALL.read_text()
    assert "model.output_mode=regression" in header and "training.loss_type=mse" in header
    cfg = load_config(SMALL, ["model.output_mode=regression", "training.loss_type=mse"])
    assert cfg.model.output_mode == "regression"


def test_small_config_trains_on_a_votes_table(tmp_path: Path) -> None:
    table = make_synthetic_table(tmp_path / "t", n=40, seed=3, kind="votes", k=5, long_side=(64, 96))
    out = tmp_path / "shards"
    args = ["shard", "--labels", str(table.labels), "--images", str(table.images), "--out", str(out)]
    result = runner.invoke(app, [*args, "--short-side", "48", "--workers", "1", "--val-ratio", "0.25"])
    assert result.exit_code == 0, result.output
    small = [
        f"data.shards={out}",
        "device=cpu",
        "data.num_workers=0",
        "model.mlp_hidden_dims=[16]",
        "transform.resize_size=40",
        "transform.crop_size=32",
        "training.batch_size=8",
        "training.max_epochs=2",
        "telemetry.enabled=false",
    ]
    run = fit(load_config(SMALL, small), output_dir=tmp_path / "runs")
    results = json.loads((run / "results.json").read_text())
    assert results["labels"]["k"] == 5 and results["epochs"] == 2
    assert -1 <= results["val"]["srcc"] <= 1 and "accuracy" not in results["val"]  # no threshold for tables
    result = runner.invoke(app, ["evaluate", str(run), "--split", "val", "--device", "cpu"])
    assert result.exit_code == 0, result.output  # no threshold: no accuracy and no majority row
    assert "SRCC" in result.output and "majority" not in result.output
