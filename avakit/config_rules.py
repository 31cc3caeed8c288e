"""The config's rules that span several keys, checked after every key passed its own checks.

`avakit.config` builds a Config field by field (types, choices, ranges); the rules here relate
keys to each other (a loss to its output mode, a task to its select metric, ...). Each raises
AvakitError naming the dotted key, with `p` the prefix of a config read back from a file.
"""

from __future__ import annotations

from typing import Any

from avakit.errors import AvakitError
from avakit.scores import FEATURE_SOURCES, LOSSES

Config = Any  # an avakit.config.Config (not imported: config imports this module)


def check_cross_fields(cfg: Config, p: str = "") -> None:
    """Rules that span several keys (`p`: the prefix of every key named)."""
    loss, mode = cfg.training.loss_type, cfg.model.output_mode
    if cfg.task == "pairwise":
        _check_pairwise(cfg, p)
    elif cfg.training.select_metric == "pair_accuracy":
        raise AvakitError(f"{p}training.select_metric: 'pair_accuracy' needs task: pairwise")
    elif LOSSES[loss] != mode:
        raise AvakitError(
            f"{p}training.loss_type: '{loss}' needs {p}model.output_mode '{LOSSES[loss]}' (got '{mode}')"
        )
    if cfg.features.layer == "layer3" and not cfg.model.backbone.startswith("resnet"):
        raise AvakitError(
            f"{p}features.layer: 'layer3' needs a ResNet backbone "
            f"(got {p}model.backbone '{cfg.model.backbone}')"
        )
    _check_sources(cfg, p)
    _check_recipe(cfg, p)
    crop, resize = cfg.transform.crop_size, cfg.transform.resize_size
    if crop > resize:
        raise AvakitError(f"{p}transform.crop_size: {crop} must be <= {p}transform.resize_size ({resize})")


def _check_recipe(cfg: Config, p: str) -> None:
    """Augmentation bounds are (lo, hi) pairs; a resampled stream reads shards, not a feature cache."""
    aug = cfg.transform.augmentation
    for key, bounds in (("random_erasing.scale", aug.random_erasing.scale), ("crop_scale", aug.crop_scale)):
        if bounds is not None and bounds[0] > bounds[1]:
            raise AvakitError(
                f"{p}transform.augmentation.{key}: [lo, hi] needs lo <= hi (got {list(bounds)})"
            )
    if cfg.data.epoch_samples is not None and not cfg.data.resampled:
        raise AvakitError(
            f"{p}data.epoch_samples: sets a resampled epoch's length (set {p}data.resampled: true)"
        )
    if cfg.data.resampled and cfg.data.features:
        raise AvakitError(
            f"{p}data.resampled: resamples shards; a head-only run from {p}data.features "
            "does not (set it false)"
        )


def _check_sources(cfg: Config, p: str) -> None:
    """features.sources: known, each once, and not mixed with the other feature paths."""
    f = cfg.features
    for name in f.sources:
        if name not in FEATURE_SOURCES or f.sources.count(name) > 1:
            raise AvakitError(
                f"{p}features.sources: {str(name)[:40]!r} is unknown or listed twice "
                f"(choose from {', '.join(FEATURE_SOURCES)})"
            )
    if f.sources and f.iqa:
        raise AvakitError(f"{p}features.iqa: frozen sources replace it (list iqa in {p}features.sources)")
    if cfg.data.features and bool(f.sources) != (cfg.task == "pairwise"):
        raise AvakitError(
            f"{p}data.features: a pairwise run's feature cache holds its {p}features.sources; a score "
            f"run's holds model.backbone (task {cfg.task}, features.sources {list(f.sources)})"
        )


def _check_pairwise(cfg: Config, p: str) -> None:
    """A pairwise run scores each photo with one number and is judged on pairs."""
    if cfg.model.output_mode != "regression":
        raise AvakitError(
            f"{p}model.output_mode: task pairwise scores each photo with one number: set it to "
            f"'regression' (got '{cfg.model.output_mode}'; {p}training.loss_type is not used, "
            f"{p}pairs.loss is)"
        )
    if cfg.training.select_metric not in ("pair_accuracy", "loss"):
        raise AvakitError(
            f"{p}training.select_metric: task pairwise picks its best epoch by pair_accuracy or loss "
            f"(got '{cfg.training.select_metric}')"
        )
