"""A synthetic PhotoTriage release whose preferences are learnable from the pixels.

`make_synthetic_phototriage` writes the official layout: `train_pairlist.txt`, `val_pairlist.txt`
(six columns: series, photo 1, photo 2, preference ratio of photo 1, rank of photo 1, rank of
photo 2), `train_val_imgs/%06d-%02d.JPG` and `reviews_trainval/%06d.json`. Each series (2-8 photos)
is one scene (the same random draws for every photo) shot at different hidden qualities q, drawn
with `avakit.dataset.synthetic.synthetic_image`; the rank follows q, and each pair's reviewers
prefer the better photo with probability sigmoid(steepness * (q_i - q_j)). The ratio in the pair
list is the reviews' vote share, so the reviews agree with it, unless `contradictory` flips every
review (the fixture the importer must refuse).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avakit.dataset.phototriage import P_MAX, P_MIN, image_name
from avakit.dataset.synthetic import synthetic_image
from avakit.fileio import write_bytes_atomic, write_text_atomic

REASONS = ("sharper", "better framing", "eyes open", "better light", "nicer colours")


@dataclass(frozen=True)
class SyntheticPhotoTriage:
    """Paths of a generated release, and each photo's hidden quality."""

    root: Path
    train_list: Path
    val_list: Path
    images: Path
    reviews: Path
    train_ids: tuple[int, ...]
    val_ids: tuple[int, ...]
    qualities: dict[str, float]  # image file name -> hidden quality q


def make_synthetic_phototriage(
    root: Path,
    n_series: int = 40,
    seed: int = 0,
    *,
    val_fraction: float = 0.2,
    photos: tuple[int, int] = (2, 8),
    long_side: tuple[int, int] = (96, 160),
    reviewers: tuple[int, int] = (3, 7),
    steepness: float = 20.0,
    contradictory: bool = False,
) -> SyntheticPhotoTriage:
    """Write `n_series` series under `root` in the release's layout; the same seed writes the same files.

    A `val_fraction` share of the series goes to `val_pairlist.txt` (avakit's test split), the rest
    to `train_pairlist.txt`. Every pair of a series is listed, in a random orientation.
    """
    root = Path(root)
    images, reviews = root / "train_val_imgs", root / "reviews_trainval"
    images.mkdir(parents=True, exist_ok=True)
    reviews.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = sorted(rng.choice(np.arange(1, 10 * n_series + 10), size=n_series, replace=False).tolist())
    n_val = round(n_series * val_fraction)
    val_ids = sorted(rng.choice(ids, size=n_val, replace=False).tolist()) if n_val else []
    lines: dict[bool, list[str]] = {True: [], False: []}
    qualities: dict[str, float] = {}
    for sid in ids:
        n = int(rng.integers(photos[0], photos[1] + 1))
        q = _series_qualities(rng, n)
        _write_images(images, sid, q, rng, long_side, qualities)
        pair_lines, entries = _series_pairs(rng, sid, q, reviewers, steepness, contradictory)
        lines[sid in val_ids].extend(pair_lines)
        write_text_atomic(reviews / f"{sid:06d}.json", json.dumps({"reviews": entries}, indent=1))
    train_list, val_list = root / "train_pairlist.txt", root / "val_pairlist.txt"
    write_text_atomic(train_list, "".join(f"{line}\n" for line in lines[False]))
    write_text_atomic(val_list, "".join(f"{line}\n" for line in lines[True]))
    train_ids = tuple(sid for sid in ids if sid not in val_ids)
    return SyntheticPhotoTriage(
        root, train_list, val_list, images, reviews, train_ids, tuple(val_ids), qualities
    )


def _series_qualities(rng: np.random.Generator, n: int) -> np.ndarray:
    """Distinct qualities of a series' photos, evenly spread over a random range, in random order."""
    lo, hi = rng.uniform(0.05, 0.35), rng.uniform(0.65, 0.95)
    return rng.permutation(np.linspace(hi, lo, n))


def _write_images(
    folder: Path,
    sid: int,
    q: np.ndarray,
    rng: np.random.Generator,
    long_side: tuple[int, int],
    qualities: dict[str, float],
) -> None:
    """One scene per series: every photo is drawn from the same random state, at its own quality."""
    scene_seed = int(rng.integers(2**32))
    side = int(rng.integers(long_side[0], long_side[1] + 1))
    size = (
        (side, max(16, round(side * 3 / 4))) if rng.random() < 0.7 else (max(16, round(side * 3 / 4)), side)
    )
    for k, quality in enumerate(q, start=1):
        im = synthetic_image(float(quality), np.random.default_rng(scene_seed), size)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        name = image_name(sid, k)
        write_bytes_atomic(folder / name, buf.getvalue())
        qualities[name] = float(quality)


def _series_pairs(
    rng: np.random.Generator,
    sid: int,
    q: np.ndarray,
    reviewers: tuple[int, int],
    steepness: float,
    contradictory: bool,
) -> tuple[list[str], list[dict]]:
    """Every pair's pair-list line and its reviews (left/right order random per review)."""
    n = len(q)
    rank = np.empty(n, dtype=int)
    rank[np.argsort(-q)] = np.arange(1, n + 1)  # 1 = best
    lines, entries = [], []
    for a in range(n):
        for b in range(a + 1, n):
            i, j = (a, b) if rng.random() < 0.5 else (b, a)  # photo 1, photo 2 (0-based)
            m = int(rng.integers(reviewers[0], reviewers[1] + 1))
            prefer_i = 1.0 / (1.0 + math.exp(-steepness * (q[i] - q[j])))
            wins_i = int(rng.binomial(m, prefer_i))
            p = min(max(wins_i / m, P_MIN), P_MAX)
            lines.append(f"{sid} {i + 1} {j + 1} {p:.4f} {rank[i]} {rank[j]}")
            for r in range(m):
                i_won = (r < wins_i) != contradictory
                left, right = (i, j) if rng.random() < 0.5 else (j, i)
                entries.append(
                    {
                        "compareID1": left,
                        "compareID2": right,
                        "compareFile1": f"{sid}-{left + 1}.JPG",
                        "compareFile2": f"{sid}-{right + 1}.JPG",
                        "userChoice": "LEFT" if (left == i) == i_won else "RIGHT",
                        "reason": REASONS[int(rng.integers(len(REASONS)))],
                    }
                )
    return lines, entries
