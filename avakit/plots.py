"""Matplotlib plots for `train` (training_curves.png) and `report` (telemetry plots).

Figures are built with `matplotlib.figure.Figure` (no pyplot, no GUI backend: PNGs are
rendered by Agg) and saved at 120 dpi. `gradient_warnings` turns a gradient-norm frame from
`avakit.training.rundir.read_telemetry` into plain-sentence warnings.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from avakit.fileio import atomic_write

DPI = 120
# the star that marks the best epoch, in train's curves and the report's SRCC-over-epochs plot
BEST_MARKER = dict(linestyle="none", marker="*", color="gold", markeredgecolor="black", zorder=5)
NEAR_ZERO = 1e-7
HEAD_BACKBONE_RATIO = 100.0
SPIKE_FACTOR, SPIKE_WINDOW = 10.0, 20
GROWTH_FACTOR = 5.0
_PARTS = ("overall", "backbone_layer4", "mlp_head")


def _save(fig: Figure, path: Path) -> Path:
    """Render `fig` to `path` (format from its suffix) through fileio.atomic_write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        fig.savefig(f, dpi=DPI, format=path.suffix.lstrip(".") or "png")
    return path


def _finite(values: Any) -> np.ndarray:
    """float array with inf replaced by NaN (matplotlib leaves a gap)."""
    arr = np.asarray(values, dtype=float)
    return np.where(np.isfinite(arr), arr, np.nan)


def _positive(values: Any) -> np.ndarray:
    """float array with non-positive and non-finite values masked (safe on a log axis)."""
    arr = _finite(values)
    return np.where(arr > 0, arr, np.nan)


def _style(ax: Axes, title: str, xlabel: str, ylabel: str, outside: bool = False) -> None:
    """Title, axis labels, grid and (if anything is labelled) a legend, inside or right of it."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.35)
    handles, _ = ax.get_legend_handles_labels()
    if handles and outside:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    elif handles:
        ax.legend(fontsize="small", framealpha=0.85)


def _placeholder(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _log_y(ax: Axes, *series: np.ndarray) -> None:
    """Log y-axis when any value is positive (else matplotlib would warn and misdraw)."""
    if any(np.isfinite(s).any() for s in series):
        ax.set_yscale("log")


def _group_label(prefix: str, i: int, n: int) -> str:
    """`prefix` + i, naming the part when param_groups' order [backbone, head] is certain."""
    return f"{prefix}{i} ({('backbone', 'head')[i]})" if n == 2 else f"{prefix}{i}"


def _history_columns(history: list[dict]) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """epochs, the scalar metrics used by the plot, and lrs as [epochs, groups] (NaN padded)."""
    epochs = np.array([int(h.get("epoch", i)) for i, h in enumerate(history)])
    keys = ("train_loss", "val_loss", "val_srcc", "val_plcc")
    cols = {k: _finite([math.nan if h.get(k) is None else h[k] for h in history]) for k in keys}
    raw = [h.get("lr") for h in history]
    lrs = [[r] if isinstance(r, (int, float)) else list(r or []) for r in raw]
    width = max((len(r) for r in lrs), default=0)
    lr = _finite([r + [math.nan] * (width - len(r)) for r in lrs]).reshape(len(history), width)
    return epochs, cols, lr


def plot_training_curves(history: list[dict], path: Path) -> Path:
    """Loss, validation SRCC/PLCC and per-group learning rate vs epoch, side by side."""
    fig = Figure(figsize=(15, 4.4), layout="constrained")
    ax_loss, ax_corr, ax_lr = fig.subplots(1, 3)
    if not history:
        for ax in (ax_loss, ax_corr, ax_lr):
            _placeholder(ax, "no completed epochs")
    else:
        epochs, cols, lr = _history_columns(history)
        mk: dict[str, Any] = dict(marker="o", markersize=4) if len(epochs) <= 30 else {}
        ax_loss.plot(epochs, cols["train_loss"], label="train loss", **mk)
        ax_loss.plot(epochs, cols["val_loss"], label="val loss", **mk)
        ax_corr.plot(epochs, cols["val_srcc"], label="val SRCC (Spearman)", **mk)
        ax_corr.plot(epochs, cols["val_plcc"], label="val PLCC (Pearson)", **mk)
        if np.isfinite(cols["val_srcc"]).any():
            best = int(np.nanargmax(cols["val_srcc"]))
            ax_corr.plot(
                epochs[best],
                cols["val_srcc"][best],
                markersize=14,
                **BEST_MARKER,
                label=f"best SRCC {cols['val_srcc'][best]:.4f} (epoch {epochs[best]})",
            )
        series = [_positive(lr[:, g]) for g in range(lr.shape[1])]
        for g, values in enumerate(series):
            ax_lr.plot(epochs, values, label=_group_label("group ", g, lr.shape[1]), **mk)
        _log_y(ax_lr, *series)
        if not series:
            _placeholder(ax_lr, "no learning rates recorded")
        for ax in (ax_loss, ax_corr, ax_lr):  # the same epoch axis on every panel
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
            if len(epochs) == 1:
                ax.set_xticks([epochs[0]])
    _style(ax_loss, "Loss", "epoch (0-based)", "loss (mean per image)")
    _style(ax_corr, "Validation correlation", "epoch (0-based)", "correlation coefficient")
    _style(ax_lr, "Learning rate (last step of epoch)", "epoch (0-based)", "learning rate (log scale)")
    fig.suptitle("Training curves")
    return _save(fig, path)


def _norm_columns(df: pd.DataFrame) -> list[str]:
    layers = [c for c in df.columns if c.startswith("mlp_layer_")]
    layers.sort(key=lambda c: int(c[10:]) if c[10:].isdigit() else 0)
    return [c for c in _PARTS if c in df.columns] + layers


def _step_axis(ax: Axes, df: pd.DataFrame, epoch_starts: Sequence[int] | None = None) -> str:
    """Dotted lines where epochs start (if at most 50); returns the x-axis label.

    `epoch_starts` (from the history's step counts, `avakit.training.rundir.epoch_start_steps`) are the
    real first optimizer steps; without them the first recorded step of each epoch is used,
    which lies up to collect_every_n - 1 steps after the boundary, and the label says so.
    """
    label = "optimizer step (batch_idx)"
    if epoch_starts is not None:
        last = float(df["batch_idx"].max()) if len(df) else 0.0
        starts = [x for x in epoch_starts if 0 < x <= last]
        what = "epoch starts"
    elif "epoch" in df.columns and len(df) >= 2:
        change = df["epoch"].ne(df["epoch"].shift()).to_numpy()[1:]
        starts = list(df["batch_idx"].to_numpy()[1:][change])
        what = "first recorded step of each epoch"
    else:
        return label
    if not 0 < len(starts) <= 50:
        return label
    for x in starts:
        ax.axvline(x, color="0.6", linewidth=0.6, linestyle=":", zorder=0)
    return f"{label}; dotted lines: {what}"


_NORM_STYLES: dict[str, dict[str, Any]] = {
    "overall": dict(color="black", linewidth=2.0),
    "backbone_layer4": dict(color="tab:blue", linewidth=1.6),
    "mlp_head": dict(color="tab:orange", linewidth=1.6),
}


def _layer_style(k: int, n: int) -> dict[str, Any]:
    """Thin dashed line, colour k of n along viridis (stopping before its pale end)."""
    return dict(color=colormaps["viridis"](0.1 + 0.75 * k / max(n - 1, 1)), linewidth=1.0, linestyle="--")


def plot_gradient_norms(
    df: pd.DataFrame | None,
    path: Path,
    frozen: Collection[str] = (),
    epoch_starts: Sequence[int] | None = None,
) -> Path:
    """Gradient L2 norm per model part vs optimizer step, log y (zeros masked).

    `frozen` names parts frozen on purpose (labelled so); `epoch_starts` as in `_step_axis`.
    """
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.subplots()
    cols = _norm_columns(df) if df is not None and len(df) else []
    layer_cols = [c for c in cols if c not in _NORM_STYLES]
    series = [_positive(df[c]) for c in cols]
    for col, values in zip(cols, series, strict=True):
        style = _NORM_STYLES.get(col) or _layer_style(layer_cols.index(col), len(layer_cols))
        label = (
            col
            if np.isfinite(values).any()
            else (f"{col} (frozen on purpose)" if col in frozen else f"{col} (all zero: frozen?)")
        )
        marker = "o" if len(df) <= 30 else None
        ax.plot(df["batch_idx"], values, label=label, marker=marker, markersize=3, **style)
    xlabel = "optimizer step (batch_idx)"
    if cols:
        xlabel = _step_axis(ax, df, epoch_starts)
        _log_y(ax, *series)
    else:
        _placeholder(ax, "no gradient-norm telemetry")
    _style(ax, "Gradient L2 norm per model part", xlabel, "gradient L2 norm (log scale)", True)
    return _save(fig, path)


def plot_learning_rates(
    df: pd.DataFrame | None, path: Path, epoch_starts: Sequence[int] | None = None
) -> Path:
    """Learning rate of each optimizer param group vs optimizer step, log y."""
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.subplots()
    cols = [c for c in df.columns if c.startswith("lr_group_")] if df is not None and len(df) else []
    series = [_positive(df[c]) for c in cols]
    for i, values in enumerate(series):
        ax.plot(
            df["batch_idx"],
            values,
            label=_group_label("lr_group_", i, len(cols)),
            marker="o" if len(df) <= 30 else None,
            markersize=3,
        )
    xlabel = "optimizer step (batch_idx)"
    if cols:
        xlabel = _step_axis(ax, df, epoch_starts)
        _log_y(ax, *series)
    else:
        _placeholder(ax, "no learning-rate telemetry")
    _style(ax, "Learning rate per param group", xlabel, "learning rate (log scale)")
    return _save(fig, path)


def _steps(df: pd.DataFrame, mask: pd.Series, limit: int = 5) -> str:
    """'at batch_idx 10, 20, ... and N more' for the rows in `mask`."""
    idx = df.loc[mask, "batch_idx"].astype(int).tolist()
    shown = ", ".join(str(i) for i in idx[:limit])
    return f"at batch_idx {shown}" + (f" and {len(idx) - limit} more" if len(idx) > limit else "")


def _column_warnings(df: pd.DataFrame, col: str, frozen: bool = False) -> list[str]:
    """Near-zero, spike and steady-growth warnings for one gradient-norm column.

    A part `frozen` on purpose is expected to have a zero norm: warned only when it has one.
    """
    values = pd.Series(_finite(df[col]), index=df.index)
    finite = values.dropna()
    if finite.empty:
        return []
    out = []
    median = float(finite.median())
    if frozen:
        if median >= NEAR_ZERO:
            out.append(
                f"{col}: frozen by the run's config, yet its gradient norm has median {median:.3g}; "
                "the freeze did not take effect."
            )
        return out
    if median < NEAR_ZERO:
        out.append(
            f"{col}: gradient norm is near zero (median {median:.2g} < {NEAR_ZERO:g}); "
            "that part is frozen or its gradients are vanishing."
        )
        return out
    baseline = values.shift(1).rolling(SPIKE_WINDOW, min_periods=min(5, SPIKE_WINDOW)).median()
    spikes = (baseline > 0) & (values > SPIKE_FACTOR * baseline)
    if spikes.any():
        out.append(
            f"{col}: {int(spikes.sum())} gradient spike(s) above {SPIKE_FACTOR:g}x the median "
            f"of the previous {SPIKE_WINDOW} collections, {_steps(df, spikes)}."
        )
    quarter = len(finite) // 4
    if quarter >= 2:
        first, last = float(finite.iloc[:quarter].median()), float(finite.iloc[-quarter:].median())
        if first > 0 and last > GROWTH_FACTOR * first:
            out.append(
                f"{col}: gradient norm grew steadily, median {first:.3g} in the first quarter "
                f"of the run to {last:.3g} in the last ({last / first:.1f}x); "
                "training may be diverging (lower the learning rate or clip gradients)."
            )
    return out


def gradient_warnings(df: pd.DataFrame | None, frozen: Collection[str] = ()) -> list[str]:
    """Warning signs in a gradient-norm frame as plain sentences; [] when all looks fine.

    Flags a part with a near-zero median norm (frozen or vanishing), a head norm far above
    the last backbone stage (median ratio > 100), spikes (> 10x the rolling median of the
    previous 20 rows), steady growth (last-quarter median > 5x first-quarter median) and
    non-finite overall norms. Parts in `frozen` are frozen on purpose (a head-only run, or
    model.freeze=full: `avakit.report.build.frozen_parts`): their zero norm is expected, not a warning sign.
    """
    if df is None or df.empty or "batch_idx" not in df.columns:
        return []
    out: list[str] = []
    if "overall" in df.columns:
        bad = ~np.isfinite(np.asarray(df["overall"], dtype=float))
        if bad.any():
            out.append(
                f"overall: gradient norm is inf/NaN {_steps(df, pd.Series(bad, index=df.index))}; "
                "with AMP the GradScaler skips those steps, without it training diverged."
            )
    for col in _norm_columns(df):
        out.extend(_column_warnings(df, col, col in frozen))
    if {"mlp_head", "backbone_layer4"} <= set(df.columns):
        head, backbone = _finite(df["mlp_head"]), _finite(df["backbone_layer4"])
        ok = np.isfinite(head) & np.isfinite(backbone) & (backbone >= NEAR_ZERO)
        if ok.any():
            ratio = float(np.median(head[ok] / backbone[ok]))
            if ratio > HEAD_BACKBONE_RATIO:
                out.append(
                    f"mlp_head gradients are {ratio:.0f}x those of backbone_layer4 (median "
                    f"ratio > {HEAD_BACKBONE_RATIO:g}); the backbone learns far slower than the "
                    "head (check the head lr multiplier and the backbone's gradient flow)."
                )
    return out
