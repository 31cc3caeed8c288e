"""avakit.clip_metrics: verb/noun/action top-1 and top-5 by hand, top-5 actions against brute
force, the unseen and tail subsets, ties, empty input, the predictions table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from avakit.clip_metrics import (
    FRAME_COLUMNS,
    action_top_k,
    clip_frame,
    clip_metrics,
    confusion,
    frame_metrics,
    per_class_accuracy,
    top_k,
)


def _onehotish(best: list[int], classes: int) -> np.ndarray:
    """Rows with most mass on `best`, the rest spread decreasing by index."""
    p = np.tile(np.linspace(0.02, 0.01, classes), (len(best), 1))
    p[np.arange(len(best)), best] = 0.9
    return p / p.sum(1, keepdims=True)


def test_action_is_right_only_when_verb_and_noun_are() -> None:
    verb = _onehotish([0, 1, 2, 3], 6)
    noun = _onehotish([0, 1, 2, 3], 7)
    # segment 0: both right; 1: verb right, noun wrong; 2: verb wrong, noun right; 3: both wrong
    m = clip_metrics(verb, noun, [0, 1, 5, 4], [0, 6, 2, 5])
    assert m["n"] == 4
    assert m["verb_top1"] == pytest.approx(2 / 4)
    assert m["noun_top1"] == pytest.approx(2 / 4)
    assert m["action_top1"] == pytest.approx(1 / 4)  # verb right / noun wrong is wrong
    assert m["verb_top5"] == pytest.approx(3 / 4)  # verb 5 ranks 6th (smallest spread mass), 4 is 5th
    assert all(isinstance(m[k], float) for k in ("verb_top1", "action_top5")) and type(m["n"]) is int


def test_hand_computed_top5_action() -> None:
    # 6 verbs, 2 nouns: products of the true pair (verb 2, noun 1) against the rest
    verb = np.array([[0.30, 0.25, 0.15, 0.12, 0.10, 0.08]])
    noun = np.array([[0.6, 0.4]])
    # products: v0n0 .18, v1n0 .15, v0n1 .12, v1n1 .10, v2n0 .09, v3n0 .072, v2n1 .06 -> (2,1) is 7th
    m = clip_metrics(verb, noun, [2], [1])
    assert m["action_top5"] == 0.0 and m["verb_top5"] == 1.0 and m["noun_top5"] == 1.0
    assert clip_metrics(verb, noun, [2], [0])["action_top5"] == 1.0  # v2n0 is 5th
    assert action_top_k(verb, noun)[0].tolist() == [[0, 0], [1, 0], [0, 1], [1, 1], [2, 0]]


def _brute_force(verb: np.ndarray, noun: np.ndarray, k: int = 5) -> np.ndarray:
    """Top-k (verb, noun) over all V x Nn pairs: product desc, then verb rank, then noun rank."""
    vr = np.argsort(np.argsort(-verb, kind="stable"), kind="stable")  # rank of each verb
    nr = np.argsort(np.argsort(-noun, kind="stable"), kind="stable")
    pairs = [(v, n) for v in range(len(verb)) for n in range(len(noun))]
    pairs.sort(key=lambda vn: (-(verb[vn[0]] * noun[vn[1]]), vr[vn[0]], nr[vn[1]]))
    return np.array(pairs[:k])


@pytest.mark.parametrize("quantise", [False, True])
def test_top5_actions_equal_brute_force(quantise: bool) -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        v, n = rng.integers(1, 9, size=2)
        verb, noun = rng.dirichlet(np.ones(v)), rng.dirichlet(np.ones(n))
        if quantise:  # many exact ties
            verb, noun = np.round(verb, 1), np.round(noun, 1)
        got = action_top_k(verb[None], noun[None])[0]
        assert got.tolist() == _brute_force(verb, noun).tolist()


def test_ties_go_to_the_lower_class_index() -> None:
    verb = np.full((1, 8), 1 / 8)
    noun = np.full((1, 3), 1 / 3)
    assert top_k(verb).tolist() == [[0, 1, 2, 3, 4]]
    m = clip_metrics(verb, noun, [5], [0])
    assert m["verb_top1"] == 0.0 and m["verb_top5"] == 0.0 and m["noun_top1"] == 1.0
    assert clip_metrics(verb, noun, [0], [0])["action_top1"] == 1.0
    # all 24 actions tie: the top 5 are verb 0 with nouns 0..2, then verb 1 with nouns 0..1
    assert clip_metrics(verb, noun, [1], [1])["action_top5"] == 1.0
    assert clip_metrics(verb, noun, [1], [2])["action_top5"] == 0.0


def test_fewer_than_five_classes_is_top_k_over_all() -> None:
    m = clip_metrics(_onehotish([0, 1], 3), _onehotish([0, 0], 1), [2, 2], [0, 0])
    assert m["verb_top5"] == 1.0 and m["noun_top5"] == 1.0 and m["action_top5"] == 1.0
    assert m["verb_top1"] == 0.0


def test_empty_input() -> None:
    m = clip_metrics(np.zeros((0, 4)), np.zeros((0, 6)), [], [], {"unseen": []})
    assert m["n"] == 0 and math.isnan(m["action_top1"]) and math.isnan(m["verb_top5"])
    assert m["unseen_n"] == 0 and "unseen_verb_top1" not in m  # subset keys: never NaN


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="verb_true"):
        clip_metrics(np.ones((2, 3)) / 3, np.ones((2, 3)) / 3, [0, 3], [0, 0])
    with pytest.raises(ValueError, match="noun_prob"):
        clip_metrics(np.ones((2, 3)) / 3, np.ones((1, 3)) / 3, [0, 0], [0, 0])
    with pytest.raises(ValueError, match="NaN"):
        clip_metrics(np.full((1, 3), np.nan), np.ones((1, 3)) / 3, [0], [0])


def test_unseen_and_tail_subsets() -> None:
    verb = _onehotish([0, 1, 2, 3, 4], 6)
    noun = _onehotish([0, 1, 2, 3, 4], 6)
    verb_true, noun_true = [0, 1, 5, 3, 4], [0, 5, 2, 3, 5]
    # right: verb 0,1,3,4; noun 0,2,3; action 0,3
    subsets = {
        "unseen": [False, True, True, True, False],
        "tail_verb": [False, True, False, False, True],  # verbs 1 and 4 are tail verbs
        "tail_noun": [False, False, True, False, False],  # noun 2 is a tail noun
    }
    m = clip_metrics(verb, noun, verb_true, noun_true, subsets)
    assert m["action_top1"] == pytest.approx(2 / 5)
    assert m["unseen_n"] == 3
    assert m["unseen_verb_top1"] == pytest.approx(2 / 3)  # segments 1, 2, 3
    assert m["unseen_noun_top1"] == pytest.approx(2 / 3)
    assert m["unseen_action_top1"] == pytest.approx(1 / 3)
    assert m["tail_verb_n"] == 2 and m["tail_noun_n"] == 1 and m["tail_n"] == 3
    assert m["tail_verb_top1"] == 1.0  # segments 1 and 4
    assert m["tail_noun_top1"] == 1.0  # segment 2
    assert m["tail_action_top1"] == 0.0  # segments 1, 2, 4: none has both right
    assert not any(k.startswith("tail_verb") and k.endswith("top1") and k != "tail_verb_top1" for k in m)


def test_an_unknown_subset_is_left_out() -> None:
    p = _onehotish([0, 1], 3)
    m = clip_metrics(p, p, [0, 1], [0, 1], {"unseen": [None, None], "tail_verb": [True, False]})
    assert not any(k.startswith(("unseen", "tail")) for k in m)  # tail needs both masks
    m = clip_metrics(p, p, [0, 1], [0, 1], {"tail_verb": [False, False], "tail_noun": [False, True]})
    assert m["tail_n"] == 1 and "tail_verb_top1" not in m and m["tail_noun_top1"] == 1.0
    assert not any(isinstance(v, float) and math.isnan(v) for v in m.values())
    m = clip_metrics(p, p, [0, 1], [0, 1], {"unseen": [None, True]})  # unknown: outside the subset
    assert m["unseen_n"] == 1 and m["unseen_action_top1"] == 1.0


def test_per_class_accuracy_and_confusion() -> None:
    counts, acc = per_class_accuracy([0, 0, 1, 1, 1, 3], [0, 1, 1, 1, 0, 2], 4)
    assert counts.tolist() == [2, 3, 0, 1]
    assert acc[0] == 0.5 and acc[1] == pytest.approx(2 / 3) and math.isnan(acc[2]) and acc[3] == 0.0
    cm = confusion([0, 0, 1, 1, 1, 3], [0, 1, 1, 3, 0, 2], [1, 0])
    # rows: true 1, true 0; columns: pred 1, pred 0, other
    assert cm.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_clip_frame_round_trips_the_metrics(tmp_path) -> None:
    rng = np.random.default_rng(0)
    n, v, nn = 40, 7, 9
    verb, noun = rng.dirichlet(np.ones(v), n), rng.dirichlet(np.ones(nn), n)
    verb_true, noun_true = rng.integers(0, v, n), rng.integers(0, nn, n)
    meta = {
        "participant": [f"P{i % 3:02d}" for i in range(n)],
        "video": [f"P{i % 3:02d}_0{i % 2}" for i in range(n)],
        "unseen": [i % 3 == 2 for i in range(n)],
        "tail_verb": list(verb_true >= 5),
        "tail_noun": list(noun_true >= 7),
    }
    df = clip_frame([f"k{i}" for i in range(n)], list(range(n)), meta, verb, noun, verb_true, noun_true)
    assert tuple(df.columns) == FRAME_COLUMNS
    assert all(len(t) == 5 for t in df["verb_top5"])
    df.to_parquet(tmp_path / "val.parquet")
    back = pd.read_parquet(tmp_path / "val.parquet")
    subsets = {k: meta[k] for k in ("unseen", "tail_verb", "tail_noun")}
    expected = clip_metrics(verb, noun, verb_true, noun_true, subsets)
    assert frame_metrics(back) == pytest.approx(expected)


def test_clip_frame_without_meta_has_null_subsets() -> None:
    p = _onehotish([0, 1], 3)
    df = clip_frame(["a", "b"], [1, 2], None, p, p, [0, 2], [0, 1])
    assert df["participant"].isna().all() and df["unseen"].isna().all()
    assert df["action_correct"].tolist() == [True, False]
    m = frame_metrics(df)
    assert m["n"] == 2 and not any(k.startswith(("unseen", "tail")) for k in m)
