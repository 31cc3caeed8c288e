"""Hand-crafted image-quality features, computed from the same pixels the backbone sees.

Five numbers per image, all vectorised over a batch of RGB images scaled 0..255:
brightness (mean luma), RMS contrast (std of luma), sharpness (log of 1 + the variance of the
Laplacian of luma), colourfulness (Hasler & Suesstrunk 2003) and mean HSV saturation.
`IQAFeatures` sits inside the model, so a head trained on cached CNN + IQA features still
scores raw photos (and exports to ONNX) with no extra code path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

IQA_NAMES = ("brightness", "contrast", "sharpness", "colourfulness", "saturation")
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))  # made per call: no device state


def iqa_features(rgb: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB in 0..255 (any dtype) -> [B, 5] float32, in IQA_NAMES order."""
    x = rgb.float()
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    brightness = luma.mean(dim=(1, 2)) / 255.0
    contrast = luma.std(dim=(1, 2)) / 255.0
    kernel = torch.tensor(LAPLACIAN, dtype=torch.float32, device=x.device).view(1, 1, 3, 3)
    lap = nn.functional.conv2d(luma.unsqueeze(1), kernel)
    sharpness = torch.log1p(lap.var(dim=(1, 2, 3)))
    rg, yb = r - g, 0.5 * (r + g) - b
    colourfulness = (
        torch.sqrt(rg.var(dim=(1, 2)) + yb.var(dim=(1, 2)))
        + 0.3 * torch.sqrt(rg.mean(dim=(1, 2)) ** 2 + yb.mean(dim=(1, 2)) ** 2)
    ) / 255.0
    high, low = x.amax(dim=1), x.amin(dim=1)
    saturation = ((high - low) / high.clamp_min(1.0)).mean(dim=(1, 2))
    return torch.stack([brightness, contrast, sharpness, colourfulness, saturation], dim=1)


class IQAFeatures(nn.Module):
    """Normalised model input -> standardised IQA features [B, 5].

    Undoes the input normalisation (mean/std of the transform), computes `iqa_features` and
    standardises them with the training cache's statistics (buffers, saved in checkpoints).
    """

    def __init__(self, normalize_mean: Sequence[float], normalize_std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(list(normalize_mean)).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("pixel_std", torch.tensor(list(normalize_std)).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("feature_mean", torch.zeros(len(IQA_NAMES)))
        self.register_buffer("feature_std", torch.ones(len(IQA_NAMES)))

    def standardise(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw IQA features -> zero mean, unit variance (training-cache statistics)."""
        return (raw - self.feature_mean) / self.feature_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised IQA features [B, 5] of a normalised batch, computed on its 0..255 RGB."""
        rgb = x.float() * self.pixel_std + self.pixel_mean
        return self.standardise(iqa_features(rgb))
