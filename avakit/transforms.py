"""Shared transform presets (like torchvision's references): one place for train and eval.

Presets work on uint8 CHW tensors and return uint8 crops, so DataLoader workers ship 4x less
data; `Normalize` turns a uint8 batch into the normalised float batch on the training device.
`train`, `evaluate` and `features` use `EvalPreset` + `Normalize` on shard samples; `predict` and
`export` start from photo files and use `avakit.preprocess` (Pillow + numpy, no torch), which
follows the same steps with the values stored in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.transforms import v2

from avakit.config import TransformConfig


class TrainPreset(nn.Module):
    """Resize shorter side, random (or center) crop, optional flip and colour jitter."""

    def __init__(self, cfg: TransformConfig) -> None:
        super().__init__()
        aug = cfg.augmentation
        steps: list[nn.Module] = [v2.Resize(cfg.resize_size, antialias=True)]
        crop = v2.RandomCrop if aug.random_crop else v2.CenterCrop
        steps.append(crop(cfg.crop_size))
        if aug.horizontal_flip:
            steps.append(v2.RandomHorizontalFlip())
        jitter = aug.color_jitter
        if any((jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)):
            steps.append(v2.ColorJitter(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue))
        self.transforms = v2.Compose(steps)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.transforms(img)


TTA_VIEWS = {"none": 1, "flip": 2, "five-crop": 5}


class EvalPreset(nn.Module):
    """Resize shorter side to `resize_size`, center crop `crop_size` (deterministic).

    Test-time augmentation: `flip` returns [2, 3, c, c] (crop and its mirror), `five-crop`
    [5, 3, c, c] (corners and center); `evaluate` averages the model's outputs over the views.
    """

    def __init__(self, cfg: TransformConfig, tta: str = "none") -> None:
        super().__init__()
        if tta not in TTA_VIEWS:
            from avakit.errors import AvakitError

            raise AvakitError(f"--tta must be one of {', '.join(TTA_VIEWS)}, got {tta!r}")
        self.tta, self.views = tta, TTA_VIEWS[tta]
        self.resize = v2.Resize(cfg.resize_size, antialias=True)
        self.crop = v2.FiveCrop(cfg.crop_size) if tta == "five-crop" else v2.CenterCrop(cfg.crop_size)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        out = self.crop(self.resize(img))
        if self.tta == "flip":
            return torch.stack([out, out.flip(-1)])
        if self.tta == "five-crop":
            return torch.stack(list(out))
        return out


class Normalize(nn.Module):
    """uint8 NCHW batch -> float, scaled to [0, 1], normalised per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std).view(1, 3, 1, 1) * 255.0),
                             persistent=False)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch.float() - self.mean) * self.inv_std
