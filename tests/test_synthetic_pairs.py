"""The synthetic PhotoTriage release: official layout, determinism, learnable pixels, reviews."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avakit.dataset.phototriage import phototriage_splits, read_pair_list
from avakit.dataset.phototriage_reviews import check_agreement, read_reviews, refuse_if_contradictory
from avakit.dataset.synthetic_pairs import make_synthetic_phototriage
from avakit.errors import AvakitError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_files(tmp_path: Path) -> None:
    a = make_synthetic_phototriage(tmp_path / "a", n_series=6, seed=5)
    b = make_synthetic_phototriage(tmp_path / "b", n_series=6, seed=5)
    c = make_synthetic_phototriage(tmp_path / "c", n_series=6, seed=6)
    assert _files(a.root) == _files(b.root)
    assert _files(a.root) != _files(c.root)
    assert a.qualities == b.qualities


def test_official_layout_read_back_without_skips(tmp_path: Path) -> None:
    data = make_synthetic_phototriage(tmp_path, n_series=20, seed=1)
    train, val = read_pair_list(data.train_list), read_pair_list(data.val_list)
    assert train.ids == data.train_ids and val.ids == data.val_ids and len(val.ids) == 4
    splits = phototriage_splits(train.ids, val.ids, 0.25, seed=0)  # no series in two lists
    assert {splits[i] for i in val.ids} == {"test"}
    for pl in (train, val):
        assert not pl.skipped_lines and not pl.skipped_series
        for s in pl.series:
            assert 2 <= s.n <= 8 and len(s.pairs) == s.n * (s.n - 1) // 2  # every pair listed
            assert sorted(s.ranks) == list(range(1, s.n + 1))
            q = [data.qualities[name] for name in s.files]  # the rank follows the hidden quality
            assert [sorted(q, reverse=True).index(x) + 1 for x in q] == list(s.ranks)
            for name in s.files:
                assert (data.images / name).is_file()
    orientations = {(i < j) for s in train.series for i, j, *_ in s.pairs}
    assert orientations == {True, False}  # photo 1 is not always the lower index


def test_pixels_follow_the_ranks(tmp_path: Path) -> None:
    data = make_synthetic_phototriage(tmp_path, n_series=12, seed=2)
    agree = total = 0
    for s in read_pair_list(data.train_list).series:
        size = {Image.open(data.images / name).size for name in s.files}
        assert len(size) == 1 and 96 <= max(next(iter(size))) <= 160  # one camera per series
        brightness = [
            np.asarray(Image.open(data.images / name).convert("HSV"))[..., 1:].mean() for name in s.files
        ]
        for i, j, _, rank_i, rank_j in s.pairs:
            agree += (brightness[i] > brightness[j]) == (rank_i < rank_j)
            total += 1
    assert agree / total > 0.95


def test_reviews_agree_and_contradictory_reviews_are_refused(tmp_path: Path) -> None:
    data = make_synthetic_phototriage(tmp_path / "ok", n_series=30, seed=3)
    pl = read_pair_list(data.train_list)
    sizes = {s.id: s.n for s in pl.series}
    reviews = read_reviews(data.reviews, pl.ids, sizes)
    assert not reviews.skipped and not reviews.missing
    agreement = check_agreement(pl.series, reviews)
    assert agreement.n_decided > 50 and agreement.fraction == 1.0  # the ratios are the vote shares
    refuse_if_contradictory(agreement)
    for s in pl.series:  # each ratio is the share of reviewers preferring photo 1
        for i, j, p, _, _ in s.pairs:
            votes = reviews.votes[(s.id, min(i, j), max(i, j))]
            wins = votes.votes_i if i < j else votes.votes_j
            assert p == pytest.approx(min(max(wins / votes.reviewers, 0.01), 0.99), abs=1e-4)

    bad = make_synthetic_phototriage(tmp_path / "bad", n_series=30, seed=3, contradictory=True)
    assert bad.train_list.read_bytes() == data.train_list.read_bytes()
    flipped = check_agreement(pl.series, read_reviews(bad.reviews, pl.ids, sizes))
    assert flipped.fraction == 0.0
    with pytest.raises(AvakitError, match=r"on 0\.0 % of [0-9]+ decided pairs: below chance"):
        refuse_if_contradictory(flipped, str(bad.reviews))
