"""The model a config describes: a registered torchvision backbone with the MLP head, or, in
frozen mode (`features.sources`), fused frozen feature sources with the head.

Frozen mode: the backbone is `model.fused.FusedSources` (any of ResNet-50 layer4 / layer3, VGG16
fc7, IQA statistics, CLIP image embeddings), fully frozen; a `SourceStandardiser` (fitted on the
train split before the first epoch by `training.frozen`, saved in the checkpoint) feeds the MLP
head. Either way the result is an `AestheticModel`, so train, evaluate, predict and export treat
both alike.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from avakit.errors import AvakitError
from avakit.model.fused import FusedSources, SourceStandardiser
from avakit.model.network import AestheticModel, BackboneSpec, build_model, new_head
from avakit.scores import AVA, Scale


def model_from_config(cfg: Any, *, scale: Scale = AVA, load_weights: bool = True) -> AestheticModel:
    """The model a `Config` describes (its model, features and transform sections) for labels on `scale`.

    A MOS has no distribution to predict: distribution mode on MOS labels is an AvakitError
    that names the settings to change.
    `load_weights=False` skips pretrained / weights_path loading (the weights come from a
    checkpoint). Head-only runs (`data.features` set) freeze the whole backbone.
    """
    m, f = cfg.model, cfg.features
    if getattr(cfg, "task", "score") == "clip":  # per-frame backbone, verb and noun heads
        from avakit.model.clip import clip_model

        return clip_model(cfg, load_weights)
    check_output_mode(m.output_mode, cfg.training.loss_type, scale)
    if getattr(f, "sources", None):
        return fused_model(cfg, scale, load_weights)
    iqa = (cfg.transform.normalize_mean, cfg.transform.normalize_std) if f.iqa else None
    model = build_model(
        m.backbone,
        pretrained=m.pretrained and load_weights,
        weights_path=m.weights_path if load_weights else None,
        mlp_hidden_dims=m.mlp_hidden_dims,
        dropout=m.dropout,
        activation=m.activation,
        output_mode=m.output_mode,
        freeze="full" if cfg.data.features else m.freeze,
        feature_layer=f.layer,
        iqa_normalize=iqa,
        n_points=scale.width,
        **_pair_options(cfg),
    )
    if scale.normalised_regression:  # a MOS model predicts (mos - lo) / (hi - lo): start mid-scale
        nn.init.constant_(model.head.layers[-1].bias, 0.5)
    return model


def check_output_mode(output_mode: str, loss_type: str, scale: Scale) -> None:
    """AvakitError when the model's output cannot represent labels on `scale` (a MOS as a distribution)."""
    if scale.kind == "mos" and output_mode == "distribution":
        raise AvakitError(
            f"the data's labels are a MOS ({scale.text}), not vote histograms: train a regression, "
            "--set model.output_mode=regression --set training.loss_type=mse (or l1); "
            f"model.output_mode is {output_mode!r}, training.loss_type {loss_type!r}"
        )


def _pair_options(cfg: Any) -> dict:
    """The head's pairwise settings: none for the score task."""
    if getattr(cfg, "task", "score") != "pairwise":
        return {"pair_head": None}
    p = cfg.pairs
    return {
        "pair_head": p.head,
        "embedding_dim": p.embedding_dim,
        "mos_head": p.head == "unit" and p.mos_weight > 0,
    }


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
    pairs = _pair_options(cfg)
    out_dim = 1 if m.output_mode == "regression" else scale.width
    head = new_head(fused.dim, m.mlp_hidden_dims, out_dim, m.dropout, m.activation, **pairs)
    if scale.normalised_regression:  # a MOS model predicts (mos - lo) / (hi - lo): start mid-scale
        nn.init.constant_(head.layers[-1].bias, 0.5)
    return AestheticModel(
        fused,
        head,
        spec,
        output_mode=m.output_mode,
        freeze="full",
        pair_head=pairs["pair_head"],
        feature_norm=SourceStandardiser(fused.dim),
    )
