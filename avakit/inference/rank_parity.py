"""`avakit export --int8` on a pairwise run: INT8 must rank the val groups' photos as FP32 does.

A pairwise model's score is a relative logit: only its order within a group matters, so the
INT8 file is judged on ranking, not on score differences. The photos of the val split's group
samples (members `000.jpg`, `001.jpg`, ..., pairs from the json label) are scored with both ONNX
files; INT8 passes when its pair accuracy is at most RANK_MAX_ACC_DIFF below FP32's (on the
decided pairs: p != 0.5) and the Kendall tau between the two files' scores is at least RANK_MIN_TAU.
One-sided on purpose: on a small val split one flipped pair moves the accuracy by more than a
point, and an INT8 file that happens to rank a pair better has not lost anything; the tau bound
still catches an INT8 model that ranks differently in either direction.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import stats

from avakit.dataset.samples import Reason, member_name, parse_label
from avakit.errors import AvakitError
from avakit.inference.onnx_runtime import OnnxScorer
from avakit.inference.preprocess import PreprocessSpec, prepare_image
from avakit.pair_metrics import pair_correct
from avakit.scores import PAIRS

log = logging.getLogger("avakit.inference.export")
RANK_MAX_ACC_DIFF = 0.01  # FP32 - INT8 pair accuracy: at most one point lost
RANK_MIN_TAU = 0.95  # Kendall tau of INT8 scores against FP32's
BATCH = 32


@dataclass
class Groups:
    """The readable val groups: their photos stacked [N, 3, c, c] and pairs [P, 3] as (i, j, p)
    with i, j indices into the photos."""

    photos: np.ndarray
    pairs: np.ndarray
    n_groups: int


def _group(sample: dict, spec: PreprocessSpec) -> tuple[list[np.ndarray], list] | None:
    """(model-ready photos, pairs) of one group sample; None when its label or a photo is bad."""
    if "json" not in sample:
        return None
    reason, label = parse_label(sample["__key__"], sample["json"], PAIRS)
    if reason != Reason.OK or label is None or "pairs" not in label:
        return None
    photos = []
    for k in range(len(label["members"])):
        with contextlib.suppress(OSError, KeyError, ValueError):
            photos.append(prepare_image(Image.open(io.BytesIO(sample[member_name(k)])), spec))
    return (photos, label["pairs"]) if len(photos) == len(label["members"]) else None


def read_groups(shards: str, spec: PreprocessSpec, max_photos: int, origin: str | None = None) -> Groups:
    """Whole val groups of `shards` until `max_photos` photos (at least one group); groups with
    a bad label or photo are skipped. AvakitError when none is readable."""
    from avakit.dataset.sources import resolve_split
    from avakit.training.loader import iter_samples

    photos: list[np.ndarray] = []
    pairs: list[tuple[int, int, float]] = []
    n_groups = 0
    for sample in iter_samples(resolve_split(shards, "val", origin=origin)):
        if n_groups and len(photos) >= max_photos:
            break
        group = _group(sample, spec)
        if group is None:
            continue
        first = len(photos)
        photos += group[0]
        pairs += [(first + int(i), first + int(j), float(p)) for i, j, p, *_ in group[1]]
        n_groups += 1
    if not n_groups:
        raise AvakitError(f"no readable val group sample in {shards} for the ranking parity check")
    return Groups(np.stack(photos), np.array(pairs, dtype=np.float64).reshape(-1, 3), n_groups)


def score_photos(path: Path, photos: np.ndarray) -> np.ndarray:
    """The ONNX file's score of every photo [N] (a pairwise model's logit), in batches."""
    scorer = OnnxScorer(path)
    out = [np.asarray(scorer(photos[i : i + BATCH])).reshape(-1) for i in range(0, len(photos), BATCH)]
    return np.concatenate(out).astype(np.float64)


def pair_accuracy(scores: np.ndarray, pairs: np.ndarray) -> float:
    """Accuracy on the decided pairs (p != 0.5) of P(i > j) = sigmoid(score i - score j)."""
    i, j = pairs[:, 0].astype(int), pairs[:, 1].astype(int)
    p_pred = 1.0 / (1.0 + np.exp(-(scores[i] - scores[j])))
    correct = pair_correct(pd.DataFrame({"p_true": pairs[:, 2], "p_pred": p_pred}))
    decided = correct[~np.isnan(correct)]
    return float(decided.mean()) if decided.size else math.nan


def ranking_parity(fp32: Path, int8: Path, groups: Groups) -> dict:
    """Both files' pair accuracy on the groups and the Kendall tau between their photo scores."""
    a, b = score_photos(fp32, groups.photos), score_photos(int8, groups.photos)
    tau = math.nan  # undefined when FP32 gives one score to every photo
    if len(a) >= 2 and np.ptp(a) > 0:  # INT8 collapsing FP32's order to one score: tau 0
        tau = float(stats.kendalltau(a, b)[0]) if np.ptp(b) > 0 else 0.0
    return {
        "n_groups": groups.n_groups,
        "n_photos": len(a),
        "n_pairs": len(groups.pairs),
        "fp32_pair_accuracy": pair_accuracy(a, groups.pairs),
        "int8_pair_accuracy": pair_accuracy(b, groups.pairs),
        "kendall_tau": tau,
    }


def check_ranking(int8: Path, found: dict, notes: list[str]) -> None:
    """AvakitError (exit 1, file left for inspection) when INT8's pair accuracy is more than one
    point from FP32's or tau < RANK_MIN_TAU; a note when a figure is undefined (no decided pair,
    constant scores)."""
    fp32_acc, int8_acc, tau = found["fp32_pair_accuracy"], found["int8_pair_accuracy"], found["kendall_tau"]
    where = f"{found['n_photos']} photos, {found['n_pairs']} pairs of {found['n_groups']} val groups"
    if math.isnan(fp32_acc) or math.isnan(int8_acc) or math.isnan(tau):
        notes.append(f"INT8 ranking parity partly undefined on {where} (no decided pair or constant scores)")
    if fp32_acc - int8_acc > RANK_MAX_ACC_DIFF + 1e-12:
        raise AvakitError(
            f"{int8}: INT8 pair accuracy {int8_acc:.4f} is more than {RANK_MAX_ACC_DIFF:.2f} below FP32's "
            f"{fp32_acc:.4f} on {where}; file left for inspection",
            exit_code=1,
        )
    if tau < RANK_MIN_TAU:
        raise AvakitError(
            f"{int8}: INT8 ranks the photos differently from FP32 (Kendall tau {tau:.4f} < "
            f"{RANK_MIN_TAU}) on {where}; file left for inspection",
            exit_code=1,
        )


def export_ranking(
    fp32: Path,
    int8: Path,
    spec: PreprocessSpec,
    source: tuple[str, str | None] | None,
    n: int,
    notes: list[str],
) -> dict | None:
    """The ranking parity of an export (`source`: the shards and the file they were read from, or
    None when the checks ran on given photos or random inputs: a note, no check); raises as
    `check_ranking` does. Up to `n` photos, whole groups."""
    if source is None:
        notes.append("INT8 ranking parity not checked: no val group samples (given photos or no shards)")
        return None
    found = ranking_parity(fp32, int8, read_groups(source[0], spec, n, source[1]))
    log.info(
        "ranking parity on %d pairs: pair accuracy FP32 %.4f, INT8 %.4f; Kendall tau %.4f",
        found["n_pairs"],
        found["fp32_pair_accuracy"],
        found["int8_pair_accuracy"],
        found["kendall_tau"],
    )
    check_ranking(int8, found, notes)
    return found
