"""How the photos of one group are cropped and augmented for the pairwise task (`pairs.view`).

`PairView` (full, same_crop) gives every photo of a series the same geometry, since people
judged the series' photos against each other; `PhotoView` (crop) treats each photo on its own,
as culling folders need: a centre crop, and in training a flip, brightness/contrast jitter and a
small rotation per photo. Augmenting only the good photo of a pair (`pairs.augment_anchor_only`)
leaks the label (rotation corners and jitter then mark the positives); by default every photo is
augmented alike.
"""

from __future__ import annotations

import random

import torch
from torchvision.transforms.v2 import functional as TF


class PairView:
    """The same geometry for every photo of a series: the whole frame resized to crop x crop
    (`full`), or the shorter side to `resize` and one crop at the same relative place (`same_crop`);
    in training one flip decision for the whole series. No colour jitter: brightness and contrast
    are what people judged."""

    def __init__(self, view: str, resize: int, crop: int, train: bool, flip: bool) -> None:
        self.view, self.resize, self.crop, self.train, self.flip = view, resize, crop, train, flip

    def __call__(self, images: list[torch.Tensor], grades: list[str] | None = None) -> torch.Tensor:
        """uint8 images [3, H, W] of one series -> uint8 [M, 3, crop, crop] (`grades` unused)."""
        c = self.crop
        fy, fx = (random.random(), random.random()) if self.train else (0.5, 0.5)
        out = []
        for img in images:
            if self.view == "full":
                img = TF.resize(img, [c, c], antialias=True)
            else:
                img = (
                    TF.resize(img, self.resize, antialias=True) if min(img.shape[-2:]) != self.resize else img
                )
                h, w = img.shape[-2:]
                top, left = int(round((h - c) * fy)), int(round((w - c) * fx))
                img = img[..., top : top + c, left : left + c]
            out.append(img)
        batch = torch.stack(out)
        return batch.flip(-1) if self.train and self.flip and random.random() < 0.5 else batch


class PhotoView:
    """Each photo on its own: shorter side to `resize`, centre crop; in training a flip (p 0.5),
    brightness and contrast factors in 1 +- jitter, and a rotation within +- `rotation` degrees,
    drawn per photo (for good photos only with `anchor_only`)."""

    def __init__(
        self,
        resize: int,
        crop: int,
        train: bool,
        flip: bool,
        jitter: tuple[float, float],
        rotation: float,
        anchor_only: bool = False,
    ) -> None:
        self.resize, self.crop, self.train, self.flip = resize, crop, train, flip
        self.jitter, self.rotation, self.anchor_only = jitter, rotation, anchor_only

    def __call__(self, images: list[torch.Tensor], grades: list[str] | None = None) -> torch.Tensor:
        """uint8 images [3, H, W] of one group -> uint8 [M, 3, crop, crop]."""
        out = []
        for k, img in enumerate(images):
            img = TF.resize(img, self.resize, antialias=True) if min(img.shape[-2:]) != self.resize else img
            if self.train and not (self.anchor_only and grades and grades[k] != "good"):
                img = self._augment(img)
            out.append(TF.center_crop(img, [self.crop, self.crop]))
        return torch.stack(out)

    def _augment(self, img: torch.Tensor) -> torch.Tensor:
        if self.flip and random.random() < 0.5:
            img = img.flip(-1)
        brightness, contrast = self.jitter
        if brightness:
            img = TF.adjust_brightness(img, random.uniform(1 - brightness, 1 + brightness))
        if contrast:
            img = TF.adjust_contrast(img, random.uniform(1 - contrast, 1 + contrast))
        if self.rotation:
            img = TF.rotate(img, random.uniform(-self.rotation, self.rotation))
        return img


def make_view(cfg, train: bool) -> PairView | PhotoView:
    """The view `cfg.pairs.view` asks for, with the config's transform settings."""
    t, aug = cfg.transform, cfg.transform.augmentation
    if cfg.pairs.view == "crop":
        jitter = (aug.color_jitter.brightness, aug.color_jitter.contrast)
        return PhotoView(
            t.resize_size,
            t.crop_size,
            train,
            aug.horizontal_flip,
            jitter,
            aug.rotation,
            cfg.pairs.augment_anchor_only,
        )
    return PairView(cfg.pairs.view, t.resize_size, t.crop_size, train, aug.horizontal_flip)
