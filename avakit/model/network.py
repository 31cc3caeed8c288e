"""Backbone registry, MLP head and the aesthetic-score model built from them.

`BACKBONES` maps a name to a `BackboneSpec` (timm-style registry). `build_model` takes a
torchvision model, swaps its final classification Linear for `nn.Identity` (so the backbone
returns pooled features [B, D] and its state-dict keys still match torchvision's), puts an
`MLPHead` on top and applies the requested freezing. Distribution mode returns raw logits
[B, N_POINTS] (softmax belongs to the loss / prediction); regression returns an unclamped [B].
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torchvision.models as tvm
from torch import nn

from avakit.errors import AvakitError
from avakit.scores import FREEZE_MODES, N_POINTS

# Registries; their keys are the choice lists in avakit.scores (tests/test_scores.py checks both ways).
OUTPUT_MODES: dict[str, int] = {"distribution": N_POINTS, "regression": 1}  # mode -> AVA's output width
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one torchvision backbone and where its parts are.

    `classifier` is the dotted path of the final classification Linear that is replaced by
    `nn.Identity`. `last_stage` is the dotted path of the module holding the last CNN stage;
    when `last_stage_start` is set, that module is a Sequential and the stage is its children
    from that index on. `partial_from` is the first module that stays trainable under
    `freeze="partial"` (every backbone parameter registered before it is frozen).
    """

    name: str
    builder: Callable[..., nn.Module]
    weights: tvm.WeightsEnum
    feature_dim: int
    classifier: str
    last_stage: str
    last_stage_start: int | None
    partial_from: str
    layer3_dim: int | None = None  # pooled layer3 width (ResNets), for features.layer = layer3


def _resnet(name: str, builder: Callable[..., nn.Module], weights: Any, dim: int) -> BackboneSpec:
    return BackboneSpec(name, builder, weights, dim, "fc", "layer4", None, "layer4", dim // 2)


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": _resnet("resnet18", tvm.resnet18, tvm.ResNet18_Weights.DEFAULT, 512),
    "resnet34": _resnet("resnet34", tvm.resnet34, tvm.ResNet34_Weights.DEFAULT, 512),
    "resnet50": _resnet("resnet50", tvm.resnet50, tvm.ResNet50_Weights.DEFAULT, 2048),
    "resnet101": _resnet("resnet101", tvm.resnet101, tvm.ResNet101_Weights.DEFAULT, 2048),
    # features[24:] = the conv block after the 4th MaxPool; classifier keeps fc6/fc7 (4096-d).
    "vgg16": BackboneSpec(
        name="vgg16",
        builder=tvm.vgg16,
        weights=tvm.VGG16_Weights.DEFAULT,
        feature_dim=4096,
        classifier="classifier.6",
        last_stage="features",
        last_stage_start=24,
        partial_from="features.24",
    ),
    # features[13:] = the 160-channel stride-32 blocks + final 1x1 conv; classifier keeps 1280-d.
    "mobilenet_v3_large": BackboneSpec(
        name="mobilenet_v3_large",
        builder=tvm.mobilenet_v3_large,
        weights=tvm.MobileNet_V3_Large_Weights.DEFAULT,
        feature_dim=1280,
        classifier="classifier.3",
        last_stage="features",
        last_stage_start=13,
        partial_from="features.13",
    ),
}


def _check_choice(kind: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise AvakitError(f"unknown {kind} {value!r}; allowed: {', '.join(allowed)}")


class MLPHead(nn.Module):
    """Linear -> activation -> dropout for each hidden dim, then a Linear to `out_dim`.

    `self.layers` holds the Linear layers in order; the last one is the output layer.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int] = (256,),
        out_dim: int = N_POINTS,
        dropout: float = 0.2,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        _check_choice("activation", activation, list(ACTIVATIONS))
        if not 0.0 <= dropout < 1.0:
            raise AvakitError(f"dropout must be in [0, 1), got {dropout}")
        if any(int(h) <= 0 for h in hidden_dims):
            raise AvakitError(f"MLP hidden dims must be positive, got {list(hidden_dims)}")
        dims = [in_dim, *(int(h) for h in hidden_dims), out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map features [B, in_dim] to [B, out_dim]."""
        for layer in self.layers[:-1]:
            x = self.dropout(self.activation(layer(x)))
        return self.layers[-1](x)


class UnitHead(MLPHead):
    """An MLP to an L2-normalised embedding; the score is its dot product with a learned unit vector,
    so scores lie in [-1, 1] and a hinge margin (e.g. 0.2) has a fixed meaning. With `mos`, an
    auxiliary linear head reads the same embedding and predicts a MOS normalised to 0..1."""

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        embedding_dim: int,
        dropout: float,
        activation: str,
        mos: bool = False,
    ) -> None:
        super().__init__(in_dim, hidden_dims, embedding_dim, dropout, activation)
        self.direction = nn.Parameter(torch.randn(embedding_dim) / embedding_dim**0.5)
        self.mos = nn.Linear(embedding_dim, 1) if mos else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The unit-length embedding [B, D]."""
        return nn.functional.normalize(super().forward(x), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores [B, 1] in [-1, 1]."""
        return (self.embed(x) @ nn.functional.normalize(self.direction, dim=0)).unsqueeze(1)

    def mos_score(self, x: torch.Tensor) -> torch.Tensor:
        """The auxiliary MOS prediction [B] in 0..1 (AvakitError without the auxiliary head)."""
        if self.mos is None:
            raise AvakitError("pairs.mos_weight: this model has no auxiliary MOS head")
        return torch.sigmoid(self.mos(self.embed(x))).squeeze(1)


def new_head(
    in_dim: int,
    hidden_dims: Sequence[int],
    out_dim: int,
    dropout: float,
    activation: str,
    pair_head: str | None = None,
    embedding_dim: int = 512,
    mos_head: bool = False,
) -> MLPHead:
    """The head over `in_dim` features: an MLPHead to `out_dim`, a concat head reading two
    embeddings, or a UnitHead (pairs.head: unit; `mos_head` adds its auxiliary MOS head)."""
    if pair_head == "unit":
        return UnitHead(in_dim, hidden_dims, embedding_dim, dropout, activation, mos_head)
    return MLPHead(in_dim * (2 if pair_head == "concat" else 1), hidden_dims, out_dim, dropout, activation)


class AestheticModel(nn.Module):
    """Backbone (torchvision model minus classifier) + `MLPHead`.

    With `freeze="full"` the backbone stays in eval mode under `train()`; with "partial" the
    frozen BatchNorm layers do, so their running statistics are not updated.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: MLPHead,
        spec: BackboneSpec,
        *,
        output_mode: str = "distribution",
        freeze: str = "none",
        iqa: nn.Module | None = None,
        pair_head: str | None = None,
        feature_norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        _check_choice("output_mode", output_mode, list(OUTPUT_MODES))
        _check_choice("freeze", freeze, FREEZE_MODES)
        self.backbone = backbone
        self.head = head
        self.iqa = iqa  # optional IQAFeatures, concatenated to the backbone features
        self.spec = spec
        self.output_mode = output_mode
        self.freeze = freeze
        self.pair_head = pair_head  # None (score task), "difference" or "concat" (pairwise task)
        self.feature_norm = feature_norm  # frozen sources: their per-source standardiser
        _apply_freeze(backbone, spec, freeze)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features [B, spec.feature_dim]."""
        return self.backbone(x)

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the head sees: backbone features, plus IQA features when configured."""
        feats = self.features(x)
        if self.feature_norm is not None:
            feats = self.feature_norm(feats)
        return feats if self.iqa is None else torch.cat([feats, self.iqa(x)], dim=1)

    def forward_head(self, head_input: torch.Tensor) -> torch.Tensor:
        """Head only: logits [B, 10] or unclamped scores [B] from `head_input` features."""
        out = self.head(head_input)
        return out.squeeze(-1) if self.output_mode == "regression" else out

    def forward(
        self, x: torch.Tensor, pairs: torch.Tensor | None = None, with_mos: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, K] (distribution) or unclamped scores [B] (regression); with `pairs`
        ([P, 2] indices into the batch) the pair logits [P]: P(i better than j) = sigmoid(logit).

        The backbone runs once per image of the batch, however many pairs it is in. A concat-head
        model compares two photos and has no score for one alone (AvakitError without `pairs`).
        `with_mos` (unit head with its auxiliary MOS head) also returns each photo's MOS, 0..1.
        """
        if pairs is not None:
            emb = self.head_input(x)
            logits = self.pair_logits(emb, pairs)
            return (logits, self.head.mos_score(emb)) if with_mos else logits
        if self.pair_head == "concat":
            raise AvakitError(
                "this pairwise model has a concat head: it compares two photos and cannot score one "
                "alone (train with pairs.head: difference to score photos)"
            )
        return self.forward_head(self.head_input(x))

    def pair_logits(self, emb: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """Logits [P] of P(i better than j) from head inputs [N, D]: s(i) - s(j), or the concat
        head's (h(i, j) - h(j, i)) / 2; both are antisymmetric by construction."""
        i, j = pairs[:, 0], pairs[:, 1]
        if self.pair_head == "concat":
            ab = self.head(torch.cat([emb[i], emb[j]], dim=1)).squeeze(-1)
            ba = self.head(torch.cat([emb[j], emb[i]], dim=1)).squeeze(-1)
            return (ab - ba) / 2
        scores = self.forward_head(emb)
        return scores[i] - scores[j]

    def last_stage(self) -> nn.Module:
        """The last CNN stage, reported as "backbone_layer4" by gradient telemetry.

        For vgg16 / mobilenet_v3_large this is a new Sequential over the backbone's own
        blocks (same module and parameter objects), not a registered submodule.
        """
        stage = self.backbone.get_submodule(self.spec.last_stage)
        if self.spec.last_stage_start is None:
            return stage
        return nn.Sequential(*list(stage.children())[self.spec.last_stage_start :])

    def train(self, mode: bool = True) -> AestheticModel:
        """Set train/eval mode, keeping frozen backbone parts in eval."""
        super().train(mode)
        if mode and self.freeze == "full":
            self.backbone.eval()
        elif mode and self.freeze == "partial":
            for module in self.backbone.modules():
                params = list(module.parameters(recurse=False))
                is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
                if is_bn and params and not any(p.requires_grad for p in params):
                    module.eval()
        return self


def _apply_freeze(backbone: nn.Module, spec: BackboneSpec, freeze: str) -> None:
    if freeze == "full":
        backbone.requires_grad_(False)
        backbone.eval()
    elif freeze == "partial":
        backbone.get_submodule(spec.partial_from)  # fails loudly on a bad registry entry
        prefix = spec.partial_from + "."
        for name, param in backbone.named_parameters():
            if name.startswith(prefix):
                break
            param.requires_grad_(False)


def _load_backbone_weights(backbone: nn.Module, spec: BackboneSpec, path: str) -> None:
    """Load a local torchvision state dict (classifier keys optional, backbone keys strict)."""
    file = Path(path)
    if not file.is_file():
        raise AvakitError(f"weights file not found: {file}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is a user error
        raise AvakitError(f"cannot read weights file {file}: {exc}") from exc
    if not isinstance(state, Mapping):
        raise AvakitError(f"weights file {file} does not hold a state dict")
    dropped = spec.classifier + "."
    state = {k: v for k, v in state.items() if not k.startswith(dropped)}
    expected = set(backbone.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise AvakitError(
            f"weights file {file} does not match {spec.name}: "
            f"{len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}"
        )
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise AvakitError(f"weights file {file} does not match {spec.name}: {exc}") from exc


def build_model(
    backbone: str,
    *,
    pretrained: bool = False,
    weights_path: str | None = None,
    mlp_hidden_dims: Sequence[int] = (256,),
    dropout: float = 0.2,
    activation: str = "relu",
    output_mode: str = "distribution",
    freeze: str = "none",
    feature_layer: str = "final",
    iqa_normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    n_points: int = N_POINTS,
    pair_head: str | None = None,
    embedding_dim: int = 512,
    mos_head: bool = False,
) -> AestheticModel:
    """Build an `AestheticModel` from a registered backbone name.

    `n_points`: the output width in distribution mode (K points of the vote scale; AVA: 10).
    `weights_path` (a local torchvision state dict) takes precedence over `pretrained`
    (torchvision's weights API, which downloads when not cached). `feature_layer="layer3"`
    (ResNets) pools the third stage instead of the last. `iqa_normalize` = (mean, std) of the
    input normalisation adds the IQA features (avakit.model.iqa) to the head's input.
    `pair_head` (pairwise task): "difference", "concat" (the head reads two embeddings) or "unit"
    (a UnitHead of `embedding_dim`, with an auxiliary MOS head when `mos_head`).
    """
    _check_choice("backbone", backbone, list(BACKBONES))
    _check_choice("activation", activation, list(ACTIVATIONS))
    _check_choice("output_mode", output_mode, list(OUTPUT_MODES))
    _check_choice("freeze", freeze, FREEZE_MODES)
    spec = BACKBONES[backbone]
    use_hub = pretrained and weights_path is None
    try:
        net = spec.builder(weights=spec.weights if use_hub else None)
    except OSError as exc:  # the weights API downloads on first use; offline that fails
        raise AvakitError(
            f"model.pretrained: could not fetch {backbone} ImageNet weights ({exc.__class__.__name__}); "
            "offline, set model.weights_path to a local torchvision state dict or model.pretrained=false"
        ) from None
    parent_path, _, attr = spec.classifier.rpartition(".")
    setattr(net.get_submodule(parent_path), attr, nn.Identity())
    if weights_path is not None:
        _load_backbone_weights(net, spec, weights_path)
    _check_choice("feature_layer", feature_layer, ["final", "layer3"])
    if feature_layer == "layer3":
        if spec.layer3_dim is None:
            raise AvakitError(f"feature layer 'layer3' needs a ResNet backbone, not {backbone}")
        net.layer4 = nn.Identity()  # avgpool then pools layer3's output
        spec = replace(spec, feature_dim=spec.layer3_dim, last_stage="layer3", partial_from="layer3")
    iqa = None
    if iqa_normalize is not None:
        from avakit.model.iqa import IQA_NAMES, IQAFeatures

        iqa = IQAFeatures(*iqa_normalize)
    out_dim = n_points if output_mode == "distribution" else OUTPUT_MODES[output_mode]
    in_dim = spec.feature_dim + (len(IQA_NAMES) if iqa is not None else 0)
    head = new_head(in_dim, mlp_hidden_dims, out_dim, dropout, activation, pair_head, embedding_dim, mos_head)
    return AestheticModel(
        net, head, spec, output_mode=output_mode, freeze=freeze, iqa=iqa, pair_head=pair_head
    )


def param_groups(
    model: AestheticModel,
    lr: float,
    head_lr_multiplier: float = 10.0,
    differential: bool = True,
    weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Optimizer groups `[backbone @ lr, head @ lr * head_lr_multiplier]`, in that order.

    Only parameters with `requires_grad` are included. When `differential` is False both
    groups use `lr`. A group with no trainable parameters is left out, so a fully frozen
    backbone yields just the head group.
    """
    head_lr = lr * head_lr_multiplier if differential else lr
    groups = []
    for name, module, group_lr in (("backbone", model.backbone, lr), ("head", model.head, head_lr)):
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            groups.append({"name": name, "params": params, "lr": group_lr, "weight_decay": weight_decay})
    return groups
