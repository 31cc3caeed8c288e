"""Feature caches and head-only training on labels tables: K-point votes and a MOS."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.config import Config
from avakit.dataset.synthetic import make_synthetic_table
from avakit.errors import AvakitError
from avakit.training.features import extract_features
from avakit.training.fit import fit
from avakit.training.head_only import load_feature_split

runner = CliRunner()
MOS = ("model.output_mode=regression", "training.loss_type=mse")


def table_shards(root: Path, kind: str) -> Path:
    table = make_synthetic_table(root / "t", n=48, seed=8, kind=kind, k=5, scale=(0, 100))
    argv = ["shard", "--labels", str(table.labels), "--images", str(table.images), "--out", str(root / "s")]
    extra = ["--scale", "0:100"] if kind == "mos" else []
    result = runner.invoke(
        app, [*argv, *extra, "--short-side", "40", "--workers", "1", "--val-ratio", "0.25"]
    )
    assert result.exit_code == 0, result.output
    return root / "s"


@pytest.mark.parametrize("kind", ["votes", "mos"])
def test_cache_and_head_only_run_on_a_table(
    tiny_cfg: Callable[..., Config], tmp_path: Path, kind: str
) -> None:
    shards, cache = table_shards(tmp_path, kind), tmp_path / "cache"
    cfg = tiny_cfg(shards, f"data.features={cache}", *(MOS if kind == "mos" else ()))
    meta = extract_features(cfg, out=cache)
    assert meta["labels"]["kind"] == kind
    index = pd.read_parquet(cache / "val.index.parquet")
    cols = ["votes_1", "votes_5"] if kind == "votes" else ["mos"]
    assert set(cols) <= set(index.columns) and "votes_10" not in index.columns
    val = load_feature_split(cache, "val", meta)
    assert val.votes.shape[1] == (5 if kind == "votes" else 1) and val.scale.kind == kind
    run = fit(cfg, output_dir=tmp_path / "runs")
    results = json.loads((run / "results.json").read_text())
    assert results["labels"]["kind"] == kind and results["val"]["n"] == val.samples
    preds = pd.read_parquet(run / "predictions" / "val.parquet")
    lo, hi = (1.0, 5.0) if kind == "votes" else (0.0, 100.0)
    assert preds["pred_mean"].between(lo, hi).all() and preds["gt_mean"].between(lo, hi).all()


def test_a_cache_with_bad_labels_is_refused(tiny_cfg: Callable[..., Config], tmp_path: Path) -> None:
    shards, cache = table_shards(tmp_path, "mos"), tmp_path / "cache"
    cfg = tiny_cfg(shards, f"data.features={cache}", *MOS)
    meta = extract_features(cfg, ("val",), out=cache)
    index = pd.read_parquet(cache / "val.index.parquet")
    index.loc[0, "mos"] = np.float32(250.0)  # outside 0..100
    index.to_parquet(cache / "val.index.parquet")
    with pytest.raises(AvakitError, match="labels are not finite"):
        load_feature_split(cache, "val", meta)
    meta["labels"] = {**meta["labels"], "k": 3}  # a MOS scale has no K
    (cache / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(AvakitError, match=r"meta\.json: labels\.k"):
        extract_features(cfg, ("val",), out=cache)
