"""`avakit train`: the run folder, resume equivalence, config errors, NaN stop, learnability."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.config import Config, load_config
from avakit.dataset.plan import ShardOptions, plan_sharding
from avakit.dataset.shards import write_shards
from avakit.dataset.synthetic import make_synthetic_ava
from avakit.training.checkpoint import run_config
from avakit.training.fit import fit

runner = CliRunner()


@pytest.fixture
def shards(shared_shards: Path) -> Path:
    """The session's read-only shards (120 synthetic images, short side 48, 16 rows per shard)."""
    return shared_shards


def test_cli_one_epoch_run_folder(tiny_train: tuple[str, ...], shards: Path, tmp_path: Path) -> None:
    args = ["train", "--output-dir", str(tmp_path)]
    for item in [*tiny_train, f"data.shards={shards}", "training.max_epochs=1", "name=tiny"]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run = next(tmp_path.glob("tiny-*"))
    for name in (
        "config.yaml",
        "training.log",
        "training_history.json",
        "results.json",
        "best_model.pt",
        "last.pt",
        "training_curves.png",
        "predictions/val_epoch_000.parquet",
        "predictions/test.parquet",
        "telemetry/gradient_norms.csv",
        "telemetry/learning_rates.csv",
    ):
        assert (run / name).is_file(), name
    history = json.loads((run / "training_history.json").read_text())
    assert len(history) == 1 and {
        "train_loss",
        "val_loss",
        "val_srcc",
        "val_plcc",
        "val_accuracy",
        "lr",
        "img_per_s",
    } <= set(history[0])
    results = json.loads((run / "results.json").read_text())
    assert {"val", "test", "epochs", "wall_time_s", "train_img_per_s"} <= set(results)
    assert {"srcc", "plcc", "accuracy", "emd", "mae", "rmse", "n"} <= set(results["test"])
    df = pd.read_parquet(run / "predictions/val_epoch_000.parquet")
    assert list(df.columns) == [
        "image_id",
        "pred_mean",
        "gt_mean",
        *[f"pred_dist_{k}" for k in range(1, 11)],
        *[f"gt_dist_{k}" for k in range(1, 11)],
    ]
    manifest = json.loads((shards / "manifest.json").read_text())
    assert len(df) == manifest["splits"]["val"]["samples"] and df["image_id"].is_unique
    assert df[[f"pred_dist_{k}" for k in range(1, 11)]].sum(axis=1).round(5).eq(1).all()
    grads = pd.read_csv(run / "telemetry/gradient_norms.csv")
    assert list(grads.columns) == [
        "batch_idx",
        "epoch",
        "overall",
        "backbone_layer4",
        "mlp_head",
        "mlp_layer_0",
        "mlp_layer_1",
    ]
    assert (grads["batch_idx"] % 2 == 0).all() and (grads["overall"] > 0).all()
    lrs = pd.read_csv(run / "telemetry/learning_rates.csv")
    assert list(lrs.columns) == ["batch_idx", "epoch", "lr_group_0", "lr_group_1"]
    assert (lrs["lr_group_1"] / lrs["lr_group_0"]).round(6).eq(10).all()  # differential LR
    for name in ("best_model.pt", "last.pt"):
        ckpt = torch.load(run / name, weights_only=True)
        assert {"model_state_dict", "config", "epoch", "metrics"} <= set(ckpt)
    assert "epoch 000" in (run / "training.log").read_text()


@pytest.mark.slow
def test_resume_equals_uninterrupted(tiny_cfg: Callable[..., Config], shards: Path, tmp_path: Path) -> None:
    full = fit(tiny_cfg(shards), output_dir=tmp_path / "a")
    part = fit(tiny_cfg(shards), output_dir=tmp_path / "b", stop_after_epochs=1)
    assert not (part / "results.json").exists() and (part / "last.pt").is_file()
    resumed = fit(run_config(part), resume=part)
    assert resumed == part
    a = json.loads((full / "results.json").read_text())
    b = json.loads((part / "results.json").read_text())
    for split in ("val", "test"):
        for key in ("srcc", "plcc", "accuracy", "emd", "mae", "loss"):
            assert a[split][key] == pytest.approx(b[split][key], abs=1e-6), (split, key)
    ha = json.loads((full / "training_history.json").read_text())
    hb = json.loads((part / "training_history.json").read_text())
    assert [h["train_loss"] for h in ha] == pytest.approx([h["train_loss"] for h in hb], abs=1e-6)
    ga = pd.read_csv(full / "telemetry/gradient_norms.csv")
    gb = pd.read_csv(part / "telemetry/gradient_norms.csv")
    assert ga["batch_idx"].tolist() == gb["batch_idx"].tolist()  # no duplicated or lost rows


def test_regression_mode_and_quick_experiment(
    tiny_cfg: Callable[..., Config], shards: Path, tmp_path: Path
) -> None:
    cfg = tiny_cfg(
        shards,
        "model.output_mode=regression",
        "training.loss_type=mse",
        "training.max_epochs=1",
        "training.scheduler=plateau",
        "model.freeze=partial",
    )
    run = fit(cfg, output_dir=tmp_path, quick_experiment=0.5)
    df = pd.read_parquet(run / "predictions/val_epoch_000.parquet")
    assert "pred_dist_1" not in df and df["pred_mean"].between(1, 10).all()
    manifest = json.loads((shards / "manifest.json").read_text())
    assert 0 < len(df) < manifest["splits"]["val"]["samples"]
    run2 = fit(cfg, output_dir=tmp_path / "again", quick_experiment=0.5)
    df2 = pd.read_parquet(run2 / "predictions/val_epoch_000.parquet")
    assert df["image_id"].tolist() == df2["image_id"].tolist()  # the same deterministic subset


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.lerning_rate=0.1", "training.lerning_rate"),
        ("training.loss_type=mse", "training.loss_type"),
        ("training.batch_size=0", "training.batch_size"),
        ("model.backbone=resnet9", "model.backbone"),
    ],
)
def test_config_errors_exit_2(tmp_path: Path, override: str, message: str) -> None:
    result = runner.invoke(app, ["train", "--output-dir", str(tmp_path), "--set", override])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())  # failed before any work


def test_missing_shards_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "train",
            "--set",
            f"data.shards={tmp_path / 'none'}",
            "--set",
            "device=cpu",
            "--set",
            "model.pretrained=false",
            "--output-dir",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2 and "manifest.json: not found" in result.output


def test_nan_loss_stops_with_step(
    tiny_train: tuple[str, ...], shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from avakit.model import losses

    calls = {"n": 0}
    real = losses.LOSSES["emd"]

    def flaky(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = real.fn(logits, target)
        return loss * math.nan if calls["n"] == 8 else loss  # epoch 1 (5 train batches/epoch)

    monkeypatch.setitem(losses.LOSSES, "emd", losses.LossSpec(flaky, "distribution"))
    args = ["train", "--output-dir", str(tmp_path)]
    for item in [*tiny_train, f"data.shards={shards}", "name=nan"]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "loss is nan at epoch 1, optimizer step" in result.output
    run = next(tmp_path.glob("nan-*"))
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 0  # the last good checkpoint


@pytest.mark.slow
def test_demo_config_learns(tmp_path: Path) -> None:
    """Learnability: configs/demo.yaml (seed 42, 4 epochs, 240 synthetic images) reaches val SRCC >= 0.6."""
    root = tmp_path
    ava = make_synthetic_ava(root / "ava", n=240, seed=0)
    plan = plan_sharding(ava.ava_txt, ava.images, root / "shards", ShardOptions(shard_size=100))
    write_shards(plan, workers=2)
    cfg_path = Path(__file__).parents[1] / "configs" / "demo.yaml"
    cfg = load_config(cfg_path, [f"data.shards={root / 'shards'}", "training.max_epochs=4"])
    run = fit(cfg, output_dir=root / "out")
    results = json.loads((run / "results.json").read_text())
    assert results["val"]["srcc"] >= 0.6, results["val"]
