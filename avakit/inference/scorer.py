"""The scorer interface shared by the torch and ONNX backends, and one scored row.

Torch-free and pandas-free: `onnx_runtime` builds on it without importing torch.
A scorer carries the run's `Scale`; its outputs are already in the scale's terms: probabilities
over the K points (distribution) or scores in native units clamped to [lo, hi] (regression).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from avakit.inference.preprocess import PreprocessSpec
from avakit.scores import AVA, Scale


def fields(scale: Scale = AVA) -> list[str]:
    """The json/csv columns for `scale`: path, mean_score, std, dist_1..dist_K (none for a MOS), error."""
    return ["path", "mean_score", "std", *scale.point_names("dist_"), "error"]


FIELDS = fields(AVA)


@dataclass
class Prediction:
    """One scored (or failed) file; `mean_score` in the scale's own units."""

    path: str
    mean_score: float | None = None
    std: float | None = None
    dist: list[float] | None = None
    error: str | None = None

    def row(self, scale: Scale = AVA) -> dict:
        """The output row: path, mean_score, std, the dist_ columns (empty without a distribution), error."""
        names = scale.point_names("dist_")
        dist = self.dist or [None] * len(names)
        return {
            "path": self.path,
            "mean_score": self.mean_score,
            "std": self.std,
            **dict(zip(names, dist, strict=True)),
            "error": self.error,
        }


class Scorer(Protocol):
    """A model behind `__call__(batch [B, 3, c, c] float32) -> outputs`: a run's checkpoint in torch
    (`predict.TorchScorer`) or an exported model in onnxruntime (`onnx_runtime.OnnxScorer`)."""

    spec: PreprocessSpec
    output_mode: str  # distribution: probabilities [B, K]; regression: native scores in [lo, hi] [B]
    scale: Scale  # what the outputs mean (a scorer without one is AVA's: see `scorer_scale`)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Model outputs for a normalised float32 batch [B, 3, c, c]."""


def scorer_scale(scorer: object) -> Scale:
    """The scorer's Scale; AVA for a scorer that does not name one."""
    scale = getattr(scorer, "scale", None)
    return scale if isinstance(scale, Scale) else AVA


def to_prediction(path: Path, out: np.ndarray, output_mode: str, scale: Scale = AVA) -> Prediction:
    """One model output -> a row; a NaN or infinite output is an error row, never a score.

    distribution: `out` holds probabilities over the scale's K points -> their mean and std;
    regression: `out` is the score in native units (already clamped by the scorer).
    """
    if not np.all(np.isfinite(out)):
        return Prediction(str(path), error="the model's output is NaN or infinite (broken weights?)")
    if output_mode == "distribution":
        p = out.astype(np.float64)
        mean = float(scale.mean(p, normalise=False))
        std = float(scale.std(p, normalise=False))
        return Prediction(str(path), round(mean, 6), round(std, 6), [round(float(x), 6) for x in p])
    return Prediction(str(path), round(float(out), 6))
