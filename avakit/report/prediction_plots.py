"""Prediction-analysis plots for `avakit report`, drawn from a predictions table.

Every function takes a predictions frame (the run-folder columns image_id, pred_mean, gt_mean,
[pred_dist_1..K], [gt_dist_1..K]) or a small derived table, writes one PNG with
`matplotlib.figure.Figure` (no pyplot) at the dpi of `avakit.plots`, and returns its path.
`label` names the data and the model behind it in titles, e.g. "test: best_model.pt, epoch 4,
no TTA" (`avakit.report.build.SplitData.label`); `rs` (a `RunScale`, AVA's by default) gives
every axis range and label, bin and threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from avakit import metrics
from avakit.plots import BEST_MARKER, _placeholder, _save, _style
from avakit.predictions import dist_columns
from avakit.report.scale import AVA_RUN, RunScale

REAL, PRED = "tab:blue", "tab:orange"
_LABEL_BOX = dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none", alpha=0.8)


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a title or table; 'n/a' for None/NaN."""
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _arrays(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return df["pred_mean"].to_numpy(dtype=float), df["gt_mean"].to_numpy(dtype=float)


def _used_bins(idx: np.ndarray) -> range:
    """The bin indices from the lowest to the highest bin that holds data."""
    return range(int(idx.min()), int(idx.max()) + 1) if idx.size else range(0)


def plot_scatter(df: pd.DataFrame, path: Path, label: str, rs: RunScale = AVA_RUN) -> Path:
    """Predicted vs real mean score, identity line, SRCC/PLCC in the title."""
    pred, gt = _arrays(df)
    fig = Figure(figsize=(6.8, 6.2), layout="constrained")
    ax = fig.subplots()
    step = rs.unit / 2  # AVA: the axes run over half points, padded by a quarter
    lo = math.floor(min(pred.min(), gt.min()) / step) * step - step / 2
    hi = math.ceil(max(pred.max(), gt.max()) / step) * step + step / 2
    alpha = 0.8 if len(df) <= 500 else max(0.08, 0.8 * math.sqrt(500 / len(df)))
    ax.scatter(
        gt,
        pred,
        s=14 if len(df) <= 2000 else 4,
        alpha=alpha,
        color=REAL,
        edgecolors="none",
        label=f"images (n={len(df)})",
    )
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, linestyle="--", label="identity (perfect)")
    t = rs.threshold
    if t is not None and lo < t < hi:
        ax.axvline(t, color="0.6", linewidth=0.7, linestyle=":")
        ax.axhline(t, color="0.6", linewidth=0.7, linestyle=":", label=f"threshold {t:g}")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    title = (
        f"Predicted vs real ({label})\nSRCC {fmt(metrics.srcc(pred, gt))} · "
        f"PLCC {fmt(metrics.plcc(pred, gt))}"
    )
    _style(ax, title, f"real {rs.axis}", f"predicted {rs.axis}")
    return _save(fig, path)


def plot_residuals(df: pd.DataFrame, path: Path, label: str, rs: RunScale = AVA_RUN) -> Path:
    """Histogram of predicted - real mean score with the zero and mean-bias lines."""
    pred, gt = _arrays(df)
    resid = pred - gt
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    bins = int(np.clip(math.sqrt(len(resid)) * 1.5, 10, 60))
    ax.hist(resid, bins=bins, color=REAL, alpha=0.8, edgecolor="white", label="images")
    ax.axvline(0.0, color="black", linewidth=1.2, label="zero error")
    ax.axvline(
        float(resid.mean()),
        color="tab:red",
        linestyle="--",
        linewidth=1.2,
        label=f"mean bias {resid.mean():+.3f}",
    )
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    title = f"Residuals ({label})\nMAE {fmt(metrics.mae(pred, gt))} · RMSE {fmt(metrics.rmse(pred, gt))}"
    _style(ax, title, f"residual = predicted - real ({rs.units})", "number of images")
    return _save(fig, path)


def plot_calibration(df: pd.DataFrame, path: Path, label: str, rs: RunScale = AVA_RUN) -> Path:
    """Mean prediction (± std) per real-score bin, against the bin's mean real score."""
    pred, gt = _arrays(df)
    idx, names = rs.bins(gt)
    fig = Figure(figsize=(7.2, 6), layout="constrained")
    ax = fig.subplots()
    rows = [
        (gt[idx == b].mean(), pred[idx == b].mean(), pred[idx == b].std(), int((idx == b).sum()))
        for b in _used_bins(idx)
        if (idx == b).any()
    ]
    x, y, err, counts = (np.array(c) for c in zip(*rows, strict=True))
    pad = 0.4 * rs.unit
    lo, hi = min(x.min(), (y - err).min()) - pad, max(x.max(), (y + err).max()) + pad
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, linestyle="--", label="identity (calibrated)")
    ax.errorbar(x, y, yerr=err, color=PRED, marker="o", capsize=3, label="mean prediction ± std per bin")
    for xi, yi, n in zip(x, y, counts, strict=True):
        ax.annotate(
            f"n={n}",
            (xi, yi),
            textcoords="offset points",
            xytext=(8, -3),
            fontsize="small",
            va="top",
            bbox=_LABEL_BOX,
        )
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    _style(
        ax,
        f"Calibration ({label})\nimages binned by real score, bins of width {rs.unit:.3g}",
        f"real {rs.axis}, average within bin",
        f"predicted {rs.axis}, average within bin",
    )
    return _save(fig, path)


def plot_error_by_score(df: pd.DataFrame, path: Path, label: str, rs: RunScale = AVA_RUN) -> Path:
    """MAE per real-score bin (bars) with the number of images of each bin."""
    pred, gt = _arrays(df)
    idx, names = rs.bins(gt)
    used = list(_used_bins(idx))
    maes = [metrics.mae(pred[idx == b], gt[idx == b]) if (idx == b).any() else 0.0 for b in used]
    counts = [int((idx == b).sum()) for b in used]
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.axhline(
        metrics.mae(pred, gt),
        color="tab:red",
        linestyle="--",
        linewidth=1,
        zorder=1,
        label=f"all images MAE {fmt(metrics.mae(pred, gt))}",
    )
    bars = ax.bar(
        [f"{names[b]}\nn={n}" for b, n in zip(used, counts, strict=True)],
        maes,
        color=REAL,
        alpha=0.85,
        label="MAE in bin",
        zorder=2,
    )
    ax.bar_label(bars, fmt="%.3f", padding=2, fontsize="small", zorder=3, bbox=_LABEL_BOX)
    ax.set_ylim(0, max(maes) * 1.35 + 1e-6)
    _style(
        ax,
        f"Error by real score ({label})",
        f"real {rs.axis}, bin and number of images",
        f"MAE ({rs.units})",
    )
    return _save(fig, path)


def plot_confusion(df: pd.DataFrame, path: Path, label: str, rs: RunScale = AVA_RUN) -> Path:
    """2x2 confusion matrix of real vs predicted "good" (beyond the threshold in the better direction).

    Counts and percentages annotated; needs `rs.threshold` (the report skips it without one).
    """
    pred, gt = _arrays(df)
    t, hib = rs.threshold, rs.scale.higher_is_better
    if t is None:
        raise ValueError("a confusion matrix needs a threshold")
    real_hi, pred_hi = rs.scale.good(gt, t), rs.scale.good(pred, t)
    mat = np.array(
        [
            [np.sum(~real_hi & ~pred_hi), np.sum(~real_hi & pred_hi)],
            [np.sum(real_hi & ~pred_hi), np.sum(real_hi & pred_hi)],
        ]
    )
    fig = Figure(figsize=(6.6, 5.4), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=max(int(mat.max()), 1))
    for (r, c), n in np.ndenumerate(mat):
        color = "white" if n > 0.6 * mat.max() else "black"
        ax.text(
            c,
            r,
            f"{n}\n({100 * n / max(len(df), 1):.1f}%)",
            ha="center",
            va="center",
            color=color,
            fontsize="large",
        )
    cut = rs.cut()
    ax.set_xticks([0, 1], [f"predicted {cut['bad']}", f"predicted {cut['good']}"])
    ax.set_yticks([0, 1], [f"real {c.replace(' (', chr(10) + '(')}" for c in (cut["bad"], cut["good"])])
    fig.colorbar(im, ax=ax, label="number of images", shrink=0.8)
    direction = "" if hib else ", lower is better"
    ax.set_title(
        f"Binary classification at {rs.noun} {t:g}{direction}\n({label})\n"
        f"Acc {fmt(metrics.accuracy(pred, gt, t, hib))} · majority baseline "
        f"{fmt(metrics.majority_baseline(gt, t, hib))}"
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("real class")
    return _save(fig, path)


def plot_score_distributions(df: pd.DataFrame, path: Path, label: str, rs: RunScale = AVA_RUN) -> Path:
    """Overlaid histograms of the predicted and the real mean scores."""
    pred, gt = _arrays(df)
    u = rs.unit  # AVA: 1, so eighth or quarter points
    lo, hi = math.floor(min(pred.min(), gt.min()) / u) * u, math.ceil(max(pred.max(), gt.max()) / u) * u
    step = u * (0.125 if hi - lo <= 4 * u else 0.25)
    bins = np.arange(lo, hi + step / 2, step) if u == 1 else np.linspace(lo, hi, round((hi - lo) / step) + 1)
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    for values, name, color in ((gt, "real", REAL), (pred, "predicted", PRED)):
        ax.hist(
            values,
            bins=bins,
            color=color,
            alpha=0.45,
            label=f"{name} (mean {values.mean():.2f}, std {values.std():.2f})",
        )
        ax.hist(values, bins=bins, color=color, histtype="step", linewidth=1.2)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _style(ax, f"Distribution of {rs.noun}s ({label})", rs.axis, "number of images")
    return _save(fig, path)


PREDICTION_PLOTS: dict[str, Callable[[pd.DataFrame, Path, str, RunScale], Path]] = {
    "scatter": plot_scatter,
    "residuals": plot_residuals,
    "calibration": plot_calibration,
    "error_by_score": plot_error_by_score,
    "confusion": plot_confusion,
    "score_distributions": plot_score_distributions,
}


def plot_srcc_by_epoch(points: pd.DataFrame, path: Path, best_epoch: int | None) -> Path:
    """Validation SRCC and PLCC per epoch (columns epoch, srcc, plcc), best epoch starred."""
    fig = Figure(figsize=(8, 4.6), layout="constrained")
    ax = fig.subplots()
    if points.empty:
        _placeholder(ax, "no per-epoch prediction files")
    else:
        ax.plot(points["epoch"], points["srcc"], marker="o", label="val SRCC (Spearman)")
        ax.plot(
            points["epoch"], points["plcc"], marker="s", markersize=4, alpha=0.8, label="val PLCC (Pearson)"
        )
        best = points[points["epoch"] == best_epoch]
        if not best.empty:
            ax.plot(
                best["epoch"],
                best["srcc"],
                markersize=15,
                **BEST_MARKER,
                label=f"best epoch {best_epoch} (SRCC {fmt(best['srcc'].iloc[0], 4)})",
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.margins(y=0.25 if len(points) > 1 else 0.6)
        if len(points) == 1:
            e = int(points["epoch"].iloc[0])
            ax.set_xlim(e - 0.5, e + 0.5)
            ax.set_xticks([e])
    title = "Validation correlation per epoch\n(each epoch's model, no TTA: predictions/val_epoch_*.parquet)"
    _style(ax, title, "epoch (0-based)", "correlation coefficient")
    return _save(fig, path)


def _pick_spread(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """k rows whose real scores span the range (evenly spaced ranks)."""
    ordered = df.sort_values("gt_mean", kind="stable")
    picks = np.unique(np.linspace(0, len(ordered) - 1, min(k, len(ordered))).round().astype(int))
    return ordered.iloc[picks]


def _vote_axes(ax: Axes, row: pd.Series, rs: RunScale) -> None:
    points = rs.scale.points
    w = float(points[1] - points[0])
    real = [row[c] for c in rs.scale.point_names("gt_dist_")]
    pred = [row[c] for c in rs.scale.point_names("pred_dist_")]
    ax.bar(points - 0.2 * w, real, width=0.4 * w, color=REAL, label="real votes")
    ax.bar(points + 0.2 * w, pred, width=0.4 * w, color=PRED, label="predicted")
    if len(points) <= 15:
        ax.set_xticks(points, [f"{p:g}" for p in points])
    ax.set_title(
        f"id {int(row['image_id'])}: real {row['gt_mean']:.2f}, predicted {row['pred_mean']:.2f}",
        fontsize="medium",
    )
    ax.grid(True, axis="y", alpha=0.35)


def plot_vote_histograms(
    df: pd.DataFrame, path: Path, label: str, rs: RunScale = AVA_RUN, k: int = 6
) -> Path:
    """A grid of predicted vs real vote histograms (K bars, one per point) for ~k images."""
    if rs.scale.kind != "votes" or len(dist_columns(df, "pred_dist_")) != rs.scale.k:
        raise ValueError(f"vote histograms need pred_dist_1..{rs.scale.k} columns of a vote scale")
    rows = _pick_spread(df, k)
    ncols = 3 if len(rows) > 2 else max(len(rows), 1)
    nrows = max(1, math.ceil(len(rows) / ncols))
    fig = Figure(figsize=(13, 3.4 * nrows + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
    for ax, (_, row) in zip(axes, rows.iterrows(), strict=False):
        _vote_axes(ax, row, rs)
    for i, ax in enumerate(axes):
        if i >= len(rows):
            ax.set_visible(False)
        if i % ncols == 0:
            ax.set_ylabel("share of votes")
        if i >= len(axes) - ncols:
            ax.set_xlabel(f"rating ({rs.scale.text})")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside upper right", ncols=2, fontsize="small")
    fig.suptitle(f"Predicted vs real vote distributions ({label}), images ordered by real score")
    return _save(fig, path)


def plot_group_mae(
    table: pd.DataFrame,
    path: Path,
    title: str,
    overall_mae: float,
    max_groups: int = 25,
    units: str = AVA_RUN.units,
) -> Path:
    """Horizontal MAE bars per group (columns name, count, mae), in table order, largest first."""
    shown = table.head(max_groups)
    fig = Figure(figsize=(10, 1.6 + 0.34 * max(len(shown), 6)), layout="constrained")
    ax = fig.subplots()
    labels = [f"{name} (n={n})" for name, n in zip(shown["name"], shown["count"], strict=True)]
    ax.axvline(
        overall_mae,
        color="tab:red",
        linestyle="--",
        linewidth=1,
        zorder=1,
        label=f"all images MAE {fmt(overall_mae)}",
    )
    bars = ax.barh(
        labels[::-1], shown["mae"].to_numpy()[::-1], color=REAL, alpha=0.85, zorder=2, label="MAE in group"
    )
    ax.bar_label(bars, fmt="%.3f", padding=2, fontsize="small", zorder=3, bbox=_LABEL_BOX)
    ax.margins(y=0.02)
    ax.set_xlim(0, max(float(shown["mae"].max()), overall_mae) * 1.18 + 1e-6)
    more = f" ({len(shown)} largest of {len(table)} groups)" if len(table) > len(shown) else ""
    _style(ax, title + more, f"MAE ({units})", "group (number of images)", outside=True)
    return _save(fig, path)
