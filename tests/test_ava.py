"""AVA.txt, tags/challenges and image-list parsing; split creation."""

from __future__ import annotations

from pathlib import Path

import pytest

from avakit.dataset.ava import (
    official_split,
    parse_ava_txt,
    parse_id_names,
    random_split,
    read_id_list,
)
from avakit.errors import AvakitError


def parse_id_list(path: Path) -> list[int]:
    """Read an image list -> ids; a bad line is an AvakitError naming the file and line."""
    return read_id_list(path, strict=True)[0]


REAL_LINE = "1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396"


def write(tmp_path: Path, text: str, name: str = "AVA.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_real_line(tmp_path: Path) -> None:
    rows, skipped, n = parse_ava_txt(write(tmp_path, REAL_LINE + "\n"))
    assert (n, skipped) == (1, [])
    row = rows[0]
    assert (row.index, row.image_id, row.line) == (1, 953619, 1)
    assert row.votes == (0, 1, 5, 17, 38, 36, 15, 6, 5, 1)
    assert row.tags == (1, 22) and row.challenge == 1396
    assert row.mean_score == pytest.approx(
        sum(k * c for k, c in zip(range(1, 11), row.votes, strict=True)) / 124
    )
    assert row.label() == {
        "image_id": 953619,
        "index": 1,
        "votes": list(row.votes),
        "tags": [1, 22],
        "challenge": 1396,
    }


MALFORMED = [
    ("1 2 3 4 5 6 7 8 9 10 11 12 13 14", "14 columns"),
    ("1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16", "16 columns"),
    ("1 777 0 1 5 17 38 x 15 6 5 1 1 22 1396", "not an integer"),
    ("1 777 0 1 5 17 38 3.5 15 6 5 1 1 22 1396", "not an integer"),
    ("1 777 0 0 0 0 0 0 0 0 0 0 1 22 1396", "all vote counts are zero"),
    ("1 777 0 -1 5 17 38 3 15 6 5 1 1 22 1396", "negative"),
]


@pytest.mark.parametrize(("line", "detail"), MALFORMED)
def test_malformed_lines_are_skipped_with_line_number(tmp_path: Path, line: str, detail: str) -> None:
    path = write(tmp_path, f"{REAL_LINE}\n\n{line}\n")
    rows, skipped, n = parse_ava_txt(path)
    assert n == 2 and len(rows) == 1
    assert skipped[0].line == 3 and skipped[0].reason == "malformed line"
    assert detail in skipped[0].detail
    with pytest.raises(AvakitError, match=rf"AVA.txt:3: malformed line: .*{detail}"):
        parse_ava_txt(path, strict=True)


def test_duplicate_image_id(tmp_path: Path) -> None:
    dup = REAL_LINE.replace("1 953619", "2 953619", 1)
    rows, skipped, n = parse_ava_txt(write(tmp_path, f"{REAL_LINE}\n{dup}\n"))
    assert n == 2 and [r.line for r in rows] == [1]
    assert (skipped[0].line, skipped[0].image_id, skipped[0].reason) == (2, 953619, "duplicate")
    assert "line 1" in skipped[0].detail


def test_limit_reads_first_rows(tmp_path: Path) -> None:
    lines = [f"{i} {1000 + i} 0 1 5 17 38 36 15 6 5 1 0 0 7" for i in range(1, 11)]
    rows, _, n = parse_ava_txt(write(tmp_path, "\n".join(lines)), limit=4)
    assert n == 4 and [r.image_id for r in rows] == [1001, 1002, 1003, 1004]


def test_missing_file_names_path(tmp_path: Path) -> None:
    with pytest.raises(AvakitError, match="nope.txt"):
        parse_ava_txt(tmp_path / "nope.txt")


def test_id_names_and_lists(tmp_path: Path) -> None:
    names = parse_id_names(write(tmp_path, "1 Abstract\n24 Action\n\n1396 100_Meters\n", "t.txt"))
    assert names == {1: "Abstract", 24: "Action", 1396: "100_Meters"}
    assert parse_id_list(write(tmp_path, "629797\n902498\n\n", "l.jpgl")) == [629797, 902498]
    with pytest.raises(AvakitError, match="bad.jpgl:2"):
        parse_id_list(write(tmp_path, "1\nabc\n", "bad.jpgl"))
    with pytest.raises(AvakitError, match="bad.txt:1"):
        parse_id_names(write(tmp_path, "Abstract 1\n", "bad.txt"))


def test_random_split_deterministic_disjoint_complete() -> None:
    ids = list(range(5000, 6000))
    a = random_split(ids, 0.1, 0.2, seed=7)
    b = random_split(list(reversed(ids)), 0.1, 0.2, seed=7)
    assert a == b
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (700, 100, 200)
    assert set(a["train"]) | set(a["val"]) | set(a["test"]) == set(ids)
    assert not set(a["train"]) & set(a["val"]) and not set(a["val"]) & set(a["test"])
    assert random_split(ids, 0.1, 0.2, seed=8)["test"] != a["test"]
    with pytest.raises(AvakitError, match="val_ratio"):
        random_split(ids, 1.5, 0.1, seed=0)
    with pytest.raises(AvakitError, match="below 1"):
        random_split(ids, 0.5, 0.5, seed=0)


def test_official_split() -> None:
    ids = list(range(100))
    split = official_split(ids, test_ids=[3, 5, 7, 1000, 2000], val_ratio=0.1, seed=0)
    assert split["test"] == [3, 5, 7]  # listed ids that exist
    assert len(split["val"]) == round(97 * 0.1)
    assert set(split["train"]) | set(split["val"]) == set(ids) - {3, 5, 7}
    assert split == official_split(ids, [3, 5, 7, 1000, 2000], 0.1, seed=0)
