"""The streaming loader: exactly-once validation under workers, epoch shuffling, corrupt samples."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from avakit.config import TransformConfig
from avakit.dataset.plan import ShardOptions, plan_sharding
from avakit.dataset.shards import write_shards
from avakit.dataset.sources import resolve_split
from avakit.dataset.synthetic import make_synthetic_ava
from avakit.errors import AvakitError
from avakit.training.loader import SampleDecoder, keep_sample, make_loader
from avakit.training.transforms import EvalPreset, Normalize, TrainPreset

CFG = TransformConfig(resize_size=40, crop_size=32)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    ava = make_synthetic_ava(root / "ava", n=80, seed=31, long_side=(64, 128))
    write_shards(
        plan_sharding(
            ava.ava_txt, ava.images, root / "shards", ShardOptions(short_side=48, shard_size=6, val_ratio=0.3)
        )
    )
    return root / "shards"


def ids_of(loader) -> list[int]:
    return [int(i) for _, _, ids, _ in loader for i in ids]


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers, 2 cores
@pytest.mark.parametrize("workers", [0, 2, 3])
def test_validation_sees_every_sample_once(shards: Path, workers: int) -> None:
    source = resolve_split(str(shards), "val")
    manifest = json.loads((shards / "manifest.json").read_text())
    expected = sorted(i for s in manifest["splits"]["val"]["shards"] for i in range(s["samples"]))
    assert len(source.files) >= 3 and not source.urls
    loader = make_loader(
        source,
        SampleDecoder(EvalPreset(CFG), 32),
        batch_size=5,
        train=False,
        seed=0,
        epoch=0,
        num_workers=workers,
    )
    ids = ids_of(loader)
    assert len(ids) == len(set(ids)) == len(expected) == source.samples


def test_training_epochs_are_shuffled_and_reproducible(shards: Path) -> None:
    source = resolve_split(str(shards), "train")
    decoder = SampleDecoder(TrainPreset(CFG), 32)

    def epoch_ids(epoch: int) -> list[int]:
        return ids_of(
            make_loader(source, decoder, batch_size=8, train=True, seed=3, epoch=epoch, shuffle_buffer=20)
        )

    e0, e0_again, e1 = epoch_ids(0), epoch_ids(0), epoch_ids(1)
    assert e0 == e0_again and e0 != e1 and sorted(e0) == sorted(e1)
    assert len(e0) == source.samples


def test_batches_are_uint8_and_normalise_on_device(shards: Path) -> None:
    source = resolve_split(str(shards), "val")
    images, votes, ids, valid = next(
        iter(
            make_loader(
                source, SampleDecoder(EvalPreset(CFG), 32), batch_size=4, train=False, seed=0, epoch=0
            )
        )
    )
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32)
    assert votes.shape == (4, 10) and valid.all() and ids.dtype == torch.int64
    x = Normalize(CFG.normalize_mean, CFG.normalize_std)(images)
    expected = (images.float() / 255 - torch.tensor(CFG.normalize_mean).view(1, 3, 1, 1)) / torch.tensor(
        CFG.normalize_std
    ).view(1, 3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-5)


def test_corrupt_image_is_flagged_not_dropped(tmp_path: Path) -> None:
    good = io.BytesIO()
    Image.new("RGB", (60, 48), (10, 200, 30)).save(good, format="JPEG")
    label = {
        "image_id": 1,
        "index": 1,
        "votes": [0, 0, 1, 2, 3, 2, 1, 0, 0, 0],
        "tags": [0, 0],
        "challenge": 1,
    }
    with wds.TarWriter(str(tmp_path / "val-000000.tar")) as sink:
        sink.write({"__key__": "1", "jpg": good.getvalue(), "json": json.dumps(label).encode()})
        sink.write(
            {
                "__key__": "2",
                "jpg": b"\xff\xd8 not really a jpeg",
                "json": json.dumps({**label, "image_id": 2}).encode(),
            }
        )
    source = resolve_split({"val": str(tmp_path / "val-{000000..000000}.tar")}, "val")
    assert source.samples is None and len(source.urls) == 1
    batch = next(
        iter(
            make_loader(
                source, SampleDecoder(EvalPreset(CFG), 32), batch_size=4, train=False, seed=0, epoch=0
            )
        )
    )
    assert batch[2].tolist() == [1, 2] and batch[3].tolist() == [True, False]


def test_quick_experiment_subset_is_deterministic() -> None:
    keys = [str(i) for i in range(20000)]
    kept = [k for k in keys if keep_sample(k, 0.1)]
    assert 1800 < len(kept) < 2200 and kept == [k for k in keys if keep_sample(k, 0.1)]
    assert all(keep_sample(k, 1.0) for k in keys[:10])


def test_unknown_split_and_source(shards: Path) -> None:
    with pytest.raises(AvakitError, match="no URLs given for split 'test'"):
        resolve_split({"train": "a.tar"}, "test")
    with pytest.raises(AvakitError, match="manifest.json: not found"):
        resolve_split(str(shards.parent), "train")


def test_pipeline_pickles_for_spawned_workers(shards: Path) -> None:
    """spawn/forkserver workers (macOS, Python >= 3.14) receive the pipeline pickled."""
    import pickle

    from avakit.training.loader import make_pipeline

    source = resolve_split(str(shards), "train")
    pipeline = make_pipeline(
        list(source.entries),
        SampleDecoder(TrainPreset(CFG), 32),
        batch_size=4,
        train=True,
        seed=0,
        epoch=0,
        fraction=0.5,
    )
    copy = pickle.loads(pickle.dumps(pipeline))
    assert sum(len(b[2]) for b in copy) == sum(len(b[2]) for b in pipeline) > 0
