"""The domain's facts, each stated once: split names, the rating scale, the config's choice lists.

numpy only (no torch, no pandas): the ONNX scoring path imports it.

The rating scale is the one block below (SCORE_MIN .. THRESHOLD, plus `mean_score`, `score_std`
and `point_names` built from it); nothing else in avakit writes 1, 10, 5 or `range(1, 11)` for
it, so a later configurable `Scale` object can replace this block alone.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

SPLITS: tuple[str, ...] = ("train", "val", "test")
HELD_OUT_SPLITS: tuple[str, ...] = SPLITS[1:]  # val and test: evaluated, never trained on

# --- the rating scale: AVA's votes are counts of the ratings 1..10 --------------------------
SCORE_MIN = 1.0  # the lowest rating; predicted scores are clamped to [SCORE_MIN, SCORE_MAX]
SCORE_MAX = 10.0  # the highest rating
INT_POINTS: tuple[int, ...] = tuple(range(int(SCORE_MIN), int(SCORE_MAX) + 1))  # 1, 2, ..., 10
POINTS = np.array(INT_POINTS, dtype=np.float64)  # the same ratings as a float64 vector
POINTS.flags.writeable = False
N_POINTS = len(INT_POINTS)  # bins of a vote histogram / a predicted distribution
THRESHOLD = 5.0  # "high quality" means a mean score strictly above this (accuracy, share_above_5)


def point_names(prefix: str) -> list[str]:
    """One column name per rating: point_names("pred_dist_") -> pred_dist_1 .. pred_dist_10."""
    return [f"{prefix}{k}" for k in INT_POINTS]


def _bins(dist: ArrayLike) -> np.ndarray:
    """`dist` as float64 with N_POINTS bins in its last dimension; ValueError otherwise."""
    d = np.asarray(dist, dtype=np.float64)
    if d.ndim == 0 or d.shape[-1] != N_POINTS:
        raise ValueError(f"expected {N_POINTS} bins in the last dimension, got shape {d.shape}")
    return d


def mean_score(dist: ArrayLike, *, normalise: bool = True) -> np.ndarray:
    """Mean rating sum_k k * p_k of each distribution in `dist` [..., N_POINTS]; shape [...].

    `dist` holds vote counts or weights, divided by their sum (after the dot product: exact
    for integer counts). normalise=False: `dist` already holds probabilities (a softmax output,
    votes divided by their total) and is used as it is.
    """
    d = _bins(dist)
    mean = d @ POINTS
    return mean / d.sum(axis=-1) if normalise else mean


def score_std(dist: ArrayLike, *, normalise: bool = True) -> np.ndarray:
    """Standard deviation of the rating under each distribution in `dist` [..., N_POINTS]; shape [...].

    normalise as in `mean_score` (here the distribution is divided by its sum first).
    """
    d = _bins(dist)
    if normalise:
        d = d / d.sum(axis=-1, keepdims=True)
    mean = d @ POINTS
    var = np.sum(d * (POINTS - mean[..., None]) ** 2, axis=-1)
    return np.sqrt(np.clip(var, 0.0, None))


# --- choice lists of the config; the registries in avakit.model must have exactly these keys --
BACKBONES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "vgg16", "mobilenet_v3_large")
OUTPUT_MODES: tuple[str, ...] = ("distribution", "regression")
# loss_type -> the model.output_mode it needs (model.losses.LOSSES holds the functions)
LOSSES: dict[str, str] = {
    "kl_div": "distribution",
    "cross_entropy": "distribution",
    "emd": "distribution",
    "mse": "regression",
    "l1": "regression",
}
FREEZE_MODES: tuple[str, ...] = ("none", "partial", "full")
ACTIVATIONS: tuple[str, ...] = ("relu", "tanh")
# training.amp: autocast dtype on cuda; elsewhere always "off" (see training.engine.resolve_amp)
AMP_MODES: tuple[str, ...] = ("bf16", "fp16", "off")
