"""Loss functions for aesthetic-score training, over batch-first torch tensors.

Two output modes:

* ``distribution``: the model outputs raw logits of shape [B, K] (K points of the vote scale,
  10 for AVA) and the target is the vote histogram normalised to sum 1 (`votes_to_distribution`).
* ``regression``: the model outputs one number per image, shape [B] or [B, 1]; the target is
  the mean over the scale's points (votes) or the MOS normalised to 0..1 (training.engine.targets).

Every loss returns a scalar: the mean over the batch. `LOSSES` maps the CLI names to a
`LossSpec` holding the function and its output mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from avakit.errors import AvakitError
from avakit.scores import AVA, Scale

OutputMode = Literal["distribution", "regression"]


def _check_distribution(logits: Tensor, target: Tensor) -> None:
    """Raise ValueError unless logits and target are both [B, K] with the same shape."""
    if logits.dim() != 2 or logits.shape != target.shape:
        raise ValueError(
            f"expected logits and target of the same shape [B, K], "
            f"got {tuple(logits.shape)} and {tuple(target.shape)}"
        )


def _regression_pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Bring a [B] or [B, 1] prediction and a [B] target to matching [B] shapes."""
    if pred.dim() == 2 and pred.shape[1] == 1:
        pred = pred.squeeze(1)
    if pred.dim() != 1 or pred.shape != target.shape:
        raise ValueError(
            f"expected pred of shape [B] or [B, 1] and target of shape [B], "
            f"got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    return pred, target.to(pred.dtype)


def kl_div(logits: Tensor, target: Tensor) -> Tensor:
    """KL(target || softmax(logits)), summed over bins and averaged over the batch.

    Zero target bins contribute 0 (0 * log 0 = 0).
    """
    _check_distribution(logits, target)
    log_p = F.log_softmax(logits, dim=-1)
    return F.kl_div(log_p, target.to(log_p.dtype), reduction="batchmean")


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Soft-label cross entropy -sum(target * log_softmax(logits)), mean over the batch."""
    _check_distribution(logits, target)
    log_p = F.log_softmax(logits, dim=-1)
    return -(target.to(log_p.dtype) * log_p).sum(dim=-1).mean()


def _safe_root(x: Tensor, r: float) -> Tensor:
    """x ** (1 / r) for x >= 0, with a zero (not NaN) gradient where x == 0.

    NaN stays NaN (and inf stays inf), so a diverged model cannot hide behind a zero loss.
    """
    if r == 1:
        return x
    positive = x > 0
    root = torch.where(positive, x, torch.ones_like(x)).pow(1.0 / r)
    # x * 0 is 0 with a zero gradient where x == 0, and NaN where x is NaN (NaN > 0 is False)
    return torch.where(positive, root, x * 0)


def emd(logits: Tensor, target: Tensor, r: float = 2) -> Tensor:
    """NIMA's Earth Mover's Distance between softmax(logits) and target.

    Per sample: (mean over bins of |CDF_p - CDF_target| ** r) ** (1 / r); then the batch mean.
    """
    if r <= 0:
        raise ValueError(f"r must be positive, got {r}")
    _check_distribution(logits, target)
    p = F.softmax(logits, dim=-1)
    cdf_diff = torch.cumsum(p, dim=-1) - torch.cumsum(target.to(p.dtype), dim=-1)
    per_sample = cdf_diff.abs().pow(r).mean(dim=-1)
    return _safe_root(per_sample, r).mean()


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error between predicted and real mean scores."""
    pred, target = _regression_pair(pred, target)
    return F.mse_loss(pred, target)


def l1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error between predicted and real mean scores."""
    pred, target = _regression_pair(pred, target)
    return F.l1_loss(pred, target)


@dataclass(frozen=True)
class LossSpec:
    """A loss function and the model output it expects."""

    fn: Callable[[Tensor, Tensor], Tensor]
    output_mode: OutputMode


LOSSES: dict[str, LossSpec] = {
    "kl_div": LossSpec(kl_div, "distribution"),
    "cross_entropy": LossSpec(cross_entropy, "distribution"),
    "emd": LossSpec(emd, "distribution"),
    "mse": LossSpec(mse, "regression"),
    "l1": LossSpec(l1, "regression"),
}


def get_loss(name: str) -> LossSpec:
    """The `LossSpec` registered as `name`; AvakitError for an unknown name."""
    try:
        return LOSSES[name]
    except KeyError:
        choices = ", ".join(LOSSES)
        raise AvakitError(f"unknown loss {name!r} (choose from {choices})") from None


def votes_to_distribution(votes: Tensor) -> Tensor:
    """Normalise vote counts [B, K] to probabilities summing to 1 per row (floating dtype).

    Integer input gives the default float dtype. Raises ValueError for a row with no votes.
    """
    dist = votes if votes.is_floating_point() else votes.to(torch.get_default_dtype())
    total = dist.sum(dim=-1, keepdim=True)
    if bool((total <= 0).any()):
        raise ValueError("every row of votes needs a positive total")
    return dist / total


def distribution_mean(p: Tensor, points: Tensor | None = None) -> Tensor:
    """Mean value sum_k point_k * p_k of each row of p [B, K] (probabilities); shape [B].

    `points` default to AVA's ratings 1..10. The torch counterpart of `Scale.mean(normalise=False)`.
    """
    if points is None:
        points = torch.tensor(AVA.points, dtype=p.dtype, device=p.device)
    return (p * points).sum(dim=-1)


def loss_targets(labels: Tensor, scale: Scale, output_mode: str) -> Tensor:
    """What the loss compares outputs with: votes normalised to sum 1 (distribution), their mean
    over the scale's points (regression on votes), or the MOS normalised to 0..1 (MOS)."""
    if scale.kind == "mos":
        return (labels[:, 0] - scale.lo) / (scale.hi - scale.lo)
    probs = votes_to_distribution(labels)
    if output_mode == "distribution":
        return probs
    return distribution_mean(probs, torch.tensor(scale.points, dtype=probs.dtype, device=probs.device))


def native_outputs(out: Tensor, scale: Scale, output_mode: str) -> Tensor:
    """Outputs in the scale's own units: probabilities stay, a MOS model's 0..1 becomes lo..hi."""
    if output_mode == "regression" and scale.normalised_regression:
        return scale.lo + out * (scale.hi - scale.lo)
    return out
