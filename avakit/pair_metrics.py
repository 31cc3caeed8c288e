"""Metrics of a pairwise ranking model (PhotoTriage), in numpy/pandas/scipy only (no torch).

Inputs are the run folder's tables: `pairs` (one row per pair: series, i, j, p_true, rank_i,
rank_j, p_pred) and, optionally, `photos` (one row per photo: series, index, score, rank).
p_true is the share of people who preferred photo i over photo j (0.5 = a tie), p_pred the
model's P(i better than j); ranks are within a series, 1 = best, 0 = unknown. Every metric is
symmetric in the order of a pair: swapping i and j with p -> 1 - p leaves it unchanged.
Returned values are plain Python ints and floats; undefined ones are NaN.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

EPS = 1e-7  # p_pred is clipped to [EPS, 1 - EPS] for the log-loss
CONFIDENT = 0.2  # default |p_true - 0.5| from which a pair counts as confident
_TOL = 1e-9  # |0.7 - 0.5| is 0.19999999999999996 in floating point: still confident at 0.2

PAIR_METRIC_NAMES: dict[str, str] = {
    "pair_accuracy": "pair accuracy",
    "pair_accuracy_se": "± SE",
    "human_ceiling": "human ceiling",
    "confident_accuracy": "confident accuracy",
    "log_loss": "log-loss",
    "series_top1": "series top-1",
    "kendall_tau": "Kendall τ",
    "pair_accuracy_macro": "pair accuracy (mean over folders)",
    "auc_mean": "good vs bad AUC (mean over folders)",
    "kendall_tau_mos": "Kendall τ vs MOS",
}


def _floats(df: pd.DataFrame, col: str) -> np.ndarray:
    return df[col].to_numpy(dtype=np.float64)


def pair_correct(pairs: pd.DataFrame) -> np.ndarray:
    """1.0 where the model prefers the photo people preferred, 0.0 where not, NaN for ties
    (p_true 0.5). A prediction of exactly 0.5 prefers neither photo: wrong on a decided pair."""
    p_true, p_pred = _floats(pairs, "p_true"), _floats(pairs, "p_pred")
    right = np.where(p_true > 0.5, p_pred > 0.5, p_pred < 0.5).astype(np.float64)
    return np.where(p_true == 0.5, np.nan, right)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def log_loss(p_true: np.ndarray, p_pred: np.ndarray) -> float:
    """Mean cross-entropy of p_pred (clipped to [EPS, 1 - EPS]) against the soft target p_true."""
    q = np.clip(p_pred, EPS, 1 - EPS)
    return _mean(-(p_true * np.log(q) + (1 - p_true) * np.log1p(-q)))


def _kendall(scores: np.ndarray, ranks: np.ndarray) -> float:
    """Kendall's tau of scores against the true order (rank 1 = best); NaN when undefined."""
    if scores.size < 2 or np.ptp(ranks) == 0 or np.ptp(scores) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.kendalltau(scores, -ranks)[0])


def series_table(photos: pd.DataFrame) -> pd.DataFrame:
    """Per series: series, n (photos), ranked (photos with a known rank), top1 (1.0 when every
    top-scored photo has rank 1, 0.0 when not, NaN unless every rank is known) and tau (Kendall
    tau of score against rank over the ranked photos, NaN with fewer than 2 or no order)."""
    rows = []
    for series, g in photos.groupby("series", sort=True):
        score, rank = _floats(g, "score"), _floats(g, "rank")
        known = rank > 0
        top1 = math.nan
        if known.all() and (rank == 1).any() and np.isfinite(score).all():
            top1 = float((rank[score == score.max()] == 1).all())
        tau = _kendall(score[known], rank[known]) if np.isfinite(score).all() else math.nan
        rows.append((int(series), len(g), int(known.sum()), top1, tau))
    return pd.DataFrame(rows, columns=["series", "n", "ranked", "top1", "tau"])


def _series_metrics(photos: pd.DataFrame | None) -> dict:
    """series_top1 and kendall_tau (means over the series where each is defined)."""
    if photos is None or photos.empty:
        return {"series_top1": math.nan, "kendall_tau": math.nan}
    table = series_table(photos)
    top1, tau = table["top1"].dropna().to_numpy(), table["tau"].dropna().to_numpy()
    return {"series_top1": _mean(top1), "kendall_tau": _mean(tau)}


def pair_metrics(
    pairs: pd.DataFrame, photos: pd.DataFrame | None = None, confident: float = CONFIDENT
) -> dict:
    """The pairwise metrics of one split.

    n_pairs, n_decided (p_true != 0.5), pair_accuracy (decided pairs only) and its binomial
    standard error pair_accuracy_se, log_loss (all pairs, against the soft ratio),
    confident_accuracy over n_confident decided pairs with |p_true - 0.5| >= `confident`,
    human_ceiling (mean max(p_true, 1 - p_true) over decided pairs: how often a random rater
    agrees with the majority), n_series, and from `photos` series_top1 and kendall_tau.
    """
    p_true, p_pred = _floats(pairs, "p_true"), _floats(pairs, "p_pred")
    correct = pair_correct(pairs)
    decided = ~np.isnan(correct)
    sure = decided & (np.abs(p_true - 0.5) >= confident - _TOL)
    acc = _mean(correct[decided])
    n_decided = int(decided.sum())
    se = math.sqrt(acc * (1 - acc) / n_decided) if n_decided else math.nan
    return {
        "n_pairs": len(pairs),
        "n_decided": n_decided,
        "pair_accuracy": acc,
        "pair_accuracy_se": se,
        "log_loss": log_loss(p_true, p_pred),
        "confident_accuracy": _mean(correct[sure]),
        "n_confident": int(sure.sum()),
        "human_ceiling": _mean(np.maximum(p_true, 1 - p_true)[decided]),
        "n_series": int(pairs["series"].nunique()),
        **_series_metrics(photos),
    }


def _group_column(df: pd.DataFrame) -> str:
    """The column naming a photo's folder: `group` (a folders run), else `series` (PhotoTriage)."""
    return "group" if "group" in df.columns else "series"


def _macro_accuracy(pairs: pd.DataFrame) -> tuple[float, int]:
    """(mean over groups of each group's accuracy on its decided pairs, groups with one)."""
    if pairs.empty:
        return math.nan, 0
    correct = pd.Series(pair_correct(pairs), index=pairs.index)
    per_group = correct.groupby(pairs[_group_column(pairs)].to_numpy(), sort=True).mean().dropna()
    return _mean(per_group.to_numpy(dtype=np.float64)), len(per_group)


def grade_auc(good: np.ndarray, bad: np.ndarray) -> float:
    """ROC AUC of scores for good vs bad: the share of good x bad pairs the good photo wins (a tie
    counts half); NaN when either side is empty."""
    if not good.size or not bad.size:
        return math.nan
    diff = good[:, None] - bad[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def _auc_by_group(photos: pd.DataFrame) -> dict[str, float]:
    """group name -> AUC of its photos' scores (finite ones), for groups with both grades."""
    if photos.empty or "grade" not in photos.columns:
        return {}
    out: dict[str, float] = {}
    for group, g in photos.groupby(_group_column(photos), sort=True):
        score, grade = _floats(g, "score"), g["grade"].astype(str).to_numpy()
        ok = np.isfinite(score)
        auc = grade_auc(score[ok & (grade == "good")], score[ok & (grade == "bad")])
        if not math.isnan(auc):
            out[str(group)] = auc
    return out


def _mos_tau(photos: pd.DataFrame) -> tuple[float, int]:
    """(Kendall tau-b of score against mos over photos with both finite, how many such photos)."""
    if photos.empty or "mos" not in photos.columns:
        return math.nan, 0
    score = _floats(photos, "score")
    mos = pd.to_numeric(photos["mos"], errors="coerce").to_numpy(dtype=np.float64)
    ok = np.isfinite(score) & np.isfinite(mos)
    n = int(ok.sum())
    if n < 2 or np.ptp(score[ok]) == 0 or np.ptp(mos[ok]) == 0:
        return math.nan, n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.kendalltau(score[ok], mos[ok])[0]), n


def folder_metrics(pairs: pd.DataFrame, photos: pd.DataFrame | None = None) -> dict:
    """The culling-folder metrics of one split (good/bad folders; any pairwise run's tables).

    pair_accuracy_macro: the mean over groups (`group`, else `series`) of each group's pair
    accuracy, ties excluded, over n_macro_groups; from `photos` (`grade` good/bad, `mos`):
    auc_by_group (group -> ROC AUC of the score for good vs bad, ties half: the share of the
    folder's good x bad photo pairs ranked right, across its chunks), auc_mean over n_auc_groups
    (groups with both grades), kendall_tau_mos over the n_mos photos with a finite mos (NaN
    below 2). Plain floats and ints, string keys: JSON-safe apart from NaN.
    """
    macro, n_groups = _macro_accuracy(pairs)
    photos = photos if photos is not None else pd.DataFrame()
    aucs = _auc_by_group(photos)
    tau, n_mos = _mos_tau(photos)
    return {
        "pair_accuracy_macro": macro,
        "n_macro_groups": n_groups,
        "auc_mean": _mean(np.array(list(aucs.values()), dtype=np.float64)),
        "n_auc_groups": len(aucs),
        "auc_by_group": aucs,
        "kendall_tau_mos": tau,
        "n_mos": n_mos,
    }
