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
from torchvision import transforms as T
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from avakit.config import TTA_MODES, TransformConfig

RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's aspect-ratio bounds (torchvision's default)


def _resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side to `size` (antialiased bilinear); shard images already at size pass as they are."""
    return img if min(img.shape[-2:]) == size else F.resize(img, size, antialias=True)


def _center(length: int, crop: int) -> int:
    return int(round((length - crop) / 2.0))  # torchvision's CenterCrop offset


class TrainPreset(nn.Module):
    """Resize shorter side, random (or center) crop, optional flip, colour jitter and erasing.

    The same operations as torchvision's Resize / RandomCrop (or RandomResizedCrop) /
    RandomHorizontalFlip / ColorJitter / RandomErasing, written with its functional API and
    slicing: per image, the transform-class dispatch cost more than the crop itself (see
    benchmarks/bench_loader.py). Takes one image [3, H, W] or a stack [T, 3, H, W] (a clip's
    frames): every random parameter is drawn once per call, so a stack's frames share the crop
    box, flip, jitter factors and erased box.
    """

    def __init__(self, cfg: TransformConfig) -> None:
        super().__init__()
        aug, jitter = cfg.augmentation, cfg.augmentation.color_jitter
        self.resize_size, self.crop_size = cfg.resize_size, cfg.crop_size
        self.random_crop, self.flip = aug.random_crop, aug.horizontal_flip
        self.crop_scale = tuple(aug.crop_scale) if aug.crop_scale is not None else None
        self.jitter = (
            v2.ColorJitter(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
            if any((jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue))
            else None
        )
        erasing = aug.random_erasing
        self.erase_p = erasing.p
        # the patch is the normalisation mean in uint8, so after Normalize it is 0 (as torchvision's
        # references erase normalised tensors with 0)
        fill = [float(round(m * 255)) for m in cfg.normalize_mean]
        self.erasing = v2.RandomErasing(1.0, tuple(erasing.scale), value=fill) if erasing.p > 0 else None

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Crop (resized-random, random or center), maybe flip, jitter and erase uint8 [3|T,3, H, W]."""
        c = self.crop_size
        if self.crop_scale is not None:
            top, left, h, w = T.RandomResizedCrop.get_params(img, list(self.crop_scale), list(RRC_RATIO))
            img = F.resized_crop(img, top, left, h, w, [c, c], antialias=True)
        else:
            img = _resize(img, self.resize_size)
            (h, w) = img.shape[-2:]
            if self.random_crop:
                top, left = int(torch.randint(0, h - c + 1, ())), int(torch.randint(0, w - c + 1, ()))
            else:
                top, left = _center(h, c), _center(w, c)
            img = img[..., top : top + c, left : left + c]
        if self.flip and float(torch.rand(())) < 0.5:
            img = img.flip(-1)
        if self.jitter is not None:
            img = self.jitter(img)
        if self.erasing is not None and float(torch.rand(1)) < self.erase_p:
            img = _erase(self.erasing, img)
        return img


def _erase(erasing: v2.RandomErasing, img: torch.Tensor) -> torch.Tensor:
    """v2.RandomErasing's box (one draw, 10 tries) erased on `img` (a stack: the same box on all)."""
    make_params = getattr(erasing, "make_params", None) or erasing._get_params  # torchvision < 0.21
    params = make_params([img])
    if params["v"] is None:  # no box fitted in 10 tries: torchvision leaves the image as it is
        return img
    return F.erase(img, params["i"], params["j"], params["h"], params["w"], params["v"].to(img.dtype))


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
