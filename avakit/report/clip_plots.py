"""Plots of a clip run's report: training curves, per-class accuracy bars, a verb confusion map.

Every plot is a `matplotlib.figure.Figure` (no pyplot) saved through `avakit.plots._save`, and
returns its path. Torch-free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from avakit.plots import _placeholder, _save, _style
from avakit.report.pairwise_plots import plot_task_curves

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
    curves = [(key, name, "-" if key.endswith("action_top1") else ":") for key, name in CURVE_ACCURACIES]
    titles = (
        "loss (verb + noun cross-entropy)",
        "Accuracy",
        "share of segments right",
        "Training curves (clip: verb, noun, action)",
    )
    return plot_task_curves(history, path, curves, "val_action_top1", titles)


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
