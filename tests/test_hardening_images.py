"""Issue 8, points 10, 11 and 14 (images, parsers, empty inputs): absurd images, memory caps per
image and per line, parsers that never traceback nor accept a non-number, empty inputs refused."""

from __future__ import annotations

import io
import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.dataset import images as imageio
from avakit.dataset.ava import REASONS, parse_ava_txt, read_id_list, read_id_names
from avakit.dataset.images import ImageSkip, load_rgb
from avakit.dataset.plan import ShardOptions, plan_sharding
from avakit.dataset.shards import write_shards
from avakit.dataset.synthetic import SyntheticAva
from avakit.errors import AvakitError
from avakit.inference.predict import score_images
from avakit.inference.preprocess import PreprocessSpec, find_images
from avakit.inference.scorer import Scorer

runner = CliRunner()
LINE = "1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396"


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def strip_image() -> Image.Image:
    return Image.new("RGB", (1, 300), (90, 90, 90))  # an 82-byte PNG that became 256x76800 px


# ---- point 10: absurd images are skipped with a reason; memory is capped per image ----


def test_reasons_name_the_new_skips() -> None:
    assert {"bad aspect ratio", "unreadable"} <= set(REASONS)


def test_strip_image_is_skipped_by_shard_and_rerun_works(
    shard_args: Callable[..., list[str]], tiny_ava: SyntheticAva, tmp_path: Path
) -> None:
    ids = tiny_ava.image_ids
    strip_image().save(tiny_ava.images / f"{ids[0]}.jpg", format="PNG")
    Image.new("RGB", (400, 21), "red").save(tiny_ava.images / f"{ids[1]}.jpg")  # 1:19: a panorama, kept
    for _ in range(2):  # the crash happened on every rerun
        result = runner.invoke(app, shard_args(tiny_ava, tmp_path / "s"))
        assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    skipped = {s["image_id"]: s for s in manifest["skipped"]}
    assert set(skipped) == {ids[0]}
    assert skipped[ids[0]]["reason"] == "bad aspect ratio" and "1x300" in skipped[ids[0]]["detail"]
    assert manifest["counts"] == {"rows_read": 40, "samples_written": 39, "rows_skipped": 1}


class FakeScorer(Scorer):
    """Scores every image 5.5 (uniform distribution), with the preprocessing of a real run."""

    spec = PreprocessSpec(40, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), short_side=256, quality=90)
    output_mode = "distribution"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.full((len(batch), 10), 0.1, np.float32)


def test_predict_strip_image_is_its_own_error_row(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (60, 40), "blue").save(folder / "a.jpg")
    strip_image().save(folder / "b.png")
    Image.new("RGB", (50, 50), "green").save(folder / "c.jpg")
    paths, problems = find_images([folder])
    rows = {Path(p.path).name: p for p in score_images(FakeScorer(), paths, batch_size=8)}
    assert problems == [] and rows["b.png"].error.startswith("bad aspect ratio")
    assert rows["a.jpg"].mean_score == pytest.approx(5.5) and rows["c.jpg"].mean_score == pytest.approx(5.5)


@pytest.mark.parametrize(
    ("size", "short_side", "reason"),
    [
        ((21, 1), None, "bad aspect ratio"),
        ((1, 21), 32, "bad aspect ratio"),
        ((360, 20), 4096, "too large"),  # 1:18 is fine, but 73728x4096 px is beyond JPEG and MAX_PIXELS
    ],
)
def test_shape_is_checked_on_the_header(size: tuple[int, int], short_side: int | None, reason: str) -> None:
    with pytest.raises(ImageSkip, match=reason):
        load_rgb(png_bytes(Image.new("L", size)), short_side=short_side)


def test_zero_side_is_a_bad_aspect_ratio() -> None:
    with pytest.raises(ImageSkip, match="bad aspect ratio: 0x300 px"):
        imageio.check_shape(0, 300, 256)


def test_20_to_1_is_still_accepted() -> None:
    assert load_rgb(png_bytes(Image.new("L", (20, 1))), short_side=4).size == (80, 4)


def test_16bit_png_is_scaled_without_float64() -> None:
    """A 16-bit gray PNG of 9 Mpx (25 KB of file) used 206 MB of numpy temporaries; now ~15."""
    ramp = np.tile(np.linspace(0, 65535, 3000).astype(np.uint16), (3000, 1))
    data = png_bytes(Image.fromarray(ramp))
    tracemalloc.start()
    try:
        im = load_rgb(data, short_side=64)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert im.size == (64, 64) and peak < 3 * ramp.size  # float64 alone would be 8 bytes a pixel
    px = np.asarray(im)[0]
    assert px[0, 0] <= 3 and px[-1, 0] >= 252 and np.all(np.diff(px[:, 0].astype(int)) >= 0)


def test_decoded_bytes_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    data = png_bytes(Image.new("RGBA", (100, 100)))
    monkeypatch.setattr(imageio, "MAX_DECODED_BYTES", 100 * 100 * 4 - 1)
    with pytest.raises(ImageSkip, match=r"too large: 100x100 px in mode RGBA decode to 40000 bytes"):
        load_rgb(data)
    assert load_rgb(png_bytes(Image.new("RGB", (100, 100)))).size == (100, 100)  # 30000 bytes: fine


def test_large_file_is_skipped_from_its_size_and_a_non_image_is_not_read(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    with big.open("wb") as f:  # sparse: costs no disk
        f.truncate(imageio.MAX_FILE_BYTES + 1)
    with pytest.raises(ImageSkip, match=r"too large: file has \d+ bytes"):
        load_rgb(big)
    junk = tmp_path / "junk.jpg"
    with junk.open("wb") as f:
        f.write(b"this is not an image")
        f.truncate(50 * 2**20)
    tracemalloc.start()
    try:
        with pytest.raises(ImageSkip, match="not an image"):
            load_rgb(junk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # only the header was read, not the 50 MB


def test_load_rgb_still_takes_bytes() -> None:
    data = png_bytes(Image.new("RGB", (40, 30), (10, 200, 30)))
    assert load_rgb(data, short_side=15).size == (20, 15)
    with pytest.raises(ImageSkip, match="bad aspect ratio"):
        load_rgb(png_bytes(strip_image()))


def test_eps_is_not_handed_to_ghostscript() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageSkip, match="not an image"):
        load_rgb(eps)


def test_unsupported_variant_is_a_skip_not_a_traceback() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="DDS")
    data = bytearray(buf.getvalue())
    data[80:84] = (6144).to_bytes(4, "little")  # pixel format flags Pillow has no decoder for
    with pytest.raises(ImageSkip, match="truncated/undecodable: Unknown pixel format"):
        load_rgb(bytes(data))


def test_unreadable_file_is_a_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.jpg"
    Image.new("RGB", (20, 20)).save(path)

    def refuse(self: Path, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - Path.open's signature
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(ImageSkip, match="unreadable: Permission denied"):
        load_rgb(path)


def test_unreadable_inputs_are_one_line(
    tiny_ava: SyntheticAva, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - any signature
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as m:
        m.setattr("avakit.dataset.plan.os.scandir", refuse)
        with pytest.raises(AvakitError, match="images: cannot read the images folder: Permission denied"):
            plan_sharding(tiny_ava.ava_txt, tiny_ava.images, tmp_path / "s", ShardOptions())
    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(AvakitError, match="AVA.txt: cannot read: Permission denied"):
        parse_ava_txt(tiny_ava.ava_txt)


def test_long_ava_line_is_skipped_without_loading_it(tmp_path: Path) -> None:
    path = tmp_path / "AVA.txt"
    with path.open("w") as f:
        f.write(LINE + "\n" + "9 " * 2_500_000 + "\n" + LINE.replace("953619", "7", 1) + "\n")
    tracemalloc.start()
    try:
        rows, skipped, n = parse_ava_txt(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 3 and [r.line for r in rows] == [1, 3]
    assert (skipped[0].line, skipped[0].reason) == (2, "malformed line")
    assert skipped[0].detail == "line longer than 4096 bytes"
    assert peak < 2**20  # the 5 MB line was never held whole


# ---- point 11: parsers never traceback and never silently accept ----

BAD_FIELDS = [
    ("²", "not an integer"),
    ("٣", "not an integer"),
    ("1_0", "not an integer"),
    ("--3", "not an integer"),
    ("+3", "not an integer"),
    ("-3", "negative value"),
    ("3.5", "not an integer"),
    ("0x1f", "not an integer"),
    ("1" + "0" * 30, "is above the limit"),
    ("1" + "0" * 4000, "is above the limit"),  # int() stops at 4300
]


@pytest.mark.parametrize(("field", "detail"), BAD_FIELDS)
@pytest.mark.parametrize("column", [2, 6, 15])
def test_ava_txt_bad_integer_is_a_recorded_skip(tmp_path: Path, field: str, detail: str, column: int) -> None:
    fields = LINE.replace("953619", "5", 1).split()
    fields[column - 1] = field
    path = tmp_path / "AVA.txt"
    path.write_text(f"{LINE}\n{' '.join(fields)}\n", encoding="utf-8")
    rows, skipped, n = parse_ava_txt(path)
    assert n == 2 and [r.line for r in rows] == [1]
    assert (skipped[0].line, skipped[0].reason) == (2, "malformed line")
    assert skipped[0].detail.startswith(f"column {column} (") and detail in skipped[0].detail
    with pytest.raises(AvakitError, match=rf"AVA.txt:2: malformed line: column {column} .*{detail}"):
        parse_ava_txt(path, strict=True)


def test_ava_txt_bounds(tmp_path: Path) -> None:
    ok = LINE.split()
    ok[1], ok[2], ok[14] = str(2**63 - 1), str(10**9), str(2**63 - 1)
    over = list(ok)
    over[1] = str(2**63)
    path = tmp_path / "AVA.txt"
    path.write_text(" ".join(ok) + "\n" + " ".join(over) + "\n")
    rows, skipped, _ = parse_ava_txt(path)
    assert rows[0].image_id == 2**63 - 1 and rows[0].votes[0] == 10**9
    assert "column 2 (image id)" in skipped[0].detail and str(2**63 - 1) in skipped[0].detail


def test_non_ascii_space_is_no_separator(tmp_path: Path) -> None:
    path = tmp_path / "AVA.txt"
    path.write_text(LINE + "\n" + LINE.replace("953619", "8", 1).replace(" ", "\u3000", 1) + "\n")
    rows, skipped, _ = parse_ava_txt(path)
    assert len(rows) == 1 and skipped[0].detail == "14 columns, expected 15"


def test_bom_keeps_row_one_everywhere(tmp_path: Path) -> None:
    ava = tmp_path / "AVA.txt"
    ava.write_bytes(b"\xef\xbb\xbf" + LINE.encode() + b"\r\n")
    rows, skipped, _ = parse_ava_txt(ava)
    assert [r.image_id for r in rows] == [953619] and skipped == []
    tags = tmp_path / "tags.txt"
    tags.write_bytes(b"\xef\xbb\xbf1 Abstract\n24 Action\n")
    assert read_id_names(tags) == ({1: "Abstract", 24: "Action"}, [])
    jpgl = tmp_path / "l.jpgl"
    jpgl.write_bytes(b"\xef\xbb\xbf629797\n902498\n")
    assert read_id_list(jpgl, strict=True)[0] == [629797, 902498]


def test_non_utf8_line_is_a_recorded_skip(tmp_path: Path) -> None:
    path = tmp_path / "AVA.txt"
    path.write_bytes(LINE.encode() + b"\n1 5 0 1 \xff\xfe 17 38 36 15 6 5 1 1 22 1396\n")
    rows, skipped, n = parse_ava_txt(path)
    assert n == 2 and len(rows) == 1
    assert skipped[0].line == 2 and skipped[0].detail == "not UTF-8 text: byte 0xff at column 9"


@pytest.mark.parametrize(("field", "detail"), BAD_FIELDS[:6])
def test_image_list_and_names_bad_ids(tmp_path: Path, field: str, detail: str) -> None:
    jpgl = tmp_path / "test.jpgl"
    jpgl.write_text(f"629797\n{field}\n902498\n629797\n", encoding="utf-8")
    ids, skipped = read_id_list(jpgl)
    assert ids == [629797, 902498]
    assert [(s.line, s.reason) for s in skipped] == [(2, "malformed line"), (4, "duplicate")]
    assert detail in skipped[0].detail
    with pytest.raises(AvakitError, match=rf"test.jpgl:2: malformed line: .*{detail}"):
        read_id_list(jpgl, strict=True)
    names = tmp_path / "tags.txt"
    names.write_text(f"1 Abstract\n{field} Action\n", encoding="utf-8")
    found, skipped = read_id_names(names)
    assert found == {1: "Abstract"} and skipped[0].line == 2 and detail in skipped[0].detail
    with pytest.raises(AvakitError, match=rf"tags.txt:2: malformed line: .*{detail}"):
        read_id_names(names, strict=True)


def test_no_valid_row_shows_first_reasons(
    shard_args: Callable[..., list[str]], tiny_ava: SyntheticAva, tmp_path: Path
) -> None:
    tiny_ava.ava_txt.write_text("1 2 3 4 5 6 7 8 9\n1 ٣ 0 1 5 17 38 36 15 6 5 1 1 22 1396\n\n" + "x\n" * 4)
    result = runner.invoke(app, shard_args(tiny_ava, tmp_path / "s"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    out = " ".join(result.output.split())
    assert "no valid rows among 6 read" in out
    assert "line 1: malformed line: 9 columns, expected 15" in out
    assert "line 2: malformed line: column 2 (image id): not an integer: '٣'" in out
    assert "and 3 more" in out
    jpgl = tmp_path / "l.jpgl"
    jpgl.write_text("abc\n")
    with pytest.raises(AvakitError, match="l.jpgl: no valid image ids among 1 read: line 1: malformed"):
        read_id_list(jpgl)


# ---- point 14: empty inputs, --test-list, --seed ----


def test_shard_refuses_an_empty_images_folder(
    shard_args: Callable[..., list[str]], tiny_ava: SyntheticAva, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, shard_args(tiny_ava, tmp_path / "s", images=empty))
    assert result.exit_code == 2 and "images folder holds no files" in result.output
    assert not (tmp_path / "s").exists()  # refused before any work


def test_shard_exits_1_when_no_sample_is_written(
    shard_args: Callable[..., list[str]], tiny_ava: SyntheticAva, tmp_path: Path
) -> None:
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "readme.txt").write_text("no photos here\n")
    result = runner.invoke(app, shard_args(tiny_ava, tmp_path / "s", images=folder))
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "no sample could be written: 40 rows read, 40 skipped (missing 40)" in out
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["counts"] == {"rows_read": 40, "samples_written": 0, "rows_skipped": 40}


def test_predict_with_nothing_to_score_is_one_line(tmp_path: Path) -> None:
    empty, notes = tmp_path / "empty", tmp_path / "notes"
    empty.mkdir()
    notes.mkdir()
    (notes / "readme.txt").write_text("not a photo\n")
    result = runner.invoke(app, ["predict", str(empty), str(notes), "--run", str(tmp_path / "run")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    out = " ".join(result.output.split())
    assert f"nothing to score: {empty}: folder holds no image files (bmp, jpeg, jpg" in out
    assert f"{notes}: folder holds no image files" in out
    Image.new("RGB", (20, 20)).save(tmp_path / "a.jpg")
    paths, problems = find_images([tmp_path / "a.jpg", empty])
    assert paths == [tmp_path / "a.jpg"] and problems[0][0] == empty  # reported as that input's row


def test_test_list_needs_split_official(
    shard_args: Callable[..., list[str]], tiny_ava: SyntheticAva, tmp_path: Path
) -> None:
    result = runner.invoke(app, shard_args(tiny_ava, tmp_path / "s", "--test-list", str(tiny_ava.test_list)))
    assert result.exit_code == 2 and "test_list is only used with split 'official'" in result.output


def test_official_split_counts_ids_absent_from_ava_txt(tiny_ava: SyntheticAva, tmp_path: Path) -> None:
    with tiny_ava.test_list.open("a") as f:
        f.write("not-an-id\n")
    listed = [int(x) for x in tiny_ava.test_list.read_text().split()[:-1]]
    plan = plan_sharding(
        tiny_ava.ava_txt,
        tiny_ava.images,
        tmp_path / "s",
        ShardOptions(short_side=32, split="official"),
        test_list=tiny_ava.test_list,
    )
    manifest = write_shards(plan)
    entry = manifest["sources"]["test_list"]
    from avakit.fileio import file_sha256

    absent = sum(i not in set(tiny_ava.image_ids) for i in listed)
    assert absent == 5 and entry["sha256"] == file_sha256(tiny_ava.test_list)
    assert (entry["ids_listed"], entry["ids_not_in_ava_txt"]) == (len(listed), absent)
    assert entry["lines_skipped"][0]["reason"] == "malformed line"
    assert manifest["splits"]["test"]["samples"] == len(listed) - absent
    with pytest.raises(AvakitError, match=r"generic_test.jpgl:\d+: malformed line"):
        plan_sharding(
            tiny_ava.ava_txt,
            tiny_ava.images,
            tmp_path / "s2",
            ShardOptions(split="official"),
            test_list=tiny_ava.test_list,
            strict=True,
        )


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_seed_outside_64_bits_is_one_line(
    shard_args: Callable[..., list[str]], tiny_ava: SyntheticAva, tmp_path: Path, seed: str
) -> None:
    result = runner.invoke(app, shard_args(tiny_ava, tmp_path / "s", "--seed", seed))
    assert result.exit_code == 2 and "Invalid value for '--seed'" in result.output
    assert "Traceback" not in result.output
