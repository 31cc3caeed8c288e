"""What the report reads from a clip run folder (task: clip), every value checked before use.

- predictions/val_epoch_NNN.parquet, val.parquet, test.parquet: one row per segment
  (`avakit.clip_metrics.FRAME_COLUMNS`: verb_true, noun_true, verb_pred, noun_pred, verb_top5,
  noun_top5, action_correct, action_top5_correct required; key, image_id, participant, video and
  the unseen / tail_verb / tail_noun flags (bool or null) optional);
- results.json (best_epoch, labels of kind "clips", "classes": {"verb": [keys], "noun": [keys]})
  and training_history.json (its clip metrics).

Torch-free: pandas and the run-folder helpers of `avakit.training.rundir`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from avakit.clip_metrics import METRIC_KEYS, frame_metrics
from avakit.errors import AvakitError
from avakit.report import pairwise_run
from avakit.report.pairwise_run import _ints, open_predictions, prediction_sources
from avakit.training.rundir import (
    CHECKPOINT_FILES,
    _bad_row,
    _check_numeric,
    model_label,
)

LABEL_COLUMNS = ("verb_true", "noun_true", "verb_pred", "noun_pred")
TOP_COLUMNS = ("verb_top5", "noun_top5")
FLAG_COLUMNS = ("action_correct", "action_top5_correct")
SUBSET_COLUMNS = ("unseen", "tail_verb", "tail_noun")
# the per-epoch numbers a clip history holds (each a number or null)
HISTORY_METRICS = (
    "train_loss",
    "val_loss",
    "train_action_top1",
    "train_verb_top1",
    "train_noun_top1",
    *(f"val_{k}" for k in METRIC_KEYS),
)
PARTS_CLASSES = ("verb", "noun")


@dataclass
class ClipSplit:
    """One held-out split of a clip run: its segment predictions and their metrics."""

    key: str  # "val" or "test"
    model: str  # e.g. "best_model.pt, epoch 4, no TTA"
    df: pd.DataFrame
    metrics: dict

    @property
    def label(self) -> str:
        """Split and model, as every panel of this split is titled."""
        return f"{self.key}: {self.model}"


def _is_top(value: object) -> bool:
    """A top-5 list: 1..5 whole numbers >= 0 (a list, tuple or numpy array as parquet returns)."""
    if not isinstance(value, (list, tuple, np.ndarray)) or not 1 <= len(value) <= 5:
        return False
    return all(type(v) is not bool and isinstance(v, (int, np.integer)) and v >= 0 for v in value)


def _flags(path: Path, df: pd.DataFrame, col: str, nullable: bool) -> pd.DataFrame:
    """`col` as booleans (null allowed when `nullable`): AvakitError naming the first other value."""
    values = df[col].astype(object)
    ok = values.map(lambda v: isinstance(v, (bool, np.bool_)) or (nullable and pd.isna(v)))
    if not ok.all():
        raise _bad_row(path, df, ~ok, col, "true or false" + (" or null" if nullable else ""))
    return df.assign(**{col: pd.array([None if pd.isna(v) else bool(v) for v in values], dtype="boolean")})


def read_clips(path: Path) -> pd.DataFrame:
    """A clip predictions parquet checked against the contract; AvakitError naming the file, the
    column and the first bad row otherwise. Missing optional columns are added as nulls."""
    df = open_predictions(path, (*LABEL_COLUMNS, *TOP_COLUMNS, *FLAG_COLUMNS))
    _check_numeric(path, df, LABEL_COLUMNS)
    df = _ints(path, df, LABEL_COLUMNS)
    for col in TOP_COLUMNS:
        ok = df[col].map(_is_top)
        if not ok.all():
            raise _bad_row(path, df, ~ok, col, "a list of up to 5 class indices")
        df = df.assign(**{col: df[col].map(lambda v: [int(x) for x in v])})
    for col in FLAG_COLUMNS:
        df = _flags(path, df, col, nullable=False)
    for col in SUBSET_COLUMNS:
        df = _flags(path, df, col, nullable=True) if col in df.columns else df.assign(**{col: pd.NA})
    for col in ("key", "participant", "video"):
        if col not in df.columns:
            df = df.assign(**{col: None})
    if "image_id" not in df.columns:
        df = df.assign(image_id=np.arange(len(df)))
    return df.assign(**{c: df[c].astype("boolean") for c in SUBSET_COLUMNS})


def check_history(run_dir: Path, history: list[dict]) -> None:
    """The clip metrics of each training_history.json record are numbers or null."""
    pairwise_run.check_history(run_dir, history, HISTORY_METRICS)


def best_epoch(run_dir: Path, history: list[dict], notes: list[str]) -> tuple[dict, int | None]:
    """(results.json or {}, best epoch): results.json's, else the highest val action top-1 of the
    history. A results.json "labels" that is not a clips scale is an AvakitError."""
    return pairwise_run.best_epoch(run_dir, history, notes, "clips", "val_action_top1")


def class_names(results: dict, notes: list[str]) -> dict[str, list[str]]:
    """results.json "classes": part -> class keys by index; a part missing or not a list of
    strings is [] with a note (classes are then shown by index)."""
    found = results.get("classes")
    found = found if isinstance(found, dict) else {}
    out = {}
    for part in PARTS_CLASSES:
        keys = found.get(part)
        if isinstance(keys, list) and all(isinstance(k, str) for k in keys):
            out[part] = keys
        else:
            out[part] = []
            notes.append(f"results.json has no usable classes.{part}: {part}s shown by class index")
    return out


def class_name(names: list[str], index: int) -> str:
    """The class key of `index` with the index ("3 take"), else the index alone."""
    return f"{index} {names[index]}" if 0 <= index < len(names) else str(index)


def train_val_gap(history: list[dict], best: int | None) -> float | None:
    """train_action_top1 - val_action_top1 of the best epoch's history record; None unless both
    are finite numbers."""
    record = next((h for i, h in enumerate(history) if h.get("epoch", i) == best), None)
    if record is None:
        return None
    train, val = record.get("train_action_top1"), record.get("val_action_top1")
    if not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (train, val)
    ):
        return None
    return float(train) - float(val)


def load_clip_splits(run_dir: Path, best: int | None, notes: list[str]) -> list[ClipSplit]:
    """train's segment predictions of best_model.pt for val and test, with their metrics.

    Raises AvakitError when there are no predictions at all or every file is empty."""
    pred_dir = run_dir / "predictions"
    sources = prediction_sources(pred_dir, best, notes)
    if not sources:
        raise AvakitError(
            f"{pred_dir}: no predictions found (expected val_epoch_NNN.parquet, val.parquet or test.parquet)"
        )
    model = model_label(CHECKPOINT_FILES["best"], best)
    splits = []
    for key, path in sources:
        df = read_clips(path)
        if df.empty:
            notes.append(f"{path.name} has no rows: {key} sections skipped")
            continue
        splits.append(ClipSplit(key, model, df, frame_metrics(df)))
    if not splits:
        raise AvakitError(f"{pred_dir}: every clip predictions file is empty")
    return splits
