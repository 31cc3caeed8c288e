"""The sections of a clip run's report (EPIC-KITCHENS-style verb + noun segments). Torch-free.

Summary (verb, noun and action top-1 / top-5 on val and test, the unseen-participant and
tail-class subsets where the run has them, the train-val gap of action top-1 at the best epoch),
training curves (train vs val action top-1, losses, learning rate), per-class accuracy of the
most frequent verbs and nouns (bar chart and table, classes named from results.json), and the
row-normalised confusion of the most frequent verbs. `avakit.report.build` dispatches here and
adds what every report shares (telemetry, notes, the page).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avakit.clip_metrics import CLIP_METRIC_NAMES, METRIC_KEYS, SUBSETS, confusion, per_class_accuracy
from avakit.report import clip_plots as cp
from avakit.report import pairwise
from avakit.report.clip_run import ClipSplit, class_name
from avakit.report.html import Collector, drawn_figure, paragraph, section, table
from avakit.scores import HELD_OUT_SPLITS
from avakit.training.rundir import CHECKPOINT_FILES

TOP_CLASSES = 20  # classes in the per-class accuracy charts and tables (by support)
TOP_CONFUSED = 10  # verbs in the confusion matrix (by support)

CAPTIONS = {
    "curves": "Per epoch: training and validation loss (left); action top-1 on train and val with val "
    "verb, noun and action top-5 dotted, the best val action top-1 starred (middle); learning rate of "
    "each param group (right). A widening train-val gap is overfitting.",
    "learning_rates": "Learning rate of each param group at every recorded optimizer step.",
    "per_class": "Top-1 accuracy of the most frequent classes of the split (by segments, most frequent "
    "first; the number above each bar is its segments). Rare classes are where the tail metrics "
    "come from.",
    "confusion": "Row-normalised confusion of the most frequent verbs: each row is a true verb, each "
    "cell the share of its segments predicted as the column's verb; 'other' = any verb outside "
    "the table. The diagonal is the per-verb accuracy.",
}
SUBSET_TITLES = {"unseen": "unseen participants", "tail": "tail classes"}


def _figure(c: Collector, name: str, key: str, fn: Callable[..., Path], *args: Any) -> str:
    """Draw `fn(args[0], out/name, *args[1:])`; its <figure> with the caption of `key`."""
    return drawn_figure(c, name, CAPTIONS[key], fn, *args)


def frac(m: dict, key: str, digits: int = 4) -> str:
    """m[key] as a fraction with `digits` decimals; "-" unless it is a finite number in 0..1."""
    value = m.get(key)
    if type(value) not in (int, float) or not (math.isfinite(value) and 0 <= value <= 1):
        return "-"
    return f"{value:.{digits}f}"


def _count(m: dict, key: str) -> str:
    value = m.get(key)
    return f"{value:,}" if type(value) is int and value >= 0 else "-"


def split_rows(splits: list[ClipSplit]) -> list[tuple[str, str, dict | None]]:
    """(split, model, metrics or None) of val and test: train's own, None where not found."""
    by_key = {sp.key: sp for sp in splits}
    best = CHECKPOINT_FILES["best"]
    return [
        (k, by_key[k].model, by_key[k].metrics) if k in by_key else (k, best, None) for k in HELD_OUT_SPLITS
    ]


def summary_rows(rows: Sequence[tuple[str, str, dict | None]]) -> list[list[str]]:
    """One table row per (split, model, metrics): all segments, then each subset it has."""
    cells = []
    for name, model, m in rows:
        if m is None:
            cells.append([name, model, "no predictions", *("n/a" for _ in METRIC_KEYS)])
            continue
        cells.append([name, model, _count(m, "n"), *(frac(m, k) for k in METRIC_KEYS)])
        for s in SUBSETS:
            if m.get(f"{s}_n"):  # absent, or empty (a carved test split has no unseen participant)
                what = f"{name} · {SUBSET_TITLES[s]}"
                cells.append([what, model, _count(m, f"{s}_n"), *(frac(m, f"{s}_{k}") for k in METRIC_KEYS)])
    return cells


def summary_table(best: int | None, rows: Sequence[tuple[str, str, dict | None]], gap: float | None) -> str:
    """Best epoch, the train-val gap, and per (split, model, metrics or None) the top-1 / top-5
    accuracies of verb, noun and action, with the subset rows."""
    header = ["split", "model", "segments", *(CLIP_METRIC_NAMES[k] for k in METRIC_KEYS)]
    shown = "n/a" if best is None else str(best)
    gap_text = (
        "n/a (the best epoch's history record lacks train or val action top-1)"
        if gap is None
        else f"{gap:+.4f} (train {'above' if gap >= 0 else 'below'} val)"
    )
    return (
        paragraph(
            f"Best epoch (highest val action top-1): {shown}. Train-val gap of action top-1 at the best "
            f"epoch: {gap_text}. The analysis below is of train's own predictions; rows marked "
            "'evaluate' come from `avakit evaluate` (eval/*.json)."
        )
        + paragraph(
            "Labels: one verb and one noun class per video segment; the model averages per-frame "
            "features over time and has a verb head and a noun head. An action (verb, noun) is right "
            "when both are; actions are ranked by p(verb) x p(noun). Unseen participants: segments of "
            "people absent from training. Tail classes (as the EPIC-KITCHENS-100 challenge): verb "
            "metrics over segments with a tail verb, noun metrics over those with a tail noun, action "
            "metrics over those with either; 'segments' counts the last."
        )
        + table(header, summary_rows(rows))
    )


def training_section(
    c: Collector, history: list[dict], lr_df: pd.DataFrame | None, starts: Sequence[int] | None
) -> str:
    """Per-epoch curves of a clip run and, from telemetry, the learning rate per step."""
    return pairwise.training_section(c, history, lr_df, starts, cp.plot_clip_curves, CAPTIONS)


def per_class_table(df: pd.DataFrame, part: str, names: list[str], top: int = TOP_CLASSES) -> pd.DataFrame:
    """The `top` most frequent true classes of `part` ("verb" or "noun") in a split: index, class
    (its name), segments, accuracy (top-1); ties in support by class index."""
    true, pred = df[f"{part}_true"].to_numpy(np.int64), df[f"{part}_pred"].to_numpy(np.int64)
    classes, dense = np.unique(true, return_inverse=True)  # dense ids: a crafted huge index costs nothing
    at = np.minimum(np.searchsorted(classes, pred), max(len(classes) - 1, 0))
    known = classes[at] == pred if len(classes) else np.zeros(len(pred), dtype=bool)
    pred_dense = np.where(known, at, -1)
    counts, acc = per_class_accuracy(dense, pred_dense, len(classes))
    ranked = [int(i) for i in np.argsort(-counts, kind="stable")][:top]
    order = [int(classes[i]) for i in ranked]
    counts, acc = counts[ranked], acc[ranked]
    return pd.DataFrame(
        {
            "index": order,
            "class": [class_name(names, i) for i in order],
            "segments": [int(n) for n in counts],
            "accuracy": [float(a) for a in acc],
        }
    )


def per_class_section(c: Collector, splits: list[ClipSplit], names: dict[str, list[str]]) -> str:
    """Per split, per part: a bar chart and a table of the most frequent classes' accuracy."""
    body = ""
    for sp in splits:
        for part in ("verb", "noun"):
            t = per_class_table(sp.df, part, names[part])
            title = f"{part.capitalize()} accuracy, {len(t)} most frequent {part}s ({sp.label})"
            fig = _figure(c, f"{sp.key}_{part}_per_class.png", "per_class", cp.plot_per_class, t, title)
            key = names[part]  # the table shows the class index and its key apart
            rows = [
                [i, key[i] if i < len(key) else "-", n, frac({"a": a}, "a", 3)]
                for i, _, n, a in t.itertuples(index=False, name=None)
            ]
            inner = fig + table([part, "key", "segments", "top-1 accuracy"], rows)
            body += section(f"{part}s · {sp.label}", inner, level=3)
    return body


def confusion_section(c: Collector, splits: list[ClipSplit], names: dict[str, list[str]]) -> str:
    """Per split: the row-normalised confusion of its TOP_CONFUSED most frequent verbs."""
    body = ""
    for sp in splits:
        top = per_class_table(sp.df, "verb", names["verb"], TOP_CONFUSED)
        matrix = confusion(sp.df["verb_true"], sp.df["verb_pred"], list(top["index"]))
        title = f"Confusion of the {len(top)} most frequent verbs ({sp.label})"
        labels = list(top["class"])
        fig = _figure(
            c, f"{sp.key}_verb_confusion.png", "confusion", cp.plot_confusion_map, matrix, labels, title
        )
        body += section(sp.label, fig, level=3)
    return body


def sections(
    c: Collector, history: list[dict], splits: list[ClipSplit], names: dict, extra: dict
) -> list[tuple]:
    """(anchor, heading, HTML) of a clip report's own sections, the shared telemetry HTML given in
    `extra` ("telemetry", "lr_df", "starts")."""
    return [
        ("training", "Training curves", training_section(c, history, extra["lr_df"], extra["starts"])),
        ("telemetry", "Telemetry: gradient norms", extra["telemetry"]),
        (
            "per-class",
            "Per-class accuracy (most frequent verbs and nouns)",
            per_class_section(c, splits, names),
        ),
        ("confusion", "Confusion of the most frequent verbs", confusion_section(c, splits, names)),
    ]
