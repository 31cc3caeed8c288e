"""Frozen mode: the model over fused frozen feature sources (`features.sources`).

The backbone is `model.fused.FusedSources` (any of ResNet-50 layer4 / layer3, VGG16 fc7, IQA
statistics, CLIP image embeddings), fully frozen; a `SourceStandardiser` (fitted on the train
split before the first epoch, saved in the checkpoint) feeds the MLP head. The result is an
ordinary `AestheticModel`, so train, evaluate, predict and export treat it like any other.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from avakit.model.fused import FusedSources, SourceStandardiser
from avakit.model.network import AestheticModel, BackboneSpec, MLPHead
from avakit.scores import Scale


def fused_model(cfg: Any, scale: Scale, load_weights: bool = True) -> AestheticModel:
    """The frozen-sources model a config describes (`load_weights=False`: random init, the
    weights then come from a checkpoint)."""
    m, f, t = cfg.model, cfg.features, cfg.transform
    weights = (
        {"resnet50": f.resnet50_weights, "vgg16": f.vgg16_weights, "clip": f.clip_weights}
        if load_weights
        else {}
    )
    fused = FusedSources(
        f.sources,
        pretrained=m.pretrained and load_weights,
        weights=weights,
        normalize_mean=t.normalize_mean,
        normalize_std=t.normalize_std,
    )
    spec = BackboneSpec(
        name="+".join(fused.sources),
        builder=FusedSources,
        weights=None,  # type: ignore[arg-type]
        feature_dim=fused.dim,
        classifier="",
        last_stage="",
        last_stage_start=None,
        partial_from="",
    )
    pair_head = cfg.pairs.head if getattr(cfg, "task", "score") == "pairwise" else None
    in_dim = fused.dim * (2 if pair_head == "concat" else 1)
    head = MLPHead(
        in_dim,
        m.mlp_hidden_dims,
        1 if m.output_mode == "regression" else scale.width,
        m.dropout,
        m.activation,
    )
    if scale.normalised_regression:  # a MOS model predicts (mos - lo) / (hi - lo): start mid-scale
        nn.init.constant_(head.layers[-1].bias, 0.5)
    return AestheticModel(
        fused,
        head,
        spec,
        output_mode=m.output_mode,
        freeze="full",
        pair_head=pair_head,
        feature_norm=SourceStandardiser(fused.dim),
    )
