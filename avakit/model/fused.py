"""Frozen feature sources for the pairwise task's frozen mode: extract, concatenate, standardise.

`SOURCES` maps a name (avakit.scores.FEATURE_SOURCES) to a `SourceSpec`: pooled ResNet-50
layer4 (2048) or layer3 (1024), VGG16 fc7 (4096), the hand-crafted IQA features
(avakit.model.iqa, 5) and the CLIP ViT-B/32 image embedding (512, open_clip, lazily imported).
`FusedSources` runs the chosen extractors, all frozen and always in eval mode, on a batch as
training feeds it (normalised with the transform's mean/std) and concatenates their raw outputs
in the order asked; `slices` says where each source sits. `SourceStandardiser` then gives each
source the same total variance before an MLP is trained on top (fitted on the training features,
its buffers travel in checkpoints).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from avakit.errors import AvakitError
from avakit.model.iqa import IQA_NAMES, IQAFeatures
from avakit.model.network import BACKBONES, build_model

Norm = Sequence[float]
Builder = Callable[[bool, "str | None", Norm, Norm], nn.Module]  # (pretrained, weights, mean, std)

# OpenAI's ViT-B/32 uses QuickGELU: the "-quickgelu" config is the architecture its weights need
# (same state-dict keys as "ViT-B-32", so a mismatch would load silently and compute wrong features)
CLIP_MODEL = "ViT-B-32-quickgelu"
CLIP_PRETRAINED = "openai"
CLIP_DIM = 512
CLIP_MISSING = "features.sources clip needs open-clip-torch: pip install 'avakit[clip]'"
CLIP_SAVE_HINT = (
    "save one with torch.save(open_clip.create_model('ViT-B-32-quickgelu', pretrained='openai')"
    ".state_dict(), PATH)"
)
STD_FLOOR = 1e-6  # a feature whose training std is at most this is constant: it gets weight 0


@dataclass(frozen=True)
class SourceSpec:
    """One frozen feature extractor: its output width, which `weights` entry it reads
    (resnet50_layer3 reads resnet50's torchvision state dict; None: it has no weights) and
    how to build it."""

    name: str
    dim: int
    weights_key: str | None
    description: str
    build: Builder


def _torchvision(backbone: str, layer: str) -> Builder:
    """A builder for a registered torchvision backbone's pooled features (network.build_model)."""

    def build(pretrained: bool, weights: str | None, mean: Norm, std: Norm) -> nn.Module:
        try:
            model = build_model(
                backbone, pretrained=pretrained, weights_path=weights, freeze="full", feature_layer=layer
            )
        except AvakitError as exc:  # name the source the weights were for
            raise AvakitError(f"features.sources {backbone}: {exc}") from None
        return model.backbone

    return build


def _iqa(pretrained: bool, weights: str | None, mean: Norm, std: Norm) -> nn.Module:
    return IQAFeatures(mean, std)  # its standardising buffers stay identity: the raw features


def _clip(pretrained: bool, weights: str | None, mean: Norm, std: Norm) -> nn.Module:
    return ClipImage(pretrained=pretrained, weights_path=weights, normalize_mean=mean, normalize_std=std)


SOURCES: dict[str, SourceSpec] = {
    "resnet50": SourceSpec(
        "resnet50",
        BACKBONES["resnet50"].feature_dim,
        "resnet50",
        "ResNet-50 pooled layer4",
        _torchvision("resnet50", "final"),
    ),
    "resnet50_layer3": SourceSpec(
        "resnet50_layer3",
        BACKBONES["resnet50"].layer3_dim or 0,
        "resnet50",
        "ResNet-50 pooled layer3",
        _torchvision("resnet50", "layer3"),
    ),
    "vgg16": SourceSpec(
        "vgg16", BACKBONES["vgg16"].feature_dim, "vgg16", "VGG16 fc7", _torchvision("vgg16", "final")
    ),
    "iqa": SourceSpec("iqa", len(IQA_NAMES), None, "IQA: " + ", ".join(IQA_NAMES), _iqa),
    "clip": SourceSpec("clip", CLIP_DIM, "clip", "CLIP ViT-B/32 image embedding", _clip),
}
WEIGHT_KEYS: tuple[str, ...] = tuple(dict.fromkeys(s.weights_key for s in SOURCES.values() if s.weights_key))


def _import_open_clip() -> ModuleType:
    try:
        return importlib.import_module("open_clip")
    except ImportError:
        raise AvakitError(CLIP_MISSING) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:200]}" if text else exc.__class__.__name__


def _clip_state(file: Path) -> dict[str, torch.Tensor]:
    """The visual tower's state dict from a local open_clip checkpoint (full model or visual only)."""
    if not file.is_file():
        raise AvakitError(f"features.clip_weights: file not found: {file}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file (also OpenAI's TorchScript archive) is a user error
        raise AvakitError(
            f"features.clip_weights: cannot read {file} as a state dict ({_first_line(exc)}); "
            + CLIP_SAVE_HINT
        ) from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]  # an open_clip training checkpoint
    if not (isinstance(state, Mapping) and state and all(isinstance(k, str) for k in state)):
        raise AvakitError(f"features.clip_weights: {file} does not hold a state dict; {CLIP_SAVE_HINT}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):
        state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    return state


def _load_clip_visual(visual: nn.Module, state: Mapping[str, torch.Tensor], file: Path) -> None:
    """Load `state` (read from `file`) into the visual tower, strictly; AvakitError naming the file."""
    expected = visual.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = sorted(
        k
        for k in set(expected) & set(state)
        if not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:
        raise AvakitError(
            f"features.clip_weights: {file} does not match open_clip {CLIP_MODEL}: {len(missing)} missing "
            f"keys {missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}, "
            f"{len(shapes)} of another shape {shapes[:3]}"
        )
    visual.load_state_dict(state, strict=True)


def _clip_visual(pretrained: bool, weights_path: str | None) -> nn.Module:
    """open_clip's ViT-B/32 image tower: from `weights_path`, OpenAI's weights (download) or random."""
    open_clip = _import_open_clip()
    file = None if weights_path is None else Path(weights_path)
    state = None if file is None else _clip_state(file)  # a bad file fails before the model is built
    if pretrained and weights_path is None:
        try:
            model = open_clip.create_model(CLIP_MODEL, pretrained=CLIP_PRETRAINED)
        except Exception as exc:  # open_clip downloads on first use; offline that fails in many ways
            raise AvakitError(
                "features.sources clip: could not fetch OpenAI's CLIP ViT-B/32 weights "
                f"({_first_line(exc)}); "
                "offline, set features.clip_weights to a local open_clip state dict or model.pretrained=false"
            ) from None
    else:
        model = open_clip.create_model(CLIP_MODEL, pretrained=None)
    visual = model.visual  # the text tower is dropped
    if file is not None and state is not None:
        _load_clip_visual(visual, state, file)
    return visual


class ClipImage(nn.Module):
    """CLIP image embedding [B, 512] of a batch normalised for training.

    Undoes the training normalisation, applies CLIP's own (open_clip's OPENAI_DATASET_MEAN/STD;
    one affine map per channel) and resizes to CLIP's 224x224 when the crop is another size
    (plain bilinear, so the model exports to ONNX at opset 17).
    """

    def __init__(
        self, *, pretrained: bool, weights_path: str | None, normalize_mean: Norm, normalize_std: Norm
    ) -> None:
        super().__init__()
        self.visual = _clip_visual(pretrained, weights_path)
        open_clip = _import_open_clip()
        clip_mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        clip_std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        mean = torch.tensor([float(v) for v in normalize_mean]).view(1, 3, 1, 1)
        std = torch.tensor([float(v) for v in normalize_std]).view(1, 3, 1, 1)
        # x01 = x * std + mean; clip input = (x01 - clip_mean) / clip_std = x * gain + bias
        self.register_buffer("gain", std / clip_std)
        self.register_buffer("bias", (mean - clip_mean) / clip_std)
        size = getattr(self.visual, "image_size", (224, 224))
        self.size = (int(size[0]), int(size[1])) if isinstance(size, Sequence) else (int(size), int(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] training-normalised -> [B, 512] CLIP image embedding (not L2-normalised)."""
        x = x.float() * self.gain + self.bias
        if tuple(x.shape[-2:]) != self.size:
            x = nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        if not torch.onnx.is_in_onnx_export():
            return self.visual(x)
        fast = torch.backends.mha.get_fastpath_enabled()  # its fused attention op has no ONNX form
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return self.visual(x)
        finally:
            torch.backends.mha.set_fastpath_enabled(fast)


def _check_sources(sources: Sequence[str], weights: Mapping[str, str | None]) -> list[str]:
    names = list(sources)
    if not names:
        raise AvakitError(f"features.sources: name at least one of {', '.join(SOURCES)}")
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise AvakitError(f"features.sources: unknown source {unknown[0]!r}; allowed: {', '.join(SOURCES)}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise AvakitError(f"features.sources: {dupes[0]!r} is listed more than once")
    bad = [k for k in weights if k not in WEIGHT_KEYS]
    if bad:
        raise AvakitError(
            f"feature weights: unknown source {bad[0]!r}; weights go to {', '.join(WEIGHT_KEYS)}"
        )
    return names


class FusedSources(nn.Module):
    """Frozen feature extractors run on one batch, their raw features concatenated [B, dim].

    Input: the batch as training feeds it, [B, 3, H, W] normalised with `normalize_mean/std`.
    Output columns follow `sources`; `slices[name] = (start, stop)`. `weights[key]` is a local
    file per `SourceSpec.weights_key` (a torchvision state dict for resnet50 / vgg16, an open_clip
    state dict for clip); it takes precedence over `pretrained` (the libraries' downloads).
    Every parameter is frozen and the module stays in eval mode under `train()`.
    """

    def __init__(
        self,
        sources: Sequence[str],
        *,
        pretrained: bool,
        weights: Mapping[str, str | None] | None = None,
        normalize_mean: Norm,
        normalize_std: Norm,
    ) -> None:
        super().__init__()
        weights = dict(weights or {})
        names = _check_sources(sources, weights)
        self.sources: tuple[str, ...] = tuple(names)
        self.extractors = nn.ModuleDict()
        self.slices: dict[str, tuple[int, int]] = {}
        start = 0
        for name in names:
            spec = SOURCES[name]
            path = weights.get(spec.weights_key) if spec.weights_key else None
            self.extractors[name] = spec.build(pretrained, path, normalize_mean, normalize_std)
            self.slices[name] = (start, start + spec.dim)
            start += spec.dim
        self.dim = start
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FusedSources:
        """Always eval mode: frozen BatchNorm statistics and no dropout, whatever `mode` says."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw concatenated features [B, dim] (float32), in the order of `sources`."""
        with torch.no_grad():
            return torch.cat([self.extractors[name](x).float() for name in self.sources], dim=1)


def _check_slices(slices: Mapping[str, tuple[int, int]], dim: int) -> None:
    """The blocks tile 0..dim in order, each non-empty."""
    edge = 0
    for name, (start, stop) in slices.items():
        if start != edge or stop <= start:
            raise ValueError(f"slices must tile 0..{dim} in order; {name} is {(start, stop)} after {edge}")
        edge = stop
    if edge != dim:
        raise ValueError(f"slices cover 0..{edge}, the features have {dim} columns")


class SourceStandardiser(nn.Module):
    """Per-dimension standardisation, then equal total variance per source: forward(x) = (x - mean) * scale.

    Each dimension is centred and divided by its training std; then each source's block is divided
    by sqrt(its width), so every source carries the same total variance (1). Without that, VGG16's
    4096 dims would drown CLIP's 512 and IQA's 5 in the MLP's input. A dimension constant in
    training (std <= STD_FLOOR, e.g. a dead ReLU) carries no information: its scale is 0, and
    a block's width counts only its informative dimensions. `mean`, `scale` and `fitted_flag` are
    buffers (saved in checkpoints); until fitted the module is the identity. Fit in one go with
    `fit(features, slices)` or streaming: `update(batch)` for every batch, then `finish(slices)`
    (float64 running moments, merged per batch).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = int(dim)
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("scale", torch.ones(self.dim))
        self.register_buffer("fitted_flag", torch.zeros((), dtype=torch.bool))
        self._reset()

    def _reset(self) -> None:
        self._n = 0
        self._mean = torch.zeros(self.dim, dtype=torch.float64)
        self._m2 = torch.zeros(self.dim, dtype=torch.float64)

    @property
    def fitted(self) -> bool:
        """True once `fit` or `finish` has set the statistics (kept through a state-dict round trip)."""
        return bool(self.fitted_flag)

    def update(self, batch: torch.Tensor) -> None:
        """Add a batch of raw features [B, dim] to the running moments (Chan et al.'s merge)."""
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise ValueError(f"expected features [B, {self.dim}], got shape {tuple(batch.shape)}")
        b = batch.detach().to("cpu", torch.float64)
        if not torch.isfinite(b).all():
            raise AvakitError("feature standardisation: the features hold non-finite values (NaN or inf)")
        n_b = b.shape[0]
        if n_b == 0:
            return
        mean_b = b.mean(dim=0)
        m2_b = ((b - mean_b) ** 2).sum(dim=0)
        total = self._n + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / total)
        self._m2 = self._m2 + m2_b + delta**2 * (self._n * n_b / total)
        self._n = total

    def finish(self, slices: Mapping[str, tuple[int, int]]) -> SourceStandardiser:
        """Set `mean` and `scale` from the moments gathered by `update`; `slices` as FusedSources'."""
        _check_slices(slices, self.dim)
        if self._n < 2:
            raise AvakitError(f"feature standardisation needs at least 2 training samples, got {self._n}")
        std = torch.sqrt(self._m2 / self._n)
        informative = std > STD_FLOOR
        scale = torch.where(informative, 1.0 / std.clamp_min(STD_FLOOR), torch.zeros_like(std))
        for start, stop in slices.values():
            width = int(informative[start:stop].sum())
            if width:
                scale[start:stop] /= math.sqrt(width)
        self.mean.copy_(self._mean.to(self.mean))
        self.scale.copy_(scale.to(self.scale))
        self.fitted_flag.fill_(True)
        self._reset()
        return self

    def fit(self, features: torch.Tensor, slices: Mapping[str, tuple[int, int]]) -> SourceStandardiser:
        """Fit on all training features [N, dim] at once."""
        self._reset()
        self.update(features)
        return self.finish(slices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised features [B, dim]."""
        return (x - self.mean) * self.scale
