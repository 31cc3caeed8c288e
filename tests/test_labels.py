"""The labels-table reader (avakit.dataset.labels): valid tables, and every bad input as one line."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from avakit.dataset.labels import LabelRow, parse_scale, read_label_table, table_from_frame
from avakit.errors import AvakitError


def _csv(tmp_path: Path, text: str | bytes, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def _error(path: Path, **kwargs) -> str:
    with pytest.raises(AvakitError) as info:
        read_label_table(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def _skip(tmp_path: Path, text: str, **kwargs):
    table = read_label_table(_csv(tmp_path, text), **kwargs)
    assert len(table.skipped) == 1, table.skipped
    return table.skipped[0]


VOTES7 = "image,votes_1,votes_2,votes_3,votes_4,votes_5,votes_6,votes_7\n"


def test_votes_table_k7(tmp_path):
    path = _csv(tmp_path, VOTES7 + "a.jpg,0,1,2,3,4,5,6\nsub/b.png,10,0,0,0,0,0,1\n")
    table = read_label_table(path)
    assert (table.kind, table.k, table.scale, table.higher_is_better) == ("votes", 7, (1.0, 7.0), True)
    assert table.rows == (
        LabelRow(line=2, image="a.jpg", votes=(0, 1, 2, 3, 4, 5, 6)),
        LabelRow(line=3, image="sub/b.png", votes=(10, 0, 0, 0, 0, 0, 1)),
    )
    assert (table.skipped, table.rows_read, table.source) == ((), 2, str(path))


def test_votes_declared_scale_and_direction(tmp_path):
    path = _csv(tmp_path, "image,votes_1,votes_2,votes_3\na.jpg,1,2,3\n")
    table = read_label_table(path, scale=(0, 10), lower_is_better=True)
    assert (table.k, table.scale, table.higher_is_better) == (3, (0.0, 10.0), False)


def test_mos_table_with_std_and_n(tmp_path):
    path = _csv(tmp_path, "image,mos,std,n\na.jpg,3.25,0.5,12\nb.jpg,1e1,,\nc.jpg,-0.5,0,3\n")
    table = read_label_table(path, scale=(-1, 10))
    assert (table.kind, table.k, table.scale) == ("mos", None, (-1.0, 10.0))
    assert table.rows == (
        LabelRow(line=2, image="a.jpg", mos=3.25, std=0.5, n=12),
        LabelRow(line=3, image="b.jpg", mos=10.0),
        LabelRow(line=4, image="c.jpg", mos=-0.5, std=0.0, n=3),
    )


def test_mos_needs_a_scale(tmp_path):
    message = _error(_csv(tmp_path, "image,mos\na.jpg,3\n"))
    assert "mos labels need a scale (--scale LO:HI)" in message


def test_split_group_weight_and_ignored_columns(tmp_path):
    text = "Image , MOS,Split,group,weight,notes\n"
    text += "a.jpg,2,train,ref1,1.5,x\nb.jpg,3,VAL,ref1,,y\nc.jpg,4,,7,2,z\n"
    table = read_label_table(_csv(tmp_path, text), scale=(1, 5))
    rows = {r.image: r for r in table.rows}
    assert (rows["a.jpg"].split, rows["a.jpg"].group, rows["a.jpg"].weight) == ("train", "ref1", 1.5)
    assert (rows["b.jpg"].split, rows["b.jpg"].weight) == ("val", None)
    assert (rows["c.jpg"].split, rows["c.jpg"].group) == (None, "7")
    assert table.ignored_columns == ("notes",)


def test_votes_table_ignores_std_and_n(tmp_path):
    table = read_label_table(_csv(tmp_path, "image,votes_1,votes_2,n,std\na.jpg,1,2,3,0.5\n"))
    assert table.rows[0].n is None and table.ignored_columns == ("n", "std")


def test_parquet_typed_columns(tmp_path):
    path = tmp_path / "labels.parquet"
    df = pd.DataFrame(
        {
            "image": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
            "votes_1": [1, 0, 2, 0],
            "votes_2": [2.0, 0.0, 1.5, 3.0],
            "group": ["r1", None, "r2", "r3"],
        }
    )
    df.to_parquet(path)
    table = read_label_table(path)
    assert [(r.line, r.image, r.votes, r.group) for r in table.rows] == [
        (1, "a.jpg", (1, 2), "r1"),
        (4, "d.jpg", (0, 3), "r3"),
    ]
    assert [(s.line, s.reason) for s in table.skipped] == [(2, "bad votes"), (3, "bad votes")]


def test_parquet_mos_nan_and_garbage(tmp_path):
    path = tmp_path / "labels.parquet"
    pd.DataFrame({"image": ["a.jpg", "b.jpg"], "mos": [50.0, math.nan]}).to_parquet(path)
    table = read_label_table(path, scale=(0, 100))
    assert [r.mos for r in table.rows] == [50.0] and table.skipped[0].reason == "bad mos"
    bad = _csv(tmp_path, b"PAR1 this is not parquet \x00\xff", name="bad.parquet")
    assert "not a readable parquet file" in _error(bad)


def test_bom_and_names_kept_as_written(tmp_path):
    text = "\ufeffimage,mos\nIMG_0001.JPG,3\nphoto.Bmp,4\nDir/x.tiff,5\n\n"
    table = read_label_table(_csv(tmp_path, text), scale=(1, 5))
    assert [r.image for r in table.rows] == ["IMG_0001.JPG", "photo.Bmp", "Dir/x.tiff"]


def test_crlf_blank_lines_and_quoted_newline_keep_line_numbers(tmp_path):
    text = 'image,mos,notes\r\n\r\na.jpg,2,"two\r\nlines"\r\nb.jpg,x,\r\n'
    table = read_label_table(_csv(tmp_path, text), scale=(1, 5))
    assert table.rows[0].line == 3
    assert (table.skipped[0].line, table.skipped[0].reason) == (5, "bad mos")


def test_table_from_frame_lines(tmp_path):
    df = pd.DataFrame({"image": ["a.jpg", "b.jpg"], "mos": ["1", "11"]})
    table = table_from_frame(df, "preset", scale=(0, 9), lines=[10, 20])
    assert table.rows[0].line == 10 and table.skipped[0].line == 20 and table.source == "preset"
    assert table_from_frame(df.iloc[:1], "x", scale=(0, 9), first_line=5).rows[0].line == 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"", "the file is empty"),
        (b"\n\n  \n", "the file is empty"),
        (b"image,mos\n", "no label rows"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not UTF-8"),
        (b"image,mos\na.jpg,3\nb\xe9.jpg,4\n", "labels.csv:3: not UTF-8"),
        (b"name,mos\na.jpg,3\n", "no 'image' column"),
        (b"image\na.jpg\n", "no label columns"),
        (b"photo\n", "no 'image' column"),
        (b"image,notes\na.jpg,x\n", "no label columns"),
        (b"image,votes_1,votes_2,mos\na.jpg,1,2,3\n", "both votes_ columns and 'mos'"),
        (b"image,votes_1,votes_2,votes_4\na.jpg,1,2,3\n", "found votes_1, votes_2, votes_4"),
        (b"image,votes_0,votes_1\na.jpg,1,2\n", "without gaps"),
        (b"image,votes_1\na.jpg,1\n", "1 vote columns"),
        (b"image,image,mos\na,a,1\n", "appears twice"),
        (b'image,mos\n"a.jpg,3\n', "not valid CSV"),
        (b"image,mos\ra.jpg,3\rb.jpg,4\r", "not valid CSV"),
    ],
)
def test_unusable_tables_are_one_line_errors(tmp_path, text, expected):
    assert expected in _error(_csv(tmp_path, text), scale=(1, 5))


def test_wrong_suffix_missing_file_and_bad_scale(tmp_path):
    assert ".csv or .parquet" in _error(_csv(tmp_path, "image,mos\n", name="labels.tsv"))
    assert "not found" in _error(tmp_path / "nope.csv")
    path = _csv(tmp_path, "image,mos\na.jpg,3\n")
    assert "finite lo < hi" in _error(path, scale=(5, 5))
    assert "finite lo < hi" in _error(path, scale=(0, math.inf))


@pytest.mark.parametrize(
    ("row", "detail"),
    [
        ("a.jpg,-1,2,3", "votes_1: negative value '-1'"),
        ("a.jpg,1.5,2,3", "votes_1: not an integer: '1.5'"),
        ("a.jpg,1,\u0663,3", "votes_2: not an integer"),  # Arabic-Indic digit three
        ("a.jpg,1,+2,3", "votes_2: not an integer"),
        ("a.jpg,1,2,", "votes_3: not an integer: ''"),
        ("a.jpg,0,0,0", "no votes"),
        ("a.jpg,1,2,99999999999", "above the limit"),
    ],
)
def test_bad_votes_are_skipped(tmp_path, row, detail):
    skip = _skip(tmp_path, f"image,votes_1,votes_2,votes_3\nok.jpg,1,1,1\n{row}\n")
    assert (skip.line, skip.image, skip.reason) == (3, "a.jpg", "bad votes")
    assert detail in skip.detail


@pytest.mark.parametrize(
    ("row", "reason", "detail"),
    [
        ("a.jpg,nan", "bad mos", "not a finite number"),
        ("a.jpg,inf", "bad mos", "not a finite number"),
        ("a.jpg,1e999", "bad mos", "not a finite number"),
        ("a.jpg,", "bad mos", "empty"),
        ("a.jpg,7.5", "bad mos", "7.5 is outside the scale 1:7"),
        ("a.jpg,0.99", "bad mos", "outside the scale"),
        ("a.jpg,3,-1", "bad std", "below 0"),
        ("a.jpg,3,,2.5", "bad n", "not an integer"),
        ("a.jpg,3,,,holdout", "bad split", "'holdout' is not one of train, val, test"),
        ("a.jpg,3,,,,0", "bad weight", "not above 0"),
        ("a.jpg,3,,,,nan", "bad weight", "not a finite number"),
        ("/abs/a.jpg,3", "bad image path", "relative"),
        ("C:/photos/a.jpg,3", "bad image path", "relative"),
        ("photos\\a.jpg,3", "bad image path", "relative"),
        ("../a.jpg,3", "bad image path", "'..' leaves the images folder"),
        ("sub/../../a.jpg,3", "bad image path", "'..'"),
        (",3", "missing image name", "empty"),
        ("a.jpg,3,,,,,extra", "malformed row", "7 fields, the header has 6"),
    ],
)
def test_bad_mos_rows_are_skipped(tmp_path, row, reason, detail):
    row += "," * max(0, 5 - row.count(","))  # the six columns of the header
    skip = _skip(tmp_path, f"image,mos,std,n,split,weight\nok.jpg,2,,,,\n{row}\n", scale=(1, 7))
    assert (skip.line, skip.reason) == (3, reason)
    assert detail in skip.detail


def test_short_row_is_malformed(tmp_path):
    skip = _skip(tmp_path, "image,mos,std\nok.jpg,2,\na.jpg\n", scale=(1, 7))
    assert (skip.line, skip.reason, skip.detail) == (3, "malformed row", "1 fields, the header has 3")


def test_duplicate_image_first_wins(tmp_path):
    path = _csv(tmp_path, "image,mos\na.jpg,2\nb.jpg,3\n./a.jpg,4\nA.jpg,5\n")
    table = read_label_table(path, scale=(1, 5))
    assert [(r.image, r.mos) for r in table.rows] == [("a.jpg", 2.0), ("b.jpg", 3.0), ("A.jpg", 5.0)]
    assert (table.skipped[0].line, table.skipped[0].reason) == (4, "duplicate image")
    assert "already on line 2" in table.skipped[0].detail


def test_a_bad_row_does_not_claim_its_name(tmp_path):
    table = read_label_table(_csv(tmp_path, "image,mos\na.jpg,x\na.jpg,4\n"), scale=(1, 5))
    assert [r.line for r in table.rows] == [3] and table.skipped[0].reason == "bad mos"


def test_strict_names_the_first_bad_line(tmp_path):
    path = _csv(tmp_path, "image,mos\na.jpg,2\nb.jpg,2,extra\nc.jpg,9\n")
    assert len(read_label_table(path, scale=(1, 5)).skipped) == 2
    message = _error(path, scale=(1, 5), strict=True)
    assert message == f"{path}:3: malformed row: 3 fields, the header has 2"


def test_no_valid_rows_lists_the_first_reasons(tmp_path):
    rows = "".join(f"i{i}.jpg,{v}\n" for i, v in enumerate(["x", "0", "nan", "", "9"]))
    message = _error(_csv(tmp_path, "image,mos\n" + rows), scale=(1, 5))
    start = f"{tmp_path / 'labels.csv'}: no valid label rows among 5 read: line 2: bad mos: "
    assert message.startswith(start)
    assert "line 3: bad mos: 0 is outside the scale 1:5" in message
    assert "line 4: bad mos" in message and "; and 2 more" in message


def test_long_line_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("avakit.dataset.labels.MAX_LINE_BYTES", 64)
    path = _csv(tmp_path, "image,mos\n" + "a" * 100 + ".jpg,3\n")
    assert "labels.csv:2: line longer than 64 bytes" in _error(path, scale=(1, 5))


def test_row_and_size_limits(tmp_path, monkeypatch):
    path = _csv(tmp_path, "image,mos\na.jpg,1\nb.jpg,2\nc.jpg,3\n")
    monkeypatch.setattr("avakit.dataset.labels.MAX_ROWS", 2)
    assert "more than 2 rows" in _error(path, scale=(1, 5))
    monkeypatch.setattr("avakit.dataset.labels.MAX_FILE_BYTES", 10)
    assert "over the 10-byte limit" in _error(path, scale=(1, 5))


def test_parse_scale():
    assert parse_scale("1:7") == (1.0, 7.0)
    assert parse_scale(" -1.5 : 2e1 ") == (-1.5, 20.0)
    for bad in ["", "7", "1:7:9", "7:1", "1:1", "a:b", "1:inf", "nan:1", "1,7"]:
        with pytest.raises(AvakitError, match="--scale must be LO:HI"):
            parse_scale(bad)


@pytest.mark.parametrize("seed", range(3))
def test_random_bytes_give_a_table_or_one_line_error(tmp_path, seed):
    import random

    rng = random.Random(seed)
    alphabet = b'image,mos,votes_1,votes_2,"\n\r\x00 .jpg/\\0123456789-+e\xc3\xa9\xff'
    for i in range(60):
        body = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))
        path = _csv(tmp_path, (b"image,mos\n" if i % 2 else b"") + body, name=f"r{i}.csv")
        try:
            table = read_label_table(path, scale=(0, 9))
        except AvakitError as e:
            assert "\n" not in str(e) and str(path) in str(e)
        else:
            assert table.rows
