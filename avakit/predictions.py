"""The predictions table of the run-folder contract, and the metrics computed from it.

Columns: image_id, pred_mean, gt_mean, pred_dist_1..10 (distribution mode only), gt_dist_1..10.
numpy/pandas only, so `report` and other light commands do not import torch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from avakit import metrics
from avakit.scores import mean_score, point_names

PRED_DIST, GT_DIST = point_names("pred_dist_"), point_names("gt_dist_")


def predictions_frame(result: dict, output_mode: str) -> pd.DataFrame:
    """image_id, pred_mean, gt_mean, [pred_dist_1..10], gt_dist_1..10 (the run-folder contract)."""
    gt_dist = result["votes"] / result["votes"].sum(axis=1, keepdims=True)
    frame = {"image_id": result["ids"].astype(np.int64)}
    if output_mode == "distribution":
        frame["pred_mean"] = mean_score(result["outputs"], normalise=False)
    else:
        frame["pred_mean"] = metrics.clamp_scores(result["outputs"].reshape(-1))
    frame["gt_mean"] = mean_score(gt_dist, normalise=False)
    if output_mode == "distribution":
        frame.update({col: result["outputs"][:, i] for i, col in enumerate(PRED_DIST)})
    frame.update({col: gt_dist[:, i] for i, col in enumerate(GT_DIST)})
    return pd.DataFrame(frame)


def frame_metrics(df: pd.DataFrame) -> dict:
    """The literature's metrics from a predictions table (EMD/std SRCC when it has distributions)."""
    if df.empty:
        return {"n": 0}
    has_dist = PRED_DIST[0] in df
    return metrics.compute_metrics(
        df["pred_mean"].to_numpy(),
        df["gt_mean"].to_numpy(),
        df[PRED_DIST].to_numpy() if has_dist else None,
        df[GT_DIST].to_numpy() if has_dist else None,
    )
