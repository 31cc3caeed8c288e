"""What a resumed training run must keep: the data it sees, and the command that resumes it.

last.pt stores a *data definition*: the `--quick-experiment` fraction, whether the run reads a
feature cache (data.features) or shards, and per split the manifest sha256 and sample count
(or, for URL sources without a manifest, the URLs). `avakit train --resume RUN` uses the
stored fraction and refuses a flag or `--set data...` that would change what the run sees.
torch-free: plain values in, plain values out.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avakit.dataset.sources import DataSource
from avakit.errors import AvakitError
from avakit.training.selection import check_best_value


def data_definition(sources: Mapping[str, DataSource], fraction: float, features: bool) -> dict[str, Any]:
    """The data definition of a run (weights_only-safe: str, int, float, bool, None, lists, dicts)."""
    splits: dict[str, dict] = {}
    for name, source in sources.items():
        entry: dict[str, Any] = {"manifest_sha256": source.manifest_sha256, "samples": source.samples}
        if source.manifest_sha256 is None:
            entry["urls"] = list(source.urls)
        splits[name] = entry
    return {"quick_experiment": float(fraction), "features": bool(features), "splits": splits}


def _valid_fraction(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 < value <= 1.0


def stored_definition(ckpt: Mapping[str, Any], path: Path) -> dict[str, Any] | None:
    """last.pt's data definition; None when written before avakit stored one; AvakitError if malformed."""
    data = ckpt.get("data")
    if data is None:
        return None
    if (
        not isinstance(data, dict)
        or not _valid_fraction(data.get("quick_experiment"))
        or not isinstance(data.get("features"), bool)
        or not isinstance(data.get("splits"), dict)
    ):
        raise AvakitError(f"{path}: key 'data' is not a data definition written by avakit train")
    return data


def run_fraction(stored: Mapping[str, Any] | None, flag: float | None, path: Path) -> float:
    """The fraction a resumed run uses: the stored one; a different `--quick-experiment` is an error."""
    if stored is None:  # a new run, or a checkpoint from before the fraction was stored
        return 1.0 if flag is None else flag
    fraction = float(stored["quick_experiment"])
    if flag is not None and flag != fraction:
        started = (
            "the full data (no quick_experiment)" if fraction == 1.0 else f"quick_experiment {fraction!r}"
        )
        raise AvakitError(
            f"quick_experiment {flag!r}: {path} was trained with {started}; "
            "resume without quick_experiment (a resumed run sees the same data)"
        )
    return fraction


def _describe(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "no such split"
    if entry.get("manifest_sha256"):
        return f"manifest sha256 {str(entry['manifest_sha256'])[:12]} ({entry.get('samples')} samples)"
    urls = entry.get("urls") or []
    return f"{len(urls)} URL(s) {urls[0]!r}..." if urls else "no URLs"


def check_same_data(
    stored: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    path: Path,
    legacy_manifest: str | None = None,
) -> None:
    """AvakitError naming the first difference between last.pt's data and what the config now gives.

    `legacy_manifest`: the train manifest sha256 a checkpoint without a data definition holds.
    """
    if stored is None:
        now = current["splits"]["train"]["manifest_sha256"]
        if legacy_manifest and now and legacy_manifest != now:
            raise AvakitError(
                f"data.shards: {path} was trained on manifest sha256 {legacy_manifest[:12]}, "
                f"the config now gives {now[:12]}; a resumed run must see the same data"
            )
        return
    if stored["features"] != current["features"]:
        was = "a feature cache (data.features)" if stored["features"] else "shards (no data.features)"
        raise AvakitError(
            f"data.features: {path} was trained on {was}; a resumed run must read the same "
            "data (drop the --set)"
        )
    for split in sorted(set(stored["splits"]) | set(current["splits"])):
        before, now = stored["splits"].get(split), current["splits"].get(split)
        if before != now:
            key = "data.features" if current["features"] else "data.shards"
            raise AvakitError(
                f"{key}: {path} was trained with {split} data of {_describe(before)}, the "
                f"config now gives {_describe(now)}; a resumed run must see the same data"
            )


RESUME_KEYS = ("optimizer", "scheduler", "state", "rng")  # what last.pt adds to a best_model.pt
_COUNTERS = {"epoch": 0, "step": 0, "best_epoch": -1, "bad_epochs": 0}  # RunState ints and their minimum
_MAX_COUNT = 2**62
_OLD_STATE = {*_COUNTERS, "best_srcc", "elapsed_s", "history"}  # last.pt state before select_metric


def check_resume_state(ckpt: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """last.pt's progress (`state`) checked like user input, plus the presence of every part resume loads.

    Returns the state as RunState keyword arguments; AvakitError naming the file and key otherwise.
    A state from before training.select_metric (its `best_srcc`) reads as select_metric srcc.
    The tensors' fit (optimizer groups, RNG states) is checked where they are loaded.
    """
    missing = [key for key in RESUME_KEYS if key not in ckpt]
    if missing:
        raise AvakitError(f"{path}: not a resumable last.pt (no {'/'.join(missing)})")
    for key in ("optimizer", "scheduler", "rng"):
        if not isinstance(ckpt[key], dict):
            raise AvakitError(f"{path}: {key} must be a mapping, got {type(ckpt[key]).__name__}")
    state = ckpt["state"]
    if not isinstance(state, dict):
        raise AvakitError(f"{path}: state must be a mapping, got {type(state).__name__}")
    wanted = {*_COUNTERS, "select_metric", "best_value", "elapsed_s", "history"}
    best_key = "best_value"
    if set(state) == _OLD_STATE:  # written before training.select_metric: SRCC picked the best epoch
        state = {**state, "select_metric": "srcc", "best_value": state["best_srcc"]}
        del state["best_srcc"]
        best_key = "best_srcc"
    if set(state) != wanted:
        odd = sorted(map(str, set(state) ^ wanted))
        raise AvakitError(f"{path}: state: keys {', '.join(odd)[:120]} missing or unknown")
    for key, low in _COUNTERS.items():
        value = state[key]
        if type(value) is not int or not low <= value <= _MAX_COUNT:
            raise AvakitError(f"{path}: state.{key}: expected an integer >= {low}, got {str(value)[:60]!r}")
    check_best_value(state["select_metric"], state["best_value"], f"{path}: state", best_key)
    elapsed = state["elapsed_s"]
    if not isinstance(elapsed, int | float) or isinstance(elapsed, bool) or not 0 <= elapsed < math.inf:
        raise AvakitError(f"{path}: state.elapsed_s: expected seconds >= 0, got {str(elapsed)[:60]!r}")
    history = state["history"]
    if (
        not isinstance(history, list)
        or len(history) != state["epoch"]
        or not all(isinstance(h, dict) for h in history)
    ):
        raise AvakitError(
            f"{path}: state.history: expected one record (a mapping) per epoch done ({state['epoch']})"
        )
    return dict(state)


def interrupted_message(run_dir: Path, fraction: float | None) -> str:
    """What Ctrl-C in `train` prints once the run folder exists: the command that goes on."""
    command = f"avakit train --resume {shlex.quote(str(run_dir))}"
    if (run_dir / "last.pt").is_file():
        return f"interrupted: run folder {run_dir} kept; resume with: {command}"
    if fraction is not None and fraction < 1.0:  # nothing stores the fraction before last.pt
        command += f" --quick-experiment {fraction!r}"
    return (
        f"interrupted before the first checkpoint: run folder {run_dir} kept; "
        f"start it again from epoch 0 with: {command}"
    )
