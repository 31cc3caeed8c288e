"""Tables and plots of a pairwise run's report: accuracy per bin, calibration of P, training curves.

The tables are computed from the run folder's pair predictions (series, i, j, p_true, rank_i,
rank_j, p_pred) and photo scores; every plot is a `matplotlib.figure.Figure` (no pyplot) saved
through `avakit.plots._save`, and returns its path. Torch-free.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from avakit.pair_metrics import pair_correct
from avakit.plots import BEST_MARKER, _finite, _group_label, _log_y, _placeholder, _positive, _save, _style

CONFIDENCE_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)  # bins of |p_true - 0.5| (ties excluded)
CALIBRATION_BINS = 10  # equal bins of p_pred over 0..1
BIN_COLUMNS = ["bin", "pairs", "accuracy", "se", "ceiling"]
# the per-epoch metrics a pairwise history holds (besides the losses), as plotted
CURVE_METRICS = {
    "val_pair_accuracy": "val pair accuracy",
    "val_series_top1": "val series top-1",
    "val_kendall_tau": "val Kendall tau",
}


def _decided(pairs: pd.DataFrame) -> pd.DataFrame:
    """The decided pairs (p_true != 0.5) with their `correct` (1/0) and `certainty` max(p, 1 - p)."""
    correct = pair_correct(pairs)
    p = pairs["p_true"].to_numpy(dtype=float)
    df = pairs.assign(correct=correct, certainty=np.maximum(p, 1 - p))
    return df[~np.isnan(correct)]


def _bin_row(name: str, g: pd.DataFrame) -> list[Any]:
    n = len(g)
    acc = float(g["correct"].mean()) if n else math.nan
    se = math.sqrt(acc * (1 - acc) / n) if n else math.nan
    return [name, n, acc, se, float(g["certainty"].mean()) if n else math.nan]


def by_confidence(pairs: pd.DataFrame) -> pd.DataFrame:
    """Accuracy of the decided pairs per bin of |p_true - 0.5| (how clear-cut people found the
    pair): bin, pairs, accuracy, se (binomial), ceiling (the human ceiling in the bin)."""
    df = _decided(pairs)
    margin = np.round(np.abs(df["p_true"].to_numpy(dtype=float) - 0.5), 9)  # 0.7 - 0.5 is 0.2 here
    edges = np.asarray(CONFIDENCE_EDGES)
    idx = np.clip(np.searchsorted(edges, margin, side="right") - 1, 0, len(edges) - 2)
    rows = [_bin_row(f"{edges[b]:.1f}-{edges[b + 1]:.1f}", df[idx == b]) for b in range(len(edges) - 1)]
    return pd.DataFrame(rows, columns=BIN_COLUMNS)


def series_sizes(pairs: pd.DataFrame, photos: pd.DataFrame | None) -> pd.Series:
    """Photos per series: counted in the photo table when there is one, else from the pairs'
    member indices (the highest index + 1)."""
    if photos is not None and not photos.empty:
        return photos.groupby("series").size()
    return pairs.groupby("series")[["i", "j"]].max().max(axis=1) + 1


def by_series_size(pairs: pd.DataFrame, photos: pd.DataFrame | None) -> pd.DataFrame:
    """Accuracy of the decided pairs per series size: bin ("n photos"), pairs, accuracy, se,
    ceiling, series (how many series of that size)."""
    sizes = series_sizes(pairs, photos)
    df = _decided(pairs)
    df = df.assign(size=df["series"].map(sizes))
    rows = [
        [*_bin_row(f"{int(n)} photos", g), int(g["series"].nunique())]
        for n, g in df.dropna(subset=["size"]).groupby("size", sort=True)
    ]
    return pd.DataFrame(rows, columns=[*BIN_COLUMNS, "series"])


def calibration(pairs: pd.DataFrame, bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    """Reliability of P per bin of p_pred (equal bins over 0..1, the last closed): bin, lo, hi,
    pairs, mean_pred, mean_true (all pairs in the bin), accuracy (its decided pairs)."""
    p_pred = pairs["p_pred"].to_numpy(dtype=float)
    idx = np.clip((p_pred * bins).astype(int), 0, bins - 1)
    correct = pair_correct(pairs)
    rows = []
    for b in range(bins):
        sel = idx == b
        decided = correct[sel][~np.isnan(correct[sel])]
        n = int(sel.sum())
        rows.append(
            [
                f"{b / bins:.1f}-{(b + 1) / bins:.1f}",
                b / bins,
                (b + 1) / bins,
                n,
                float(p_pred[sel].mean()) if n else math.nan,
                float(pairs["p_true"].to_numpy(dtype=float)[sel].mean()) if n else math.nan,
                float(decided.mean()) if decided.size else math.nan,
            ]
        )
    return pd.DataFrame(rows, columns=["bin", "lo", "hi", "pairs", "mean_pred", "mean_true", "accuracy"])


def plot_accuracy_bins(table: pd.DataFrame, path: Path, title: str, xlabel: str) -> Path:
    """Accuracy per bin (bars with ±1 SE), the human ceiling per bin (dots), chance (dashed)."""
    fig = Figure(figsize=(8, 4.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(table))
    if table["pairs"].sum() == 0:
        _placeholder(ax, "no decided pairs")
    else:
        acc = _finite(table["accuracy"])
        ax.bar(x, acc, yerr=_finite(table["se"]), capsize=3, color="tab:blue", alpha=0.8, label="model")
        ax.plot(x, _finite(table["ceiling"]), "o", color="tab:red", label="human ceiling")
        for xi, (a, n) in enumerate(zip(acc, table["pairs"], strict=True)):
            ax.annotate(
                f"n={n}", (xi, 0.02), ha="center", fontsize="small", color="white" if a > 0.1 else "0.3"
            )
    ax.axhline(0.5, color="0.4", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(x, list(table["bin"]))
    ax.set_ylim(0, 1.05)
    _style(ax, title, xlabel, "pair accuracy (decided pairs)")
    return _save(fig, path)


def plot_reliability(table: pd.DataFrame, path: Path, label: str) -> Path:
    """Left: mean p_true against mean p_pred per p_pred bin (on the diagonal = calibrated), dot
    size by pairs. Right: accuracy and number of pairs per p_pred bin."""
    fig = Figure(figsize=(12, 5), layout="constrained")
    ax_rel, ax_acc = fig.subplots(1, 2)
    used = table[table["pairs"] > 0]
    ax_rel.plot([0, 1], [0, 1], "--", color="0.5", linewidth=1, label="perfect calibration")
    if used.empty:
        _placeholder(ax_rel, "no pairs")
    else:
        sizes = 20 + 180 * used["pairs"] / used["pairs"].max()
        ax_rel.plot(used["mean_pred"], used["mean_true"], "-", color="tab:orange", alpha=0.6)
        ax_rel.scatter(
            used["mean_pred"], used["mean_true"], s=sizes, color="tab:orange", label="bins", zorder=3
        )
    ax_rel.set_xlim(0, 1)
    ax_rel.set_ylim(0, 1)
    _style(
        ax_rel,
        f"Calibration of P ({label})",
        "mean predicted P(i better than j)",
        "mean real preference ratio",
    )
    x = np.arange(len(table))
    ax_acc.bar(x, _finite(table["accuracy"]), color="tab:blue", alpha=0.8, label="accuracy (decided pairs)")
    for xi, n in enumerate(table["pairs"]):
        ax_acc.annotate(f"{n}", (xi, 0.02), ha="center", fontsize="x-small", color="0.2")
    ax_acc.axhline(0.5, color="0.4", linestyle="--", linewidth=1)
    ax_acc.set_xticks(x, list(table["bin"]), rotation=45)
    ax_acc.set_ylim(0, 1.05)
    _style(ax_acc, "Accuracy per bin of P (pairs in the bar)", "predicted P bin", "pair accuracy")
    return _save(fig, path)


def _column(history: list[dict], key: str) -> np.ndarray:
    return _finite([math.nan if h.get(key) is None else h[key] for h in history])


def _lr_matrix(history: list[dict]) -> np.ndarray:
    """Learning rates as [epochs, groups] (NaN padded)."""
    lrs = [[r] if isinstance(r, (int, float)) else list(r or []) for r in (h.get("lr") for h in history)]
    width = max((len(r) for r in lrs), default=0)
    return _finite([r + [math.nan] * (width - len(r)) for r in lrs]).reshape(len(history), width)


def plot_pairwise_curves(history: list[dict], path: Path) -> Path:
    """Loss, validation pair accuracy / series top-1 / Kendall tau (best accuracy starred) and
    the learning rate per param group vs epoch."""
    curves = [(key, name, "-") for key, name in CURVE_METRICS.items()]
    titles = (
        "loss (mean per pair)",
        "Validation ranking",
        "accuracy / top-1 / tau",
        "Training curves (pairwise)",
    )
    return plot_task_curves(history, path, curves, "val_pair_accuracy", titles)


def plot_task_curves(
    history: list[dict], path: Path, curves: list[tuple[str, str, str]], best: str, titles: tuple[str, ...]
) -> Path:
    """A group task's training curves: losses; its metric `curves` ((history key, legend, line
    style)), the epoch of best `best` starred; the learning rate per param group. `titles`: the
    loss axis label, the metric panel's title and axis label, the figure title."""
    fig = Figure(figsize=(15, 4.4), layout="constrained")
    ax_loss, ax_val, ax_lr = fig.subplots(1, 3)
    if not history:
        for ax in (ax_loss, ax_val, ax_lr):
            _placeholder(ax, "no completed epochs")
    else:
        epochs = np.array([int(h.get("epoch", i)) for i, h in enumerate(history)])
        mk: dict[str, Any] = dict(marker="o", markersize=4) if len(epochs) <= 30 else {}
        for key in ("train_loss", "val_loss"):
            ax_loss.plot(epochs, _column(history, key), label=key.replace("_", " "), **mk)
        for key, name, style in curves:
            ax_val.plot(epochs, _column(history, key), style, label=name, **mk)
        acc = _column(history, best)
        if np.isfinite(acc).any():
            b = int(np.nanargmax(acc))
            label = f"best {acc[b]:.4f} (epoch {epochs[b]})"
            ax_val.plot(epochs[b], acc[b], markersize=14, **BEST_MARKER, label=label)
        lr = _lr_matrix(history)
        series = [_positive(lr[:, g]) for g in range(lr.shape[1])]
        for g, values in enumerate(series):
            ax_lr.plot(epochs, values, label=_group_label("group ", g, lr.shape[1]), **mk)
        _log_y(ax_lr, *series)
        if not series:
            _placeholder(ax_lr, "no learning rates recorded")
        for ax in (ax_loss, ax_val, ax_lr):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
    loss_label, metric_title, metric_label, title = titles
    _style(ax_loss, "Loss", "epoch (0-based)", loss_label)
    _style(ax_val, metric_title, "epoch (0-based)", metric_label)
    _style(ax_lr, "Learning rate (last step of epoch)", "epoch (0-based)", "learning rate (log scale)")
    fig.suptitle(title)
    return _save(fig, path)
