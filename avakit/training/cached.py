"""A run on a feature cache (`data.features`), for the run's task: the score task's cache
(`training.head_only`) or the pairwise task's (`training.pair_head_only`)."""

from __future__ import annotations

from pathlib import Path

import torch

from avakit.config import Config
from avakit.errors import AvakitError
from avakit.scores import PAIRS, Scale
from avakit.training.head_only import feature_loader, feature_scale, head_only_setup
from avakit.training.pair_cache import check_pair_cache
from avakit.training.pair_head_only import pair_feature_loader, pair_head_only_setup


def cache_scale_for(cfg: Config) -> Scale:
    """What the labels of the cache `cfg.data.features` mean, the cache checked fresh for `cfg`."""
    if cfg.task == "pairwise":
        check_pair_cache(Path(cfg.data.features), cfg)
        return PAIRS
    return feature_scale(cfg)


def head_only_for(cfg: Config, core: torch.nn.Module, distributed: bool) -> tuple:
    """(feature sources, the head-only model) of a `data.features` run: the score task's cache,
    or the pairwise task's (training.pair_head_only). One process only."""
    if distributed:
        raise AvakitError("data.features: head-only training runs in one process (no torchrun)")
    if cfg.task == "pairwise":
        return pair_head_only_setup(cfg, core)
    return head_only_setup(cfg, core)


def cached_loader(cfg: Config, source, core: torch.nn.Module, *, train: bool, epoch: int, fraction: float):
    """One pass over a cached split, for the run's task (its batches shaped as its shard loader's)."""
    batch = cfg.training.batch_size
    if cfg.task == "pairwise":
        return pair_feature_loader(
            source, batch_size=batch, train=train, seed=cfg.seed, epoch=epoch, fraction=fraction
        )
    return feature_loader(
        source, core, batch_size=batch, train=train, seed=cfg.seed, epoch=epoch, fraction=fraction
    )
