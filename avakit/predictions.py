"""The predictions table of the run-folder contract, and the metrics computed from it.

Columns: image_id (AVA: the image id; a labels table: the row's line), pred_mean and gt_mean in
the scale's own units, pred_dist_1..K (distribution mode only) and gt_dist_1..K (vote labels
only). numpy/pandas only, so `report` and other light commands do not import torch.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from avakit import metrics
from avakit.metrics import confidence_intervals
from avakit.scores import AVA, Scale


def predictions_frame(result: dict, output_mode: str, scale: Scale = AVA) -> pd.DataFrame:
    """image_id, pred_mean, gt_mean, [pred_dist_1..K], [gt_dist_1..K] (the run-folder contract).

    `result` holds eval_one_epoch's ids, outputs (probabilities, or scores in the scale's units)
    and labels (`votes`: K counts, or one MOS per row).
    """
    labels = np.asarray(result["votes"], dtype=np.float64)
    frame: dict = {"image_id": result["ids"].astype(np.int64)}
    if output_mode == "distribution":
        frame["pred_mean"] = scale.mean(result["outputs"], normalise=False)
    else:
        frame["pred_mean"] = scale.clamp(result["outputs"].reshape(-1))
    if scale.kind == "votes":
        gt_dist = labels / labels.sum(axis=1, keepdims=True)
        frame["gt_mean"] = scale.mean(gt_dist, normalise=False)
        if output_mode == "distribution":
            frame.update(
                {col: result["outputs"][:, i] for i, col in enumerate(scale.point_names("pred_dist_"))}
            )
        frame.update({col: gt_dist[:, i] for i, col in enumerate(scale.point_names("gt_dist_"))})
    else:
        frame["gt_mean"] = labels[:, 0]
    return pd.DataFrame(frame)


def dist_columns(df: pd.DataFrame, prefix: str) -> list[str]:
    """The table's `prefix`1..K columns (K from the table itself), empty when it has none."""
    cols = []
    while f"{prefix}{len(cols) + 1}" in df.columns:
        cols.append(f"{prefix}{len(cols) + 1}")
    return cols


def frame_metrics(df: pd.DataFrame, scale: Scale = AVA, threshold: float | None = None) -> dict:
    """The literature's metrics from a predictions table (EMD/std SRCC when it has distributions).

    Accuracy (with its majority-class baseline) at `threshold`, else at the scale's default
    threshold (AVA: 5; none for other data: then no accuracy).
    """
    if df.empty:
        return {"n": 0}
    pred_cols, gt_cols = dist_columns(df, "pred_dist_"), dist_columns(df, "gt_dist_")
    has_dist = bool(pred_cols) and len(pred_cols) == len(gt_cols)
    return metrics.compute_metrics(
        df["pred_mean"].to_numpy(),
        df["gt_mean"].to_numpy(),
        df[pred_cols].to_numpy() if has_dist else None,
        df[gt_cols].to_numpy() if has_dist else None,
        threshold=threshold if threshold is not None else scale.threshold,
        higher_is_better=scale.higher_is_better,
    )


def metrics_line(found: dict, select_metric: str = "srcc") -> str:
    """ "SRCC 0.7120  PLCC 0.7010[  EMD 0.0800][  Acc 0.767 (majority 0.767)]" for a log line.

    Accuracy only where a threshold applied, always beside its majority-class rate; EMD when
    it picks the best epoch.
    """
    parts = [f"SRCC {found.get('srcc', math.nan):.4f}", f"PLCC {found.get('plcc', math.nan):.4f}"]
    if select_metric == "emd":
        parts.append(f"EMD {found.get('emd', math.nan):.4f}")
    if "accuracy" in found:
        parts.append(f"Acc {found['accuracy']:.3f} (majority {found.get('majority_baseline', math.nan):.3f})")
    return "  ".join(parts)


def frame_intervals(df: pd.DataFrame) -> dict:
    """Bootstrap 95% intervals of SRCC and PLCC of a predictions table: {"srcc_ci", "plcc_ci"}.

    Rows are put in one order first (image_id, then the scores), so train and evaluate, whose
    loaders deliver them in different orders, draw the same resamples and give the same interval.
    """
    order = np.lexsort((df["gt_mean"].to_numpy(), df["pred_mean"].to_numpy(), df["image_id"].to_numpy()))
    return confidence_intervals(df["pred_mean"].to_numpy()[order], df["gt_mean"].to_numpy()[order])
