"""Frozen features: the cache, stale-cache refusal, head-only training, composing back to images."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.config import Config
from avakit.errors import AvakitError
from avakit.metrics import srcc
from avakit.model.iqa import IQA_NAMES, iqa_features
from avakit.training.features import check_cache, extract_features
from avakit.training.fit import fit
from avakit.training.head_only import load_feature_split
from avakit.training.rundir import eval_outputs

runner = CliRunner()


@pytest.fixture(scope="module")
def shards(trained_run: Path) -> Path:
    return trained_run.parent / "shards"


@pytest.fixture
def cfg_for(tiny_config: Callable[..., Config]) -> Callable[..., Config]:
    """`cfg_for(shards, cache, *extra)`: the tiny config on `shards` with the feature cache `cache`."""

    def make(shards: Path, cache: Path, *extra: str) -> Config:
        return tiny_config(f"data.shards={shards}", f"data.features={cache}", *extra)

    return make


def test_cache_round_trip_and_resume(
    tiny_train: tuple[str, ...], cfg_for: Callable[..., Config], shards: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    result = runner.invoke(
        app,
        [
            "features",
            "--out",
            str(cache),
            "--splits",
            "val",
            *sum((["--set", s] for s in [*tiny_train, f"data.shards={shards}"]), []),
        ],
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((cache / "meta.json").read_text())
    assert set(meta["splits"]) == {"val"} and meta["feature_dim"] == 512
    cfg = cfg_for(shards, cache)
    val = load_feature_split(cache, "val", meta)
    manifest = json.loads((shards / "manifest.json").read_text())
    assert val.features.dtype == np.float16
    assert val.features.shape == (manifest["splits"]["val"]["samples"], 512)
    assert val.iqa.shape[1] == len(IQA_NAMES) and np.isfinite(val.iqa).all()
    index = pd.read_parquet(cache / "val.index.parquet")
    assert {"image_id", "votes_1", "votes_10", "mean_score", *IQA_NAMES} <= set(index.columns)
    before = (cache / "val.features.npy").stat().st_mtime_ns
    meta = extract_features(cfg, ("train", "val", "test"), cache)  # resumes: val is kept
    assert (cache / "val.features.npy").stat().st_mtime_ns == before
    assert set(meta["splits"]) == {"train", "val", "test"}


def test_stale_cache_is_refused(cfg_for: Callable[..., Config], shards: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    extract_features(cfg_for(shards, cache), ("val",), cache)
    with pytest.raises(AvakitError, match="stale feature cache: crop_size"):
        check_cache(cache, cfg_for(shards, cache, "transform.crop_size=24"))
    with pytest.raises(AvakitError, match="other settings"):
        extract_features(cfg_for(shards, cache, "model.backbone=resnet34"), ("val",), cache)
    with pytest.raises(AvakitError, match="stale feature cache: layer"):
        check_cache(cache, cfg_for(shards, cache, "features.layer=layer3"))


@pytest.mark.parametrize("extra", [[], ["features.iqa=true", "features.layer=layer3"]])
def test_head_only_training_composes_into_a_full_model(
    cfg_for: Callable[..., Config], shards: Path, tmp_path: Path, extra: list
) -> None:
    cache = tmp_path / "cache"
    cfg = cfg_for(shards, cache, "training.max_epochs=3", "training.learning_rate=3e-3", *extra)
    extract_features(cfg, out=cache)
    run = fit(cfg, output_dir=tmp_path / "runs")
    results = json.loads((run / "results.json").read_text())
    for name in (
        "best_model.pt",
        "last.pt",
        "training_curves.png",
        "predictions/val_epoch_002.parquet",
        "telemetry/gradient_norms.csv",
    ):
        assert (run / name).is_file(), name
    grads = pd.read_csv(run / "telemetry/gradient_norms.csv")
    assert (grads["backbone_layer4"] == 0).all() and (grads["mlp_head"] > 0).all()
    # the checkpoint holds backbone (from the cache) + head: evaluate on raw shards agrees
    result = runner.invoke(app, ["evaluate", str(run), "--split", "test"])
    assert result.exit_code == 0, result.output
    evaluated = eval_outputs(run, "test", "best", "none")
    on_images = json.loads(evaluated.json.read_text())["metrics"]
    assert on_images["n"] == results["test"]["n"]
    assert on_images["srcc"] == pytest.approx(results["test"]["srcc"], abs=0.02)  # float16 cache
    cached = pd.read_parquet(evaluated.parquet)
    assert srcc(cached["pred_mean"], cached["gt_mean"]) == pytest.approx(on_images["srcc"], abs=1e-9)
    if extra:  # a fresh process builds the IQA model from the checkpoint (meta-device init)
        photo = next((shards.parent / "ava" / "images").glob("*.jpg"))
        proc = subprocess.run(
            [sys.executable, "-m", "avakit", "predict", str(photo), "--run", str(run), "--format", "json"],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        fresh = json.loads(proc.stdout)[0]["mean_score"]
        here = json.loads(
            runner.invoke(app, ["predict", str(photo), "--run", str(run), "--format", "json"]).stdout
        )
        assert fresh == pytest.approx(here[0]["mean_score"], abs=1e-6)


def test_iqa_features_behave() -> None:
    flat = torch.full((1, 3, 32, 32), 128.0)
    noisy = flat + torch.randn(1, 3, 32, 32) * 40
    red = torch.zeros(1, 3, 32, 32)
    red[:, 0] = 255
    f = iqa_features(torch.cat([flat, noisy.clamp(0, 255), red]))
    brightness, contrast, sharpness, colourfulness, saturation = f.T
    assert brightness[0] == pytest.approx(128 / 255, abs=1e-4) and contrast[0] == pytest.approx(0, abs=1e-5)
    assert sharpness[1] > sharpness[0] + 3 and colourfulness[2] > colourfulness[0]
    assert saturation[2] == pytest.approx(1.0) and saturation[0] == pytest.approx(0.0)


def test_head_only_needs_a_cache(cfg_for: Callable[..., Config], shards: Path, tmp_path: Path) -> None:
    with pytest.raises(AvakitError, match="meta.json: not found"):
        fit(cfg_for(shards, tmp_path / "none"), output_dir=tmp_path / "runs")


def test_layer3_only_for_resnets(cfg_for: Callable[..., Config], shards: Path, tmp_path: Path) -> None:
    with pytest.raises(AvakitError, match="features.layer: 'layer3' needs a ResNet"):
        cfg_for(shards, tmp_path, "model.backbone=vgg16", "features.layer=layer3")
    shutil.rmtree(tmp_path, ignore_errors=True)
