"""Tests for avakit.metrics against scipy/numpy and hand-computed values."""

from __future__ import annotations

import ast
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from avakit import metrics
from avakit.scores import AVA, Scale


def test_srcc_perfect_and_reversed() -> None:
    x = [1.0, 2.5, 3.0, 7.0, 9.0]
    assert metrics.srcc(x, [10, 20, 30, 40, 50]) == pytest.approx(1.0)
    assert metrics.srcc(x, [50, 40, 30, 20, 10]) == pytest.approx(-1.0)


def test_correlations_match_scipy() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=50)
    b = a + rng.normal(size=50)
    assert metrics.srcc(a, b) == pytest.approx(stats.spearmanr(a, b)[0], rel=1e-12)
    assert metrics.plcc(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-12)
    assert isinstance(metrics.srcc(a, b), float)
    assert isinstance(metrics.plcc(a, b), float)


@pytest.mark.parametrize("fn", [metrics.srcc, metrics.plcc])
def test_constant_input_is_nan_without_warning(fn) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(fn([5.0, 5.0, 5.0], [1.0, 2.0, 3.0]))
        assert math.isnan(fn([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]))
        assert math.isnan(fn([1.0], [2.0]))


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        metrics.srcc([1, 2, 3], [1, 2])


def test_accuracy_hand_example() -> None:
    pred = [6.0, 4.0, 5.0, 5.2, 3.0]
    gt = [7.0, 6.0, 4.9, 5.01, 5.0]
    # high/high ok, low/high wrong, 5.0 is not above 5 so low/low ok, high/high ok, low/low ok
    assert metrics.accuracy(pred, gt) == pytest.approx(0.8)
    assert metrics.accuracy(pred, gt, threshold=4.5) == pytest.approx(0.6)


def test_majority_baseline() -> None:
    assert metrics.majority_baseline([6.0, 6.0, 6.0, 4.0]) == pytest.approx(0.75)
    assert metrics.majority_baseline([4.0, 4.0, 4.0, 6.0]) == pytest.approx(0.75)
    assert metrics.majority_baseline([5.0, 5.5]) == pytest.approx(0.5)


def test_emd_hand_example_and_identity() -> None:
    uniform = np.full((1, 10), 0.1)
    top = np.zeros((1, 10))
    top[0, 9] = 1.0
    assert metrics.emd(uniform, top) == pytest.approx(math.sqrt(0.285), abs=1e-12)
    assert metrics.emd(uniform, top, r=1) == pytest.approx(0.45, abs=1e-12)
    assert metrics.emd(top, top) == 0.0
    # Two bins apart: CDF differs by 1 in bins 1 and 2 -> sqrt(2 / 10).
    a = np.zeros((1, 10))
    a[0, 0] = 1.0
    b = np.zeros((1, 10))
    b[0, 2] = 1.0
    assert metrics.emd(a, b) == pytest.approx(math.sqrt(0.2), abs=1e-12)
    assert metrics.emd(np.vstack([a, a]), np.vstack([b, a])) == pytest.approx(math.sqrt(0.2) / 2, abs=1e-12)


def test_mae_rmse() -> None:
    pred = [1.0, 2.0, 3.0, 4.0]
    gt = [2.0, 2.0, 1.0, 4.0]
    assert metrics.mae(pred, gt) == pytest.approx(0.75)
    assert metrics.rmse(pred, gt) == pytest.approx(math.sqrt(5.0 / 4))


def test_dist_mean_std() -> None:
    d = np.zeros((2, 10))
    d[0, [4, 9]] = 0.5  # ratings 5 and 10
    d[1, 2] = 1.0  # all on rating 3
    np.testing.assert_allclose(AVA.mean(d, normalise=False), [7.5, 3.0])
    np.testing.assert_allclose(metrics.dist_std(d), [2.5, 0.0])


def test_dist_std_is_proportional_on_any_evenly_spaced_scale() -> None:
    d = np.random.default_rng(0).dirichlet(np.ones(5), size=30)
    koniq = Scale("votes", 1.0, 5.0, 5, True, None)
    slider = Scale("votes", 0.0, 100.0, 5, True, None)
    np.testing.assert_allclose(metrics.dist_std(d), koniq.std(d, normalise=False))
    np.testing.assert_allclose(25.0 * metrics.dist_std(d), slider.std(d, normalise=False))


def test_clamp_scores() -> None:
    np.testing.assert_array_equal(AVA.clamp([0.2, 5.5, 11.0]), [1.0, 5.5, 10.0])
    np.testing.assert_array_equal(Scale("mos", 0.0, 100.0, None).clamp([-3, 50, 140]), [0.0, 50.0, 100.0])


def test_accuracy_and_baseline_follow_the_direction() -> None:
    dmos = [1.0, 2.0, 8.0, 9.0]
    pred = [1.5, 7.0, 8.5, 2.0]
    # lower is better: "good" means below the threshold; pred gets rows 0 and 2 right
    assert metrics.accuracy(pred, dmos, 5.0, higher_is_better=False) == pytest.approx(0.5)
    assert metrics.majority_baseline([1.0, 2.0, 3.0, 9.0], 5.0, higher_is_better=False) == pytest.approx(0.75)
    found = metrics.compute_metrics(pred, dmos, threshold=None)
    assert "accuracy" not in found and "majority_baseline" not in found


def test_compute_metrics_keys_and_values() -> None:
    rng = np.random.default_rng(1)
    gt_dist = rng.dirichlet(np.ones(10), size=20)
    pred_dist = rng.dirichlet(np.ones(10), size=20)
    gt_mean = AVA.mean(gt_dist, normalise=False)
    pred_mean = AVA.mean(pred_dist, normalise=False)

    basic = metrics.compute_metrics(pred_mean, gt_mean)
    assert set(basic) == {"srcc", "plcc", "accuracy", "majority_baseline", "threshold", "mae", "rmse", "n"}
    assert basic["n"] == 20
    assert basic["srcc"] == pytest.approx(stats.spearmanr(pred_mean, gt_mean)[0])

    full = metrics.compute_metrics(pred_mean, gt_mean, pred_dist, gt_dist)
    assert set(full) == set(basic) | {"emd", "std_srcc"}
    assert full["emd"] == pytest.approx(metrics.emd(pred_dist, gt_dist))
    expected_std_srcc = stats.spearmanr(metrics.dist_std(pred_dist), metrics.dist_std(gt_dist))[0]
    assert full["std_srcc"] == pytest.approx(expected_std_srcc)

    only_one = metrics.compute_metrics(pred_mean, gt_mean, pred_dist=pred_dist)
    assert "emd" not in only_one


def test_metric_names_cover_metrics() -> None:
    assert metrics.METRIC_NAMES["srcc"] == "SRCC"
    assert metrics.METRIC_NAMES["std_srcc"] == "SRCC(std)"
    expected = {
        "srcc",
        "plcc",
        "accuracy",
        "emd",
        "mae",
        "rmse",
        "std_srcc",
    }
    assert set(metrics.METRIC_NAMES) == expected


def test_metrics_does_not_import_torch() -> None:
    tree = ast.parse(Path(metrics.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "numpy" in imported
    assert "torch" not in imported
