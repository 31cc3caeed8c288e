"""Reading the PhotoTriage release (Chang et al., SIGGRAPH 2016): pair lists, series, reviews (torch-free).

`train_pairlist.txt` / `val_pairlist.txt` hold one pair per line, six whitespace-separated columns:
series id, photo-1 index, photo-2 index (1-based), the preference ratio of photo 1 over photo 2
(a probability in [0.01, 0.99], 0.5 = tie), then the RANK of photo 1 and the RANK of photo 2
within the series (1 = best). Columns 5 and 6 are ranks, never a winner id. Images are
`train_val_imgs/%06d-%02d.JPG` (series id, 1-based photo index).

Bad lines are recorded skips with their line number (as in `avakit.dataset.ava`); a series whose
pairs disagree (a photo with two ranks, indices that are not 1..n) is skipped as a whole. The
optional raw reviews are read by `avakit.dataset.phototriage_reviews`.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from avakit.dataset.ava import Skipped, no_valid_rows
from avakit.dataset.keys import hash_split
from avakit.errors import AvakitError
from avakit.textlines import FieldError, Line, parse_uint, read_lines, show, split_fields

MAX_SERIES_ID = 10**9 - 1  # ids are below 10^9 (the release's are below 10^4)
MAX_PHOTOS = 64  # photos per series (the release's series hold 2-8)
MAX_LINE_BYTES = 1024  # a pair-list line is ~30 bytes
P_MIN, P_MAX = 0.01, 0.99
_P_SLACK = 1e-9
_FLOAT = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
COLUMN_NAMES = ("series id", "photo 1", "photo 2", "preference ratio", "rank of photo 1", "rank of photo 2")
IMAGE_PATTERN = "%06d-%02d.JPG"

Pair = tuple[int, int, float, int, int]  # (i, j, p_ij, rank_i, rank_j), i and j 0-based


@dataclass(frozen=True)
class PairRow:
    """One valid line of a pair list (photo indices 1-based, as in the file)."""

    line: int
    series: int
    photo1: int
    photo2: int
    p: float  # preference ratio of photo 1 over photo 2
    rank1: int  # rank of photo 1 in its series, 1 = best
    rank2: int


@dataclass(frozen=True)
class Series:
    """One photo series: its id, photo count, and pairs (i, j, p_ij, rank_i, rank_j), i and j 0-based."""

    id: int
    n: int
    pairs: tuple[Pair, ...]

    @property
    def files(self) -> tuple[str, ...]:
        """The image file names of its photos, in index order (`000012-03.JPG`)."""
        return tuple(image_name(self.id, k) for k in range(1, self.n + 1))

    @property
    def ranks(self) -> tuple[int, ...]:
        """Each photo's rank (1 = best), 0 for a photo in no pair."""
        ranks = [0] * self.n
        for i, j, _, rank_i, rank_j in self.pairs:
            ranks[i], ranks[j] = rank_i, rank_j
        return tuple(ranks)

    @property
    def key(self) -> str:
        """The series' key in the shards and splits: its zero-padded id."""
        return f"{self.id:06d}"


@dataclass(frozen=True)
class SeriesSkip:
    """A series dropped as a whole, with the reason."""

    series: int
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class PairList:
    """A read pair list: valid series (by id), skipped lines and skipped series."""

    path: Path
    series: tuple[Series, ...]
    skipped_lines: tuple[Skipped, ...]
    skipped_series: tuple[SeriesSkip, ...]
    n_read: int  # non-blank lines read

    @property
    def n_pairs(self) -> int:
        """Pairs in the valid series."""
        return sum(len(s.pairs) for s in self.series)

    @property
    def ids(self) -> tuple[int, ...]:
        """The valid series' ids, in ascending order."""
        return tuple(s.id for s in self.series)


def image_name(series: int, photo: int) -> str:
    """The release's file name of photo `photo` (1-based) of series `series`."""
    return IMAGE_PATTERN % (series, photo)


def read_pair_list(path: Path) -> PairList:
    """Read `train_pairlist.txt` / `val_pairlist.txt` into series.

    A malformed line (column count, a value out of bounds, equal photo indices) or a pair listed
    twice (same series, same unordered pair) is a recorded skip with its line number (its
    `image_id` holds the series id, when the line has one). A series
    whose ranks disagree across its pairs, or whose photo indices are not 1..n, is skipped with
    a reason. No valid line (or no valid series) is one AvakitError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AvakitError(f"{path}: pair list not found")
    rows: list[PairRow] = []
    skipped: list[Skipped] = []
    seen: dict[tuple[int, int, int], int] = {}
    n_read = 0
    for line in read_lines(path, MAX_LINE_BYTES):
        if line.blank:
            continue
        n_read += 1
        item = _parse_pair_line(line)
        if isinstance(item, PairRow):
            pair = (item.series, *sorted((item.photo1, item.photo2)))
            if pair in seen:
                item = Skipped(line.number, item.series, "duplicate", f"pair already on line {seen[pair]}")
            else:
                seen[pair] = line.number
        if isinstance(item, Skipped):
            skipped.append(item)
        else:
            rows.append(item)
    if not rows:
        raise AvakitError(no_valid_rows(path, "pairs", n_read, skipped))
    series, dropped = series_from_pairs(rows)
    if not series:
        reasons = "; ".join(f"series {d.series}: {d.reason}: {d.detail}" for d in dropped[:3])
        raise AvakitError(f"{path}: no consistent series among {len(dropped)}: {reasons}")
    return PairList(path, tuple(series), tuple(skipped), tuple(dropped), n_read)


def _parse_pair_line(line: Line) -> PairRow | Skipped:
    """One non-blank pair-list line -> a row, or why it is skipped."""
    if line.problem:
        return Skipped(line.number, None, "malformed line", line.problem)
    fields = split_fields(line.text)
    if len(fields) != len(COLUMN_NAMES):
        return Skipped(line.number, None, "malformed line", f"{len(fields)} columns, expected 6")
    maxima = (MAX_SERIES_ID, MAX_PHOTOS, MAX_PHOTOS, 0, MAX_PHOTOS, MAX_PHOTOS)
    values: list[float] = []
    for index, (text, maximum) in enumerate(zip(fields, maxima, strict=True)):
        try:
            value = _parse_ratio(text) if index == 3 else parse_uint(text, maximum)
            if index in (1, 2, 4, 5) and value == 0:
                raise FieldError("0 is not a 1-based index or rank")
        except FieldError as e:
            series = int(values[0]) if values else None
            return Skipped(
                line.number, series, "malformed line", f"column {index + 1} ({COLUMN_NAMES[index]}): {e}"
            )
        values.append(value)
    series, photo1, photo2, p, rank1, rank2 = values
    if photo1 == photo2:
        return Skipped(line.number, int(series), "malformed line", f"photo {int(photo1)} paired with itself")
    return PairRow(line.number, int(series), int(photo1), int(photo2), p, int(rank1), int(rank2))


def _parse_ratio(text: str) -> float:
    """A preference ratio: a plain decimal number in [0.01, 0.99]; else FieldError."""
    if not _FLOAT.fullmatch(text):
        raise FieldError(f"not a number: {show(text)}")
    value = float(text)
    if not math.isfinite(value) or not P_MIN - _P_SLACK <= value <= P_MAX + _P_SLACK:
        raise FieldError(f"{show(text)} is outside [{P_MIN}, {P_MAX}]")
    return min(max(value, P_MIN), P_MAX)


def series_from_pairs(rows: Iterable[PairRow]) -> tuple[list[Series], list[SeriesSkip]]:
    """Group pair rows by series and check each: (valid series by id, skipped series).

    A series is valid when its photo indices are exactly 1..n (n <= 64), every rank is in 1..n,
    and each photo has one rank across all its pairs. Pairs keep file order.
    """
    by_series: dict[int, list[PairRow]] = defaultdict(list)
    for row in rows:
        by_series[row.series].append(row)
    series: list[Series] = []
    dropped: list[SeriesSkip] = []
    for sid in sorted(by_series):
        item = _check_series(sid, by_series[sid])
        (series if isinstance(item, Series) else dropped).append(item)
    return series, dropped


def _check_series(sid: int, rows: Sequence[PairRow]) -> Series | SeriesSkip:
    photos = {r.photo1 for r in rows} | {r.photo2 for r in rows}
    n = max(photos)
    if photos != set(range(1, n + 1)):
        missing = sorted(set(range(1, n + 1)) - photos)
        return SeriesSkip(sid, "photo indices not 1..n", f"{n} photos but no pair names photo {missing[0]}")
    rank: dict[int, tuple[int, int]] = {}  # photo -> (rank, line)
    for r in rows:
        for photo, value in ((r.photo1, r.rank1), (r.photo2, r.rank2)):
            if value > n:
                return SeriesSkip(sid, "rank out of range", f"line {r.line}: rank {value} in a series of {n}")
            if photo in rank and rank[photo][0] != value:
                first, line = rank[photo]
                detail = f"photo {photo} has rank {first} on line {line} and {value} on line {r.line}"
                return SeriesSkip(sid, "inconsistent ranks", detail)
            rank.setdefault(photo, (value, r.line))
    pairs = tuple((r.photo1 - 1, r.photo2 - 1, r.p, r.rank1, r.rank2) for r in rows)
    return Series(sid, n, pairs)


def series_split(series_ids: Sequence[int], val_ratio: float, seed: int) -> dict[int, str]:
    """Each train-list series' split, "train" or "val", from a hash of (seed, series id).

    Hash-stable (`avakit.dataset.keys.hash_split` with key str(series id)): adding or removing a
    series never moves another one. The official val list is avakit's test split (see
    `phototriage_splits`).
    """
    keys = [str(sid) for sid in series_ids]
    split = hash_split(keys, val_ratio, 0.0, seed)
    return {sid: split[key] for sid, key in zip(series_ids, keys, strict=True)}


def phototriage_splits(
    train_ids: Sequence[int], test_ids: Sequence[int], val_ratio: float, seed: int
) -> dict[int, str]:
    """Splits of both lists: train list -> train/val by hash, official val list -> test.

    A series in both lists is an AvakitError (it would leak from training into the test split).
    """
    both = sorted(set(train_ids) & set(test_ids))
    if both:
        raise AvakitError(
            f"series {both[0]} is in both the train and the val pair list ({len(both)} such series)"
        )
    out = series_split(train_ids, val_ratio, seed)
    out.update({sid: "test" for sid in test_ids})
    return out
