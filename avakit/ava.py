"""Parsing the AVA release files (AVA.txt, tags.txt, challenges.txt, *.jpgl) and making splits.

AVA.txt has 15 whitespace-separated integers per line: index, image id, counts of ratings
1..10, two semantic tag ids (0 = none) and a challenge id. Images are `{image id}.jpg`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avakit.errors import AvakitError

N_COLUMNS = 15
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class AvaRow:
    """One valid line of AVA.txt."""

    line: int  # 1-based line number in AVA.txt
    index: int
    image_id: int
    votes: tuple[int, ...]  # counts of ratings 1..10
    tags: tuple[int, int]
    challenge: int

    @property
    def mean_score(self) -> float:
        """Mean rating, sum(k * count_k) / sum(count_k)."""
        return sum((k + 1) * c for k, c in enumerate(self.votes)) / sum(self.votes)

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
    "not an image",
    "truncated/undecodable",
    "too large",
)


def _parse_line(line_no: int, text: str) -> AvaRow | Skipped:
    fields = text.split()
    guess_id = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    if len(fields) != N_COLUMNS:
        return Skipped(line_no, guess_id, "malformed line", f"{len(fields)} columns, expected 15")
    try:
        values = [int(f) for f in fields]
    except ValueError:
        bad = next(f for f in fields if not f.lstrip("-").isdigit())
        return Skipped(line_no, guess_id, "malformed line", f"not an integer: {bad!r}")
    votes = tuple(values[2:12])
    if any(v < 0 for v in values):
        return Skipped(line_no, guess_id, "malformed line", "negative value")
    if sum(votes) == 0:
        return Skipped(line_no, values[1], "malformed line", "all vote counts are zero")
    return AvaRow(line_no, values[0], values[1], votes, (values[12], values[13]), values[14])


def parse_ava_txt(
    path: Path, strict: bool = False, limit: int | None = None
) -> tuple[list[AvaRow], list[Skipped], int]:
    """Read AVA.txt: (valid rows in file order, skipped rows, rows read).

    A malformed line or a duplicate image id is skipped and recorded with its line number;
    with `strict` it raises AvakitError naming the file and line. Blank lines are not rows.
    `limit` reads only the first N rows.
    """
    path = Path(path)
    if not path.is_file():
        raise AvakitError(f"{path}: AVA.txt not found")
    rows: list[AvaRow] = []
    skipped: list[Skipped] = []
    seen: dict[int, int] = {}
    n_read = 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue
            if limit is not None and n_read >= limit:
                break
            n_read += 1
            item = _parse_line(line_no, text)
            if isinstance(item, AvaRow) and item.image_id in seen:
                item = Skipped(line_no, item.image_id, "duplicate",
                               f"image id already on line {seen[item.image_id]}")
            if isinstance(item, Skipped):
                if strict:
                    raise AvakitError(f"{path}:{line_no}: {item.reason}: {item.detail}")
                skipped.append(item)
            else:
                seen[item.image_id] = line_no
                rows.append(item)
    return rows, skipped, n_read


def parse_id_names(path: Path) -> dict[int, str]:
    """Read tags.txt / challenges.txt: `id name` per line -> {id: name}."""
    path = Path(path)
    if not path.is_file():
        raise AvakitError(f"{path}: file not found")
    names: dict[int, str] = {}
    for line_no, text in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not text.strip():
            continue
        parts = text.strip().split(maxsplit=1)
        if not parts[0].isdigit():
            raise AvakitError(f"{path}:{line_no}: expected 'id name', got {text.strip()!r}")
        names[int(parts[0])] = parts[1].strip() if len(parts) > 1 else ""
    return names


def parse_id_list(path: Path) -> list[int]:
    """Read an image list such as generic_test.jpgl: one image id per line."""
    path = Path(path)
    if not path.is_file():
        raise AvakitError(f"{path}: image list not found")
    ids = []
    for line_no, text in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        text = text.strip()
        if not text:
            continue
        if not text.isdigit():
            raise AvakitError(f"{path}:{line_no}: expected an image id, got {text!r}")
        ids.append(int(text))
    return ids


def _check_ratio(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise AvakitError(f"--{name} must be in [0, 1), got {value}")


def random_split(
    ids: list[int], val_ratio: float, test_ratio: float, seed: int
) -> dict[str, list[int]]:
    """Seeded random split of image ids into train/val/test; each list sorted.

    The ids are sorted before shuffling, so the split depends only on the set of ids and the seed.
    """
    _check_ratio("val-ratio", val_ratio)
    _check_ratio("test-ratio", test_ratio)
    if val_ratio + test_ratio >= 1.0:
        raise AvakitError("--val-ratio plus --test-ratio must be below 1")
    order = np.random.default_rng(seed).permutation(sorted(ids)).tolist()
    n_test = round(len(order) * test_ratio)
    n_val = round(len(order) * val_ratio)
    return {
        "train": sorted(order[n_test + n_val:]),
        "val": sorted(order[n_test:n_test + n_val]),
        "test": sorted(order[:n_test]),
    }


def official_split(
    ids: list[int], test_ids: list[int], val_ratio: float, seed: int
) -> dict[str, list[int]]:
    """The official protocol: test = listed ids present in AVA.txt; val = seeded share of the rest."""
    listed = set(test_ids)
    test = sorted(i for i in ids if i in listed)
    rest = [i for i in ids if i not in listed]
    split = random_split(rest, val_ratio, 0.0, seed)
    split["test"] = test
    return split
