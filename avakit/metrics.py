"""Evaluation metrics for aesthetic-score models, in plain numpy/scipy (no torch import).

Functions accept array-likes and return Python floats (except the per-row `dist_std`, which
returns an array). Correlations over constant input are
undefined and come back as NaN without a warning.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from avakit.scores import THRESHOLD

METRIC_NAMES: dict[str, str] = {
    "srcc": "SRCC",
    "plcc": "PLCC",
    "accuracy": "Acc",
    "emd": "EMD",
    "mae": "MAE",
    "rmse": "RMSE",
    "std_srcc": "SRCC(std)",
}


def _pair(pred: ArrayLike, gt: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as flat float64 arrays of the same length; ValueError otherwise."""
    a = np.asarray(pred, dtype=np.float64).reshape(-1)
    b = np.asarray(gt, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"length mismatch: {a.size} predictions, {b.size} targets")
    return a, b


def _dists(dist: ArrayLike) -> np.ndarray:
    """A [N, K] float64 array of distributions; ValueError for another number of dims."""
    d = np.asarray(dist, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"expected distributions of shape [N, K], got {d.shape}")
    return d


def _correlation(fn, pred: ArrayLike, gt: ArrayLike) -> float:
    """Apply a scipy correlation; NaN for fewer than 2 samples or constant input."""
    a, b = _pair(pred, gt)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        warnings.simplefilter("ignore", stats.NearConstantInputWarning)  # early epochs: near-flat
        return float(fn(a, b)[0])


def srcc(pred: ArrayLike, gt: ArrayLike) -> float:
    """Spearman rank correlation coefficient; NaN when undefined."""
    return _correlation(stats.spearmanr, pred, gt)


def plcc(pred: ArrayLike, gt: ArrayLike) -> float:
    """Pearson linear correlation coefficient; NaN when undefined."""
    return _correlation(stats.pearsonr, pred, gt)


def accuracy(
    pred_mean: ArrayLike, gt_mean: ArrayLike, threshold: float = THRESHOLD, higher_is_better: bool = True
) -> float:
    """Binary accuracy, "good" meaning a score strictly beyond `threshold` in the better direction."""
    a, b = _pair(pred_mean, gt_mean)
    if a.size == 0:
        return math.nan
    if not higher_is_better:
        a, b, threshold = -a, -b, -threshold
    return float(np.mean((a > threshold) == (b > threshold)))


def majority_baseline(
    gt_mean: ArrayLike, threshold: float = THRESHOLD, higher_is_better: bool = True
) -> float:
    """Accuracy of always predicting the more frequent of the two classes."""
    b = np.asarray(gt_mean, dtype=np.float64).reshape(-1)
    if b.size == 0:
        return math.nan
    good = float(np.mean(b > threshold if higher_is_better else b < threshold))
    return max(good, 1.0 - good)


def emd(pred_dist: ArrayLike, gt_dist: ArrayLike, r: float = 2) -> float:
    """NIMA's Earth Mover's Distance between distributions [N, K], mean over samples.

    Per sample: (mean over bins of |CDF_pred - CDF_gt| ** r) ** (1 / r).
    """
    if r <= 0:
        raise ValueError(f"r must be positive, got {r}")
    p, t = _dists(pred_dist), _dists(gt_dist)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: {p.shape} and {t.shape}")
    if p.shape[0] == 0:
        return math.nan
    diff = np.abs(np.cumsum(p, axis=1) - np.cumsum(t, axis=1))
    per_sample = np.mean(diff**r, axis=1) ** (1.0 / r)
    return float(np.mean(per_sample))


def mae(pred: ArrayLike, gt: ArrayLike) -> float:
    """Mean absolute error."""
    a, b = _pair(pred, gt)
    return float(np.mean(np.abs(a - b))) if a.size else math.nan


def rmse(pred: ArrayLike, gt: ArrayLike) -> float:
    """Root mean squared error."""
    a, b = _pair(pred, gt)
    return float(np.sqrt(np.mean((a - b) ** 2))) if a.size else math.nan


def dist_std(dist: ArrayLike) -> np.ndarray:
    """Standard deviation of the point index 1..K under each row of `dist` [N, K]; shape [N].

    Proportional to the std on any evenly spaced scale, so its rank correlations are the same.
    """
    d = _dists(dist)
    k = np.arange(1, d.shape[1] + 1, dtype=np.float64)
    mean = d @ k
    return np.sqrt(np.clip(np.sum(d * (k - mean[:, None]) ** 2, axis=1), 0.0, None))


def compute_metrics(
    pred_mean: ArrayLike,
    gt_mean: ArrayLike,
    pred_dist: ArrayLike | None = None,
    gt_dist: ArrayLike | None = None,
    threshold: float | None = THRESHOLD,
    higher_is_better: bool = True,
) -> dict:
    """All metrics for one evaluation: srcc, plcc, mae, rmse and n; with a `threshold`, also
    accuracy and its majority-class baseline (None: the data has no "good" cut, no accuracy).

    With both `pred_dist` and `gt_dist` [N, K], also `emd` and `std_srcc` (SRCC between the
    predicted and real score standard deviations).
    """
    a, b = _pair(pred_mean, gt_mean)
    out: dict = {
        "srcc": srcc(a, b),
        "plcc": plcc(a, b),
        "mae": mae(a, b),
        "rmse": rmse(a, b),
        "n": int(a.size),
    }
    if threshold is not None:
        out["accuracy"] = accuracy(a, b, threshold, higher_is_better)
        out["majority_baseline"] = majority_baseline(b, threshold, higher_is_better)
        out["threshold"] = float(threshold)
    if pred_dist is not None and gt_dist is not None:
        p, t = _dists(pred_dist), _dists(gt_dist)
        if p.shape[0] != a.size:
            raise ValueError(f"{p.shape[0]} distributions for {a.size} mean scores")
        out["emd"] = emd(p, t)
        out["std_srcc"] = srcc(dist_std(p), dist_std(t))
    return out


def confidence_intervals(
    pred: ArrayLike, gt: ArrayLike, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> dict:
    """Percentile bootstrap intervals of SRCC and PLCC: {"srcc_ci": [lo, hi], "plcc_ci": [lo, hi]}.

    `n_boot` resamples of the (pred, gt) pairs with replacement, seeded, so a rerun gives the
    same interval. NaN bounds when fewer than 3 pairs (or constant input) leave it undefined.
    """
    a, b = _pair(pred, gt)
    nan = [math.nan, math.nan]
    if a.size < 3:
        return {"srcc_ci": nan, "plcc_ci": nan}
    rng = np.random.default_rng(seed)
    tail = 100.0 * (1.0 - level) / 2.0
    ranks = (_RankGroups(a), _RankGroups(b))
    out = {}
    for name in ("srcc", "plcc"):
        values = []
        for start in range(0, n_boot, 100):  # chunks bound the memory: 100 x N floats at a time
            idx = rng.integers(0, a.size, size=(min(100, n_boot - start), a.size))
            if name == "srcc":
                values.append(_row_pearson(ranks[0].rows(idx), ranks[1].rows(idx)))
            else:
                values.append(_row_pearson(a[idx], b[idx]))
        v = np.concatenate(values)
        v = v[np.isfinite(v)]
        out[f"{name}_ci"] = (
            [float(np.percentile(v, tail)), float(np.percentile(v, 100.0 - tail))] if v.size else nan
        )
    return out


class _RankGroups:
    """Average ranks of resamples of `x` (ties share their mean rank, as Spearman's correlation uses).

    Equal to `scipy.stats.rankdata(x[idx], axis=1)`, without sorting each row: `x` is sorted
    once, and a row's ranks follow from how often each distinct value was drawn (linear time).
    """

    def __init__(self, x: np.ndarray) -> None:
        values, self.group = np.unique(x, return_inverse=True)
        self.n = values.size

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """The average ranks of x[idx] along each row of `idx` [R, N]."""
        g = self.group[idx]
        offsets = np.arange(g.shape[0])[:, None] * self.n
        counts = np.bincount((g + offsets).ravel(), minlength=g.shape[0] * self.n).reshape(-1, self.n)
        below = np.cumsum(counts, axis=1) - counts
        return np.take_along_axis(below + (counts + 1) / 2.0, g, axis=1)


def _row_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair; NaN for a constant row."""
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    denom = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (x * y).sum(axis=1) / np.where(denom > 0, denom, 1.0), np.nan)
