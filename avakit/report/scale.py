"""The scale a report speaks in: the run's labels (`Scale`) and the accuracy threshold that applies.

`run_scale` reads it from results.json's "labels" (validated), else from the run's checkpoint
(torch imported only then), else takes AVA's with a note. Every axis label, bin, threshold line
and threshold text of the report comes from a `RunScale`, so AVA runs read as before and a 1-7
vote table or a 0-100 MOS (lower is better) reads in its own units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avakit.errors import AvakitError
from avakit.scores import AVA, Scale, stored_scale
from avakit.training.rundir import CHECKPOINT_FILES

MAX_VOTE_BINS = 12  # more points than this (a 0..100 slider as votes): ~10 equal bins instead
MOS_BINS = 10


@dataclass(frozen=True)
class RunScale:
    """The run's scale and the threshold of its binary accuracy (None: no accuracy, no confusion)."""

    scale: Scale = AVA
    threshold: float | None = AVA.threshold

    @property
    def axis(self) -> str:
        """What a score axis is called: "mean score (1-10)", "MOS (0-100, lower is better)"."""
        return self.scale.score_name

    @property
    def noun(self) -> str:
        """ "mean score" (votes) or "MOS"."""
        return "mean score" if self.scale.kind == "votes" else "MOS"

    @property
    def units(self) -> str:
        """The unit of an error: "score points" or "MOS points"."""
        return "score points" if self.scale.kind == "votes" else "MOS points"

    def edges(self) -> np.ndarray:
        """Bin edges over lo..hi: between the K points of a vote scale, else ~10 equal bins."""
        s = self.scale
        if s.kind == "votes" and s.k is not None and s.k - 1 <= MAX_VOTE_BINS:
            return s.points
        return np.linspace(s.lo, s.hi, MOS_BINS + 1)

    @property
    def unit(self) -> float:
        """The width of one score bin (AVA: 1)."""
        e = self.edges()
        return float(e[1] - e[0])

    def bins(self, gt: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Bin index of each real score (the last bin closed) and every bin's label ("1-2", ...)."""
        e = self.edges()
        idx = np.clip(np.searchsorted(e, gt, side="right") - 1, 0, len(e) - 2)
        return idx, [f"{a:g}-{b:g}" for a, b in zip(e[:-1], e[1:], strict=True)]

    def cut(self) -> dict[str, str]:
        """Texts of the binary task: the two classes, each as predicted/real tick text, and the rule."""
        t = f"{self.threshold:g}"
        if self.scale.higher_is_better:
            return {"bad": f"≤ {t} (low)", "good": f"> {t} (high)", "rule": f"above {t}", "word": "high"}
        return {"bad": f"≥ {t} (bad)", "good": f"< {t} (good)", "rule": f"below {t}", "word": "good"}

    def describe(self) -> str:
        """One sentence for the summary: the scale and the threshold that applies (or none)."""
        s = self.scale
        what = f"votes over {s.k} points" if s.kind == "votes" else "a MOS"
        text = f"Labels: {what} on {s.text}, {s.direction}; scores are {self.axis}. "
        if self.threshold is None:
            return text + "No threshold applies (eval.threshold not set): no binary accuracy."
        return text + f"Binary accuracy: good = {self.noun} {self.cut()['rule']}."


AVA_RUN = RunScale()  # an AVA run: the default of every report function


def _from_results(results: dict, run_dir: Path) -> Scale | None:
    """results.json's "labels", validated; None when it has none."""
    if results.get("labels") is None:
        return None
    return stored_scale(results, str(run_dir / "results.json"))


def _from_checkpoint(run_dir: Path, notes: list[str]) -> Scale | None:
    """The labels of the run's best (else last) checkpoint; old checkpoints -> AVA; None if none."""
    for which in ("best", "last"):
        path = run_dir / CHECKPOINT_FILES[which]
        if not path.is_file():
            continue
        from avakit.training.checkpoint import checkpoint_scale, load_checkpoint

        try:
            return checkpoint_scale(load_checkpoint(path))
        except AvakitError as e:
            notes.append(f"{e}: its labels are unknown")
    return None


def run_scale(run_dir: Path, results: dict, cfg: Any, notes: list[str]) -> RunScale:
    """The run's scale (results.json, else checkpoint, else AVA) and its threshold.

    The threshold is the run config's eval.threshold when set, else the scale's default (AVA 5;
    none for labels tables). Raises AvakitError for a results.json "labels" that is not a scale.
    """
    scale = _from_results(results, run_dir) or _from_checkpoint(run_dir, notes)
    if scale is None:
        notes.append("no labels in results.json and no readable checkpoint: scores read as AVA's 1-10")
        scale = AVA
    threshold = getattr(getattr(cfg, "eval", None), "threshold", None)
    if threshold is not None and not scale.lo <= threshold <= scale.hi:
        notes.append(f"eval.threshold {threshold:g} lies outside the scale {scale.text}: accuracy is trivial")
    return RunScale(scale, threshold if threshold is not None else scale.threshold)
