"""The domain's facts, each stated once: split names, the rating scale, the config's choice lists.

numpy only (no torch, no pandas): the ONNX scoring path imports it.

What a label means is a `Scale` (votes over K points or a MOS, its range, direction and default
threshold); `AVA` is AVA.txt's. Data carries its Scale from the manifest into checkpoints, run
folders and ONNX files; the AVA-named constants below describe AVA.txt's columns only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from avakit.errors import AvakitError

SPLITS: tuple[str, ...] = ("train", "val", "test")
HELD_OUT_SPLITS: tuple[str, ...] = SPLITS[1:]  # val and test: evaluated, never trained on

# --- what a label means: a Scale. AVA's votes are counts of the ratings 1..10 ----------------
LABEL_KINDS: tuple[str, ...] = ("votes", "mos", "pairs", "clips")  # K-point vote counts, one mean opinion
# score, pairwise preferences within a group (a preference ratio in 0..1 per pair; the model scores
# photos), or a video segment's verb and noun classes (its frames form the group: EPIC-KITCHENS)
# label kind -> the task that learns from it
TASKS: dict[str, str] = {"votes": "score", "mos": "score", "pairs": "pairwise", "clips": "clip"}
MIN_K, MAX_K = 2, 101  # points of a vote scale: 101 is a 0..100 slider recorded as vote counts
MAX_SCALE_ABS = 1e6  # |lo|, |hi| bound: a rating scale is a human one


@dataclass(frozen=True)
class Scale:
    """What a label means: K vote counts over evenly spaced points lo..hi, or a MOS in lo..hi.

    `threshold` is the data's default "good" cut for binary accuracy (AVA: 5; None: no accuracy
    unless `eval.threshold` sets one). A photo is good when its mean is strictly beyond the
    threshold in the better direction (above it, or below it when lower is better).
    """

    kind: str = "votes"  # "votes" | "mos" | "pairs" (lo..hi = 0..1: the preference ratio) | "clips"
    lo: float = 1.0  # the scale's lowest value, in the data's own units
    hi: float = 10.0  # its highest value
    k: int | None = 10  # votes: the number of points; mos: None
    higher_is_better: bool = True  # False for DMOS-style data
    threshold: float | None = 5.0  # default cut for binary accuracy, None for none

    @property
    def points(self) -> np.ndarray:
        """The K rated values (votes), evenly spaced over lo..hi; AVA: 1.0, 2.0, ..., 10.0."""
        if self.k is None:
            raise ValueError("a MOS scale has no points")
        return np.linspace(self.lo, self.hi, self.k)

    @property
    def width(self) -> int:
        """Numbers per label in a loader batch: K vote counts, or 1 MOS."""
        return self.k if self.k is not None else 1

    @property
    def text(self) -> str:
        """The range as written on axes and in messages: "1-10", "0-100"."""
        return f"{self.lo:g}-{self.hi:g}"

    @property
    def direction(self) -> str:
        """ "higher is better" or "lower is better"."""
        return "higher is better" if self.higher_is_better else "lower is better"

    @property
    def task(self) -> str:
        """What is learned from labels of this kind: "score" (votes, MOS) or "pairwise" (pairs)."""
        return TASKS[self.kind]

    @property
    def bounded(self) -> bool:
        """Predicted scores lie in lo..hi (votes, MOS); a pairwise score is unbounded (a logit)."""
        return self.kind not in FIXED_KINDS

    @property
    def score_name(self) -> str:
        """What a predicted number is called: "mean score (1-10)", "MOS (0-100, lower is better)"."""
        if self.kind == "clips":
            return "verb and noun class (action = both)"
        if self.kind == "pairs":
            return "relative score (P(a better than b) = sigmoid(score a - score b))"
        name = "mean score" if self.kind == "votes" else "MOS"
        return f"{name} ({self.text})" if self.higher_is_better else f"{name} ({self.text}, lower is better)"

    def point_names(self, prefix: str) -> list[str]:
        """One column name per point, numbered 1..K: point_names("pred_dist_") -> pred_dist_1 .. _K."""
        return [f"{prefix}{i}" for i in range(1, self.width + 1)] if self.kind == "votes" else []

    def mean(self, dist: ArrayLike, *, normalise: bool = True) -> np.ndarray:
        """Mean value sum_k point_k * p_k of each distribution in `dist` [..., K]; shape [...].

        `dist` holds vote counts or weights, divided by their sum (after the dot product: exact
        for integer counts). normalise=False: `dist` already holds probabilities.
        """
        d = self._bins(dist)
        mean = d @ self.points
        return mean / d.sum(axis=-1) if normalise else mean

    def std(self, dist: ArrayLike, *, normalise: bool = True) -> np.ndarray:
        """Standard deviation of the value under each distribution in `dist` [..., K]; shape [...]."""
        d = self._bins(dist)
        if normalise:
            d = d / d.sum(axis=-1, keepdims=True)
        mean = d @ self.points
        var = np.sum(d * (self.points - mean[..., None]) ** 2, axis=-1)
        return np.sqrt(np.clip(var, 0.0, None))

    def label_means(self, labels: ArrayLike) -> np.ndarray:
        """The mean value of each label row [N, width]: the mean of its K vote counts over the
        points, or its MOS as it is; shape [N]."""
        values = np.asarray(labels, dtype=np.float64)
        return self.mean(values) if self.kind == "votes" else values[:, 0]

    def clamp(self, x: ArrayLike) -> np.ndarray:
        """Values clipped to the scale [lo, hi] (for regression outputs); pairwise scores as they are."""
        x = np.asarray(x, dtype=np.float64)
        return np.clip(x, self.lo, self.hi) if self.bounded else x

    def good(self, mean: ArrayLike, threshold: float) -> np.ndarray:
        """True where a mean is strictly beyond `threshold` in the better direction."""
        m = np.asarray(mean, dtype=np.float64)
        return m > threshold if self.higher_is_better else m < threshold

    @property
    def normalised_regression(self) -> bool:
        """A MOS model predicts (mos - lo) / (hi - lo); a vote-scale regression predicts the mean itself."""
        return self.kind == "mos"

    def from_model(self, out: ArrayLike) -> np.ndarray:
        """A regression model's raw outputs in the scale's own units (not clamped)."""
        out = np.asarray(out, dtype=np.float64)
        return self.lo + out * (self.hi - self.lo) if self.normalised_regression else out

    def _bins(self, dist: ArrayLike) -> np.ndarray:
        d = np.asarray(dist, dtype=np.float64)
        if self.k is None or d.ndim == 0 or d.shape[-1] != self.k:
            raise ValueError(f"expected {self.k} bins in the last dimension, got shape {d.shape}")
        return d

    def as_dict(self) -> dict:
        """The JSON form kept in manifest.json, checkpoints, results.json and ONNX metadata."""
        return {
            "kind": self.kind,
            "k": self.k,
            "scale": [self.lo, self.hi],
            "higher_is_better": self.higher_is_better,
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, d: object, where: str) -> Scale:
        """A Scale from its JSON form, every field checked; ValueError naming `where` otherwise."""
        keys = {"kind", "k", "scale", "higher_is_better", "threshold"}
        if not isinstance(d, dict) or set(d) != keys:
            raise ValueError(f"{where}: expected an object with exactly {sorted(keys)}")
        kind, k, rng, hib, thr = (d[key] for key in ("kind", "k", "scale", "higher_is_better", "threshold"))
        if kind not in LABEL_KINDS:
            raise ValueError(f"{where}.kind: expected one of {LABEL_KINDS}, got {kind!r}")
        if kind == "votes" and not (type(k) is int and MIN_K <= k <= MAX_K):
            raise ValueError(f"{where}.k: expected an integer in {MIN_K}..{MAX_K} for votes, got {k!r}")
        if kind != "votes" and k is not None:
            raise ValueError(f"{where}.k: must be null for a {kind} scale, got {k!r}")
        if kind in FIXED_KINDS and d != FIXED_KINDS[kind]:
            raise ValueError(f"{where}: a {kind} scale is exactly {FIXED_KINDS[kind]}, got {d!r}")
        if not (isinstance(rng, list) and len(rng) == 2 and all(_finite(v) for v in rng) and rng[0] < rng[1]):
            raise ValueError(f"{where}.scale: expected [lo, hi], finite numbers with lo < hi, got {rng!r}")
        if type(hib) is not bool:
            raise ValueError(f"{where}.higher_is_better: expected true or false, got {hib!r}")
        if thr is not None and not (_finite(thr) and rng[0] <= thr <= rng[1]):
            raise ValueError(
                f"{where}.threshold: expected null or a number in {rng[0]:g}..{rng[1]:g}, got {thr!r}"
            )
        return cls(kind, float(rng[0]), float(rng[1]), k, hib, None if thr is None else float(thr))


def stored_scale(doc: dict, where: str) -> Scale:
    """The Scale a stored document (manifest, checkpoint, cache meta, ONNX metadata) records under
    `labels`, validated; AVA's when it has none (written before scales existed). AvakitError
    naming `where` for a bad one."""
    if doc.get("labels") is None:
        return AVA
    try:
        return Scale.from_dict(doc["labels"], "labels")
    except ValueError as e:
        raise AvakitError(f"{where}: {e}") from None


def _finite(v: object) -> bool:
    return type(v) in (int, float) and math.isfinite(v) and abs(v) <= MAX_SCALE_ABS  # type: ignore[arg-type]


PAIRS = Scale("pairs", 0.0, 1.0, None, True, None)  # pairwise preferences (PhotoTriage, good/bad folders)
CLIPS = Scale("clips", 0.0, 1.0, None, True, None)  # video segments: verb + noun classes (EPIC-KITCHENS)
# label kinds whose Scale is one fixed value (no rating scale: the labels are pairs or classes)
FIXED_KINDS: dict[str, dict] = {PAIRS.kind: PAIRS.as_dict(), CLIPS.kind: CLIPS.as_dict()}
AVA = Scale()  # AVA.txt: votes for 1..10, good = mean above 5; also every manifest written before scales
# AVA.txt's own columns (the parser's layout); everything downstream of a shard asks the Scale
SCORE_MIN, SCORE_MAX = AVA.lo, AVA.hi
INT_POINTS: tuple[int, ...] = tuple(range(int(SCORE_MIN), int(SCORE_MAX) + 1))  # 1, 2, ..., 10
POINTS = AVA.points
POINTS.flags.writeable = False
N_POINTS = len(INT_POINTS)  # bins of an AVA vote histogram
THRESHOLD = 5.0  # AVA's "high quality": a mean score strictly above this


def point_names(prefix: str) -> list[str]:
    """AVA's column names: point_names("pred_dist_") -> pred_dist_1 .. pred_dist_10."""
    return AVA.point_names(prefix)


def mean_score(dist: ArrayLike, *, normalise: bool = True) -> np.ndarray:
    """AVA's mean rating of each distribution in `dist` [..., 10] (see Scale.mean)."""
    return AVA.mean(dist, normalise=normalise)


def score_std(dist: ArrayLike, *, normalise: bool = True) -> np.ndarray:
    """AVA's rating standard deviation under each distribution in `dist` [..., 10] (see Scale.std)."""
    return AVA.std(dist, normalise=normalise)


# --- choice lists of the config; the registries in avakit.model must have exactly these keys --
BACKBONES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "vgg16", "mobilenet_v3_large")
OUTPUT_MODES: tuple[str, ...] = ("distribution", "regression")
# loss_type -> the model.output_mode it needs (model.losses.LOSSES holds the functions)
LOSSES: dict[str, str] = {
    "kl_div": "distribution",
    "cross_entropy": "distribution",
    "emd": "distribution",
    "mse": "regression",
    "l1": "regression",
}
FREEZE_MODES: tuple[str, ...] = ("none", "partial", "full")
# frozen-mode feature extractors fused for the pairwise task (avakit.model.fused.SOURCES has these keys)
FEATURE_SOURCES: tuple[str, ...] = ("resnet50", "resnet50_layer3", "vgg16", "iqa", "clip")
ACTIVATIONS: tuple[str, ...] = ("relu", "tanh")
TASK_NAMES: tuple[str, ...] = ("score", "pairwise", "clip")  # config `task`: what a run learns (avakit.tasks)
# training.amp: autocast dtype on cuda; elsewhere always "off" (see training.engine.resolve_amp)
AMP_MODES: tuple[str, ...] = ("bf16", "fp16", "off")


def refuse_clip(task: str, command: str, where: str) -> None:
    """AvakitError when `command` (predict, export, features: single photos) meets a clip run."""
    if task == "clip":
        raise AvakitError(
            f"{where}: a clip run (task: clip) classifies video segments from several frames; "
            f"`avakit {command}` works on single photos: use `avakit evaluate` on clip shards"
        )
