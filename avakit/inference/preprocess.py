"""Scoring-time image preparation in Pillow + numpy only (no torch), for `predict` and ONNX.

A photo goes through what its training samples went through: `shard`'s decoding (EXIF, any mode
to RGB, shorter side to the manifest's short side, JPEG at its quality), then the run's eval
transform (resize shorter side, center crop) and normalisation. The values come from the
checkpoint, so `predict` never drifts from `evaluate`; the torch and ONNX paths share this code.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from avakit.config import TransformConfig, config_from_dict
from avakit.dataset.images import IMAGE_SUFFIXES, SUFFIX_LIST, check_preprocessing, encode_jpeg, load_rgb
from avakit.errors import AvakitError


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything needed to turn a photo file into the model's input."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    short_side: int | None = None  # shard's stored short side (None: no shard step known)
    quality: int | None = None  # shard's JPEG quality (None: no JPEG round trip)

    @classmethod
    def from_config(cls, transform: TransformConfig, preprocessing: dict) -> PreprocessSpec:
        """From a validated transform config and a `check_preprocessing` result."""
        mean, std = transform.normalize_mean, transform.normalize_std
        return cls(
            transform.resize_size,
            transform.crop_size,
            (mean[0], mean[1], mean[2]),
            (std[0], std[1], std[2]),
            preprocessing["short_side"],
            preprocessing["quality"],
        )

    @classmethod
    def from_checkpoint(cls, ckpt: dict, where: str = "checkpoint") -> PreprocessSpec:
        """From a checkpoint's config and the manifest settings it recorded, both validated here
        (the same rules as `checkpoint.check_checkpoint`; `where` names the file in errors)."""
        if not isinstance(ckpt, dict) or "config" not in ckpt:
            raise AvakitError(f"{where}: not an avakit checkpoint (no config)")
        transform = config_from_dict(ckpt["config"], where).transform
        return cls.from_config(transform, check_preprocessing(ckpt.get("preprocessing"), where))


def find_images(inputs: Iterable[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files to score: given files as they are, folders walked for image suffixes (any case).

    Returns (paths, problems): problems are inputs that do not exist and folders without any
    image file. When there is nothing at all to score, raises AvakitError (one line naming the
    inputs), before any model is loaded.
    """
    paths: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append((item, f"folder holds no image files ({SUFFIX_LIST})"))
            paths += found
        elif item.is_file():
            paths.append(item)
        elif item.exists():  # a FIFO, socket or device: never opened (a FIFO would block)
            problems.append((item, "not a regular file or folder"))
        else:
            problems.append((item, "no such file or folder"))
    if not paths:
        raise AvakitError(
            "nothing to score: " + "; ".join(f"{p}: {why}" for p, why in problems)
            if problems
            else "nothing to score: give image files or folders"
        )
    return paths, problems


def _resize_short(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    if min(w, h) == size:
        return im
    # torchvision's Resize(int) rounding of the longer side
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    return im.resize(new, Image.Resampling.BILINEAR, reducing_gap=None)


def _center_crop(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))  # as torchvision
    return im.crop((left, top, left + size, top + size))


def prepare(path: Path, spec: PreprocessSpec) -> np.ndarray:
    """A photo file -> normalised float32 [3, crop, crop]. Raises imageio.ImageSkip."""
    im = load_rgb(Path(path), short_side=spec.short_side or spec.resize_size)
    if spec.quality is not None:
        im = Image.open(io.BytesIO(encode_jpeg(im, spec.quality))).convert("RGB")
    return prepare_image(im, spec)


def prepare_image(im: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """An RGB image already at shard size (a shard sample) -> normalised float32 [3, crop, crop]."""
    im = _center_crop(_resize_short(im.convert("RGB"), spec.resize_size), spec.crop_size)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
