"""Streaming pipeline: a split's shards -> decoded, augmented, batched uint8 tensors, every sample counted.

One score sample = (uint8 image [3, crop, crop], its label, image id, reason code); a task's
decoder (`avakit.tasks`) makes it, a group sample of the pairwise task gives all its photos. JPEGs are
decoded with torchvision.io.decode_jpeg (libjpeg-turbo) in DataLoader workers; shards are
split across DDP ranks (in the main process) and across workers (webdataset.split_by_worker),
so every validation sample is seen exactly once per evaluation. Shard order and the sample
shuffle buffer are seeded by (seed, epoch), so an epoch's order does not depend on what ran
before it: a resumed run sees the same data as an uninterrupted one. With `data.resampled` every
rank's workers instead draw train shards with replacement from the whole split, each an endless
stream seeded by (seed, epoch, rank, worker); the trainer ends the epoch by its step count.

Local shard files (a manifest's, see avakit.dataset.sources) are opened by avakit with `open()` and
parsed with webdataset's `group_by_keys`, never through webdataset's URL opener; their sha256
is computed as the bytes stream past and compared at the shard's end. User-written URLs go
through webdataset as written.

Nothing is dropped silently: a sample whose image or label is bad (samples.parse_label, the one
label validator) becomes an all-zero placeholder with its reason code; a shard that cannot be
read yields one placeholder per sample its manifest promised (one per failure for URL sources,
which promise nothing). `CountingLoader` turns the codes into `SampleCounts` and hands the
training loop a plain `valid` mask; a sha256 mismatch stops the pass with an error naming the shard.
"""

from __future__ import annotations

import functools
import hashlib
import random
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader
from webdataset.tariterators import tarfile_samples

from avakit.config import Config
from avakit.dataset.samples import Reason, SampleCounts, tar_samples
from avakit.dataset.sources import DataSource, ShardFile, SplitSource
from avakit.errors import AvakitError
from avakit.tasks.score import SCORE, SampleDecoder, collate  # noqa: F401 (re-exported: the score task's)
from avakit.training.shard_share import no_shard_error
from avakit.training.transforms import EvalPreset

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # images, votes, ids, valid/codes
DRAIN_CHUNK = 1 << 20  # bytes per read when hashing what the tar reader left


def keep_sample(key: str, fraction: float) -> bool:
    """Deterministic `--quick-experiment` subset: the same keys for every run and epoch."""
    return fraction >= 1.0 or zlib.crc32(key.encode()) / 2**32 < fraction


class ShardStream:
    """First pipeline stage: this rank's shards (index in the source, entry), reshuffled per pass.

    A class rather than a closure, so the pipeline pickles for DataLoader workers started with
    spawn/forkserver (macOS, Python >= 3.14) as well as fork.
    """

    def __init__(
        self,
        entries: list[tuple[int, str | ShardFile]],
        seed: int,
        shuffle: bool,
        infinite: bool,
        resample: str | None = None,
    ) -> None:
        self.entries, self.seed, self.shuffle, self.infinite = list(entries), seed, shuffle, infinite
        self.resample = resample  # "seed:epoch:rank": draw shards with replacement, per worker

    def __call__(self) -> Iterator[dict]:
        """Yield this rank's shards as {url, index, entry}: once, reshuffled pass after pass, or resampled."""
        if self.resample is not None:
            yield from self._resampled()
            return
        for cycle in range(2**62 if self.infinite else 1):
            order = list(self.entries)
            if self.shuffle:
                random.Random(self.seed * 1_000_003 + cycle).shuffle(order)
            for index, entry in order:
                yield _shard_item(index, entry)

    def _resampled(self) -> Iterator[dict]:
        """Endless shards drawn with replacement, seeded by (seed, epoch, rank, worker)."""
        info = torch.utils.data.get_worker_info()
        rng = random.Random(f"resample:{self.resample}:{info.id if info is not None else 0}")
        while self.entries:
            yield _shard_item(*self.entries[rng.randrange(len(self.entries))])


def _shard_item(index: int, entry: str | ShardFile) -> dict:
    return {"url": entry if isinstance(entry, str) else entry.name, "index": index, "entry": entry}


def _placeholders(reason: Reason, n: int, index: int, name: str, start: int = 0) -> Iterator[dict]:
    """Stand-ins for `n` samples not read (or one failure event): counted, never trained on."""
    for i in range(start, start + n):
        yield {"__key__": f"{name}#{i}", "__code__": int(reason), "__index__": index}


class _HashingReader:
    """A file's read() that feeds every byte through sha256 on the way."""

    def __init__(self, f: Any) -> None:
        self.f, self.hash = f, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.hash.update(data)
        return data

    def hexdigest(self) -> str:
        """Drain what the tar reader left (end-of-archive padding) and return the digest."""
        while self.read(DRAIN_CHUNK):
            pass
        return self.hash.hexdigest()


def read_file(entry: ShardFile, index: int) -> Iterator[dict]:
    """A local shard's samples; placeholders for what it promised and did not give; sha256 check."""
    if entry.lost:
        yield from _placeholders(entry.lost, entry.samples or 1, index, entry.name)
        return
    seen, reason, digest = 0, Reason.OK, None
    try:
        with open(entry.path, "rb") as f:
            stream = _HashingReader(f) if entry.sha256 is not None else f
            try:
                for sample in tar_samples(stream, entry.name):
                    seen += 1
                    yield sample
            except (EOFError, tarfile.TarError, ValueError):
                reason = Reason.SHARD_UNREADABLE
            if isinstance(stream, _HashingReader):
                digest = stream.hexdigest()
    except FileNotFoundError:
        reason = Reason.SHARD_MISSING
    except OSError:
        reason = Reason.SHARD_UNREADABLE
    if entry.samples is not None and seen < entry.samples:
        yield from _placeholders(
            reason or Reason.SHARD_UNREADABLE, entry.samples - seen, index, entry.name, start=seen
        )
    elif entry.samples is None and reason:
        yield from _placeholders(reason, 1, index, entry.name)  # no manifest: one failure event
    if entry.sha256 is not None and digest is not None and digest != entry.sha256:
        yield {"__key__": entry.name, "__code__": int(Reason.SHA256_MISMATCH), "__index__": index}


def read_url(url: str, index: int) -> Iterator[dict]:
    """A user-written URL's samples through webdataset; one placeholder per failure event."""
    events: list[Exception] = []

    def handler(exn: Exception) -> bool:
        events.append(exn)
        return True

    for sample in tarfile_samples([{"url": url}], handler=handler):
        if events:
            yield from _placeholders(Reason.URL_UNREADABLE, len(events), index, url)
            events.clear()
        yield sample
    yield from _placeholders(Reason.URL_UNREADABLE, len(events), index, url)


def read_shards(src: Iterable[dict]) -> Iterator[dict]:
    """Pipeline stage: shard dicts from ShardStream -> raw samples and placeholders."""
    for item in src:
        entry, index = item["entry"], item["index"]
        yield from read_file(entry, index) if isinstance(entry, ShardFile) else read_url(entry, index)


def _in_subset(sample: dict, fraction: float) -> bool:
    if sample.get("__code__") == Reason.SHA256_MISMATCH:
        return True  # never filtered away: it stops the pass
    return keep_sample(sample["__key__"], fraction)  # placeholders by shard#position


def make_pipeline(
    entries: list,
    decoder: Callable[[dict], tuple],
    *,
    batch_size: int,
    train: bool,
    seed: int,
    epoch: int,
    shuffle_buffer: int = 1000,
    fraction: float = 1.0,
    infinite: bool = False,
    resample: str | None = None,
) -> wds.DataPipeline:
    """The webdataset pipeline of one epoch over `entries` (this rank's share of SplitSource.entries).

    `entries` are URL strings, ShardFiles or (index in the source, entry) pairs; a placeholder
    carries the index as its id, so the loader can name the shard it stands for. `resample`
    ("seed:epoch:rank"): every worker draws its own endless stream of `entries` with replacement.
    """
    pairs = [e if isinstance(e, tuple) else (i, e) for i, e in enumerate(entries)]
    epoch_seed = seed * 10_007 + epoch
    stages: list = [ShardStream(pairs, epoch_seed, shuffle=train, infinite=infinite, resample=resample)]
    if resample is None:
        stages.append(wds.split_by_worker)
    stages.append(read_shards)
    if fraction < 1.0:
        stages.append(wds.select(functools.partial(_in_subset, fraction=fraction)))
    if train and shuffle_buffer > 1:
        stages.append(
            wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), rng=random.Random(epoch_seed))
        )
    stages += [
        wds.map(decoder),
        wds.batched(batch_size, collation_fn=getattr(decoder, "collate", collate), partial=True),
    ]
    return wds.DataPipeline(*stages)


class CountingLoader:
    """Iterates batches (images, votes, ids, codes), counting every sample into `counts`.

    Yields (images, votes, ids, valid) for the training loop, which drops the invalid rows; a
    sha256 mismatch raises AvakitError naming the shard (in the main process: one clean line).
    `counts` is complete once the iteration ended (`counts.finish()` checks nothing is unaccounted).
    """

    def __init__(self, batches: Iterable, source: DataSource, expected: int | None) -> None:
        self.batches, self.source, self.expected = batches, source, expected
        self.counts = SampleCounts(expected)

    def __iter__(self) -> Iterator[Batch]:
        self.counts = SampleCounts(self.expected)  # each pass counts afresh
        for images, votes, ids, codes in self.batches:
            valid = codes if codes.dtype == torch.bool else codes == 0
            n_valid = int(valid.sum())
            if n_valid < len(valid):
                self._count_bad(codes[~valid].tolist(), ids[~valid].tolist())
            self.counts.seen += n_valid
            yield images, votes, ids, valid
        self.counts.finish()

    def _count_bad(self, codes: list[int], ids: list[int]) -> None:
        entries = self.source.entries
        for code, index in zip(codes, ids, strict=True):
            reason = Reason(code)
            name = None
            if reason == Reason.SHA256_MISMATCH or reason.shard_level:
                entry = entries[index]
                name = entry if isinstance(entry, str) else entry.name
            if reason == Reason.SHA256_MISMATCH:
                raise AvakitError(
                    f"{entries[index].path}: sha256 differs from {self.source.where}: not the "
                    "shard the manifest lists (check the folder with `avakit inspect`)",
                    exit_code=1,
                )
            self.counts.add(reason, shard=name)


def make_loader(
    source: SplitSource,
    decoder: Callable[[dict], tuple],
    *,
    batch_size: int,
    train: bool,
    seed: int,
    epoch: int,
    num_workers: int = 0,
    shuffle_buffer: int = 1000,
    fraction: float = 1.0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    resampled: bool = False,
) -> CountingLoader:
    """A counting DataLoader over this rank's shards of `source` for one epoch.

    Under DDP (world_size > 1) the training stream cycles over the rank's shards forever; the
    caller takes the same number of batches on every rank, so no rank waits on another. The
    loader's `counts.expected` is what the manifest promises for this rank's shards (None when
    unknown: URL sources, a `--quick-experiment` subset, or an endless DDP training stream).
    `resampled` (training only): every rank and worker draws from all shards with replacement,
    endlessly, seeded by (seed, epoch, rank); the caller ends the epoch by its step count.
    """
    entries = list(enumerate(source.entries))
    resample = f"{seed}:{epoch}:{rank}" if train and resampled else None
    if resample is None:  # resampled: every rank draws from all shards
        if train and world_size > 1:
            random.Random(seed * 7 + epoch).shuffle(entries)  # a new rank/shard pairing each epoch
        entries = entries[rank::world_size]
    infinite = train and (world_size > 1 or resample is not None)
    if infinite and not entries:
        raise no_shard_error(source.split, len(source.entries), world_size)
    workers = (num_workers if resample else min(num_workers, len(entries))) if entries else 0
    pipeline = make_pipeline(
        entries,
        decoder,
        batch_size=batch_size,
        train=train,
        seed=seed + 1000 * rank,
        epoch=epoch,
        shuffle_buffer=shuffle_buffer,
        fraction=fraction,
        infinite=infinite,
        resample=resample,
    )
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch * 101 + rank)
    loader = DataLoader(
        pipeline,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=generator,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    promised = [e.samples for _, e in entries if isinstance(e, ShardFile)]
    known = not source.urls and None not in promised and fraction >= 1.0 and not infinite
    return CountingLoader(loader, source, sum(promised) if known else None)  # type: ignore[arg-type]


def iter_samples(source: SplitSource) -> Iterator[dict]:
    """A source's raw samples in order, in this process (no decoding); a bad shard raises AvakitError.

    For callers that read a few samples themselves (export's parity images): placeholders are
    skipped, a sha256 mismatch or an unreadable shard stops with one line naming it.
    """
    for index, entry in enumerate(source.entries):
        reader = read_file(entry, index) if isinstance(entry, ShardFile) else read_url(entry, index)
        for sample in reader:
            code = sample.get("__code__")
            if code is None:
                yield sample
                continue
            name = entry if isinstance(entry, str) else str(entry.path)
            raise AvakitError(f"{name}: {Reason(code).text}", exit_code=1)


def eval_loader(
    source: SplitSource,
    cfg: Config,
    *,
    batch_size: int,
    pin_memory: bool,
    tta: str = "none",
    epoch: int = 0,
    fraction: float = 1.0,
    rank: int = 0,
    world_size: int = 1,
    task: Any = None,
) -> CountingLoader:
    """An evaluation pass over `source`: the config's eval preset (with `tta`), in order, counted.

    `task` (a tasks.base.Task; None: the score task) decodes the samples.

    The one eval loader of training's val/test passes, `evaluate` and `features`. Raises
    AvakitError for an unknown `tta`.
    """
    preset = EvalPreset(cfg.transform, tta)
    decoder = (task or SCORE).decoder(preset, cfg.transform.crop_size, source.scale, train=False, cfg=cfg)
    return make_loader(
        source,
        decoder,
        batch_size=batch_size,
        train=False,
        seed=cfg.seed,
        epoch=epoch,
        num_workers=cfg.data.num_workers,
        fraction=fraction,
        rank=rank,
        world_size=world_size,
        pin_memory=pin_memory,
    )
