"""The read side of a run folder: evaluate's output names, model labels, the history file.

`train` owns `results.json`, `predictions/val_epoch_NNN.parquet` and `predictions/{val,test}.parquet`
(best_model.pt, no TTA); `evaluate` never writes those. Each `evaluate` call writes its own
pair, named by what produced the numbers:

    eval/{split}_{checkpoint}_tta-{tta}.json       metrics + provenance
    eval/{split}_{checkpoint}_tta-{tta}.parquet    the predictions table

e.g. `eval/test_last_tta-flip.json`. `eval_outputs` is the one place that spells these names
(evaluate writes them, report reads them); `model_label` is how every report panel and table
names the model behind its numbers. `load_history` reads training_history.json and checks
the fields the report uses once, so a bad value is one line naming record and key. No torch
here: `report` imports this.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avakit.errors import AvakitError
from avakit.metrics import METRIC_NAMES
from avakit.scores import AVA, Scale

if TYPE_CHECKING:
    import pandas as pd

HISTORY_FILE = "training_history.json"
EVAL_DIR = "eval"
CHECKPOINT_FILES = {"best": "best_model.pt", "last": "last.pt"}
_PART = re.compile(r"[a-z0-9][a-z0-9-]*")


@dataclass(frozen=True)
class EvalOutputs:
    """Where one `evaluate` call writes its results (absolute or run-relative, as built)."""

    json: Path
    parquet: Path


def eval_stem(split: str, checkpoint: str, tta: str) -> str:
    """`{split}_{checkpoint}_tta-{tta}`, e.g. `test_best_tta-none`; each part a plain lowercase word."""
    for name, value in (("split", split), ("checkpoint", checkpoint), ("tta", tta)):
        if not isinstance(value, str) or not _PART.fullmatch(value):
            raise AvakitError(f"evaluate output name: {name} {value!r} is not a plain lowercase word")
    return f"{split}_{checkpoint}_tta-{tta}"


def eval_outputs(run_dir: Path, split: str, checkpoint: str, tta: str) -> EvalOutputs:
    """The json and parquet paths of `evaluate --split S --checkpoint C --tta T` in `run_dir`."""
    base = Path(run_dir) / EVAL_DIR / eval_stem(split, checkpoint, tta)
    return EvalOutputs(json=base.with_suffix(".json"), parquet=base.with_suffix(".parquet"))


def eval_jsons(run_dir: Path) -> list[Path]:
    """Every evaluate result (`eval/*.json`) of a run folder, sorted by name."""
    folder = Path(run_dir) / EVAL_DIR
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def model_label(checkpoint_file: str, epoch: int | None, tta: str | None = "none") -> str:
    """How a report names the model behind numbers, e.g. 'best_model.pt, epoch 4, no TTA'."""
    when = "epoch unknown" if epoch is None else f"epoch {epoch}"
    aug = "no TTA" if tta in ("none", None) else f"TTA {tta}"
    return f"{checkpoint_file}, {when}, {aug}"


def read_json(path: Path) -> Any:
    """A JSON file's content; AvakitError naming the file (and line) when unreadable or invalid."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AvakitError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise AvakitError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except (ValueError, RecursionError):  # a number of > 4300 digits, nesting deeper than Python's stack
        raise AvakitError(f"{path}: invalid JSON: a number too long or nesting too deep") from None
    except OSError as e:
        raise AvakitError(f"{path}: cannot read: {e.strerror or e}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# the numeric per-epoch fields the report plots (counts such as val_lost are not plotted)
_METRIC_KEYS = frozenset({"train_loss", "val_loss", *(f"val_{k}" for k in METRIC_NAMES)})


def _check_record(path: Path, i: int, record: dict) -> None:
    """AvakitError naming the record and key when a field the report reads has the wrong type."""

    def bad(key: str, want: str) -> AvakitError:
        shown = repr(record[key])
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        return AvakitError(f"{path}: record {i}, key {key!r}: expected {want}, got {shown}")

    epoch = record.get("epoch")
    if epoch is not None and not (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0):
        raise bad("epoch", "an epoch number >= 0")
    steps = record.get("steps")
    if steps is not None and not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
        raise bad("steps", "a step count >= 0")
    lr = record.get("lr")
    if lr is not None and not _is_number(lr) and not (isinstance(lr, list) and all(map(_is_number, lr))):
        raise bad("lr", "a number or a list of numbers")
    for key in _METRIC_KEYS & record.keys():
        if record[key] is not None and not _is_number(record[key]):
            raise bad(key, "a number or null")


def load_history(run_dir: Path) -> list[dict]:
    """training_history.json of a run folder, every field the report reads type-checked once.

    Checked: `epoch` and `steps` (integers >= 0), `lr` (a number or a list of numbers) and every
    loss and val metric (a number, NaN or null). Other keys are left alone.
    """
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        raise AvakitError(f"{path}: not found (is {run_dir} a run folder written by `avakit train`?)")
    history = read_json(path)
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise AvakitError(f"{path}: expected a list of per-epoch records")
    for i, record in enumerate(history):
        _check_record(path, i, record)
    return history


def epoch_start_steps(history: list[dict]) -> list[int] | None:
    """The optimizer step (telemetry batch_idx) at which each epoch after the first began.

    Epoch e starts at the sum of the `steps` of the epochs before it. None when a record has no
    step count (a run folder from before avakit recorded them).
    """
    steps = [h.get("steps") for h in history]
    if not steps or any(s is None for s in steps):
        return None
    return list(itertools.accumulate(steps[:-1]))


# the predictions-table contract (avakit.predictions): the columns every reader needs, the
# two optional groups of K (all or none; votes only), and the scale a mean score lies on
PREDICTION_COLUMNS = ("image_id", "pred_mean", "gt_mean")


def _bad_row(path: Path, df: Any, mask: Any, column: str, want: str) -> AvakitError:
    """AvakitError naming the first row (0-based) of `column` where `mask` is true."""
    i = int(mask.to_numpy().nonzero()[0][0])
    shown = repr(df[column].iloc[i])[:40]
    return AvakitError(f"{path}: column {column!r}, row {i}: expected {want}, got {shown}")


def _check_numeric(path: Path, df: Any, columns: Sequence[str]) -> None:
    """Each column has a numeric (not bool) dtype, else one line naming the column."""
    import pandas as pd

    for col in columns:
        dtype = df[col].dtype
        if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
            raise AvakitError(f"{path}: column {col!r} must hold numbers, has {dtype} values")


def read_predictions(path: Path, scale: Scale = AVA) -> tuple[Any, int]:
    """A predictions parquet checked against the run-folder contract: (frame, rows dropped).

    image_id an integer, pred_mean and gt_mean numbers on `scale` (the run's labels; AVA: 1..10),
    each dist group (pred_dist_1..K, gt_dist_1..K; votes only) all there or absent and within
    0..1, gt_dist there when pred_dist is. A row
    whose pred_mean or gt_mean is NaN or infinite is dropped and counted (a failed forward pass);
    every other violation is one AvakitError naming the file, column and row. Extra columns are
    left alone.
    """
    import numpy as np
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise AvakitError(f"{path}: not a file")
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise AvakitError(f"{path}: unreadable predictions parquet: {first[:200]}") from None
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise AvakitError(f"{path}: missing column(s) {', '.join(missing)}")
    groups = (tuple(scale.point_names("pred_dist_")), tuple(scale.point_names("gt_dist_")))
    for group in groups:
        absent = [c for c in group if c not in df.columns]
        if 0 < len(absent) < len(group):
            raise AvakitError(
                f"{path}: has {group[0]} but lacks {', '.join(absent)} (all {len(group)} or none)"
            )
    k = scale.width
    if groups[0] and groups[0][0] in df.columns and groups[1][0] not in df.columns:
        raise AvakitError(f"{path}: has pred_dist_1..{k} but no gt_dist_1..{k} (the real votes)")
    dists = [c for group in groups for c in group if c in df.columns]
    _check_numeric(path, df, [*PREDICTION_COLUMNS, *dists])
    ids = df["image_id"]
    bad_id = ~np.isfinite(ids.astype("float64")) | (ids != ids.round())
    if bad_id.any():
        raise _bad_row(path, df, bad_id, "image_id", "an integer image id")
    df = df.assign(image_id=ids.astype("int64"))
    finite = np.isfinite(df["pred_mean"].astype("float64")) & np.isfinite(df["gt_mean"].astype("float64"))
    dropped = int((~finite).sum())
    df = df[finite].reset_index(drop=True)
    low, high = scale.lo, scale.hi
    for col in ("pred_mean", "gt_mean"):
        outside = (df[col] < low - 1e-6) | (df[col] > high + 1e-6)
        if outside.any():
            raise _bad_row(path, df, outside, col, f"a mean score in {low:g}..{high:g}")
    for col in dists:
        values = df[col].astype("float64")
        outside = ~np.isfinite(values) | (values < -1e-6) | (values > 1 + 1e-6)
        if outside.any():
            raise _bad_row(path, df, outside, col, "a probability in 0..1")
    return df, dropped


TELEMETRY_DIR = "telemetry"


GRAD_FILE = "gradient_norms.csv"


LR_FILE = "learning_rates.csv"


def read_telemetry_csv(path: Path) -> pd.DataFrame | None:
    """One telemetry CSV without malformed rows, sorted by batch_idx; None if absent or without rows.

    A row is kept when its batch_idx is a step number (an integer 0..2**53; a NaN, infinite,
    fractional, negative or absurd value is malformed); undecodable bytes (a crash mid-write,
    a disk error) only spoil their own rows. How many rows were dropped, malformed or unparsable,
    is in `df.attrs["dropped"]` so a reader can say so. AvakitError naming the file when it is
    not a telemetry CSV at all (no `batch_idx` column: binary or foreign content) or cannot be read.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with path.open("rb") as f:  # data lines (not blank), to count what the parser skips
            lines = sum(1 for line in f if line.strip()) - 1
        df = pd.read_csv(path, on_bad_lines="skip", encoding_errors="replace")
    except pd.errors.EmptyDataError:
        return None
    except (pd.errors.ParserError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise AvakitError(f"{path}: unreadable telemetry CSV ({first[:200]})") from None
    if "batch_idx" not in df.columns:
        raise AvakitError(f"{path}: not a telemetry CSV (its header has no batch_idx column)")
    df = df.apply(pd.to_numeric, errors="coerce")
    step = df["batch_idx"]
    df = df[step.notna() & (step >= 0) & (step <= 2**53) & (step == step.round())].copy()
    dropped = max(lines, 0) - len(df)
    if df.empty:
        return None
    df["batch_idx"] = df["batch_idx"].astype("int64")
    df = df.drop_duplicates("batch_idx", keep="last").sort_values("batch_idx").reset_index(drop=True)
    df.attrs["dropped"] = dropped
    return df


def read_telemetry(run_dir: Path) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(gradient norms, learning rates) of a run; each None when missing or without rows.

    AvakitError when a file is there but is not a telemetry CSV (see `read_telemetry_csv`).
    """
    base = Path(run_dir) / TELEMETRY_DIR
    return read_telemetry_csv(base / GRAD_FILE), read_telemetry_csv(base / LR_FILE)
