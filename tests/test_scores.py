"""Tests for avakit.scores: the choice lists match the registries, the scale and its moments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avakit import config, scores
from avakit.model import losses, network
from avakit.training.engine import resolve_amp


def test_backbones_match_the_registry() -> None:
    assert set(scores.BACKBONES) == set(network.BACKBONES)
    assert len(scores.BACKBONES) == len(set(scores.BACKBONES))


def test_losses_match_the_registry_with_their_output_modes() -> None:
    assert set(scores.LOSSES) == set(losses.LOSSES)
    for name, mode in scores.LOSSES.items():
        assert losses.LOSSES[name].output_mode == mode
        assert mode in scores.OUTPUT_MODES


def test_output_modes_activations_freeze_match_the_model() -> None:
    assert set(scores.OUTPUT_MODES) == set(network.OUTPUT_MODES)
    assert network.OUTPUT_MODES["distribution"] == scores.N_POINTS
    assert set(scores.ACTIVATIONS) == set(network.ACTIVATIONS)
    assert tuple(network.FREEZE_MODES) == scores.FREEZE_MODES


def _choices(cls: type, name: str) -> tuple:
    return tuple(f.metadata["choices"] for f in config.dataclasses.fields(cls) if f.name == name)[0]


def test_config_validates_against_the_lists() -> None:
    assert tuple(_choices(config.ModelConfig, "backbone")) == scores.BACKBONES
    assert tuple(_choices(config.ModelConfig, "activation")) == scores.ACTIVATIONS
    assert tuple(_choices(config.ModelConfig, "freeze")) == scores.FREEZE_MODES
    assert tuple(_choices(config.ModelConfig, "output_mode")) == scores.OUTPUT_MODES
    assert tuple(_choices(config.TrainingConfig, "loss_type")) == tuple(scores.LOSSES)
    assert tuple(_choices(config.TrainingConfig, "amp")) == scores.AMP_MODES
    cfg = config.config_from_dict({"training": {"loss_type": "mse"}, "model": {"output_mode": "regression"}})
    assert cfg.training.loss_type == "mse"


def test_scale() -> None:
    assert tuple(range(1, 11)) == scores.INT_POINTS and scores.N_POINTS == 10
    np.testing.assert_array_equal(scores.POINTS, np.arange(1, 11, dtype=np.float64))
    assert scores.POINTS.dtype == np.float64 and not scores.POINTS.flags.writeable
    assert (scores.SCORE_MIN, scores.SCORE_MAX, scores.THRESHOLD) == (1.0, 10.0, 5.0)
    assert scores.point_names("dist_") == [f"dist_{k}" for k in range(1, 11)]
    assert scores.SPLITS == ("train", "val", "test") and scores.HELD_OUT_SPLITS == ("val", "test")


def test_mean_and_std_of_counts_and_probabilities() -> None:
    votes = np.array([[0, 0, 0, 0, 1, 0, 0, 0, 0, 1], [0, 0, 4, 0, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(scores.mean_score(votes), [7.5, 3.0])
    np.testing.assert_allclose(scores.score_std(votes), [2.5, 0.0])
    p = votes / votes.sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(scores.mean_score(p, normalise=False), [7.5, 3.0])
    assert float(scores.mean_score(votes[0])) == 7.5  # one distribution -> a scalar
    assert float(scores.score_std(p[0], normalise=False)) == pytest.approx(2.5)
    assert scores.mean_score(np.ones((2, 3, 10))).shape == (2, 3)
    with pytest.raises(ValueError, match="10 bins"):
        scores.mean_score(np.ones((2, 9)))


def test_mean_of_counts_is_exact_like_the_old_formulas() -> None:
    rng = np.random.default_rng(3)
    votes = rng.integers(0, 400, size=(500, 10))
    votes[:, 0] += 1
    old_shards = (votes.astype(np.float64) * np.arange(1, 11)).sum(axis=1) / votes.sum(axis=1)
    np.testing.assert_array_equal(scores.mean_score(votes), old_shards)
    old_row = [sum((k + 1) * c for k, c in enumerate(v)) / sum(v) for v in votes.tolist()]
    assert [float(scores.mean_score(v)) for v in votes] == old_row


def test_torch_moments_agree_with_numpy() -> None:
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(10), size=8)
    t = torch.from_numpy(p)
    np.testing.assert_allclose(losses.distribution_mean(t).numpy(), scores.mean_score(p, normalise=False))
    assert math.isclose(float(losses.distribution_mean(torch.tensor([[0.0] * 9 + [1.0]]))), 10.0)


def test_amp_is_a_cuda_feature() -> None:
    for amp in scores.AMP_MODES:
        assert resolve_amp(amp, torch.device("cpu")) == "off"
        assert resolve_amp(amp, torch.device("cuda")) == amp
