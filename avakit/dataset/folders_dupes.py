"""Exact (sha256) and near (perceptual hash) duplicate photos of a culling set, for `avakit audit`.

The perceptual hash is a 512-bit difference hash: the photo in greyscale, box-averaged to 17x17
pixels, one bit per horizontal and one per vertical neighbour pair (is the next pixel brighter?).
It survives resizing, recompression and small brightness changes; unrelated photos differ in about
half their bits. Two photos whose hashes differ in at most NEAR_DISTANCE bits are near duplicates
(on the synthetic shoots a resized, 4 % brighter copy differs in 20-45 bits, unrelated pictures in
75 or more; about 11 % of the bits).

Which pair is a problem: any copy across splits is an error (the test set leaks into training);
across folders of one split a warning; within one folder an exact copy is a warning and a near copy
is normal (a burst: bad photos are often near copies of good ones). Each file gets at most one
finding, on the file of the later split (train < val < test < unlisted), else the later path.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

HASH_SIDE = 16
HASH_BITS = 2 * HASH_SIDE * HASH_SIDE
NEAR_DISTANCE = 56
SPLIT_ORDER = ("train", "val", "test")
_BLOCK = 1024  # rows of hashes compared at a time (a 1024 x N float32 block)


@dataclass(frozen=True)
class Photo:
    """One photo as the duplicate checks see it: where it is, its digests."""

    rel: str  # path relative to ROOT, e.g. shoot_003/good/a.jpg
    folder: str
    split: str | None  # None: the folder is in no split
    sha256: str
    phash: np.ndarray | None  # HASH_BITS booleans; None when the photo does not decode


def perceptual_hash(im: Image.Image) -> np.ndarray:
    """The 512-bit difference hash of a decoded photo, as a boolean vector."""
    side = HASH_SIDE + 1
    grey = np.asarray(im.convert("L").resize((side, side), Image.Resampling.BOX), dtype=np.int16)
    across = grey[:-1, 1:] > grey[:-1, :-1]
    down = grey[1:, :-1] > grey[:-1, :-1]
    return np.concatenate([across.ravel(), down.ravel()])


def near_pairs(hashes: Sequence[np.ndarray], max_distance: int) -> Iterator[tuple[int, int, int]]:
    """Index pairs (i < j) whose hashes differ in at most `max_distance` bits, with that distance.

    A generator: memory stays O(N) however many pairs there are (a thousand blank frames hash
    alike and give half a million pairs).
    """
    if len(hashes) < 2:
        return
    bits = np.asarray(hashes, dtype=np.float32)
    ones = bits.sum(axis=1)
    for start in range(0, len(bits), _BLOCK):
        block = bits[start : start + _BLOCK]
        # Hamming distance of 0/1 vectors: |a| + |b| - 2 a.b (exact in float32 up to 2^24)
        dist = ones[start : start + _BLOCK, None] + ones[None, :] - 2.0 * (block @ bits.T)
        near = dist <= max_distance + 0.5
        near &= np.arange(len(bits))[None, :] > np.arange(start, start + len(block))[:, None]
        rows, cols = np.nonzero(near)
        values = np.rint(dist[rows, cols]).astype(int)
        yield from zip((rows + start).tolist(), cols.tolist(), values.tolist(), strict=True)


def _rank(photo: Photo) -> tuple[int, str]:
    split = SPLIT_ORDER.index(photo.split) if photo.split in SPLIT_ORDER else len(SPLIT_ORDER)
    return split, photo.rel


def _severity(a: Photo, b: Photo, exact: bool) -> str | None:
    """error, warning or None (not a problem) for a copy pair."""
    if a.folder == b.folder:
        return "warning" if exact else None
    if a.split is not None and b.split is not None and a.split != b.split:
        return "error"
    return "warning"


@dataclass(frozen=True)
class _Match:
    severity: str
    exact: bool
    other: Photo
    distance: int


def _describe(matches: dict[str, tuple[_Match, int]]) -> tuple[str, str, str]:
    """The severity, check name and detail of one file's most severe copies (exact ones first)."""
    worst = "error" if "error" in matches else "warning"
    first, count = matches[worst]
    where = first.other.split or "no split"
    if first.exact:
        check, detail = "duplicate", f"same bytes as {first.other.rel} ({where})"
    else:
        check = "near duplicate"
        detail = f"near copy of {first.other.rel} ({where}; {first.distance} of {HASH_BITS} bits differ)"
    if count > 1:
        detail += f" and {count - 1} more"
    if worst == "error":
        detail += ": a leak across splits"
    return worst, check, detail


def duplicate_findings(photos: Sequence[Photo], max_distance: int) -> list[tuple[str, str, str, str]]:
    """(severity, check, file, detail) per file that copies another photo in a way that matters."""
    # file -> severity -> (its closest copy of that severity, exact ones first; how many copies)
    matches: dict[int, dict[str, tuple[_Match, int]]] = defaultdict(dict)

    def add(i: int, j: int, exact: bool, distance: int) -> None:
        a, b = photos[i], photos[j]
        severity = _severity(a, b, exact)
        if severity is None:
            return
        late, early = (i, b) if _rank(a) > _rank(b) else (j, a)
        match = _Match(severity, exact, early, distance)
        best, count = matches[late].get(severity, (match, 0))
        if (not match.exact, match.distance) < (not best.exact, best.distance):
            best = match
        matches[late][severity] = (best, count + 1)

    by_digest: dict[str, list[int]] = defaultdict(list)
    for k, photo in enumerate(photos):
        by_digest[photo.sha256].append(k)
    for same in by_digest.values():
        for x, i in enumerate(same):
            for j in same[x + 1 :]:
                add(i, j, True, 0)
    if max_distance >= 0:
        hashed = [k for k, p in enumerate(photos) if p.phash is not None]
        for x, y, distance in near_pairs([photos[k].phash for k in hashed], max_distance):  # type: ignore[misc]
            i, j = hashed[x], hashed[y]
            if photos[i].sha256 != photos[j].sha256:
                add(i, j, False, distance)
    out = []
    for k in sorted(matches, key=lambda k: photos[k].rel):
        severity, check, detail = _describe(matches[k])
        out.append((severity, check, photos[k].rel, detail))
    return out
