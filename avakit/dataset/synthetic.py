"""A synthetic AVA-like dataset whose mean scores are learnable from the pixels.

`make_synthetic_table` writes the same kind of photos with a labels table (K-point votes or a
MOS on any scale) for `avakit shard --labels`.

It writes what the AVA release has, in the real formats: AVA.txt (15 integer columns),
tags.txt, challenges.txt, an official-style test list (`generic_test.jpgl`, which like the
real one also names ids absent from AVA.txt) and `images/{id}.jpg` of varied sizes and
orientations. Each image has a hidden quality q in [0, 1]; brighter, more saturated, less
noisy pictures with a clear subject get higher votes, so a small CNN can learn the ranking on
a CPU in minutes. Used by the tests, the benchmarks and `avakit demo`.
"""

from __future__ import annotations

import colorsys
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from avakit.fileio import write_bytes_atomic, write_text_atomic
from avakit.scores import POINTS

TAGS = {
    1: "Abstract",
    2: "Animals",
    3: "Architecture",
    4: "Landscape",
    5: "Macro",
    6: "Nature",
    7: "Portraiture",
    8: "Still_Life",
    9: "Urban",
    10: "Black_and_White",
}
CHALLENGES = {
    101: "Golden_Hour",
    102: "Minimalism",
    103: "Reflections",
    104: "Red",
    105: "Shadows",
    106: "Free_Study",
}
ASPECTS = (4 / 3, 3 / 2, 1.0, 2 / 3, 3 / 4, 16 / 9)


@dataclass(frozen=True)
class SyntheticAva:
    """Paths of a generated dataset, laid out like the AVA release."""

    root: Path
    ava_txt: Path
    images: Path
    tags: Path
    challenges: Path
    test_list: Path
    image_ids: tuple[int, ...]


def synthetic_image(q: float, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """An RGB picture whose look encodes quality q: brightness, saturation, noise, a subject."""
    w, h = size
    hue = rng.random()
    sat, val = 0.1 + 0.8 * q, 0.25 + 0.65 * q
    top = np.array(colorsys.hsv_to_rgb(hue, sat, val))
    bottom = np.array(colorsys.hsv_to_rgb((hue + 0.08) % 1, sat, val * 0.7))
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    img = (top * (1 - t) + bottom * t) * 255.0 * np.ones((1, w, 3))
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    # A clear central subject for good pictures, small scattered clutter for poor ones.
    subject = colorsys.hsv_to_rgb((hue + 0.5) % 1, sat, min(1.0, val + 0.2))
    r = int(min(w, h) * (0.12 + 0.2 * q))
    cx, cy = int(w * rng.uniform(0.35, 0.65)), int(h * rng.uniform(0.35, 0.65))
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(c * 255) for c in subject))
    for _ in range(int(12 * (1 - q))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        s = int(rng.integers(4, max(5, min(w, h) // 10)))
        draw.rectangle((x, y, x + s, y + s), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    # Grain: coarse blotches (stronger for poor pictures) plus a little fine sensor noise, so
    # files compress like photos (~100 KB at 800x534) rather than like white noise.
    coarse = rng.normal(0.0, 3.0 + 20.0 * (1 - q), size=(max(1, h // 4), max(1, w // 4), 3))
    coarse_im = Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8)).resize(
        (w, h), Image.Resampling.BILINEAR
    )
    arr = np.asarray(im, dtype=np.float32) + np.asarray(coarse_im, dtype=np.float32) - 128.0
    arr += rng.normal(0.0, 2.0, size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def synthetic_votes(q: float, rng: np.random.Generator) -> list[int]:
    """A realistic vote histogram (80-300 votes, AVA-like spread) centred on 3.6 + 3.6 q."""
    centre = 3.6 + 3.6 * q + rng.normal(0.0, 0.15)
    spread = rng.uniform(1.2, 1.7)
    levels = POINTS
    p = np.exp(-0.5 * ((levels - centre) / spread) ** 2)
    return rng.multinomial(int(rng.integers(80, 301)), p / p.sum()).tolist()


def _size(rng: np.random.Generator, long_range: tuple[int, int]) -> tuple[int, int]:
    aspect = ASPECTS[int(rng.integers(len(ASPECTS)))]
    long_side = int(rng.integers(long_range[0], long_range[1] + 1))
    if aspect >= 1:
        return long_side, max(16, round(long_side / aspect))
    return max(16, round(long_side * aspect)), long_side


def make_synthetic_ava(
    root: Path,
    n: int = 400,
    seed: int = 0,
    long_side: tuple[int, int] = (320, 640),
    fixed_size: tuple[int, int] | None = None,
    quality: int = 92,
) -> SyntheticAva:
    """Write n images + AVA.txt, tags.txt, challenges.txt, generic_test.jpgl under `root`.

    `long_side` is the range of the longer side (aspect ratios vary, portrait and landscape);
    `fixed_size` gives every image the same (width, height) instead, as the benchmarks do.
    The same seed always writes the same files.
    """
    root = Path(root)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1000, 999_999), size=n, replace=False).tolist()
    lines = []
    for index, image_id in enumerate(ids, start=1):
        q = float(rng.beta(2.0, 2.0))
        size = fixed_size or _size(rng, long_side)
        buf = io.BytesIO()
        synthetic_image(q, rng, size).save(buf, format="JPEG", quality=quality)
        write_bytes_atomic(images / f"{image_id}.jpg", buf.getvalue())
        votes = synthetic_votes(q, rng)
        tags = sorted(rng.choice(list(TAGS), size=int(rng.integers(0, 3)), replace=False).tolist())
        tags = (tags + [0, 0])[:2]
        challenge = int(rng.choice(list(CHALLENGES)))
        lines.append(" ".join(map(str, [index, image_id, *votes, *tags, challenge])))
    ava_txt = root / "AVA.txt"
    write_text_atomic(ava_txt, "\n".join(lines) + "\n")
    tags_txt = root / "tags.txt"
    write_text_atomic(tags_txt, "".join(f"{k} {v}\n" for k, v in TAGS.items()))
    challenges_txt = root / "challenges.txt"
    write_text_atomic(challenges_txt, "".join(f"{k} {v}\n" for k, v in CHALLENGES.items()))
    # Like the real list: a fifth of the ids, plus a few that AVA.txt does not have.
    listed = rng.choice(ids, size=max(1, n // 5), replace=False).tolist()
    absent = [i for i in range(1, 6) if i not in set(ids)]
    test_list = root / "generic_test.jpgl"
    write_text_atomic(test_list, "".join(f"{i}\n" for i in listed + absent))
    return SyntheticAva(root, ava_txt, images, tags_txt, challenges_txt, test_list, tuple(ids))


@dataclass(frozen=True)
class SyntheticTable:
    """A synthetic labels table: `labels.csv` beside `images/` (mixed .jpg/.JPG/.png/.bmp names)."""

    root: Path
    labels: Path
    images: Path
    qualities: dict[str, float]  # image path as written in the table -> hidden quality q


_TABLE_SUFFIXES = (".jpg", ".JPG", ".png", ".bmp")


def make_synthetic_table(
    root: Path,
    n: int = 200,
    seed: int = 0,
    *,
    kind: str = "votes",
    k: int = 7,
    scale: tuple[float, float] = (0.0, 100.0),
    lower_is_better: bool = False,
    groups: int = 0,
    long_side: tuple[int, int] = (200, 320),
) -> SyntheticTable:
    """Write n images in mixed formats + `labels.csv` under `root`: the `labels --labels` format.

    kind "votes": `votes_1..votes_K` counts (20-60 raters) centred on 1 + (K-1) q; kind "mos":
    `mos` (+ `std`, `n`) on `scale`, high for good pictures unless `lower_is_better` (DMOS).
    `groups` > 0 adds a `group` column (content ids, e.g. a reference image per group).
    """
    root = Path(root)
    images = root / "images"
    (images / "sub dir").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lo, hi = scale
    head = (
        ["image", *(f"votes_{i}" for i in range(1, k + 1))]
        if kind == "votes"
        else ["image", "mos", "std", "n"]
    )
    lines = [",".join(head + (["group"] if groups else []))]
    qualities = {}
    for i in range(n):
        q = float(rng.beta(2.0, 2.0))
        folder = "sub dir/" if i % 5 == 0 else ""
        name = f"{folder}photo.{i:04d}{_TABLE_SUFFIXES[i % len(_TABLE_SUFFIXES)]}"
        im = synthetic_image(q, rng, _size(rng, long_side))
        buf = io.BytesIO()
        fmt = {".jpg": "JPEG", ".png": "PNG", ".bmp": "BMP"}[name[name.rfind(".") :].lower()]
        im.save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
        write_bytes_atomic(images / name, buf.getvalue())
        qualities[name] = q
        if kind == "votes":
            centre = 1 + (k - 1) * q + rng.normal(0.0, 0.3)
            p = np.exp(-0.5 * ((np.arange(1, k + 1) - centre) / max(0.8, k / 6)) ** 2)
            cells = [str(v) for v in rng.multinomial(int(rng.integers(20, 61)), p / p.sum())]
        else:
            good = q if not lower_is_better else 1 - q
            mos = float(np.clip(lo + (hi - lo) * (0.1 + 0.8 * good + rng.normal(0.0, 0.03)), lo, hi))
            cells = [f"{mos:.4f}", f"{(hi - lo) * 0.08:.4f}", str(int(rng.integers(15, 40)))]
        group = [f"ref{i % groups:03d}"] if groups else []
        lines.append(",".join([f'"{name}"' if "," in name else name, *cells, *group]))
    labels = root / "labels.csv"
    write_text_atomic(labels, "\n".join(lines) + "\n")
    return SyntheticTable(root, labels, images, qualities)
