"""`avakit predict`: score photos with a trained run (torch) or an exported model (ONNX).

Scores are in the units of the run's data (its `Scale`, from the checkpoint or the ONNX
metadata): AVA's mean score 1..10, a K-point vote scale's mean over its points, a MOS in lo..hi.
Output rows, the same for every backend and format (json / csv columns, in this order):
  path        the file scored
  mean_score  the predicted score (scale.score_name, e.g. "mean score (1-10)", "MOS (0-100)")
  std         standard deviation of the predicted rating distribution (distribution mode; else null)
  dist_1..dist_K  the predicted distribution over the scale's K points (distribution mode; else
              null; no such columns for a MOS scale)
  error       why the file could not be scored (null when it was)
  score       what mean_score is: the score_name (the same on every row)
json is a list of row objects; csv a header and one line per row.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avakit.config import PREDICT_FORMATS
from avakit.dataset.images import ImageSkip
from avakit.errors import AvakitError
from avakit.fileio import write_text_atomic
from avakit.inference.preprocess import PreprocessSpec, find_images, prepare
from avakit.inference.scorer import Prediction, Scorer, fields, scorer_scale, to_prediction
from avakit.scores import AVA, Scale

FORMATS = PREDICT_FORMATS


class TorchScorer(Scorer):
    """A run's checkpoint in torch (imports torch only when built)."""

    def __init__(self, ckpt_path: Path, device: str = "auto") -> None:
        import torch

        from avakit.scores import refuse_clip
        from avakit.training.checkpoint import checkpoint_scale, load_checkpoint, model_from_checkpoint
        from avakit.training.distributed import pick_device

        ckpt = load_checkpoint(ckpt_path)
        refuse_clip(checkpoint_scale(ckpt).task, "predict", str(ckpt_path))
        self.spec = PreprocessSpec.from_checkpoint(ckpt)
        model, cfg = model_from_checkpoint(ckpt)
        self.scale = checkpoint_scale(ckpt)
        self.output_mode = cfg.model.output_mode
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.torch = torch

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a normalised batch: probabilities over the K points (distribution) or
        scores in the scale's units clamped to [lo, hi] (regression)."""
        from avakit.model.losses import native_outputs

        torch = self.torch
        with torch.inference_mode():
            out = self.model(torch.from_numpy(batch).to(self.device)).float()
            if self.output_mode == "distribution":
                return out.softmax(dim=1).cpu().numpy()
            out = native_outputs(out, self.scale, self.output_mode)
            if self.scale.bounded:  # a pairwise score is a logit: never clamped
                out = out.clamp(self.scale.lo, self.scale.hi)
        return out.cpu().numpy()


def load_scorer(
    run: Path | None = None, checkpoint: Path | None = None, onnx: Path | None = None, device: str = "auto"
) -> Scorer:
    """Exactly one of a run folder (its best_model.pt), a checkpoint file or an ONNX file."""
    if sum(x is not None for x in (run, checkpoint, onnx)) != 1:
        raise AvakitError(
            "give exactly one of run (a run folder), checkpoint (a file) or onnx (an .onnx file)"
        )
    if onnx is not None:
        from avakit.inference.onnx_runtime import OnnxScorer

        return OnnxScorer(Path(onnx))
    if run is not None:
        from avakit.training.checkpoint import run_checkpoint

        checkpoint = run_checkpoint(Path(run), "best")
    assert checkpoint is not None
    return TorchScorer(Path(checkpoint), device)


def score_images(
    scorer: Scorer,
    paths: Sequence[Path],
    batch_size: int = 16,
    advance: Callable[[int], None] | None = None,
) -> list[Prediction]:
    """Score files in batches; an unreadable file gets a row with its error, the rest go on."""
    if batch_size < 1:
        raise AvakitError(f"batch_size must be at least 1, got {batch_size}")
    results: dict[int, Prediction] = {}
    scale = scorer_scale(scorer)
    for start in range(0, len(paths), batch_size):
        ready, arrays = [], []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                arrays.append(prepare(paths[i], scorer.spec))
                ready.append(i)
            except ImageSkip as e:
                reason = f"{e.reason}: {e.detail}" if e.detail else e.reason
                results[i] = Prediction(str(paths[i]), error=reason)
        if arrays:
            outputs = scorer(np.stack(arrays))
            for i, out in zip(ready, outputs, strict=True):
                results[i] = to_prediction(paths[i], out, scorer.output_mode, scale)
        if advance is not None:
            advance(min(batch_size, len(paths) - start))
    return [results[i] for i in range(len(paths))]


def check_output(fmt: str, output: Path | None = None) -> None:
    """Refuse a bad format or output before anything is scored (AvakitError, exit 2).

    `output` must be a file name in an existing, writable folder. A missing folder is refused
    rather than created: it is most likely a typo, and scoring a large folder only to write
    the results somewhere unexpected (or nowhere) loses them.
    """
    if fmt not in FORMATS:
        raise AvakitError(f"format must be table, json or csv, got {fmt!r}")
    if output is None:
        return
    if fmt == "table":
        raise AvakitError("output writes machine-readable rows: choose format json or csv")
    output = Path(output)
    if output.is_dir():
        example = output / f"scores.{fmt}"
        raise AvakitError(f"output {output}: is a folder; give a file name, e.g. {example}")
    folder = output.parent
    if not folder.exists():
        raise AvakitError(f"output {output}: folder {folder} does not exist (create it first)")
    if not folder.is_dir():
        raise AvakitError(f"output {output}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise AvakitError(f"output {output}: folder {folder} is not writable")


@dataclass
class PredictJob:
    """What a `predict` call scores: the images found, the inputs that gave none, and the model."""

    scorer: Scorer
    paths: list[Path]
    missing: list[tuple[Path, str]]  # (input, why it could not be scored)

    @property
    def scale(self) -> Scale:
        """What the scores mean: the model's Scale (AVA for a model from before scales)."""
        return scorer_scale(self.scorer)

    def run(self, batch_size: int = 16, advance: Callable[[int], None] | None = None) -> list[Prediction]:
        """One row per image found (in order), then one error row per input that gave none."""
        predictions = score_images(self.scorer, self.paths, batch_size, advance)
        return predictions + [Prediction(str(p), error=reason) for p, reason in self.missing]


def plan_prediction(
    inputs: Iterable[Path],
    run: Path | None = None,
    checkpoint: Path | None = None,
    onnx: Path | None = None,
    fmt: str = "table",
    output: Path | None = None,
    device: str = "auto",
) -> PredictJob:
    """Check format and output (before any scoring: a bad output must not lose the results),
    walk `inputs` for images and load the one model given (run, checkpoint or onnx)."""
    check_output(fmt, output)
    paths, missing = find_images(inputs)
    return PredictJob(load_scorer(run, checkpoint, onnx, device), paths, missing)


def format_predictions(predictions: Sequence[Prediction], fmt: str, scale: Scale = AVA) -> str:
    """json (a list of rows) or csv (header + rows), with the columns documented above for `scale`."""
    rows = [{**p.row(scale), "score": scale.score_name} for p in predictions]
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[*fields(scale), "score"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    raise AvakitError(f"format must be table, json or csv, got {fmt!r}")


def write_predictions(predictions: Sequence[Prediction], fmt: str, output: Path, scale: Scale = AVA) -> None:
    """Write the json/csv rows to `output` through fileio (whole or not at all)."""
    write_text_atomic(Path(output), format_predictions(predictions, fmt, scale))
