"""folder_metrics: the culling-folder metrics of a pairwise run's tables, on hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from avakit.pair_metrics import folder_metrics, grade_auc


def pairs_table(rows: list[tuple[str, float, float]]) -> pd.DataFrame:
    """(group, p_true, p_pred) rows -> a pairs table (series numbered by group)."""
    groups = sorted({g for g, _, _ in rows})
    return pd.DataFrame(
        {
            "series": [groups.index(g) for g, _, _ in rows],
            "group": [g for g, _, _ in rows],
            "i": 0,
            "j": 1,
            "p_true": [p for _, p, _ in rows],
            "p_pred": [q for _, _, q in rows],
            "rank_i": 1,
            "rank_j": 2,
        }
    )


def photos_table(rows: list[tuple[str, str, float, float]]) -> pd.DataFrame:
    """(group, grade, score, mos) rows -> a photos table."""
    return pd.DataFrame(
        {
            "series": 0,
            "index": range(len(rows)),
            "group": [r[0] for r in rows],
            "grade": [r[1] for r in rows],
            "score": [r[2] for r in rows],
            "mos": [r[3] for r in rows],
            "rank": 0,
        }
    )


def test_macro_accuracy_is_the_mean_of_each_folders_accuracy() -> None:
    # folder a: 3 of 4 right (0.75); folder b: 0 of 1 (0.0); a tie in b is left out
    pairs = pairs_table(
        [
            ("a", 1.0, 0.9),
            ("a", 1.0, 0.6),
            ("a", 1.0, 0.7),
            ("a", 1.0, 0.2),
            ("b", 1.0, 0.4),
            ("b", 0.5, 0.9),
        ]
    )
    m = folder_metrics(pairs)
    assert m["pair_accuracy_macro"] == pytest.approx((0.75 + 0.0) / 2)  # micro would be 3/5
    assert m["n_macro_groups"] == 2
    assert math.isnan(m["auc_mean"]) and m["n_auc_groups"] == 0 and m["auc_by_group"] == {}
    assert math.isnan(m["kendall_tau_mos"]) and m["n_mos"] == 0


def test_a_folder_with_only_ties_is_left_out_and_series_stands_in_for_group() -> None:
    pairs = pairs_table([("a", 1.0, 0.9), ("b", 0.5, 0.1)]).drop(columns="group")
    m = folder_metrics(pairs)
    assert m["pair_accuracy_macro"] == 1.0 and m["n_macro_groups"] == 1
    assert math.isnan(folder_metrics(pairs.iloc[:0])["pair_accuracy_macro"])


def test_auc_per_folder_counts_ties_half_and_needs_both_grades() -> None:
    photos = photos_table(
        [
            # a: good 3, 1; bad 2, 1 -> pairs (3>2) (3>1) (1<2) (1=1): (1 + 1 + 0 + 0.5) / 4
            ("a", "good", 3.0, math.nan),
            ("a", "good", 1.0, math.nan),
            ("a", "bad", 2.0, math.nan),
            ("a", "bad", 1.0, math.nan),
            # b: good 5 vs bad 4 -> 1.0
            ("b", "good", 5.0, math.nan),
            ("b", "bad", 4.0, math.nan),
            # c: no bad photo -> no AUC; d: an unscored (NaN) good photo is ignored
            ("c", "good", 1.0, math.nan),
            ("d", "good", math.nan, math.nan),
            ("d", "bad", 0.0, math.nan),
        ]
    )
    m = folder_metrics(pairs_table([("a", 1.0, 0.9)]), photos)
    assert m["auc_by_group"] == {"a": pytest.approx(0.625), "b": 1.0}
    assert m["auc_mean"] == pytest.approx((0.625 + 1.0) / 2) and m["n_auc_groups"] == 2
    json.dumps(m["auc_by_group"])  # JSON-safe: string keys, plain floats
    assert all(type(v) is float for v in m["auc_by_group"].values())


def test_grade_auc_edges() -> None:
    assert grade_auc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    assert grade_auc(np.array([0.0]), np.array([1.0, 2.0])) == 0.0
    assert math.isnan(grade_auc(np.array([]), np.array([1.0])))


def test_kendall_tau_against_mos_uses_the_photos_with_a_finite_mos() -> None:
    # scores 1, 2, 3 against mos 1, 3, 2: concordant pairs (1,2) (1,3), discordant (2,3) -> 1/3
    photos = photos_table(
        [
            ("a", "good", 1.0, 1.0),
            ("a", "good", 2.0, 3.0),
            ("b", "bad", 3.0, 2.0),
            ("b", "bad", 4.0, math.nan),
            ("b", "", 5.0, None),
        ]
    )
    m = folder_metrics(pairs_table([("a", 1.0, 0.9)]), photos)
    assert m["kendall_tau_mos"] == pytest.approx(1 / 3) and m["n_mos"] == 3
    one = folder_metrics(pairs_table([("a", 1.0, 0.9)]), photos.iloc[:1])
    assert math.isnan(one["kendall_tau_mos"]) and one["n_mos"] == 1
