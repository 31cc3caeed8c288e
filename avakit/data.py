"""Streaming pipeline: shard URLs -> decoded, augmented, batched uint8 tensors.

One sample = (uint8 image [3, crop, crop], votes float [10], image id, valid flag). JPEGs are
decoded with torchvision.io.decode_jpeg (libjpeg-turbo) in DataLoader workers; shards are
split across DDP ranks (in the main process) and across workers (webdataset.split_by_worker),
so every validation sample is seen exactly once per evaluation. Shard order and the sample
shuffle buffer are seeded by (seed, epoch), so an epoch's order does not depend on what ran
before it: a resumed run sees the same data as an uninterrupted one.

A sample whose image does not decode is kept as an all-zero image with valid=False; the
training loop drops and counts those, so corrupt data is never silently skipped.
"""

from __future__ import annotations

import functools
import json
import random
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import braceexpand
import torch
import webdataset as wds
from torch.utils.data import DataLoader, default_collate
from torchvision.io import ImageReadMode, decode_jpeg

from avakit.errors import AvakitError
from avakit.manifest import file_sha256, load_manifest

# torchvision 0.29 deprecates its JPEG decoder in favour of TorchCodec; it is still the fastest
# decoder that ships with torchvision, so keep using it without a warning per image.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # images, votes, ids, valid


@dataclass(frozen=True)
class SplitSource:
    """A split's shard URLs and its sample count (None when the source has no manifest)."""

    split: str
    urls: tuple[str, ...]
    samples: int | None
    manifest_sha256: str | None = None
    preprocessing: dict | None = None  # the manifest's short_side / quality, when known


def resolve_split(shards: str | dict, split: str) -> SplitSource:
    """Find a split's shards: a folder with manifest.json, or URL patterns (brace-expanded)."""
    if isinstance(shards, dict):
        patterns = shards.get(split)
        if patterns is None:
            raise AvakitError(f"data.shards: no URLs given for split {split!r}")
        patterns = [patterns] if isinstance(patterns, str) else patterns
        urls = [u for p in patterns for u in braceexpand.braceexpand(p)]
        return SplitSource(split, tuple(urls), None)
    folder = Path(shards)
    manifest = load_manifest(folder)
    info = manifest["splits"].get(split)
    if info is None:
        raise AvakitError(f"{folder / 'manifest.json'}: no split {split!r}")
    urls = tuple(str(folder / s["name"]) for s in info["shards"] if s["samples"] > 0)
    return SplitSource(split, urls, info["samples"], file_sha256(folder / "manifest.json"),
                       manifest.get("preprocessing"))


def keep_sample(key: str, fraction: float) -> bool:
    """Deterministic `--quick-experiment` subset: the same keys for every run and epoch."""
    return fraction >= 1.0 or zlib.crc32(key.encode()) / 2**32 < fraction


class ShardStream:
    """First pipeline stage: this rank's shard URLs, reshuffled per pass, once or forever.

    A class rather than a closure, so the pipeline pickles for DataLoader workers started with
    spawn/forkserver (macOS, Python >= 3.14) as well as fork.
    """

    def __init__(self, urls: list[str], seed: int, shuffle: bool, infinite: bool) -> None:
        self.urls, self.seed, self.shuffle, self.infinite = list(urls), seed, shuffle, infinite

    def __call__(self) -> Iterator[dict]:
        for cycle in range(2**62 if self.infinite else 1):
            order = list(self.urls)
            if self.shuffle:
                random.Random(self.seed * 1_000_003 + cycle).shuffle(order)
            yield from ({"url": u} for u in order)


def _in_subset(sample: dict, fraction: float) -> bool:
    return keep_sample(sample["__key__"], fraction)


def _warn(exn: Exception) -> bool:
    warnings.warn(f"skipping unreadable shard data: {exn!r}", stacklevel=2)
    return True


class SampleDecoder:
    """Raw webdataset sample -> (uint8 crop, votes, image id, valid). Picklable for workers."""

    def __init__(self, preset: Callable[[torch.Tensor], torch.Tensor], crop_size: int) -> None:
        self.preset = preset
        views = getattr(preset, "views", 1)  # test-time augmentation views per image
        self.blank_shape = (3, crop_size, crop_size) if views == 1 else (views, 3, crop_size, crop_size)

    def __call__(self, sample: dict) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
        label = json.loads(sample["json"])
        votes = torch.tensor(label["votes"], dtype=torch.float32)
        try:
            data = torch.frombuffer(bytearray(sample["jpg"]), dtype=torch.uint8)
            image = self.preset(decode_jpeg(data, mode=ImageReadMode.RGB))
        except (RuntimeError, KeyError, ValueError):
            image = torch.zeros(self.blank_shape, dtype=torch.uint8)
            return image, votes, int(label["image_id"]), False
        return image, votes, int(label["image_id"]), True


def collate(samples: list[tuple]) -> Batch:
    """Stack decoded samples into one batch (in a worker, straight into shared memory)."""
    return tuple(default_collate(samples))  # type: ignore[return-value]


def make_pipeline(
    urls: list[str], decoder: SampleDecoder, *, batch_size: int, train: bool, seed: int, epoch: int,
    shuffle_buffer: int = 1000, fraction: float = 1.0, infinite: bool = False,
) -> wds.DataPipeline:
    """The webdataset pipeline of one epoch over `urls` (already this rank's share)."""
    epoch_seed = seed * 10_007 + epoch
    stages: list = [ShardStream(urls, epoch_seed, shuffle=train, infinite=infinite),
                    wds.split_by_worker, wds.tarfile_to_samples(handler=_warn)]
    if fraction < 1.0:
        stages.append(wds.select(functools.partial(_in_subset, fraction=fraction)))
    if train and shuffle_buffer > 1:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100),
                                  rng=random.Random(epoch_seed)))
    stages += [wds.map(decoder), wds.batched(batch_size, collation_fn=collate, partial=True)]
    return wds.DataPipeline(*stages)


def make_loader(
    source: SplitSource, decoder: SampleDecoder, *, batch_size: int, train: bool, seed: int, epoch: int,
    num_workers: int = 0, shuffle_buffer: int = 1000, fraction: float = 1.0, rank: int = 0,
    world_size: int = 1, pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over this rank's shards of `source` for one epoch.

    Under DDP (world_size > 1) the training stream cycles over the rank's shards forever; the
    caller takes the same number of batches on every rank, so no rank waits on another.
    """
    urls = list(source.urls)
    if train and world_size > 1:
        random.Random(seed * 7 + epoch).shuffle(urls)  # a new rank/shard pairing each epoch
    urls = urls[rank::world_size]
    infinite = train and world_size > 1
    if infinite and not urls:
        raise AvakitError(f"{source.split}: fewer shards ({len(source.urls)}) than processes ({world_size})")
    workers = min(num_workers, len(urls)) if urls else 0
    pipeline = make_pipeline(urls, decoder, batch_size=batch_size, train=train, seed=seed + 1000 * rank,
                             epoch=epoch, shuffle_buffer=shuffle_buffer, fraction=fraction,
                             infinite=infinite)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch * 101 + rank)
    return DataLoader(pipeline, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      generator=generator, persistent_workers=False,
                      prefetch_factor=4 if workers else None)
