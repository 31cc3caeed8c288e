"""Plots of a clip run's report: training curves, per-class accuracy bars, a verb confusion map.

Every plot is a `matplotlib.figure.Figure` (no pyplot) saved through `avakit.plots._save`, and
returns its path. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from avakit.plots import BEST_MARKER, _group_label, _log_y, _placeholder, _positive, _save, _style
from avakit.report.pairwise_plots import _column, _lr_matrix

# the per-epoch accuracies plotted against each other: (history key, legend)
CURVE_ACCURACIES = (
    ("train_action_top1", "train action top-1"),
    ("val_action_top1", "val action top-1"),
    ("val_verb_top1", "val verb top-1"),
    ("val_noun_top1", "val noun top-1"),
    ("val_action_top5", "val action top-5"),
)


def plot_clip_curves(history: list[dict], path: Path) -> Path:
    """Losses, train vs val action top-1 (with verb, noun and action top-5 on val; the best val
    action top-1 starred) and the learning rate per param group vs epoch."""
    fig = Figure(figsize=(15, 4.4), layout="constrained")
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    if not history:
        for ax in (ax_loss, ax_acc, ax_lr):
            _placeholder(ax, "no completed epochs")
    else:
        epochs = np.array([int(h.get("epoch", i)) for i, h in enumerate(history)])
        mk: dict[str, Any] = dict(marker="o", markersize=4) if len(epochs) <= 30 else {}
        for key in ("train_loss", "val_loss"):
            ax_loss.plot(epochs, _column(history, key), label=key.replace("_", " "), **mk)
        for key, name in CURVE_ACCURACIES:
            style = "-" if key.endswith("action_top1") else ":"
            ax_acc.plot(epochs, _column(history, key), style, label=name, **mk)
        acc = _column(history, "val_action_top1")
        if np.isfinite(acc).any():
            b = int(np.nanargmax(acc))
            label = f"best {acc[b]:.4f} (epoch {epochs[b]})"
            ax_acc.plot(epochs[b], acc[b], markersize=14, **BEST_MARKER, label=label)
        lr = _lr_matrix(history)
        series = [_positive(lr[:, g]) for g in range(lr.shape[1])]
        for g, values in enumerate(series):
            ax_lr.plot(epochs, values, label=_group_label("group ", g, lr.shape[1]), **mk)
        _log_y(ax_lr, *series)
        if not series:
            _placeholder(ax_lr, "no learning rates recorded")
        for ax in (ax_loss, ax_acc, ax_lr):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
    _style(ax_loss, "Loss", "epoch (0-based)", "loss (verb + noun cross-entropy)")
    _style(ax_acc, "Accuracy", "epoch (0-based)", "share of segments right")
    _style(ax_lr, "Learning rate (last step of epoch)", "epoch (0-based)", "learning rate (log scale)")
    fig.suptitle("Training curves (clip: verb, noun, action)")
    return _save(fig, path)


def plot_per_class(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Accuracy per class (bars, most frequent first) with each class's segments above its bar;
    `table` has columns class (its name), segments, accuracy."""
    fig = Figure(figsize=(max(6.0, 0.45 * len(table) + 2), 4.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(table))
    if table.empty:
        _placeholder(ax, "no segments")
    else:
        acc = np.nan_to_num(table["accuracy"].to_numpy(dtype=float))
        ax.bar(x, acc, color="tab:blue", alpha=0.85)
        for xi, (a, n) in enumerate(zip(acc, table["segments"], strict=True)):
            ax.annotate(f"{n}", (xi, a + 0.01), ha="center", fontsize="x-small", color="0.2")
        ax.set_xticks(x, list(table["class"]), rotation=60, ha="right", fontsize="small")
    ax.set_ylim(0, 1.08)
    _style(ax, title, "class (most frequent first; segments above the bar)", "top-1 accuracy")
    return _save(fig, path)


def plot_confusion_map(matrix: np.ndarray, path: Path, names: list[str], title: str) -> Path:
    """Row-normalised confusion (rows: true class, columns: predicted, the last one "other"):
    a heatmap with each cell's share written in it."""
    fig = Figure(
        figsize=(max(6.0, 0.7 * len(names) + 3), max(5.0, 0.6 * len(names) + 2)), layout="constrained"
    )
    ax = fig.subplots()
    if not len(names):
        _placeholder(ax, "no segments")
    else:
        counts = matrix.astype(float)
        shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        fig.colorbar(image, ax=ax, label="share of the row (true class)")
        for (r, k), value in np.ndenumerate(shares):
            if counts[r].sum():
                color = "white" if value > 0.6 else "0.15"
                ax.text(k, r, f"{value:.2f}", ha="center", va="center", fontsize="x-small", color=color)
        ax.set_xticks(np.arange(len(names) + 1), [*names, "other"], rotation=60, ha="right", fontsize="small")
        ax.set_yticks(np.arange(len(names)), names, fontsize="small")
    ax.set_title(title)
    ax.set_xlabel("predicted verb")
    ax.set_ylabel("true verb")
    return _save(fig, path)
