"""How a run is judged: the val metric that picks its best epoch, and the accuracy threshold.

`training.select_metric` (srcc, plcc, loss, emd) chooses best_model.pt, drives early stopping
and the plateau scheduler, each in its own direction. `eval.threshold` (or the data's default)
is where binary accuracy cuts. torch-free: plain values in, plain values out.
"""

from __future__ import annotations

import logging
import math

from avakit.config import SELECT_METRICS, Config
from avakit.errors import AvakitError
from avakit.predictions import frame_intervals, metrics_line  # noqa: F401 (re-exported)
from avakit.scores import Scale

HIGHER_IS_BETTER = {
    "srcc": True,
    "plcc": True,
    "loss": False,
    "emd": False,
    "pair_accuracy": True,
    "action_top1": True,
    "verb_top1": True,
    "noun_top1": True,
}
NAMES = {
    "srcc": "SRCC",
    "plcc": "PLCC",
    "loss": "loss",
    "emd": "EMD",
    "pair_accuracy": "pair accuracy",
    "action_top1": "action top-1",
    "verb_top1": "verb top-1",
    "noun_top1": "noun top-1",
}
NOISY_VAL = 500  # fewer val samples than this: checkpoint selection is noisy (warned at train start)
NOISY_VAL_SERIES = 100  # pairwise: ~250 pairs, a standard error of ~3 points on the accuracy


def worst(metric: str) -> float:
    """The best value before any epoch: -inf for srcc/plcc, +inf for loss/emd."""
    return -math.inf if HIGHER_IS_BETTER[metric] else math.inf


def improves(metric: str, value: float, best: float, min_delta: float = 0.0) -> bool:
    """`value` of `metric` is finite and better than `best` by more than `min_delta` (absolute)."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return False
    if not math.isfinite(best):
        return True
    return value > best + min_delta if HIGHER_IS_BETTER[metric] else value < best - min_delta


def plateau_value(metric: str, value: float) -> float:
    """The value the plateau scheduler maximises (loss and EMD negated)."""
    return value if HIGHER_IS_BETTER[metric] else -value


def check_select_metric(cfg: Config, scale: Scale) -> None:
    """AvakitError at train start when `training.select_metric` cannot be computed on this run."""
    metric = cfg.training.select_metric
    if metric == "emd" and (cfg.model.output_mode != "distribution" or scale.kind != "votes"):
        raise AvakitError(
            "training.select_metric: 'emd' needs a distribution model (model.output_mode distribution) "
            f"on vote labels; this run has model.output_mode {cfg.model.output_mode!r} on "
            f"{scale.score_name} labels: use srcc, plcc or loss"
        )


def check_best_value(metric: object, value: object, where: str, key: str = "best_value") -> None:
    """AvakitError naming `where`.`key` unless `value` is a best value `metric` can have (last.pt)."""
    if metric not in SELECT_METRICS:
        choices = ", ".join(SELECT_METRICS)
        raise AvakitError(f"{where}.select_metric: expected one of {choices}, got {str(metric)[:60]!r}")
    if not isinstance(value, float):
        raise AvakitError(f"{where}.{key}: expected a float, got {str(value)[:60]!r}")
    if metric in ("srcc", "plcc"):
        ok = -1.0 <= value <= 1.0 or value == -math.inf
    elif metric in ("pair_accuracy", "action_top1", "verb_top1", "noun_top1"):
        ok = 0.0 <= value <= 1.0 or value == -math.inf
    elif metric == "emd":
        ok = 0.0 <= value < math.inf or value == math.inf
    else:
        ok = not math.isnan(value) and value != -math.inf
    if not ok:
        raise AvakitError(f"{where}.{key}: not a possible best val {metric} ({str(value)[:60]!r})")


def eval_threshold(threshold: float | None, scale: Scale, key: str = "eval.threshold") -> float | None:
    """The accuracy threshold that applies: `threshold` if set, else the data's default (AVA 5).

    AvakitError naming `key` when it lies outside the scale's range.
    """
    if threshold is None:
        return scale.threshold
    value = float(threshold)
    if not (math.isfinite(value) and scale.lo <= value <= scale.hi):
        raise AvakitError(
            f"{key}: {threshold!r} lies outside the labels' range {scale.text} ({scale.score_name})"
        )
    return value


def warn_small_val(log: logging.Logger, samples: int | None, metric: str, task: str = "score") -> None:
    """One warning when the val split is too small to pick a checkpoint on reliably."""
    if task == "pairwise":
        if samples is not None and samples < NOISY_VAL_SERIES:
            log.warning(
                "val split has %d series: val pair accuracy on so few moves by several points from "
                "epoch to epoch (its standard error is printed beside it); use a larger val split "
                "(avakit shard --val-ratio), at least %d series",
                samples,
                NOISY_VAL_SERIES,
            )
        return
    if samples is None or samples >= NOISY_VAL:
        return
    if task == "clip":
        log.warning(
            "val split has %d segments: val %s on so few moves by several points from epoch to "
            "epoch (EPIC-KITCHENS-100's validation split has 9,668); at least %d segments",
            samples,
            NAMES[metric],
            NOISY_VAL,
        )
        return
    log.warning(
        "val split has %d samples: picking the best epoch by val %s on so few is noisy "
        "(once, on 90 val images, val SRCC chose epoch 1 with test SRCC 0.13 over epoch 5 with 0.33); "
        "use a larger val split (avakit shard --val-ratio), at least %d samples",
        samples,
        NAMES[metric],
        NOISY_VAL,
    )
