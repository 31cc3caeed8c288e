"""Tests for avakit.model.losses: values against hand computations, scipy and numpy; gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from avakit import metrics
from avakit.errors import AvakitError
from avakit.model import losses


def distribution_std(p: torch.Tensor) -> torch.Tensor:
    """Standard deviation of the score under each row of p [B, K], shape [B]: metrics.dist_std in torch."""
    scores = torch.arange(1, p.shape[-1] + 1, dtype=p.dtype, device=p.device)
    mean = (p * scores).sum(dim=-1, keepdim=True)
    var = (p * (scores - mean) ** 2).sum(dim=-1)
    return var.clamp_min(0).sqrt()


def _random_dist(gen: torch.Generator, b: int, k: int = 10, zeros: bool = False) -> torch.Tensor:
    """Random [b, k] float64 distributions; with `zeros`, some bins are exactly 0."""
    x = torch.rand(b, k, generator=gen, dtype=torch.float64)
    if zeros:
        x[:, ::3] = 0.0
    return x / x.sum(dim=1, keepdim=True)


def _uniform_vs_top() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits giving the uniform distribution and a target with all mass on rating 10."""
    logits = torch.zeros(1, 10, dtype=torch.float64)
    target = torch.zeros(1, 10, dtype=torch.float64)
    target[0, 9] = 1.0
    return logits, target


def test_emd_hand_example() -> None:
    # CDF_p = 0.1 k, CDF_t = [0]*9 + [1]: differences 0.1 * (1..9), 0.
    logits, target = _uniform_vs_top()
    expected_r2 = math.sqrt(0.01 * sum(k * k for k in range(1, 10)) / 10)  # sqrt(0.285)
    assert losses.emd(logits, target).item() == pytest.approx(expected_r2, abs=1e-12)
    assert losses.emd(logits, target, r=1).item() == pytest.approx(0.45, abs=1e-12)
    assert expected_r2 == pytest.approx(0.5338539126, abs=1e-9)


def test_emd_batch_mean() -> None:
    logits, target = _uniform_vs_top()
    same = torch.full((1, 10), 0.1, dtype=torch.float64)
    both = losses.emd(torch.cat([logits, logits]), torch.cat([target, same]))
    assert both.item() == pytest.approx(math.sqrt(0.285) / 2, abs=1e-12)


def test_kl_matches_scipy_entropy_with_zero_bins() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 10, generator=gen, dtype=torch.float64)
    target = _random_dist(gen, 6, zeros=True)
    p = torch.softmax(logits, dim=1).numpy()
    t = target.numpy()
    expected = np.mean([stats.entropy(t[i], p[i]) for i in range(6)])
    got = losses.kl_div(logits, target).item()
    assert math.isfinite(got)
    assert got == pytest.approx(expected, rel=1e-10)


def test_cross_entropy_is_kl_plus_target_entropy() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 10, generator=gen, dtype=torch.float64)
    target = _random_dist(gen, 5, zeros=True)
    t = target.numpy()
    target_entropy = np.mean([stats.entropy(t[i]) for i in range(5)])
    ce = losses.cross_entropy(logits, target).item()
    assert ce == pytest.approx(losses.kl_div(logits, target).item() + target_entropy, rel=1e-10)
    # Same as torch's own soft-label cross entropy.
    ref = torch.nn.functional.cross_entropy(logits, target).item()
    assert ce == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("name", ["kl_div", "emd"])
def test_zero_when_prediction_equals_target(name: str) -> None:
    gen = torch.Generator().manual_seed(2)
    target = _random_dist(gen, 4)
    logits = torch.log(target)  # softmax(log t) == t
    assert losses.LOSSES[name].fn(logits, target).item() == pytest.approx(0.0, abs=1e-7)


def test_emd_gradient_finite_at_exact_match() -> None:
    logits = torch.zeros(2, 10, requires_grad=True)
    target = torch.full((2, 10), 0.1)
    loss = losses.emd(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", ["kl_div", "cross_entropy", "emd"])
def test_distribution_gradients_flow(name: str) -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 10, generator=gen, requires_grad=True)
    target = _random_dist(gen, 4, zeros=True).float()
    loss = losses.LOSSES[name].fn(logits, target)
    assert loss.dim() == 0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["mse", "l1"])
def test_regression_gradients_flow(name: str) -> None:
    pred = torch.tensor([5.0, 6.0, 3.0], requires_grad=True)
    loss = losses.LOSSES[name].fn(pred, torch.tensor([5.5, 4.0, 3.5]))
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() > 0


@pytest.mark.parametrize("r", [1, 2, 3])
def test_torch_emd_matches_numpy_emd(r: int) -> None:
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(16, 10, generator=gen, dtype=torch.float64) * 2
    target = _random_dist(gen, 16, zeros=True)
    got = losses.emd(logits, target, r=r).item()
    expected = metrics.emd(torch.softmax(logits, dim=1).numpy(), target.numpy(), r=r)
    assert got == pytest.approx(expected, rel=1e-10)


def test_regression_values_and_shapes() -> None:
    target = torch.tensor([5.0, 7.0, 2.0])
    pred = torch.tensor([6.0, 5.0, 2.0])
    assert losses.mse(pred, target).item() == pytest.approx(5.0 / 3)
    assert losses.l1(pred, target).item() == pytest.approx(1.0)
    # A [B, 1] prediction must not broadcast against [B] into [B, B].
    assert losses.mse(pred[:, None], target).item() == pytest.approx(5.0 / 3)
    assert losses.l1(pred[:, None], target).item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        losses.mse(pred[:2], target)


def test_distribution_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        losses.emd(torch.zeros(2, 10), torch.zeros(3, 10))
    with pytest.raises(ValueError):
        losses.kl_div(torch.zeros(10), torch.zeros(10))


def test_registry() -> None:
    assert set(losses.LOSSES) == {"kl_div", "cross_entropy", "emd", "mse", "l1"}
    for name in ("kl_div", "cross_entropy", "emd"):
        assert losses.get_loss(name).output_mode == "distribution"
    for name in ("mse", "l1"):
        assert losses.get_loss(name).output_mode == "regression"
    with pytest.raises(AvakitError, match="unknown loss"):
        losses.get_loss("hinge")


def test_votes_to_distribution_and_moments() -> None:
    votes = torch.tensor([[0, 0, 0, 0, 1, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]])
    dist = losses.votes_to_distribution(votes)
    assert dist.is_floating_point()
    assert torch.allclose(dist.sum(dim=1), torch.ones(2))
    assert torch.allclose(losses.distribution_mean(dist), torch.tensor([7.5, 5.5]))
    assert torch.allclose(distribution_std(dist), torch.tensor([2.5, math.sqrt(8.25)]))
    assert torch.allclose(distribution_std(dist), torch.from_numpy(metrics.dist_std(dist.numpy())).float())
    with pytest.raises(ValueError):
        losses.votes_to_distribution(torch.zeros(1, 10))
