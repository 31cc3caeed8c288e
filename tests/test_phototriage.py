"""PhotoTriage readers: the official pair-list columns, bad lines, series checks, reviews, splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avakit.dataset.phototriage import (
    PairRow,
    image_name,
    phototriage_splits,
    read_pair_list,
    series_from_pairs,
    series_split,
)
from avakit.dataset.phototriage_reviews import (
    Agreement,
    check_agreement,
    filter_pairs,
    read_reviews,
    refuse_if_contradictory,
)
from avakit.errors import AvakitError

# A series of 4 photos: photo 4 is best (rank 1), photo 1 worst (rank 4). Every pair listed.
SERIES_7 = [
    "7 1 2 0.2 4 3",
    "7 1 3 0.1 4 2",
    "7 4 1 0.9 1 4",
    "7 2 3 0.3 3 2",
    "7 2 4 0.25 3 1",
    "7 3 4 0.4 2 1",
]


def _write(tmp_path: Path, lines: list[str], name: str = "train_pairlist.txt") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_columns_5_and_6_are_ranks_not_a_winner_id(tmp_path: Path) -> None:
    # Ranks 4 and 3 name no photo of the pair (1, 2): a reader taking column 5 or 6 as the winner's
    # id would find photo 4 or 3 winning pair (1, 2), and would make photo 4 lose to photo 1.
    pl = read_pair_list(_write(tmp_path, SERIES_7))
    (s,) = pl.series
    assert (s.id, s.n, pl.n_pairs) == (7, 4, 6)
    assert s.ranks == (4, 3, 2, 1)
    assert s.pairs[0] == (0, 1, 0.2, 4, 3)
    assert s.pairs[2] == (3, 0, 0.9, 1, 4)  # photo 4 over photo 1, as listed (0-based)
    for i, j, p, rank_i, rank_j in s.pairs:  # the ratio and the ranks tell the same story here
        assert (rank_i, rank_j) == (s.ranks[i], s.ranks[j])
        assert (p > 0.5) == (rank_i < rank_j)
    assert s.files == tuple(f"000007-0{k}.JPG" for k in (1, 2, 3, 4))
    assert image_name(12, 3) == "000012-03.JPG"


def test_a_photo_with_two_ranks_skips_its_series(tmp_path: Path) -> None:
    # Read as a winner id, "1 2" would be harmless; read as ranks, photo 1 has rank 4 and rank 1.
    lines = [*SERIES_7[:5], "7 3 4 0.4 1 1", "8 1 2 0.7 1 2"]
    pl = read_pair_list(_write(tmp_path, lines))
    assert pl.ids == (8,)
    (skip,) = pl.skipped_series
    assert (skip.series, skip.reason) == (7, "inconsistent ranks")
    assert "photo 3 has rank 2 on line 2 and 1 on line 6" in skip.detail


def test_formatting_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "val_pairlist.txt"
    path.write_bytes(b"\xef\xbb\xbf3  1\t2 0.5 1 1\r\n\r\n\t3 2 3 .01 1 2 \r\n3 1 3 9.9e-01 1 2\r\n")
    pl = read_pair_list(path)
    (s,) = pl.series
    assert s.pairs == ((0, 1, 0.5, 1, 1), (1, 2, 0.01, 1, 2), (0, 2, 0.99, 1, 2))
    assert pl.skipped_lines == () and pl.n_read == 3


@pytest.mark.parametrize(
    ("line", "detail"),
    [
        ("7 1 2 0.2 4", "5 columns, expected 6"),
        ("7 1 2 0.2 4 3 9", "7 columns, expected 6"),
        ("x 1 2 0.2 4 3", "column 1 (series id): not an integer"),
        ("1000000000 1 2 0.2 4 3", "column 1 (series id): '1000000000' is above the limit"),
        ("-7 1 2 0.2 4 3", "column 1 (series id): negative value"),
        ("7 0 2 0.2 4 3", "column 2 (photo 1): 0 is not a 1-based index"),
        ("7 1 65 0.2 4 3", "column 3 (photo 2): '65' is above the limit 64"),
        ("7 1 1 0.2 4 3", "photo 1 paired with itself"),
        ("7 1 2 1.0 4 3", "column 4 (preference ratio): '1.0' is outside [0.01, 0.99]"),
        ("7 1 2 0 4 3", "column 4 (preference ratio): '0' is outside"),
        ("7 1 2 nan 4 3", "column 4 (preference ratio): not a number"),
        ("7 1 2 inf 4 3", "column 4 (preference ratio): not a number"),
        ("7 1 2 -0.2 4 3", "column 4 (preference ratio): not a number"),
        ("7 1 2 0,2 4 3", "column 4 (preference ratio): not a number"),
        ("7 1 2 0.2 0 3", "column 5 (rank of photo 1): 0 is not"),
        ("7 1 2 0.2 4 3.0", "column 6 (rank of photo 2): not an integer"),
        ("7 1 2 0.2 4 ٣", "column 6 (rank of photo 2): not an integer"),
        ("7 1 2 0.2 4 3 " + "x" * 2000, "line longer than 1024 bytes"),
    ],
)
def test_bad_line_is_a_recorded_skip(tmp_path: Path, line: str, detail: str) -> None:
    pl = read_pair_list(_write(tmp_path, ["9 1 2 0.6 1 2", line]))
    assert pl.ids == (9,)
    (skip,) = pl.skipped_lines
    assert skip.line == 2 and skip.reason == "malformed line" and detail in skip.detail


def test_not_utf8_line_is_a_skip(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"9 1 2 0.6 1 2\n9 1 2 0.\xff 1 2\n")
    assert "not UTF-8" in read_pair_list(path).skipped_lines[0].detail


def test_duplicate_pair_either_order_is_skipped(tmp_path: Path) -> None:
    pl = read_pair_list(_write(tmp_path, ["9 1 2 0.6 1 2", "9 2 1 0.4 2 1", "10 1 2 0.6 1 2"]))
    (skip,) = pl.skipped_lines
    assert (skip.line, skip.image_id, skip.reason, skip.detail) == (
        2,
        9,
        "duplicate",
        "pair already on line 1",
    )
    assert pl.ids == (9, 10)


@pytest.mark.parametrize(
    ("lines", "reason", "detail"),
    [
        (["5 1 3 0.6 1 2"], "photo indices not 1..n", "3 photos but no pair names photo 2"),
        (["5 1 2 0.6 1 3"], "rank out of range", "line 1: rank 3 in a series of 2"),
        (["5 1 2 0.6 1 2", "5 2 3 0.6 1 2"], "inconsistent ranks", "photo 2 has rank 2 on line 1 and 1"),
    ],
)
def test_inconsistent_series_is_skipped(tmp_path: Path, lines: list[str], reason: str, detail: str) -> None:
    pl = read_pair_list(_write(tmp_path, [*lines, "9 1 2 0.6 1 2"]))
    assert pl.ids == (9,)
    (skip,) = pl.skipped_series
    assert (skip.series, skip.reason) == (5, reason) and detail in skip.detail


def test_no_valid_line_is_one_error(tmp_path: Path) -> None:
    path = _write(tmp_path, ["7 1 2", "7 1 1 0.5 1 1"])
    with pytest.raises(
        AvakitError, match=r"train_pairlist.txt: no valid pairs among 2 read: line 1: .*line 2"
    ):
        read_pair_list(path)
    with pytest.raises(AvakitError, match="no non-blank line"):
        read_pair_list(_write(tmp_path, [""], "empty.txt"))
    with pytest.raises(AvakitError, match="no consistent series among 1: series 5: rank out of range"):
        read_pair_list(_write(tmp_path, ["5 1 2 0.6 1 3"], "bad.txt"))
    with pytest.raises(AvakitError, match="pair list not found"):
        read_pair_list(tmp_path / "missing.txt")


def test_series_from_pairs_groups_interleaved_rows() -> None:
    rows = [PairRow(1, 4, 1, 2, 0.7, 1, 2), PairRow(2, 3, 2, 1, 0.5, 1, 1), PairRow(3, 4, 2, 3, 0.6, 2, 3)]
    series, dropped = series_from_pairs(rows)
    assert [(s.id, s.n, len(s.pairs)) for s in series] == [(3, 2, 1), (4, 3, 2)] and not dropped


def test_series_split_is_hash_stable_and_never_leaks() -> None:
    ids = list(range(1, 401))
    split = series_split(ids, 0.2, seed=3)
    assert set(split.values()) == {"train", "val"} and 40 < list(split.values()).count("val") < 120
    assert series_split(ids[::-1][:200], 0.2, seed=3) == {i: split[i] for i in ids[::-1][:200]}
    assert series_split(ids, 0.2, seed=4) != split
    full = phototriage_splits(ids, [1000, 1001], 0.2, seed=3)
    assert full[1000] == full[1001] == "test" and {i: full[i] for i in ids} == split
    with pytest.raises(AvakitError, match="series 5 is in both the train and the val pair list"):
        phototriage_splits(ids, [5, 1000], 0.2, seed=3)


def _reviews(folder: Path, sid: int, entries: object) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{sid:06d}.json").write_text(json.dumps(entries))


def _review(left: int, right: int, choice: str = "LEFT", **extra: object) -> dict:
    entry = {"compareID1": left, "compareID2": right, "compareFile1": f"7-{left + 1}.JPG"}
    entry |= {"compareFile2": f"000007-{right + 1:02d}.JPG", "userChoice": choice, "reason": "sharper"}
    return entry | extra


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("LEFT", "review is not an object"),
        (_review(0, 1, compareID1=None), "bad compareID1"),
        (_review(0, 1, compareID1=True), "bad compareID1"),
        (_review(0, 1, compareID2=4), "bad compareID2"),
        (_review(0, 1, compareID2=-1), "bad compareID2"),
        (_review(0, 1, compareID2=1.0), "bad compareID2"),
        (_review(1, 1), "photo compared with itself"),
        (_review(0, 1, compareFile1="7-2.JPG"), "compareFile1 does not name the photo"),
        (_review(0, 1, compareFile2="8-2.JPG"), "compareFile2 does not name the photo"),
        (_review(0, 1, compareFile2=12), "compareFile2 does not name the photo"),
        (_review(0, 1, "UP"), "bad userChoice"),
        (_review(0, 1, None), "bad userChoice"),
        (_review(0, 1, reason=3), "bad reason"),
    ],
)
def test_bad_review_is_a_counted_skip(tmp_path: Path, entry: object, reason: str) -> None:
    _reviews(tmp_path / "r", 7, {"reviews": [_review(0, 1), entry]})
    reviews = read_reviews(tmp_path / "r", [7], {7: 4})
    assert reviews.n_reviews == 1 and reviews.skipped == {reason: 1}


def test_reviews_aggregate_per_unordered_pair(tmp_path: Path) -> None:
    folder = tmp_path / "r"
    entries = [_review(0, 3), _review(3, 0, "RIGHT"), _review(3, 0, "LEFT"), _review(1, 2, "right")]
    _reviews(folder, 7, entries)  # a bare list, as well as the release's {"reviews": [...]}
    (folder / "000008.json").write_text("{not json")
    _reviews(folder, 10, {"other": []})
    reviews = read_reviews(folder, [7, 8, 9, 10])
    assert reviews.votes[(7, 0, 3)].votes_i == 2 and reviews.votes[(7, 0, 3)].votes_j == 1
    assert (reviews.votes[(7, 1, 2)].votes_i, reviews.votes[(7, 1, 2)].votes_j) == (0, 1)
    assert reviews.missing == (9,) and reviews.skipped == {"not a JSON file": 1, "no review list": 1}
    with pytest.raises(AvakitError, match="reviews folder not found"):
        read_reviews(tmp_path / "none", [7])


def test_agreement_check_and_filters(tmp_path: Path) -> None:
    pl = read_pair_list(_write(tmp_path, SERIES_7))
    folder = tmp_path / "r"
    # Majority for the better photo (higher index) on 5 pairs, against it on pair (0, 1); 3 reviews each.
    entries = []
    for a, b in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]:
        better = "LEFT" if (a, b) == (0, 1) else "RIGHT"
        entries += [_review(a, b, better), _review(a, b, better), _review(b, a, better)]  # 2 to 1
    _reviews(folder, 7, {"reviews": entries})
    reviews = read_reviews(folder, [7], {7: 4})
    agreement = check_agreement(pl.series, reviews)
    assert (agreement.n_decided, agreement.n_agree) == (6, 5)
    with pytest.raises(AvakitError, match="on 83.3 % of 6 decided pairs: too few pairs"):
        refuse_if_contradictory(agreement)
    kept = filter_pairs(pl.series, reviews, min_agreement=0.7, min_reviewers=3)
    assert kept.n_pairs == 0 and kept.dropped["min_agreement"] == 6  # 2 of 3 = 0.67 everywhere
    kept = filter_pairs(pl.series, reviews, min_confidence=0.2)
    assert [p[:2] for p in kept.series[0].pairs] == [(0, 1), (0, 2), (3, 0), (1, 2), (1, 3)]
    assert filter_pairs(pl.series, None, min_reviewers=5).n_pairs == 6  # no reviews: no review filter
    assert filter_pairs(pl.series, reviews, min_reviewers=4).dropped == {
        "min_reviewers": 6,
        "series without pairs": 1,
    }
    with pytest.raises(AvakitError, match="min_confidence"):
        filter_pairs(pl.series, reviews, min_confidence=0.6)


@pytest.mark.parametrize(
    ("agreement", "message"),
    [
        (Agreement(11423, 5654, 0.86), "on 49.5 % of 11,423 decided pairs: chance; these reviews do not"),
        (Agreement(1000, 100, 1.0), "on 10.0 % of 1,000 decided pairs: below chance"),
        (Agreement(10000, 5500, 1e-20), "on 55.0 % of 10,000 decided pairs: too weak"),
        (Agreement(0, 0, 1.0), "no decided pair"),
    ],
)
def test_refusal_messages(agreement: Agreement, message: str) -> None:
    with pytest.raises(AvakitError, match=message):
        refuse_if_contradictory(agreement)


def test_agreement_above_chance_passes() -> None:
    refuse_if_contradictory(Agreement(483, 400, 1e-40))
