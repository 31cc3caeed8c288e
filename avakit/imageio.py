"""Opening any photo the way every avakit stage does: EXIF orientation, any mode to RGB, bomb guard.

`shard` and `predict` share this, so a photo is read the same way when it is sharded for
training and when it is scored later.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

# Pillow raises DecompressionBombError above 2x this; 179 Mpx is Pillow's own default.
MAX_PIXELS = 89_478_485
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageSkip(Exception):
    """An image that cannot be used; `reason` is one of avakit.ava.REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode (L, LA, P, RGBA, CMYK, I;16, I, F, 1) to RGB.

    Transparent pixels are composited onto white; 16-bit and 32-bit images are scaled to 8 bits
    rather than clipped.
    """
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if im.mode == "F" and arr.max() <= 1.0:
            top = 1.0
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")


def _target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def load_rgb(source: Path | bytes, short_side: int | None = None) -> Image.Image:
    """Open a photo as RGB with EXIF orientation applied; optionally resized to `short_side`.

    With `short_side`, JPEGs are decoded with DCT scaling (Pillow's draft mode) so a large
    image is never fully decoded; the DCT scaling does the big reduction with its own
    anti-aliasing, and an antialiased bilinear resize (torchvision's default filter) the last
    step of less than 2x. Raises ImageSkip.
    """
    if isinstance(source, Path):
        if not source.is_file():
            raise ImageSkip("missing", "no such file")
        if source.stat().st_size == 0:
            raise ImageSkip("empty", "file has 0 bytes")
        data = source.read_bytes()
    else:
        data = source
        if not data:
            raise ImageSkip("empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if short_side is not None and im.format == "JPEG":
                # Draft picks the largest DCT scaling that keeps both sides >= the request.
                im.draft("RGB", _target_size(*im.size, short_side))
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageSkip("too large", str(e)) from None
    except Image.UnidentifiedImageError:
        raise ImageSkip("not an image", "unrecognised file format") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageSkip("truncated/undecodable", str(e)) from None
    with contextlib.suppress(Exception):  # a broken EXIF block must not lose the image
        im = ImageOps.exif_transpose(im)
    im = to_rgb(im)
    if short_side is not None:
        size = _target_size(*im.size, short_side)
        if size != im.size:
            im = im.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return im


def encode_jpeg(im: Image.Image, quality: int) -> bytes:
    """Encode an RGB image as JPEG bytes (deterministic for the same pixels and quality)."""
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
