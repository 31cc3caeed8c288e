"""The scorer interface shared by the torch and ONNX backends, and one scored row.

Torch-free and pandas-free: `onnx_runtime` builds on it without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from avakit.inference.preprocess import PreprocessSpec
from avakit.scores import N_POINTS, mean_score, point_names, score_std

DIST_FIELDS = point_names("dist_")
FIELDS = ["path", "mean_score", "std", *DIST_FIELDS, "error"]


@dataclass
class Prediction:
    """One scored (or failed) file."""

    path: str
    mean_score: float | None = None
    std: float | None = None
    dist: list[float] | None = None
    error: str | None = None

    def row(self) -> dict:
        """The output row: path, mean_score, std, the dist_ columns (empty without a distribution), error."""
        dist = self.dist or [None] * N_POINTS
        return {
            "path": self.path,
            "mean_score": self.mean_score,
            "std": self.std,
            **dict(zip(DIST_FIELDS, dist, strict=True)),
            "error": self.error,
        }


class Scorer(Protocol):
    """A model behind `__call__(batch [B, 3, c, c] float32) -> outputs`: a run's checkpoint in torch
    (`predict.TorchScorer`) or an exported model in onnxruntime (`onnx_runtime.OnnxScorer`)."""

    spec: PreprocessSpec
    output_mode: str  # distribution: outputs are probabilities [B, N_POINTS]; regression: scores [B]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Model outputs for a normalised float32 batch [B, 3, c, c]."""


def to_prediction(path: Path, out: np.ndarray, output_mode: str) -> Prediction:
    """One model output -> a row; a NaN or infinite output is an error row, never a score."""
    if not np.all(np.isfinite(out)):
        return Prediction(str(path), error="the model's output is NaN or infinite (broken weights?)")
    if output_mode == "distribution":
        p = out.astype(np.float64)
        mean = float(mean_score(p, normalise=False))
        std = float(score_std(p, normalise=False))
        return Prediction(str(path), round(mean, 6), round(std, 6), [round(float(x), 6) for x in p])
    return Prediction(str(path), round(float(out), 6))
