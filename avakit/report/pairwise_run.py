"""What the report reads from a pairwise run folder, every value checked before use.

- predictions/val_epoch_NNN.parquet, val.parquet, test.parquet: one row per pair (series, i, j,
  p_true, rank_i, rank_j, p_pred);
- predictions/val_photos.parquet, test_photos.parquet: one row per photo (series, index,
  [member], score, rank);
- results.json (best_epoch, labels) and training_history.json (its pairwise metrics).

Torch-free: pandas and the run-folder helpers of `avakit.training.rundir`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from avakit.errors import AvakitError
from avakit.pair_metrics import pair_metrics
from avakit.scores import TASKS, stored_scale
from avakit.training.rundir import (
    CHECKPOINT_FILES,
    HISTORY_FILE,
    _bad_row,
    _check_numeric,
    model_label,
    read_json,
)
from avakit.yamlio import read_yaml

PAIR_COLUMNS = ("series", "i", "j", "p_true", "rank_i", "rank_j", "p_pred")
PHOTO_COLUMNS = ("series", "index", "score", "rank")
HISTORY_METRICS = ("val_pair_accuracy", "val_log_loss", "val_series_top1", "val_kendall_tau")


@dataclass
class PairSplit:
    """One held-out split of a pairwise run: its pair predictions, photo scores and metrics."""

    key: str  # "val" or "test"
    model: str  # e.g. "best_model.pt, epoch 4, no TTA"
    pairs: pd.DataFrame
    photos: pd.DataFrame | None
    metrics: dict
    members: dict[int, list[str]] = field(default_factory=dict)  # series -> file names (shards)
    thumbs: dict[tuple[int, int], str] = field(default_factory=dict)  # (series, index) -> thumb path

    @property
    def label(self) -> str:
        """Split and model, as every panel of this split is titled."""
        return f"{self.key}: {self.model}"


def run_task(run_dir: Path) -> str:
    """ "pairwise" ("clip") when results.json's labels are pairs (clips), or (without labels there)
    config.yaml says `task: pairwise` (`task: clip`); "score" otherwise (the score report then
    reports what it cannot read)."""
    path = run_dir / "results.json"
    try:
        results = read_json(path) if path.is_file() else {}
    except AvakitError:
        results = {}
    labels = results.get("labels") if isinstance(results, dict) else None
    if isinstance(labels, dict):
        return TASKS.get(str(labels.get("kind")), "score")
    try:
        cfg = read_yaml(run_dir / "config.yaml", "config") if (run_dir / "config.yaml").is_file() else None
    except AvakitError:
        return "score"
    task = cfg.get("task") if isinstance(cfg, dict) else None
    return task if task in ("pairwise", "clip") else "score"


def open_predictions(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """A predictions parquet holding `columns` (a pairwise or clip run's); AvakitError naming the
    file when it does not read or lacks one."""
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise AvakitError(f"{path}: unreadable predictions parquet: {first[:200]}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise AvakitError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def _read_parquet(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """A parquet file with `columns`, each numeric; AvakitError naming the file otherwise."""
    df = open_predictions(path, columns)
    _check_numeric(path, df, columns)
    return df


def _ints(path: Path, df: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """The columns as int64, each value a whole number >= 0; AvakitError naming the first bad row."""
    for col in columns:
        values = df[col].astype("float64")
        bad = ~np.isfinite(values) | (values != values.round()) | (values < 0)
        if bad.any():
            raise _bad_row(path, df, bad, col, "a whole number >= 0")
        df = df.assign(**{col: values.astype("int64")})
    return df


def _probability(path: Path, df: pd.DataFrame, col: str) -> None:
    """Every value of `col` in 0..1; AvakitError naming the first row otherwise."""
    values = df[col].astype("float64")
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        raise _bad_row(path, df, bad, col, "a probability in 0..1")


def _drop_non_finite(df: pd.DataFrame, col: str) -> tuple[pd.DataFrame, int]:
    finite = np.isfinite(df[col].astype("float64"))
    return df[finite].reset_index(drop=True), int((~finite).sum())


def read_pairs(path: Path) -> tuple[pd.DataFrame, int]:
    """A pair predictions parquet checked against the contract: (frame, rows dropped).

    series, i, j, rank_i and rank_j whole numbers >= 0, i != j, p_true a probability; a row whose
    p_pred is NaN or infinite is dropped and counted, any other p_pred must lie in 0..1.
    """
    df = _read_parquet(path, PAIR_COLUMNS)
    df, dropped = _drop_non_finite(df, "p_pred")
    df = _ints(path, df, ("series", "i", "j", "rank_i", "rank_j"))
    same = df["i"] == df["j"]
    if same.any():
        raise _bad_row(path, df, same, "j", "a photo other than i")
    _probability(path, df, "p_true")
    _probability(path, df, "p_pred")
    return df.assign(p_true=df["p_true"].astype("float64"), p_pred=df["p_pred"].astype("float64")), dropped


def read_photos(path: Path) -> tuple[pd.DataFrame, int]:
    """A photo scores parquet checked against the contract: (frame, rows with a non-finite score
    dropped). series, index and rank whole numbers >= 0; `member`, when there, a string."""
    df = _read_parquet(path, PHOTO_COLUMNS)
    df, dropped = _drop_non_finite(df, "score")
    df = _ints(path, df, ("series", "index", "rank"))
    if "member" in df.columns:
        bad = ~df["member"].map(lambda m: isinstance(m, str))
        if bad.any():
            raise _bad_row(path, df, bad, "member", "a file name")
    if df.duplicated(["series", "index"]).any():
        raise _bad_row(path, df, df.duplicated(["series", "index"]), "index", "one row per photo")
    return df.assign(score=df["score"].astype("float64")), dropped


def check_history(run_dir: Path, history: list[dict], keys: tuple[str, ...] = HISTORY_METRICS) -> None:
    """The task's metrics (`keys`: the pairwise ones by default) of each training_history.json
    record are numbers or null."""
    for i, record in enumerate(history):
        for key in keys:
            value = record.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                where = f"{run_dir / HISTORY_FILE}: record {i}, key {key!r}"
                raise AvakitError(f"{where}: expected a number or null, got {repr(value)[:40]}")


def best_epoch(
    run_dir: Path,
    history: list[dict],
    notes: list[str],
    kind: str = "pairs",
    metric: str = "val_pair_accuracy",
) -> tuple[dict, int | None]:
    """(results.json or {}, best epoch): results.json's, else the epoch of the highest `metric`
    in the history. A results.json "labels" not of label `kind` (a pairwise run's "pairs", a
    clip run's "clips") is an AvakitError."""
    path = run_dir / "results.json"
    results = read_json(path) if path.is_file() else {}
    results = results if isinstance(results, dict) else {}
    if results.get("labels") is not None:
        scale = stored_scale(results, str(path))
        if scale.kind != kind:
            raise AvakitError(
                f"{path}: labels: kind {scale.kind!r}, expected {kind!r} for a {TASKS[kind]} run"
            )
    best = results.get("best_epoch")
    if type(best) is int and best >= 0:
        return results, best
    notes.append(f"{path.name} has no best epoch (run not finished?): taken from {HISTORY_FILE}")
    scored = [
        (h[metric], int(h.get("epoch", i)))
        for i, h in enumerate(history)
        if isinstance(h.get(metric), (int, float)) and math.isfinite(h[metric])
    ]
    return results, max(scored, key=lambda t: t[0])[1] if scored else None


def prediction_sources(pred_dir: Path, best: int | None, notes: list[str]) -> list[tuple[str, Path]]:
    """(split, predictions file) of val (the best epoch's, else val.parquet) and test: the main
    tables of a pairwise (pairs) or clip (segments) run."""
    sources = []
    epoch_file = pred_dir / f"val_epoch_{best:03d}.parquet" if best is not None else None
    if epoch_file is not None and epoch_file.is_file():
        sources.append(("val", epoch_file))
    elif (pred_dir / "val.parquet").is_file():
        sources.append(("val", pred_dir / "val.parquet"))
        notes.append("no predictions file of the best epoch: val analysis uses predictions/val.parquet")
    else:
        notes.append("no val predictions of the best epoch: val sections skipped")
    if (pred_dir / "test.parquet").is_file():
        sources.append(("test", pred_dir / "test.parquet"))
    else:
        notes.append("no predictions/test.parquet (no test split, or the run did not finish): test skipped")
    return sources


def _photos(pred_dir: Path, key: str, notes: list[str]) -> pd.DataFrame | None:
    path = pred_dir / f"{key}_photos.parquet"
    if not path.is_file():
        notes.append(f"no predictions/{path.name}: {key} series top-1, Kendall tau and galleries skipped")
        return None
    photos, dropped = read_photos(path)
    if dropped:
        notes.append(f"{path.name}: {dropped} photo(s) with a NaN or infinite score left out")
    return photos


def load_pair_splits(run_dir: Path, best: int | None, notes: list[str]) -> list[PairSplit]:
    """train's pair predictions and photo scores of best_model.pt for val and test, with metrics.

    Raises AvakitError when there are no pair predictions at all or every file is empty."""
    pred_dir = run_dir / "predictions"
    sources = prediction_sources(pred_dir, best, notes)
    if not sources:
        raise AvakitError(
            f"{pred_dir}: no predictions found (expected val_epoch_NNN.parquet, val.parquet or test.parquet)"
        )
    model = model_label(CHECKPOINT_FILES["best"], best)
    splits = []
    for key, path in sources:
        pairs, dropped = read_pairs(path)
        if dropped:
            notes.append(
                f"{path.name}: {dropped} pair(s) with a NaN or infinite p_pred left out "
                f"({len(pairs)} analysed)"
            )
        if pairs.empty:
            notes.append(f"{path.name} has no rows: {key} sections skipped")
            continue
        photos = _photos(pred_dir, key, notes)
        splits.append(PairSplit(key, model, pairs, photos, pair_metrics(pairs, photos)))
    if not splits:
        raise AvakitError(f"{pred_dir}: every pair predictions file is empty")
    return splits
