"""pair_metrics: hand-computed small cases, ties, clipping, perfect/reversed, antisymmetry."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from avakit.pair_metrics import EPS, pair_correct, pair_metrics, series_table


def _pairs(rows: list[tuple]) -> pd.DataFrame:
    """rows of (series, i, j, p_true, rank_i, rank_j, p_pred)."""
    cols = ["series", "i", "j", "p_true", "rank_i", "rank_j", "p_pred"]
    return pd.DataFrame(rows, columns=cols)


def _photos(rows: list[tuple]) -> pd.DataFrame:
    """rows of (series, index, score, rank)."""
    df = pd.DataFrame(rows, columns=["series", "index", "score", "rank"])
    return df.assign(
        member=[f"{s:06d}-{k + 1:02d}.JPG" for s, k in zip(df["series"], df["index"], strict=True)]
    )


PAIRS = _pairs(
    [
        (1, 0, 1, 0.8, 1, 2, 0.9),  # right, confident
        (1, 0, 2, 0.6, 1, 3, 0.4),  # wrong, not confident
        (1, 1, 2, 0.5, 2, 3, 0.7),  # tie: no accuracy, counts in the log-loss
        (2, 0, 1, 0.1, 2, 1, 0.5),  # 0.5 prefers neither: wrong, confident
        (2, 0, 2, 0.3, 2, 3, 0.2),  # right, confident (|0.3 - 0.5| = 0.2 within rounding)
    ]
)
PHOTOS = _photos(
    [
        (1, 0, 2.0, 1),
        (1, 1, 1.0, 2),
        (1, 2, 0.0, 3),  # tau 1, top-1 right
        (2, 0, 0.5, 2),
        (2, 1, 0.2, 1),
        (2, 2, 0.1, 3),  # top-1 wrong; concordant pairs: (0,2), (1,2); discordant: (0,1) -> tau 1/3
        (3, 0, 1.0, 0),
        (3, 1, 2.0, 0),  # unknown ranks: neither metric
    ]
)


def _expected_log_loss(p: list[float], q: list[float]) -> float:
    return float(np.mean([-(a * math.log(b) + (1 - a) * math.log(1 - b)) for a, b in zip(p, q, strict=True)]))


def test_hand_computed_metrics() -> None:
    m = pair_metrics(PAIRS, PHOTOS)
    assert m["n_pairs"] == 5 and m["n_decided"] == 4 and m["n_series"] == 2
    assert m["pair_accuracy"] == pytest.approx(0.5)
    assert m["pair_accuracy_se"] == pytest.approx(math.sqrt(0.25 / 4))
    assert m["n_confident"] == 3
    assert m["confident_accuracy"] == pytest.approx(2 / 3)
    assert m["human_ceiling"] == pytest.approx((0.8 + 0.6 + 0.9 + 0.7) / 4)
    ll = _expected_log_loss([0.8, 0.6, 0.5, 0.1, 0.3], [0.9, 0.4, 0.7, 0.5, 0.2])
    assert m["log_loss"] == pytest.approx(ll)
    assert m["series_top1"] == pytest.approx(0.5)
    assert m["kendall_tau"] == pytest.approx((1 + 1 / 3) / 2)
    for key, value in m.items():
        assert type(value) in (int, float), key
    json.dumps(m)  # plain Python numbers


def test_pair_correct_marks_ties_nan() -> None:
    got = pair_correct(PAIRS)
    assert np.isnan(got[2])
    assert list(got[[0, 1, 3, 4]]) == [1.0, 0.0, 0.0, 1.0]


def test_perfect_and_reversed_predictions() -> None:
    p = PAIRS.assign(p_pred=np.where(PAIRS["p_true"] > 0.5, 0.99, np.where(PAIRS["p_true"] < 0.5, 0.01, 0.5)))
    assert pair_metrics(p)["pair_accuracy"] == 1.0
    assert pair_metrics(p)["pair_accuracy_se"] == 0.0
    r = p.assign(p_pred=1 - p["p_pred"])
    assert pair_metrics(r)["pair_accuracy"] == 0.0
    assert pair_metrics(r)["confident_accuracy"] == 0.0
    assert pair_metrics(r)["log_loss"] > pair_metrics(p)["log_loss"]
    exact = p.assign(p_pred=p["p_true"])  # the soft target itself: the log-loss is its entropy
    assert pair_metrics(exact)["pair_accuracy"] == 1.0


def test_log_loss_clips_certain_predictions() -> None:
    sure_wrong = _pairs([(1, 0, 1, 1.0, 1, 2, 0.0), (1, 1, 0, 0.0, 2, 1, 1.0)])
    m = pair_metrics(sure_wrong)
    assert math.isfinite(m["log_loss"])
    assert m["log_loss"] == pytest.approx(-math.log(EPS))
    sure_right = sure_wrong.assign(p_pred=1 - sure_wrong["p_pred"])
    assert pair_metrics(sure_right)["log_loss"] == pytest.approx(-math.log1p(-EPS))


def test_undefined_metrics_are_nan() -> None:
    ties = _pairs([(1, 0, 1, 0.5, 0, 0, 0.7)])
    m = pair_metrics(ties)
    assert m["n_decided"] == 0
    for key in ("pair_accuracy", "pair_accuracy_se", "confident_accuracy", "human_ceiling"):
        assert math.isnan(m[key]), key
    assert math.isnan(m["series_top1"]) and math.isnan(m["kendall_tau"])  # no photos given
    empty = pair_metrics(_pairs([]))
    assert empty["n_pairs"] == 0 and math.isnan(empty["log_loss"])


def test_a_series_with_unknown_ranks_is_left_out() -> None:
    table = series_table(PHOTOS).set_index("series")
    assert math.isnan(table.loc[3, "top1"]) and math.isnan(table.loc[3, "tau"])
    assert table.loc[3, "ranked"] == 0 and table.loc[3, "n"] == 2
    only_unknown = pair_metrics(PAIRS, PHOTOS[PHOTOS["series"] == 3])
    assert math.isnan(only_unknown["series_top1"]) and math.isnan(only_unknown["kendall_tau"])
    # a partly ranked series: tau over its ranked photos, no top-1
    partly = _photos([(4, 0, 3.0, 1), (4, 1, 2.0, 2), (4, 2, 9.0, 0)])
    row = series_table(partly).iloc[0]
    assert math.isnan(row["top1"]) and row["tau"] == pytest.approx(1.0)


def test_a_tie_at_the_top_score_is_not_a_hit() -> None:
    tied = _photos([(5, 0, 1.0, 1), (5, 1, 1.0, 2), (5, 2, 0.0, 3)])
    assert series_table(tied).iloc[0]["top1"] == 0.0


def test_swapping_a_pair_changes_nothing() -> None:
    swapped = PAIRS.assign(
        i=PAIRS["j"],
        j=PAIRS["i"],
        rank_i=PAIRS["rank_j"],
        rank_j=PAIRS["rank_i"],
        p_true=1 - PAIRS["p_true"],
        p_pred=1 - PAIRS["p_pred"],
    )
    a, b = pair_metrics(PAIRS, PHOTOS), pair_metrics(swapped, PHOTOS)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], nan_ok=True), key
    assert np.array_equal(pair_correct(PAIRS), pair_correct(swapped), equal_nan=True)


def test_confident_threshold_is_a_parameter() -> None:
    m = pair_metrics(PAIRS, confident=0.35)
    assert m["n_confident"] == 1 and m["confident_accuracy"] == 0.0  # only the 0.1 pair
