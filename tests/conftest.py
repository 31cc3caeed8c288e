"""Shared fixtures: every test builds its own small data with avakit's synthetic generator.

Tests get their data and settings from these fixtures (never `from conftest import ...`):
`tiny_train` (the small training overrides), `tiny_config` (a Config from them plus extra
overrides), `tiny_cfg` (the same on a shards folder), `shard_args` (a small `shard` argv),
`shared_shards` (read-only shards built once per session), `trained_run`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from avakit.config import Config, load_config
from avakit.dataset.synthetic import SyntheticAva, make_synthetic_ava

_TINY_TRAIN = (
    "model.backbone=resnet18",
    "model.pretrained=false",
    "model.mlp_hidden_dims=[16]",
    "transform.resize_size=40",
    "transform.crop_size=32",
    "training.batch_size=16",
    "training.max_epochs=2",
    "training.amp=off",
    "training.warmup_epochs=1",
    "data.num_workers=0",
    "data.shuffle_buffer=50",
    "telemetry.collect_every_n=2",
    "device=cpu",
    "log_interval=1",
)


@pytest.fixture
def tiny_ava(tmp_path: Path) -> SyntheticAva:
    """40 small synthetic images (long side 64-160 px) in the AVA release layout."""
    return make_synthetic_ava(tmp_path / "ava", n=40, seed=1, long_side=(64, 160))


@pytest.fixture(scope="session")
def shared_ava(tmp_path_factory: pytest.TempPathFactory) -> SyntheticAva:
    """A read-only synthetic set shared by the tests that only read it."""
    return make_synthetic_ava(tmp_path_factory.mktemp("ava"), n=60, seed=2, long_side=(64, 160))


@pytest.fixture(scope="session")
def tiny_train() -> tuple[str, ...]:
    """The `--set` overrides of a tiny CPU training run (resnet18, 32 px crops, 2 epochs).

    A tuple, so no test can change it for the others; session-scoped, so module fixtures use it too.
    """
    return _TINY_TRAIN


@pytest.fixture(scope="session")
def tiny_config(tiny_train: tuple[str, ...]) -> Callable[..., Config]:
    """Factory: `tiny_config(*overrides)` is the Config of `tiny_train` plus `overrides`."""

    def make(*overrides: str) -> Config:
        return load_config(None, [*tiny_train, *overrides])

    return make


@pytest.fixture(scope="session")
def tiny_cfg(tiny_config: Callable[..., Config]) -> Callable[..., Config]:
    """Factory: `tiny_cfg(shards, *overrides)` is the tiny training config reading `shards`."""
    return lambda shards, *extra: tiny_config(f"data.shards={shards}", *extra)


@pytest.fixture(scope="session")
def shard_args() -> Callable[..., list[str]]:
    """Factory: `shard_args(ava, out, *extra, images=None)` is the argv of a small `avakit shard` run.

    32 px short side, 10 rows per shard, one worker; `extra` options follow (a later option wins).
    """

    def make(ava: SyntheticAva, out: Path, *extra: str, images: Path | None = None) -> list[str]:
        common = ["--short-side", "32", "--shard-size", "10", "--workers", "1"]
        paths = ["--ava-txt", str(ava.ava_txt), "--images", str(images or ava.images), "--out", str(out)]
        return ["shard", *paths, *common, *extra]

    return make


@pytest.fixture(scope="session")
def shared_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only shards of 120 synthetic images (short side 48, 16 rows per shard, 60/20/20 split).

    Built once per session; tests must not write into it (copy it first). The synthetic AVA
    release it was made from is `shared_shards.parent / "ava"`.
    """
    from avakit.dataset.plan import ShardOptions, plan_sharding
    from avakit.dataset.shards import write_shards

    root = tmp_path_factory.mktemp("trained")
    ava = make_synthetic_ava(root / "ava", n=120, seed=12, long_side=(64, 128))
    write_shards(
        plan_sharding(
            ava.ava_txt,
            ava.images,
            root / "shards",
            ShardOptions(short_side=48, shard_size=16, val_ratio=0.2, test_ratio=0.2),
        )
    )
    return root / "shards"


@pytest.fixture(scope="session")
def trained_run(shared_shards: Path, tiny_train: tuple[str, ...]) -> Path:
    """A tiny finished run folder (2 epochs, distribution mode) on the `shared_shards`.

    Built once per session; tests must not modify it (copy it first). Its shards folder is
    `run/../shards`, the synthetic AVA release `run/../ava`.
    """
    from avakit.training.fit import fit

    root = shared_shards.parent
    cfg = load_config(None, [*tiny_train, f"data.shards={shared_shards}", "name=tiny"])
    run = fit(cfg, output_dir=root / "runs")
    moved = root / "run"
    run.rename(moved)
    return moved
