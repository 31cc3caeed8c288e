"""Synthetic culling folders: `training_files/<folder>/good/*.jpg` and `bad/*.jpg`, a `splits.json`
and an optional `mos.csv`, in the layout `avakit audit` and `avakit shard --folders` read.

Each folder is one shoot (one scene); a bad photo is a blurred, darkened or noisy copy of one of
its good photos, so "good above bad" is learnable from the pixels. Options plant the faults the
audit must find (`faults`): a corrupt file, a small photo, a non-sRGB profile, an exact and a
near duplicate across splits, an empty bad/ folder, a folder missing from splits.json.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from avakit.dataset.synthetic import synthetic_image
from avakit.fileio import write_bytes_atomic, write_text_atomic

DEFECTS = ("blur", "dark", "noise")
FAULTS = ("corrupt", "small", "profile", "duplicate", "near_duplicate", "empty_bad", "unlisted")


@dataclass(frozen=True)
class SyntheticFolders:
    """Paths of a generated culling set, and what was planted."""

    root: Path  # holds training_files/, splits.json, mos.csv
    files: Path  # root / training_files
    splits: Path  # root / splits.json
    mos: Path | None  # root / mos.csv (when mos_share > 0)
    folders: dict[str, str]  # folder -> split
    faults: dict[str, str]  # fault -> the file (relative to root) or folder it is in


def bad_copy(im: Image.Image, defect: str, rng: np.random.Generator) -> Image.Image:
    """A clearly worse version of `im`: blurred, darkened or noisy, strongly enough (relative to
    the photo's size) to survive the downscaling to a shard's short side and a small crop."""
    side = min(im.size)
    if defect == "blur":
        return im.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.025, 0.04)) * side))
    if defect == "dark":
        return ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.3, 0.45)))
    block = max(1, side // 60)  # grain of a few pixels, not per-pixel noise that a resize averages away
    grain = rng.normal(0.0, 55.0, size=(im.height // block + 1, im.width // block + 1, 3))
    grain = np.repeat(np.repeat(grain, block, axis=0), block, axis=1)[: im.height, : im.width]
    return Image.fromarray(np.clip(np.asarray(im, dtype=np.float32) + grain, 0, 255).astype(np.uint8))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


def _jpeg(im: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def make_synthetic_folders(
    root: Path,
    n_folders: int = 12,
    seed: int = 0,
    *,
    photos: tuple[int, int] = (2, 5),
    size: tuple[int, int] = (320, 240),
    split_shares: tuple[float, float, float] = (0.6, 0.2, 0.2),
    mos_share: float = 0.0,
    faults: tuple[str, ...] = (),
) -> SyntheticFolders:
    """Write `n_folders` shoots under `root/training_files`; the same seed writes the same files.

    Each folder gets 2..N good photos (`photos`) and as many bad copies, each bad copy made from
    one good photo with a random defect. `mos_share` of the photos get a MOS (1..5, good high) in
    mos.csv. `faults` plants audit failures (see FAULTS); without them the set passes the audit.
    """
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; choose from {FAULTS}")
    rng = np.random.default_rng(seed)
    root, files = Path(root), Path(root) / "training_files"
    names = [f"shoot_{k:03d}" for k in range(n_folders)]
    cut = np.cumsum(np.round(np.array(split_shares) * n_folders).astype(int))
    folders = {
        name: ("train" if k < cut[0] else "val" if k < cut[1] else "test") for k, name in enumerate(names)
    }
    mos_rows: list[str] = []
    for name in names:
        n = int(rng.integers(photos[0], photos[1] + 1))
        for k in range(n):
            good = synthetic_image(float(rng.uniform(0.7, 0.95)), rng, size)
            bad = bad_copy(good, DEFECTS[int(rng.integers(len(DEFECTS)))], rng)
            for grade, im in (("good", good), ("bad", bad)):
                rel = f"training_files/{name}/{grade}/{name}_{k:02d}.jpg"
                _write(root / rel, _jpeg(im))
                if rng.random() < mos_share:
                    mos = rng.uniform(3.5, 5.0) if grade == "good" else rng.uniform(1.0, 2.5)
                    mos_rows.append(f"{rel[len('training_files/') :]},{mos:.3f}")
    planted = _plant(root, files, names, folders, faults, rng, size)
    split_lists = {s: [f for f in names if folders[f] == s] for s in ("train", "val", "test")}
    if "unlisted" in faults:
        split_lists["train"] = split_lists["train"][1:]
    write_text_atomic(root / "splits.json", json.dumps(split_lists, indent=1))
    mos_path = None
    if mos_share > 0:
        mos_path = root / "mos.csv"
        write_text_atomic(mos_path, "image,mos\n" + "".join(r + "\n" for r in mos_rows))
    return SyntheticFolders(root, files, root / "splits.json", mos_path, folders, planted)


def _plant(
    root: Path,
    files: Path,
    names: list[str],
    folders: dict[str, str],
    faults: tuple[str, ...],
    rng: np.random.Generator,
    size: tuple[int, int],
) -> dict[str, str]:
    """Write the requested faults into the set; fault -> where (relative to root)."""
    train = [n for n in names if folders[n] == "train"]
    test = [n for n in names if folders[n] == "test"] or train
    planted: dict[str, str] = {}

    def put(fault: str, folder: str, grade: str, data: bytes, stem: str) -> None:
        rel = f"training_files/{folder}/{grade}/{stem}.jpg"
        _write(root / rel, data)
        planted[fault] = rel

    if "corrupt" in faults:
        put("corrupt", train[0], "good", b"\xff\xd8\xff\xe0 not a whole jpeg", "corrupt")
    if "small" in faults:
        put("small", train[0], "good", _jpeg(synthetic_image(0.8, rng, (160, 120))), "small")
    if "profile" in faults:
        from PIL import ImageCms

        profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # a real non-sRGB profile
        put("profile", train[0], "good", _jpeg(synthetic_image(0.8, rng, size), icc_profile=profile), "adobe")
    if "duplicate" in faults or "near_duplicate" in faults:
        source = sorted((files / train[0] / "good").glob("shoot_*.jpg"))[0]
        if "duplicate" in faults:
            put("duplicate", test[-1], "good", source.read_bytes(), "copy_of_train")
        if "near_duplicate" in faults:
            near = Image.open(source).convert("RGB").resize((size[0] - 8, size[1] - 6))
            put(
                "near_duplicate",
                test[-1],
                "good",
                _jpeg(ImageEnhance.Brightness(near).enhance(1.04)),
                "resized",
            )
    if "empty_bad" in faults:
        folder = train[-1]
        for f in (files / folder / "bad").glob("*.jpg"):
            f.unlink()
        planted["empty_bad"] = f"training_files/{folder}/bad"
    if "unlisted" in faults:
        planted["unlisted"] = train[0]
    return planted
