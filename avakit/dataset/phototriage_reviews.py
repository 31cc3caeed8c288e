"""PhotoTriage raw reviews (`reviews_trainval/%06d.json`): reading, checking against the pair list, filtering.

A review file holds the release's object `{"reviews": [...]}` (a bare list is accepted too); each
review names the two photos shown, `compareID1` (left) and `compareID2` (right), 0-based, their
files `compareFile1/2` (`12-3.JPG` or `000012-03.JPG`), `userChoice` "LEFT" or "RIGHT" and a free
text `reason`. Every field is validated; a bad review is a counted skip. Reviews count only as a
check of, and a filter on, the official pair list: `refuse_if_contradictory` rejects reviews
whose majority does not agree with it clearly above chance (a derived table once agreed on
49.5 % of 11,423 decided pairs).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from avakit.dataset.phototriage import MAX_PHOTOS, Series
from avakit.errors import AvakitError

MAX_REVIEW_FILE_BYTES = 16 * 2**20  # a series' reviews take a few KB
MAX_REASON_CHARS = 10_000
_FILE = re.compile(r"0*([0-9]{1,9})-0*([0-9]{1,2})\.[A-Za-z]{3,4}")
ALPHA = 0.01  # significance the agreement must reach
MIN_AGREEMENT = 0.6  # and the agreement itself


@dataclass(frozen=True)
class PairVotes:
    """Reviews of one unordered pair (i < j, 0-based): votes for each side."""

    votes_i: int = 0
    votes_j: int = 0

    @property
    def reviewers(self) -> int:
        """Reviews of the pair."""
        return self.votes_i + self.votes_j

    @property
    def agreement(self) -> float:
        """Share of reviews agreeing with the pair's majority (0.5 for a split vote)."""
        return max(self.votes_i, self.votes_j) / self.reviewers if self.reviewers else 0.0


@dataclass(frozen=True)
class Reviews:
    """Aggregated reviews: (series, i, j) with i < j -> votes; what was skipped, by reason."""

    votes: dict[tuple[int, int, int], PairVotes]
    n_reviews: int  # valid reviews
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count of reviews or files
    missing: tuple[int, ...] = ()  # series without a review file


def read_reviews(folder: Path, series_ids: Iterable[int], sizes: Mapping[int, int] | None = None) -> Reviews:
    """Read `folder/%06d.json` of each series; `sizes` (series -> photos) bounds the photo ids."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AvakitError(f"{folder}: reviews folder not found")
    votes: dict[tuple[int, int, int], list[int]] = {}
    skipped: Counter[str] = Counter()
    missing: list[int] = []
    n_reviews = 0
    for sid in series_ids:
        path = folder / f"{sid:06d}.json"
        entries = _load_entries(path, skipped)
        if entries is None:
            missing.append(sid)
            continue
        n = (sizes or {}).get(sid, MAX_PHOTOS)
        for entry in entries:
            item = _parse_review(entry, sid, n)
            if isinstance(item, str):
                skipped[item] += 1
                continue
            i, j, left_won = item
            a, b = min(i, j), max(i, j)
            winner_is_a = (i == a) == left_won
            counts = votes.setdefault((sid, a, b), [0, 0])
            counts[0 if winner_is_a else 1] += 1
            n_reviews += 1
    out = {k: PairVotes(v[0], v[1]) for k, v in votes.items()}
    return Reviews(out, n_reviews, dict(skipped), tuple(missing))


def _load_entries(path: Path, skipped: Counter[str]) -> list | None:
    """The review list of one file; None when there is no file; [] (and a counted skip) when bad."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    except OSError:
        skipped["unreadable file"] += 1
        return []
    if size > MAX_REVIEW_FILE_BYTES:
        skipped["file too large"] += 1
        return []
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        skipped["not a JSON file"] += 1
        return []
    if isinstance(data, dict):
        data = data.get("reviews")
    if not isinstance(data, list):
        skipped["no review list"] += 1
        return []
    return data


def _parse_review(entry: object, sid: int, n: int) -> tuple[int, int, bool] | str:
    """One review -> (left id, right id, left won), or the reason it is skipped."""
    if not isinstance(entry, dict):
        return "review is not an object"
    ids = []
    for name in ("compareID1", "compareID2"):
        value = entry.get(name)
        if type(value) is not int or not 0 <= value < n:
            return f"bad {name}"
        ids.append(value)
    if ids[0] == ids[1]:
        return "photo compared with itself"
    for name, photo in (("compareFile1", ids[0]), ("compareFile2", ids[1])):
        value = entry.get(name)
        if value is None:
            continue
        match = _FILE.fullmatch(value) if isinstance(value, str) else None
        if not match or (int(match[1]), int(match[2])) != (sid, photo + 1):
            return f"{name} does not name the photo"
    choice = entry.get("userChoice")
    if not isinstance(choice, str) or choice.strip().upper() not in ("LEFT", "RIGHT"):
        return "bad userChoice"
    reason = entry.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
        return "bad reason"
    return ids[0], ids[1], choice.strip().upper() == "LEFT"


@dataclass(frozen=True)
class Agreement:
    """How often the reviews' majority agrees with the pair list's preference."""

    n_decided: int  # pairs with p != 0.5 and a review majority
    n_agree: int
    p_value: float  # one-sided binomial test against chance (agreement > 0.5)
    n_unreviewed: int = 0  # decided pairs without reviews
    n_split: int = 0  # decided pairs whose reviews are evenly split

    @property
    def fraction(self) -> float:
        """Share of decided pairs on which the majority agrees (NaN for none)."""
        return self.n_agree / self.n_decided if self.n_decided else float("nan")


def check_agreement(series: Sequence[Series], reviews: Reviews) -> Agreement:
    """Compare each decided pair's preference (p != 0.5) with its reviews' majority."""
    from scipy.stats import binomtest

    n_decided = n_agree = n_unreviewed = n_split = 0
    for s in series:
        for i, j, p, _, _ in s.pairs:
            if p == 0.5:
                continue
            v = reviews.votes.get((s.id, min(i, j), max(i, j)))
            if v is None or not v.reviewers:
                n_unreviewed += 1
                continue
            if v.votes_i == v.votes_j:
                n_split += 1
                continue
            first_wins = (v.votes_i > v.votes_j) == (i < j)  # reviews prefer photo i
            n_decided += 1
            n_agree += first_wins == (p > 0.5)
    p_value = float(binomtest(n_agree, n_decided, 0.5, alternative="greater").pvalue) if n_decided else 1.0
    return Agreement(n_decided, n_agree, p_value, n_unreviewed, n_split)


def refuse_if_contradictory(agreement: Agreement, source: str = "") -> None:
    """AvakitError unless the majority agrees significantly above chance (p <= 0.01) and on >= 60 %.

    `source` (the reviews folder) starts the message when given.
    """
    a = agreement
    where = f"{source}: " if source else ""
    if not a.n_decided:
        raise AvakitError(f"{where}no decided pair of the pair list has reviews with a majority")
    if a.p_value <= ALPHA and a.fraction >= MIN_AGREEMENT:
        return
    if a.p_value > ALPHA and a.fraction > 0.5 and a.n_decided < 20:
        verdict = "too few pairs to tell it from chance"
    elif a.fraction < 0.5 and _p_below(a) <= ALPHA:
        verdict = "below chance: the preferences are reversed"
    elif a.p_value > ALPHA:
        verdict = "chance"
    else:
        verdict = f"too weak (below {MIN_AGREEMENT:.0%})"
    raise AvakitError(
        f"{where}the reviews' majority agrees with the official pair list on {a.fraction * 100:.1f} % "
        f"of {a.n_decided:,} decided pairs: {verdict}; these reviews do not belong to this pair list"
    )


def _p_below(a: Agreement) -> float:
    """One-sided binomial test of the agreement against chance, towards disagreement."""
    from scipy.stats import binomtest

    return float(binomtest(a.n_agree, a.n_decided, 0.5, alternative="less").pvalue)


@dataclass(frozen=True)
class Filtered:
    """Series left after `filter_pairs`, and how many pairs each rule dropped."""

    series: tuple[Series, ...]
    n_pairs: int  # pairs kept
    dropped: dict[str, int]


def filter_pairs(
    series: Sequence[Series],
    reviews: Reviews | None,
    min_agreement: float = 0.0,
    min_reviewers: int = 0,
    min_confidence: float = 0.0,
) -> Filtered:
    """Keep pairs with |p - 0.5| >= min_confidence and, with reviews, >= min_reviewers reviews
    whose majority share is >= min_agreement. A series left without pairs is dropped."""
    if not 0.0 <= min_agreement <= 1.0 or not 0.0 <= min_confidence <= 0.5 or min_reviewers < 0:
        raise AvakitError("min_agreement must be in [0, 1], min_confidence in [0, 0.5], min_reviewers >= 0")
    dropped: Counter[str] = Counter()
    kept: list[Series] = []
    for s in series:
        pairs = []
        for pair in s.pairs:
            i, j, p = pair[:3]
            v = reviews.votes.get((s.id, min(i, j), max(i, j)), PairVotes()) if reviews else None
            if abs(p - 0.5) < min_confidence - 1e-12:
                dropped["min_confidence"] += 1
            elif v is not None and v.reviewers < min_reviewers:
                dropped["min_reviewers"] += 1
            elif v is not None and v.agreement < min_agreement - 1e-12:
                dropped["min_agreement"] += 1
            else:
                pairs.append(pair)
        if pairs:
            kept.append(replace(s, pairs=tuple(pairs)))
        else:
            dropped["series without pairs"] += 1
    return Filtered(tuple(kept), sum(len(s.pairs) for s in kept), dict(dropped))
