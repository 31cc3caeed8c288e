"""Shared fixtures: every test builds its own small data with avakit's synthetic generator."""

from __future__ import annotations

from pathlib import Path

import pytest

from avakit.dataset.synthetic import SyntheticAva, make_synthetic_ava


@pytest.fixture
def tiny_ava(tmp_path: Path) -> SyntheticAva:
    """40 small synthetic images (long side 64-160 px) in the AVA release layout."""
    return make_synthetic_ava(tmp_path / "ava", n=40, seed=1, long_side=(64, 160))


@pytest.fixture(scope="session")
def shared_ava(tmp_path_factory: pytest.TempPathFactory) -> SyntheticAva:
    """A read-only synthetic set shared by the tests that only read it."""
    return make_synthetic_ava(tmp_path_factory.mktemp("ava"), n=60, seed=2, long_side=(64, 160))


TINY_TRAIN = [
    "model.backbone=resnet18", "model.pretrained=false", "model.mlp_hidden_dims=[16]",
    "transform.resize_size=40", "transform.crop_size=32", "training.batch_size=16",
    "training.max_epochs=2", "training.amp=off", "training.warmup_epochs=1", "data.num_workers=0",
    "data.shuffle_buffer=50", "telemetry.collect_every_n=2", "device=cpu", "log_interval=1",
]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny finished run folder (2 epochs, distribution mode) on 120 synthetic images.

    Built once per session; tests must not modify it (copy it first). Its shards folder is
    `run/../shards`, the synthetic AVA release `run/../ava`.
    """
    from avakit.config import load_config
    from avakit.dataset.plan import ShardOptions, plan_sharding
    from avakit.dataset.shards import write_shards
    from avakit.training.fit import fit

    root = tmp_path_factory.mktemp("trained")
    ava = make_synthetic_ava(root / "ava", n=120, seed=12, long_side=(64, 128))
    write_shards(plan_sharding(ava.ava_txt, ava.images, root / "shards",
                               ShardOptions(short_side=48, shard_size=16, val_ratio=0.2, test_ratio=0.2)))
    cfg = load_config(None, [*TINY_TRAIN, f"data.shards={root / 'shards'}", "name=tiny"])
    run = fit(cfg, output_dir=root / "runs")
    moved = root / "run"
    run.rename(moved)
    return moved
