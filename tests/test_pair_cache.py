"""Frozen mode's feature cache for the pairwise task: `avakit features` on a pairwise config,
head-only training from it, the trained head composed into a full model, and every way a
cache can be stale, foreign or damaged (one line, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.config import load_config
from avakit.dataset.synthetic_pairs import make_synthetic_phototriage
from avakit.training.pair_cache import check_pair_cache
from avakit.training.pair_head_only import load_pair_split, pair_feature_loader

runner = CliRunner()
FROZEN = Path(__file__).parents[1] / "configs" / "pairwise_frozen.yaml"
FAST = (
    "model.pretrained=false",
    "model.mlp_hidden_dims=[32]",
    "features.sources=[iqa,resnet50_layer3]",
    "transform.resize_size=48",
    "transform.crop_size=48",
    "training.max_epochs=3",
    "training.batch_size=8",
    "data.num_workers=0",
    "device=cpu",
)


def run(*argv: str, code: int = 0) -> str:
    result = runner.invoke(app, list(argv))
    assert result.exit_code == code, result.output
    return " ".join(result.output.split())


def sets(*extra: str) -> list[str]:
    return [a for s in (*FAST, *extra) for a in ("--set", s)]


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(shards, cache) of a 40-series synthetic release."""
    root = tmp_path_factory.mktemp("ptc")
    data = make_synthetic_phototriage(root / "PT", n_series=40, seed=5, long_side=(64, 80))
    shards, cache = root / "shards", root / "cache"
    run(
        "shard",
        "--phototriage",
        str(data.root),
        "--out",
        str(shards),
        "--short-side",
        "48",
        "--val-ratio",
        "0.25",
    )
    out = run("features", "--config", str(FROZEN), *sets(f"data.shards={shards}"), "--out", str(cache))
    assert "series" in out and "photos" in out
    return shards, cache


def test_the_cache_trains_a_head_that_composes_into_a_full_model(cached, tmp_path: Path) -> None:
    shards, cache = cached
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["labels"]["kind"] == "pairs" and meta["feature_dim"] == 1029
    assert meta["slices"] == {"iqa": [0, 5], "resnet50_layer3": [5, 1029]}
    run(
        "train",
        "--config",
        str(FROZEN),
        *sets(f"data.shards={shards}", f"data.features={cache}", f"output_dir={tmp_path}", "name=c"),
    )
    (run_dir,) = tmp_path.glob("c-*")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test"]["n_pairs"] > 0
    run("evaluate", str(run_dir))  # the full model (sources + head) on the shards' photos
    evaluated = json.loads(next((run_dir / "eval").glob("test_best*.json")).read_text())["metrics"]
    assert evaluated["pair_accuracy"] == pytest.approx(results["test"]["pair_accuracy"], abs=0.02)
    assert evaluated["log_loss"] == pytest.approx(results["test"]["log_loss"], abs=0.02)  # float16 cache


def test_a_stale_or_foreign_cache_is_refused(cached, tmp_path: Path) -> None:
    shards, cache = cached
    base = (f"data.shards={shards}", f"data.features={cache}", f"output_dir={tmp_path}")
    out = run("train", "--config", str(FROZEN), *sets(*base, "features.sources=[iqa]"), code=2)
    assert "stale feature cache" in out and "iqa+resnet50_layer3" in out
    out = run("train", "--config", str(FROZEN), *sets(*base, "transform.crop_size=40"), code=2)
    assert "crop_size" in out
    out = run("train", "--config", str(FROZEN), *sets(*base, "features.sources=[]"), code=2)
    assert "data.features" in out and "features.sources" in out
    assert not list(tmp_path.glob("*-*"))


def test_extraction_resumes_per_split_and_refuses_other_settings(cached, tmp_path: Path) -> None:
    shards, cache = cached
    out_dir = tmp_path / "c2"
    cfg_sets = sets(f"data.shards={shards}")
    run("features", "--config", str(FROZEN), *cfg_sets, "--out", str(out_dir), "--splits", "train")
    assert json.loads((out_dir / "meta.json").read_text())["splits"].keys() == {"train"}
    run("features", "--config", str(FROZEN), *cfg_sets, "--out", str(out_dir))
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(
            np.load(out_dir / f"{split}.features.npy"), np.load(cache / f"{split}.features.npy")
        )
    out = run(
        "features",
        "--config",
        str(FROZEN),
        *sets(f"data.shards={shards}", "features.sources=[iqa]"),
        "--out",
        str(out_dir),
        code=2,
    )
    assert "other settings" in out


def test_cached_batches_are_whole_series_with_in_batch_pair_indices(cached) -> None:
    shards, cache = cached
    cfg = load_config(FROZEN, [*FAST, f"data.shards={shards}", f"data.features={cache}"])
    meta = check_pair_cache(cache, cfg)
    source = load_pair_split(cache, "train", meta)
    sizes = dict(zip(source.series, np.diff(source.photo_start), strict=True))
    seen = set()
    for feats, labels, ids, valid in pair_feature_loader(
        source, batch_size=5, train=True, seed=1, epoch=0, fraction=0.5
    ):
        assert len(feats) == len(labels["photo_series"]) == sum(sizes[int(s)] for s in ids) and valid.all()
        idx, series = labels["idx"], labels["photo_series"]
        assert (series[idx[:, 0]] == labels["pair_series"]).all() and (
            series[idx[:, 1]] == labels["pair_series"]
        ).all()
        seen |= set(ids.tolist())
    assert 0 < len(seen) < source.samples


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: np.save(c / "val.features.npy", np.zeros((3, 1029), np.float16)), "meta.json promises"),
        (lambda c: (c / "val.photos.parquet").write_bytes(b"not parquet"), "unreadable feature cache file"),
        (lambda c: _edit(c / "val.pairs.parquet", j=99), "pairs outside their series"),
        (lambda c: _edit(c / "val.photos.parquet", index=0), "consecutive rows"),
        (lambda c: (c / "meta.json").write_text("[]"), "expected a JSON object"),
    ],
)
def test_a_damaged_cache_is_one_line(cached, tmp_path: Path, damage, message: str) -> None:
    import shutil

    shards, cache = cached
    copy = tmp_path / "copy"
    shutil.copytree(cache, copy)
    damage(copy)
    out = run(
        "train",
        "--config",
        str(FROZEN),
        *sets(f"data.shards={shards}", f"data.features={copy}", f"output_dir={tmp_path}"),
        code=2,
    )
    assert message in out and "Traceback" not in out


def _edit(path: Path, **values: int) -> None:
    df = pd.read_parquet(path)
    for col, value in values.items():
        df[col] = value
    df.to_parquet(path)
