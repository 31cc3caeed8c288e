"""Shared transform presets (like torchvision's references): one place for train and eval.

Presets work on uint8 CHW tensors and return uint8 crops, so DataLoader workers ship 4x less
data; `Normalize` turns a uint8 batch into the normalised float batch on the training device.
`train`, `evaluate` and `features` use `EvalPreset` + `Normalize` on shard samples; `predict` and
`export` start from photo files and use `avakit.inference.preprocess` (Pillow + numpy, no torch), which
follows the same steps with the values stored in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from avakit.config import TTA_MODES, TransformConfig


def _resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side to `size` (antialiased bilinear); shard images already at size pass as they are."""
    return img if min(img.shape[-2:]) == size else F.resize(img, size, antialias=True)


def _center(length: int, crop: int) -> int:
    return int(round((length - crop) / 2.0))  # torchvision's CenterCrop offset


class TrainPreset(nn.Module):
    """Resize shorter side, random (or center) crop, optional flip and colour jitter.

    The same operations as torchvision's Resize / RandomCrop / RandomHorizontalFlip /
    ColorJitter, written with its functional API and slicing: per image, the transform-class
    dispatch cost more than the crop itself (see benchmarks/bench_loader.py).
    """

    def __init__(self, cfg: TransformConfig) -> None:
        super().__init__()
        aug, jitter = cfg.augmentation, cfg.augmentation.color_jitter
        self.resize_size, self.crop_size = cfg.resize_size, cfg.crop_size
        self.random_crop, self.flip = aug.random_crop, aug.horizontal_flip
        self.jitter = (
            v2.ColorJitter(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
            if any((jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue))
            else None
        )

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Resize, crop (random or center), maybe flip and colour-jitter one uint8 image."""
        img = _resize(img, self.resize_size)
        (h, w), c = img.shape[-2:], self.crop_size
        if self.random_crop:
            top, left = int(torch.randint(0, h - c + 1, ())), int(torch.randint(0, w - c + 1, ()))
        else:
            top, left = _center(h, c), _center(w, c)
        img = img[..., top : top + c, left : left + c]
        if self.flip and float(torch.rand(())) < 0.5:
            img = img.flip(-1)
        return self.jitter(img) if self.jitter is not None else img


TTA_VIEWS = dict(zip(TTA_MODES, (1, 2, 5), strict=True))


class EvalPreset(nn.Module):
    """Resize shorter side to `resize_size`, center crop `crop_size` (deterministic).

    Test-time augmentation: `flip` returns [2, 3, c, c] (crop and its mirror), `five-crop`
    [5, 3, c, c] (corners and center); `evaluate` averages the model's outputs over the views.
    """

    def __init__(self, cfg: TransformConfig, tta: str = "none") -> None:
        super().__init__()
        if tta not in TTA_VIEWS:
            from avakit.errors import AvakitError

            raise AvakitError(f"tta must be one of {', '.join(TTA_VIEWS)}, got {tta!r}")
        self.tta, self.views = tta, TTA_VIEWS[tta]
        self.resize_size, self.crop_size = cfg.resize_size, cfg.crop_size

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Resize and center-crop one uint8 image; with TTA, its views stacked."""
        img, c = _resize(img, self.resize_size), self.crop_size
        if self.tta == "five-crop":
            return torch.stack(list(F.five_crop(img, [c, c])))
        (h, w) = img.shape[-2:]
        top, left = _center(h, c), _center(w, c)
        out = img[..., top : top + c, left : left + c]
        return torch.stack([out, out.flip(-1)]) if self.tta == "flip" else out


class Normalize(nn.Module):
    """uint8 NCHW batch -> float, scaled to [0, 1], normalised per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std).view(1, 3, 1, 1) * 255.0), persistent=False)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """The batch as float, minus the mean, times 1/std (scaled for 0..255 input)."""
        return batch.float().sub_(self.mean).mul_(self.inv_std)  # one float temporary, in place
