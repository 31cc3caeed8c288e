"""The predictions table of the run-folder contract, and the metrics computed from it.

Columns: image_id, pred_mean, gt_mean, pred_dist_1..10 (distribution mode only), gt_dist_1..10.
numpy/pandas only, so `report` and other light commands do not import torch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from avakit import metrics

SCORES = np.arange(1, 11)


def predictions_frame(result: dict, output_mode: str) -> pd.DataFrame:
    """image_id, pred_mean, gt_mean, [pred_dist_1..10], gt_dist_1..10 (the run-folder contract)."""
    gt_dist = result["votes"] / result["votes"].sum(axis=1, keepdims=True)
    frame = {"image_id": result["ids"].astype(np.int64)}
    if output_mode == "distribution":
        frame["pred_mean"] = result["outputs"] @ SCORES
    else:
        frame["pred_mean"] = metrics.clamp_scores(result["outputs"].reshape(-1))
    frame["gt_mean"] = gt_dist @ SCORES
    if output_mode == "distribution":
        frame.update({f"pred_dist_{k}": result["outputs"][:, k - 1] for k in SCORES})
    frame.update({f"gt_dist_{k}": gt_dist[:, k - 1] for k in SCORES})
    return pd.DataFrame(frame)


def frame_metrics(df: pd.DataFrame) -> dict:
    """The literature's metrics from a predictions table (EMD/std SRCC when it has distributions)."""
    if df.empty:
        return {"n": 0}
    pred_cols = [f"pred_dist_{k}" for k in SCORES]
    has_dist = pred_cols[0] in df
    return metrics.compute_metrics(
        df["pred_mean"].to_numpy(), df["gt_mean"].to_numpy(),
        df[pred_cols].to_numpy() if has_dist else None,
        df[[f"gt_dist_{k}" for k in SCORES]].to_numpy() if has_dist else None,
    )
