"""How a train split's shards and samples divide over ranks, DataLoader workers and epochs.

Without `data.resampled` each rank reads its own share of the train shards (`len // world`,
one more for the first ranks) and its workers split that share, so a worker without a shard
idles: `idle_workers_warning` says so with the `--shard-size` that would fix it. With
`data.resampled` every rank and worker draws shards with replacement from the whole split and
an epoch is `data.epoch_samples` samples over all ranks. Pure arithmetic: no torch.
"""

from __future__ import annotations

import math
from typing import Any

from avakit.config import Config
from avakit.errors import AvakitError

RESAMPLED_HINT = "or set data.resampled: true"


def idle_workers_warning(shards: int, samples: int | None, world: int, workers: int) -> str | None:
    """The warning when each rank's share of `shards` train shards leaves some of its workers idle.

    `samples` (None: unknown, URL shards) gives the `--shard-size` that would fill every worker:
    samples / (ranks x workers), rounded down. None when every worker gets a shard.
    """
    share = shards // world
    if workers <= share or share == 0:
        return None  # share 0: no_shard_error stops the run instead
    who = f"each of {world} ranks gets" if world > 1 else "the one process gets"
    per = f"({world} ranks x {workers} workers)" if world > 1 else f"{workers} workers"
    idle = f"{workers - share} worker{'s' if workers - share > 1 else ''}"
    n = "N" if samples is None else str(max(1, samples // (world * workers)))
    what = "train samples" if samples is None else f"{samples} samples"
    return (
        f"data.num_workers {workers}: {who} {share} train shards, so {idle} idle; "
        f"re-shard with `avakit shard ... --shard-size {n}` ({what} / {per}, rounded down) "
        f"{RESAMPLED_HINT}"
    )


def no_shard_error(split: str, shards: int, world: int) -> AvakitError:
    """The error of a DDP train split with fewer shards than ranks (a rank would get none)."""
    return AvakitError(
        f"{split}: fewer shards ({shards}) than processes ({world}): re-shard with a smaller "
        f"`avakit shard ... --shard-size` {RESAMPLED_HINT}"
    )


def epoch_samples(cfg: Config, samples: int | None, fraction: float) -> int | None:
    """Samples per epoch over all ranks: data.epoch_samples if resampled, else the split's (None: unknown)."""
    if cfg.data.resampled and cfg.data.epoch_samples is not None:
        return cfg.data.epoch_samples
    if samples is None:
        if cfg.data.resampled:
            raise AvakitError(
                "data.epoch_samples: data.resampled needs it when the train split's size is unknown "
                "(URL shards without a manifest)"
            )
        return None
    return round(samples * fraction) if cfg.data.resampled else samples


def steps_per_epoch(cfg: Config, samples: int | None, fraction: float, world: int) -> int | None:
    """Optimizer steps per epoch and rank (None: unknown, the epoch ends with the stream).

    Resampled: epoch_samples / (world x batch x accumulation), at least 1. Otherwise each rank's
    share of the split in batches (whole batches under DDP, so every rank takes as many).
    """
    total = epoch_samples(cfg, samples, fraction)
    if total is None:
        return None
    t = cfg.training
    if cfg.data.resampled:
        return max(1, total // (world * t.batch_size * t.grad_accum_steps))
    per_rank = total * fraction / world
    batches = per_rank // t.batch_size if world > 1 else math.ceil(per_rank / t.batch_size)
    return max(1, int(batches) // t.grad_accum_steps)


def train_share_warning(cfg: Config, train: Any, world: int) -> str | None:
    """The workers warning of a run reading its train shards in shares (None: none).

    `train`: the train split's source (its `entries` and `samples`); a feature cache has no shards.
    """
    if cfg.data.features or cfg.data.resampled:
        return None
    return idle_workers_warning(len(train.entries), train.samples, world, cfg.data.num_workers)
