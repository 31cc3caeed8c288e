"""What the report reads from a run folder: each split's predictions, evaluate's results, epochs.

Torch-free: only the run folder contract (`avakit.training.rundir`) and pandas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from avakit import metrics
from avakit.errors import AvakitError
from avakit.predictions import frame_metrics
from avakit.report.scale import AVA_RUN, RunScale
from avakit.training.rundir import CHECKPOINT_FILES, eval_jsons, model_label, read_json, read_predictions


@dataclass
class SplitData:
    """The predictions of one split, their metrics and what the shards tell about the images."""

    key: str  # "val" or "test": file-name prefix and shard split
    model: str  # the model behind the predictions, e.g. "best_model.pt, epoch 4, no TTA"
    df: pd.DataFrame
    metrics: dict
    labels: dict[int, dict] = field(default_factory=dict)  # image id -> the shard's json member
    thumbs: dict[int, str] = field(default_factory=dict)  # image id -> path relative to report/

    @property
    def label(self) -> str:
        """What every panel of this split is titled with: split and model."""
        return f"{self.key}: {self.model}"


def best_epoch(run_dir: Path, history: list[dict], notes: list[str]) -> tuple[dict, int | None]:
    """(results.json or {}, best epoch): results.json's, else the highest val SRCC of the history."""
    path = run_dir / "results.json"
    results = read_json(path) if path.is_file() else {}
    results = results if isinstance(results, dict) else {}
    best = results.get("best_epoch")
    if isinstance(best, int) and not isinstance(best, bool) and best >= 0:
        return results, best
    notes.append(f"{path.name} has no best epoch (run not finished?): taken from training_history.json")
    scored = [
        (h["val_srcc"], int(h.get("epoch", i)))
        for i, h in enumerate(history)
        if isinstance(h.get("val_srcc"), (int, float)) and math.isfinite(h["val_srcc"])
    ]
    return results, max(scored, key=lambda t: t[0])[1] if scored else None


def split_metrics(df: pd.DataFrame, rs: RunScale) -> dict:
    """The metrics of one predictions table on the run's scale, with the 95 % bootstrap intervals
    of SRCC and PLCC (srcc_ci, plcc_ci); accuracy only when a threshold applies."""
    found = frame_metrics(df, rs.scale, rs.threshold)
    return found | metrics.confidence_intervals(df["pred_mean"], df["gt_mean"])


def load_splits(run_dir: Path, best: int | None, notes: list[str], rs: RunScale = AVA_RUN) -> list[SplitData]:
    """train's predictions of best_model.pt: val (the best epoch's file, else val.parquet) and test,
    read on the run's scale `rs`."""
    pred_dir = run_dir / "predictions"
    epoch_file = pred_dir / f"val_epoch_{best:03d}.parquet" if best is not None else None
    model = model_label(CHECKPOINT_FILES["best"], best)  # train predicts without TTA
    sources: list[tuple[str, Path]] = []
    if epoch_file is not None and epoch_file.exists():
        sources.append(("val", epoch_file))
    elif (pred_dir / "val.parquet").exists():
        sources.append(("val", pred_dir / "val.parquet"))
        notes.append("no predictions file of the best epoch: val analysis uses predictions/val.parquet")
    else:
        notes.append("no val predictions of the best epoch: val sections skipped")
    if (pred_dir / "test.parquet").exists():
        sources.append(("test", pred_dir / "test.parquet"))
    else:
        notes.append(
            "no predictions/test.parquet (no test split, or the run did not finish): test sections skipped"
        )
    if not sources:
        raise AvakitError(
            f"{pred_dir}: no predictions found (expected val_epoch_NNN.parquet, val.parquet or test.parquet)"
        )
    splits = []
    for key, path in sources:
        df, dropped = read_predictions(path, rs.scale)
        if dropped:
            notes.append(
                f"{path.name}: {dropped} row(s) with a NaN or infinite mean score left out "
                f"({len(df)} analysed)"
            )
        if df.empty:
            notes.append(f"{path.name} has no rows: {key} sections skipped")
            continue
        splits.append(SplitData(key, model, df, split_metrics(df, rs)))
    if not splits:
        raise AvakitError(f"{pred_dir}: every predictions file is empty")
    return splits


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kept(key: str, value: object) -> bool:
    """A metric the summary shows: a number, or a [lo, hi] interval of two numbers (*_ci)."""
    if key.endswith("_ci"):
        return isinstance(value, list) and len(value) == 2 and all(_number(v) for v in value)
    return _number(value)


def read_evaluations(run_dir: Path, notes: list[str]) -> list[tuple[str, str, dict]]:
    """(split, model label, metrics) of each `avakit evaluate` result in eval/, for the summary."""
    rows = []
    for path in eval_jsons(run_dir):
        try:
            data = read_json(path)
        except AvakitError as e:
            notes.append(f"{e}: left out of the summary")
            continue
        if not (
            isinstance(data, dict)
            and isinstance(data.get("metrics"), dict)
            and all(isinstance(data.get(k), str) for k in ("split", "checkpoint", "tta"))
        ):
            notes.append(f"{path}: not an `avakit evaluate` result: left out of the summary")
            continue
        epoch = data.get("epoch") if _number(data.get("epoch")) else None
        found = {k: v for k, v in data["metrics"].items() if _kept(str(k), v)}
        model = model_label(data["checkpoint"], epoch, data["tta"])
        rows.append((data["split"], f"evaluate: {model}", found))
    return rows


def epoch_points(run_dir: Path, notes: list[str], rs: RunScale = AVA_RUN) -> pd.DataFrame:
    """epoch, srcc, plcc from each predictions/val_epoch_NNN.parquet (one row per file).

    A file that breaks the predictions contract (`read_predictions`) is left out with a note.
    """
    rows = []
    for path in sorted((run_dir / "predictions").glob("val_epoch_*.parquet")):
        suffix = path.stem.rsplit("_", 1)[-1]
        if not (suffix.isascii() and suffix.isdigit()):
            continue
        try:
            df, _ = read_predictions(path, rs.scale)
        except AvakitError as e:
            notes.append(f"{e}: left out of SRCC over epochs")
            continue
        rows.append(
            {
                "epoch": int(suffix),
                "srcc": metrics.srcc(df["pred_mean"], df["gt_mean"]),
                "plcc": metrics.plcc(df["pred_mean"], df["gt_mean"]),
            }
        )
    return pd.DataFrame(rows, columns=["epoch", "srcc", "plcc"])
