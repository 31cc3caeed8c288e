"""The clip model (`task: clip`): a registered backbone per frame, temporal average pooling,
dropout and linear verb and noun heads (the EPIC-KITCHENS TSN baseline's shape).

The backbone and its weights come from `avakit.model.network` (torchvision's weights API, or a
local `model.weights_path`), so freezing, telemetry's last stage and the optimizer's two
parameter groups (`backbone`, `head`) work as for the other tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from avakit.model.network import ACTIVATIONS, AestheticModel, BackboneSpec, build_model


class ClipHead(nn.Module):
    """Optional hidden layers, dropout, then a verb Linear and a noun Linear on the pooled features."""

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        verb_classes: int,
        noun_classes: int,
        dropout: float,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        dims = [in_dim, *(int(h) for h in hidden_dims)]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.verb = nn.Linear(dims[-1], verb_classes)
        self.noun = nn.Linear(dims[-1], noun_classes)

    @property
    def layers(self) -> list[nn.Linear]:
        """Its Linear layers in order (hidden, verb, noun): telemetry's mlp_layer_i."""
        return [*self.hidden, self.verb, self.noun]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features [B, in_dim] -> (verb logits [B, V], noun logits [B, N])."""
        for layer in self.hidden:
            x = self.activation(layer(x))
        x = self.dropout(x)
        return self.verb(x), self.noun(x)


class ClipModel(AestheticModel):
    """Per-frame backbone, the mean of a clip's T frame features, and the `ClipHead`.

    Input: [B, T, 3, H, W], or the frames flattened to [B * T, 3, H, W] (T = `frames`); output:
    (verb logits [B, V], noun logits [B, N]).
    """

    def __init__(
        self, backbone: nn.Module, head: ClipHead, spec: BackboneSpec, frames: int, freeze: str
    ) -> None:
        super().__init__(backbone, head, spec, output_mode="regression", freeze=freeze)  # type: ignore[arg-type]
        self.frames = frames

    def clip_features(self, x: torch.Tensor) -> torch.Tensor:
        """Temporally averaged backbone features [B, D] of clips [B, T, 3, H, W] (or [B * T, ...])."""
        frames = x.shape[1] if x.dim() == 5 else self.frames
        flat = x.flatten(0, 1) if x.dim() == 5 else x
        feats = self.backbone(flat)
        return feats.reshape(-1, frames, feats.shape[-1]).mean(1)

    def forward(self, x: torch.Tensor, pairs: Any = None, with_mos: bool = False) -> Any:  # noqa: ARG002
        """(verb logits [B, V], noun logits [B, N]) of a batch of clips."""
        return self.head(self.clip_features(x))


def clip_model(cfg: Any, load_weights: bool = True) -> ClipModel:
    """The clip model a `Config` describes (model and clip sections); `load_weights=False`: no
    pretrained or weights_path loading (the weights come from a checkpoint)."""
    m, c = cfg.model, cfg.clip
    base = build_model(
        m.backbone,
        pretrained=m.pretrained and load_weights,
        weights_path=m.weights_path if load_weights else None,
        mlp_hidden_dims=[],
        dropout=0.0,
        output_mode="regression",
        freeze="none",
    )
    head = ClipHead(
        base.spec.feature_dim, m.mlp_hidden_dims, c.verb_classes, c.noun_classes, m.dropout, m.activation
    )
    return ClipModel(base.backbone, head, base.spec, c.frames, m.freeze)
