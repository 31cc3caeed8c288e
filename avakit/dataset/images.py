"""Opening any photo the way every avakit stage does: EXIF orientation, any mode to RGB, size guards.

`shard` and `predict` share this, so a photo is read the same way when it is sharded for
training and when it is scored later.

Memory per image is capped before any pixel is decoded: the file size, the header's pixel count,
aspect ratio and decoded size, and the size the image would be resized to are all checked on the
header alone; an image that fails one is an `ImageSkip` with its reason, never a crash or a
multi-GB allocation.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageMode, ImageOps

from avakit.config import QUALITY_RANGE, SHORT_SIDE_RANGE
from avakit.errors import AvakitError

# Pillow raises DecompressionBombError above 2x this; 89.5 Mpx is Pillow's warning threshold
# (256 MiB of RGB), which avakit treats as the limit.
MAX_PIXELS = 89_478_485
# Decoded bytes (bands x bytes per band) of one image: 256 MiB, what an RGB image at MAX_PIXELS
# takes; a 4-band (RGBA, CMYK) or 32-bit image must stay below 67 Mpx.
MAX_DECODED_BYTES = 256 * 2**20
MAX_FILE_BYTES = 200 * 10**6  # a larger file is skipped "too large" without being read
# Longer side / shorter side. Panoramas run to ~1:4..1:10; beyond 1:20 an image is a strip (a
# 1x300 px file would become 256x76800 px) and is skipped "bad aspect ratio".
MAX_ASPECT_RATIO = 20
JPEG_MAX_SIDE = 65_500  # libjpeg's limit: a larger resized image could not be stored
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.init()
# Every raster format Pillow reads, except EPS: decoding it runs Ghostscript, an external program.
FORMATS = tuple(sorted(f for f in Image.ID if f != "EPS"))
# What Pillow's decoders raise on a corrupt, crafted or unsupported file.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    NotImplementedError,
)
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # single band, more than 8 bits
_STRIP_PIXELS = 1 << 18  # 16/32-bit images are scaled to 8 bits this many pixels at a time


class ImageSkip(Exception):
    """An image that cannot be used; `reason` is one of avakit.dataset.ava.REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _scale_strip(strip: np.ndarray, top: float) -> np.ndarray:
    """Values 0..top -> 0..255, rounded half up and clipped (integer arithmetic for integers)."""
    if strip.dtype.kind == "f":
        return np.clip(strip.astype(np.float64) / top * 255.0 + 0.5, 0, 255)
    values = strip.astype(np.int64)
    if top == 255:
        return np.clip(values, 0, 255)
    # round(v / 65535 * 255) = round(v / 257) = floor((2v + 257) / 514), exactly
    return np.clip((2 * values + 257) // 514, 0, 255)


def _to_8bit(im: Image.Image) -> Image.Image:
    """A 16-bit or 32-bit single-band image -> L, scaled (not clipped) to 8 bits.

    Works a strip of rows at a time, so no full-size wide temporary (float64 would be 8 bytes a
    pixel: 2.8 GB for a 9400x9400 16-bit PNG) is ever made; only the 1-byte result is full size.
    """
    if im.mode.startswith("I;16"):
        top = 65535.0
    else:  # I or F (Pillow has no extrema for the I;16 variants)
        hi = im.getextrema()[1]
        top = 1.0 if im.mode == "F" and hi <= 1.0 else 65535.0 if hi > 255 else 255.0
    w, h = im.size
    out = np.empty((h, w), np.uint8)
    step = max(1, _STRIP_PIXELS // max(1, w))
    for y in range(0, h, step):
        out[y : y + step] = _scale_strip(np.asarray(im.crop((0, y, w, min(h, y + step)))), top)
    return Image.fromarray(out)


def _resize(im: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    if size is None or size == im.size:
        return im
    return im.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)


def to_rgb(im: Image.Image, size: tuple[int, int] | None = None) -> Image.Image:
    """Convert any Pillow mode (L, LA, P, RGBA, CMYK, I;16, I, F, 1) to RGB, resized to `size`.

    Transparent pixels are composited onto white; 16-bit and 32-bit images are scaled to 8 bits
    rather than clipped. A single-band image is resized before it is expanded to three bands
    (the same pixels as resizing the RGB image, at a third of the memory).
    """
    if im.mode in _WIDE_MODES:
        im = _to_8bit(im)
    if im.mode == "1":
        im = im.convert("L")
    if im.mode == "L":
        return _resize(im, size).convert("RGB")
    if im.mode == "RGB":
        return _resize(im, size)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return _resize(im.convert("RGB"), size)


def _target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def check_shape(width: int, height: int, short_side: int | None = None) -> None:
    """Raise ImageSkip for a width x height (read from the header) that cannot be used.

    Refused: a side of 0 px or an aspect ratio beyond 1:MAX_ASPECT_RATIO ("bad aspect ratio"),
    and, with `short_side`, a resized image above MAX_PIXELS or longer than JPEG allows
    ("too large").
    """
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageSkip("bad aspect ratio", f"{width}x{height} px, beyond 1:{MAX_ASPECT_RATIO}")
    if short_side is None:
        return
    w, h = _target_size(width, height, short_side)
    if w * h > MAX_PIXELS or max(w, h) > JPEG_MAX_SIDE:
        raise ImageSkip(
            "too large",
            f"{width}x{height} px would be resized to {w}x{h} px, above "
            f"{MAX_PIXELS} px or {JPEG_MAX_SIDE} px a side",
        )


def decoded_bytes(im: Image.Image) -> int:
    """Bytes of the decoded pixels of `im` (an opened, not yet loaded image): bands x band size."""
    try:
        mode = ImageMode.getmode(im.mode)
        per_pixel = len(mode.bands) * np.dtype(mode.typestr).itemsize
    except (KeyError, TypeError):  # a mode Pillow has no descriptor for: assume the widest
        per_pixel = 16
    return im.size[0] * im.size[1] * per_pixel


@contextlib.contextmanager
def _opened(source: Path | bytes) -> Iterator[Image.Image]:
    """Open the header only (file checks first); a file is closed when the block ends."""
    with contextlib.ExitStack() as stack:
        if isinstance(source, Path):
            if not source.is_file():
                raise ImageSkip("missing", "no such file")
            try:
                fp = stack.enter_context(source.open("rb"))
            except OSError as e:
                raise ImageSkip("unreadable", e.strerror or str(e)) from None
            size = os.fstat(fp.fileno()).st_size
        else:
            fp, size = io.BytesIO(source), len(source)
        if size == 0:
            raise ImageSkip("empty", "file has 0 bytes")
        if size > MAX_FILE_BYTES:
            raise ImageSkip("too large", f"file has {size} bytes, above {MAX_FILE_BYTES}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(fp, formats=FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageSkip("too large", str(e)) from None
        except Image.UnidentifiedImageError:
            raise ImageSkip("not an image", "unrecognised file format") from None
        except _DECODE_ERRORS as e:
            raise ImageSkip("truncated/undecodable", str(e)) from None
        yield im


def load_rgb(source: Path | bytes, short_side: int | None = None) -> Image.Image:
    """Open a photo as RGB with EXIF orientation applied; optionally resized to `short_side`.

    `source` is a file (read only once its header is known good) or its bytes. Before any
    pixel is decoded, the file size, pixel count, aspect ratio, decoded size and resized size
    are checked (see `check_shape`). With `short_side`, JPEGs are decoded with DCT scaling
    (Pillow's draft mode) so a large image is never fully decoded; the DCT scaling does the big
    reduction with its own anti-aliasing, and an antialiased bilinear resize (torchvision's
    default filter) the last step of less than 2x. Raises ImageSkip.
    """
    # Pillow's UserWarnings are notes on corrupt metadata it skipped: the image itself is fine.
    with warnings.catch_warnings(action="ignore", category=UserWarning), _opened(source) as im:
        check_shape(*im.size, short_side)
        try:
            if short_side is not None and im.format == "JPEG":
                # Draft picks the largest DCT scaling that keeps both sides >= the request.
                im.draft("RGB", _target_size(*im.size, short_side))
            if decoded_bytes(im) > MAX_DECODED_BYTES:
                raise ImageSkip(
                    "too large",
                    f"{im.size[0]}x{im.size[1]} px in mode {im.mode} decode to "
                    f"{decoded_bytes(im)} bytes, above {MAX_DECODED_BYTES}",
                )
            im.load()
            with contextlib.suppress(Exception):  # a broken EXIF block must not lose the image
                ImageOps.exif_transpose(im, in_place=True)
            return to_rgb(im, None if short_side is None else _target_size(*im.size, short_side))
        except _DECODE_ERRORS as e:
            raise ImageSkip("truncated/undecodable", str(e)) from None


def encode_jpeg(im: Image.Image, quality: int) -> bytes:
    """Encode an RGB image as JPEG bytes (deterministic for the same pixels and quality)."""
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# The preprocessing a shard records (manifest, checkpoint, ONNX metadata all carry it).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
SUFFIX_LIST = ", ".join(sorted(s[1:] for s in IMAGE_SUFFIXES))


def _int_in(value: object, bounds: tuple[int, int], key: str, where: str) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and bounds[0] <= value <= bounds[1]):
        raise AvakitError(
            f"{where}: {key} must be an integer in {bounds[0]}..{bounds[1]}, got {repr(value)[:60]}"
        )
    return value


def check_preprocessing(value: object, where: str, prefix: str = "preprocessing.") -> dict:
    """Validate a `preprocessing` block read back from a manifest, checkpoint or ONNX file.

    Returns {"short_side": int | None, "quality": int | None}; `where` names the file (and key,
    `prefix` + name) in the one-line AvakitError raised for a value of the wrong type or range.
    """
    if value is None:
        return {"short_side": None, "quality": None}
    if not isinstance(value, dict):
        raise AvakitError(f"{where}: {prefix.rstrip('.')} must be a mapping, got {type(value).__name__}")
    out = {}
    for key, bounds in (("short_side", SHORT_SIDE_RANGE), ("quality", QUALITY_RANGE)):
        item = value.get(key)
        out[key] = None if item is None else _int_in(item, bounds, prefix + key, where)
    return out
