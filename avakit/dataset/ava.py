"""Parsing the AVA release files (AVA.txt, tags.txt, challenges.txt, *.jpgl) and making splits.

AVA.txt has 15 whitespace-separated integers per line: index, image id, counts of ratings
1..10, two semantic tag ids (0 = none) and a challenge id. Images are `{image id}.jpg`.
Every reader goes through `avakit.textlines` (line length cap, UTF-8 with or without BOM,
ASCII-digit integers with bounds): a bad line is a recorded skip naming its line number, or with
`strict` one AvakitError; a file without any valid line is an AvakitError showing the first
reasons.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avakit.errors import AvakitError
from avakit.scores import N_POINTS, mean_score, point_names
from avakit.textlines import FieldError, Line, parse_uint, parse_uints, read_lines, split_fields


@dataclass(frozen=True)
class AvaRow:
    """One valid line of AVA.txt."""

    line: int  # 1-based line number in AVA.txt
    index: int
    image_id: int
    votes: tuple[int, ...]  # counts of the ratings avakit.scores.POINTS (1..10)
    tags: tuple[int, int]
    challenge: int

    @property
    def mean_score(self) -> float:
        """Mean rating, sum(k * count_k) / sum(count_k)."""
        return float(mean_score(self.votes))

    @property
    def key(self) -> str:
        """The sample's key in the shards: the image id."""
        return str(self.image_id)

    @property
    def file(self) -> str:
        """The image file relative to the images folder."""
        return f"{self.image_id}.jpg"

    @property
    def values(self) -> tuple[int, ...]:
        """The label's numbers: the 10 vote counts."""
        return self.votes

    def skip_detail(self, detail: str) -> str:
        """A skipped image's detail (the image id names its file already)."""
        return detail

    def label(self) -> dict:
        """The sample's `json` member as written into the shards."""
        return {
            "image_id": self.image_id,
            "index": self.index,
            "votes": list(self.votes),
            "tags": list(self.tags),
            "challenge": self.challenge,
        }


@dataclass(frozen=True)
class Skipped:
    """A row that produced no sample, with the reason (one of `REASONS`) and detail."""

    line: int
    image_id: int | None
    reason: str
    detail: str = ""


REASONS = (
    "malformed line",
    "duplicate",
    "missing",
    "empty",
    "unreadable",
    "not an image",
    "truncated/undecodable",
    "too large",
    "bad aspect ratio",
)

# Bounds of the integer columns. A vote count above 10^9 is no vote count (AVA's most-voted photo
# has ~550 votes in all); with it a row's 10 counts still sum exactly in float64 (< 2^53), so mean
# scores stay exact. Ids are stored as int64 (parquet columns, tensors): below 2^63.
MAX_VOTES = 10**9
MAX_ID = 2**63 - 1
COLUMN_NAMES = ("index", "image id", *point_names("votes for "), "tag 1", "tag 2", "challenge")
MAXIMA = (MAX_ID, MAX_ID, *(MAX_VOTES,) * N_POINTS, MAX_ID, MAX_ID, MAX_ID)
N_COLUMNS = len(COLUMN_NAMES)  # 15
_TAGS = 2 + N_POINTS  # the column after the vote counts


def parse_ava_txt(
    path: Path, strict: bool = False, limit: int | None = None
) -> tuple[list[AvaRow], list[Skipped], int]:
    """Read AVA.txt: (valid rows in file order, skipped rows, rows read).

    A malformed line or a duplicate image id is skipped and recorded with its line number;
    with `strict` it raises AvakitError naming the file and line. Blank lines are not rows.
    `limit` reads only the first N rows. No valid row at all is an AvakitError showing the
    first reasons with their line numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise AvakitError(f"{path}: AVA.txt not found")
    rows: list[AvaRow] = []
    skipped: list[Skipped] = []
    seen: dict[int, int] = {}
    n_read = 0
    for line in read_lines(path):
        if line.blank:
            continue
        if limit is not None and n_read >= limit:
            break
        n_read += 1
        item = _parse_row(line)
        if isinstance(item, AvaRow) and item.image_id in seen:
            item = Skipped(
                line.number, item.image_id, "duplicate", f"image id already on line {seen[item.image_id]}"
            )
        if isinstance(item, Skipped):
            if strict:
                raise AvakitError(f"{path}:{line.number}: {item.reason}: {item.detail}")
            skipped.append(item)
        else:
            seen[item.image_id] = line.number
            rows.append(item)
    if not rows:
        raise AvakitError(no_valid_rows(path, "rows", n_read, skipped))
    return rows, skipped, n_read


def _parse_row(line: Line) -> AvaRow | Skipped:
    """One non-blank line of AVA.txt -> a row, or why it is skipped."""
    if line.problem:
        return Skipped(line.number, None, "malformed line", line.problem)
    fields = split_fields(line.text)
    if len(fields) != N_COLUMNS:
        return Skipped(
            line.number, _guess_id(fields), "malformed line", f"{len(fields)} columns, expected {N_COLUMNS}"
        )
    try:
        values = parse_uints(fields, MAXIMA)
    except FieldError as e:
        column = (e.index or 0) + 1
        return Skipped(
            line.number,
            _guess_id(fields),
            "malformed line",
            f"column {column} ({COLUMN_NAMES[column - 1]}): {e}",
        )
    votes = tuple(values[2:_TAGS])
    if sum(votes) == 0:
        return Skipped(line.number, values[1], "malformed line", "all vote counts are zero")
    tag_1, tag_2, challenge = values[_TAGS:]
    return AvaRow(line.number, values[0], values[1], votes, (tag_1, tag_2), challenge)


def _guess_id(fields: list[str]) -> int | None:
    """The image id of a skipped line, when its second field is one."""
    try:
        return parse_uint(fields[1], MAX_ID) if len(fields) > 1 else None
    except FieldError:
        return None


def read_id_names(path: Path, strict: bool = False) -> tuple[dict[int, str], list[Skipped]]:
    """Read tags.txt / challenges.txt, `id name` per line: ({id: name}, skipped lines).

    A line without an id (ASCII digits, below 2^63) or repeating an id is skipped and recorded
    (with `strict`: an AvakitError naming the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise AvakitError(f"{path}: file not found")
    items, skipped, n_read = _read_keyed(path, _parse_name_line, strict)
    names = dict(items)
    if not names and n_read:
        raise AvakitError(no_valid_rows(path, "lines", n_read, skipped))
    return names, skipped


def _read_keyed(
    path: Path, parse: Callable[[Line, dict[int, int]], tuple[int, Any] | Skipped], strict: bool
) -> tuple[list[tuple[int, Any]], list[Skipped], int]:
    """Each non-blank line through `parse(line, seen ids)`: (valid (id, value) pairs, skipped, lines read).

    A skipped line is recorded; with `strict` it is an AvakitError naming the file and line.
    """
    items: list[tuple[int, Any]] = []
    seen: dict[int, int] = {}
    skipped: list[Skipped] = []
    n_read = 0
    for line in read_lines(path):
        if line.blank:
            continue
        n_read += 1
        item = parse(line, seen)
        if isinstance(item, Skipped):
            if strict:
                raise AvakitError(f"{path}:{line.number}: {item.reason}: {item.detail}")
            skipped.append(item)
        else:
            seen[item[0]] = line.number
            items.append(item)
    return items, skipped, n_read


def _parse_name_line(line: Line, seen: dict[int, int]) -> tuple[int, str] | Skipped:
    if line.problem:
        return Skipped(line.number, None, "malformed line", line.problem)
    parts = split_fields(line.text, maxsplit=1)
    try:
        key = parse_uint(parts[0], MAX_ID)
    except FieldError as e:
        return Skipped(line.number, None, "malformed line", f"expected 'id name', id: {e}")
    if key in seen:
        return Skipped(line.number, key, "duplicate", f"id already on line {seen[key]}")
    return key, parts[1].strip() if len(parts) > 1 else ""


def parse_id_names(path: Path) -> dict[int, str]:
    """Read tags.txt / challenges.txt -> {id: name}; a bad line is an AvakitError naming it."""
    return read_id_names(path, strict=True)[0]


def read_id_list(path: Path, strict: bool = False) -> tuple[list[int], list[Skipped]]:
    """Read an image list such as generic_test.jpgl, one image id per line: (ids, skipped lines).

    A line that is not one id (ASCII digits, below 2^63), or repeats one, is skipped and recorded
    (with `strict`: an AvakitError naming the file and line). A list without any valid id is an
    AvakitError showing the first reasons.
    """
    path = Path(path)
    if not path.is_file():
        raise AvakitError(f"{path}: image list not found")
    items, skipped, n_read = _read_keyed(path, _parse_list_line, strict)
    ids = [image_id for image_id, _ in items]
    if not ids:
        raise AvakitError(no_valid_rows(path, "image ids", n_read, skipped))
    return ids, skipped


def _parse_list_line(line: Line, seen: dict[int, int]) -> tuple[int, None] | Skipped:
    if line.problem:
        return Skipped(line.number, None, "malformed line", line.problem)
    fields = split_fields(line.text)
    if len(fields) != 1:
        return Skipped(line.number, None, "malformed line", f"{len(fields)} fields, expected one image id")
    try:
        image_id = parse_uint(fields[0], MAX_ID)
    except FieldError as e:
        return Skipped(line.number, None, "malformed line", f"image id: {e}")
    if image_id in seen:
        return Skipped(line.number, image_id, "duplicate", f"image id already on line {seen[image_id]}")
    return image_id, None


def no_valid_rows(path: Path, what: str, n_read: int, skipped: Sequence[Skipped], shown: int = 3) -> str:
    """The message for a file without a single valid entry: the first reasons, with line numbers."""
    if n_read == 0:
        return f"{path}: no {what}: the file has no non-blank line"
    reasons = "; ".join(f"line {s.line}: {s.reason}: {s.detail}" for s in skipped[:shown])
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"{path}: no valid {what} among {n_read} read: {reasons}{more}"


def _check_ratio(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise AvakitError(f"{name} must be in [0, 1), got {value}")


def random_split(ids: list[int], val_ratio: float, test_ratio: float, seed: int) -> dict[str, list[int]]:
    """Seeded random split of image ids into train/val/test; each list sorted.

    The ids are sorted before shuffling, so the split depends only on the set of ids and the seed.
    """
    _check_ratio("val_ratio", val_ratio)
    _check_ratio("test_ratio", test_ratio)
    if val_ratio + test_ratio >= 1.0:
        raise AvakitError("val_ratio plus test_ratio must be below 1")
    order = np.random.default_rng(seed).permutation(sorted(ids)).tolist()
    n_test = round(len(order) * test_ratio)
    n_val = round(len(order) * val_ratio)
    return {
        "train": sorted(order[n_test + n_val :]),
        "val": sorted(order[n_test : n_test + n_val]),
        "test": sorted(order[:n_test]),
    }


def official_split(ids: list[int], test_ids: list[int], val_ratio: float, seed: int) -> dict[str, list[int]]:
    """The official protocol: test = listed ids present in AVA.txt; val = seeded share of the rest."""
    listed = set(test_ids)
    test = sorted(i for i in ids if i in listed)
    rest = [i for i in ids if i not in listed]
    split = random_split(rest, val_ratio, 0.0, seed)
    split["test"] = test
    return split
