"""Shared mechanics (issue 9): one shard reader, one model placement and eval loader, typed interfaces."""

from __future__ import annotations

import dataclasses
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from avakit.config import load_config
from avakit.dataset.manifest import shard_files, verify_shards
from avakit.dataset.plan import ShardOptions, ShardPlan, plan_sharding
from avakit.dataset.samples import read_shard, tar_samples
from avakit.dataset.shards import write_shards
from avakit.dataset.sources import DataSource, SplitSource, resolve_split
from avakit.dataset.synthetic import SyntheticAva
from avakit.errors import AvakitError
from avakit.training.engine import StepContext, TelemetryHook, place_model
from avakit.training.head_only import FeatureSource
from avakit.training.loader import CountingLoader, eval_loader
from avakit.training.telemetry import Telemetry
from avakit.training.trainer import RunState, Trainer
from avakit.training.transforms import Normalize


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from avakit.dataset.synthetic import make_synthetic_ava

    root = tmp_path_factory.mktemp("mech")
    ava: SyntheticAva = make_synthetic_ava(root / "ava", n=24, seed=3, long_side=(40, 60))
    write_shards(
        plan_sharding(
            ava.ava_txt,
            ava.images,
            root / "shards",
            ShardOptions(short_side=32, shard_size=8, val_ratio=0.25, test_ratio=0.25),
        )
    )
    return root / "shards"


def test_read_shard_is_tar_samples_over_the_file(shards: Path) -> None:
    path = shard_files(shards, "train")[0]
    with path.open("rb") as f:
        expected = list(tar_samples(f, path.name))
    got = list(read_shard(path))
    assert got == expected and got
    assert all({"jpg", "json", "__key__", "__url__"} <= set(s) and s["__url__"] == path.name for s in got)


def test_read_shard_raises_for_a_damaged_or_missing_file(shards: Path, tmp_path: Path) -> None:
    data = shard_files(shards, "train")[0].read_bytes()
    cut = tmp_path / "cut.tar"
    for damaged in (data[:700], b"not a tar at all" * 100):  # cut inside the first member; garbage
        cut.write_bytes(damaged)
        with pytest.raises((tarfile.TarError, EOFError)):
            list(read_shard(cut))
    with pytest.raises(OSError):
        list(read_shard(tmp_path / "missing.tar"))


def test_inspect_and_report_read_through_the_one_reader(
    shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import avakit.dataset.manifest as manifest
    import avakit.report.shard_stats as shard_stats

    read: list[str] = []

    def counting(path: Path):  # type: ignore[no-untyped-def]
        read.append(Path(path).name)
        return read_shard(path)

    monkeypatch.setattr(manifest, "read_shard", counting)
    monkeypatch.setattr(shard_stats, "read_shard", counting)
    _, problems = verify_shards(shards)
    assert problems == [] and len(read) == sum(len(shard_files(shards, s)) for s in ("train", "val", "test"))
    read.clear()
    labels, jpgs, problems = shard_stats.read_split_samples(shards, "val", set())
    assert problems == [] and not jpgs and read == [p.name for p in shard_files(shards, "val")]
    assert all(label["image_id"] == key for key, label in labels.items())


def test_report_names_an_unreadable_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import avakit.report.shard_stats as shard_stats

    bad = tmp_path / "val-000000.tar"
    bad.write_bytes(b"not a tar at all" * 100)
    monkeypatch.setattr(shard_stats, "shard_files", lambda d, s: [bad])
    labels, _, problems = shard_stats.read_split_samples(tmp_path, "val", set())
    assert labels == {} and len(problems) == 1 and problems[0].startswith("val-000000.tar: unreadable: ")


def test_split_and_feature_sources_are_data_sources(shards: Path) -> None:
    source = resolve_split(str(shards), "val")
    feats = FeatureSource(
        split="val",
        ids=np.arange(3, dtype=np.int64),
        features=np.zeros((3, 4), np.float16),
        votes=np.ones((3, 10), np.float32),
        iqa=np.zeros((3, 5), np.float32),
        manifest_sha256=None,
        preprocessing=None,
    )
    typed: list[DataSource] = [source, feats]
    assert all(isinstance(s, DataSource) for s in typed)
    assert isinstance(source, SplitSource) and feats.entries == () and feats.urls == () and feats.samples == 3


def test_telemetry_is_a_telemetry_hook() -> None:
    assert issubclass(Telemetry, TelemetryHook)
    hook: TelemetryHook = Telemetry.__new__(Telemetry)
    assert isinstance(hook, TelemetryHook)


def test_place_model_and_eval_loader(shards: Path) -> None:
    cfg = load_config(
        None,
        [
            "training.channels_last=true",
            "transform.resize_size=40",
            "transform.crop_size=32",
            "data.num_workers=0",
        ],
    )
    model, normalize = place_model(torch.nn.Conv2d(3, 2, 1), cfg, torch.device("cpu"))
    assert isinstance(normalize, Normalize) and next(model.parameters()).device.type == "cpu"
    assert next(model.parameters()).is_contiguous(memory_format=torch.channels_last)
    source = resolve_split(str(shards), "val")
    loader = eval_loader(source, cfg, batch_size=4, pin_memory=False)
    assert isinstance(loader, CountingLoader) and loader.expected == source.samples
    seen = sum(int(valid.sum()) for _, _, _, valid in loader)
    assert seen == source.samples and loader.counts.seen == seen
    flipped = eval_loader(source, cfg, batch_size=4, pin_memory=False, tta="flip")
    assert next(iter(flipped))[0].shape[1:] == (2, 3, 32, 32)
    with pytest.raises(AvakitError, match="^tta must be one of"):
        eval_loader(source, cfg, batch_size=4, pin_memory=False, tta="rotate")


@pytest.mark.parametrize("cls", [ShardOptions, ShardPlan, StepContext, RunState, Trainer, FeatureSource])
def test_wide_dataclasses_are_keyword_only(cls: type) -> None:
    assert all(f.kw_only for f in dataclasses.fields(cls))
    with pytest.raises(TypeError):
        cls(1)
