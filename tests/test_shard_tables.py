"""`avakit shard --labels` / `--preset`: string keys, the label's scale in json and manifest,
hash-stable and group-aware splits, recorded bad rows, and one-line errors for misfit flags."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.dataset.labels import read_label_table
from avakit.dataset.plan import ShardOptions
from avakit.dataset.synthetic import SyntheticTable, make_synthetic_table
from avakit.dataset.table_plan import split_table, table_scale

runner = CliRunner()
FAST = ["--short-side", "32", "--shard-size", "16", "--workers", "1"]


def shard(table: SyntheticTable, out: Path, *extra: str) -> tuple[int, str]:
    argv = ["shard", "--labels", str(table.labels), "--images", str(table.images), "--out", str(out)]
    result = runner.invoke(app, [*argv, *FAST, *extra])
    return result.exit_code, result.output


def samples(out: Path) -> dict[str, dict]:
    """key -> json label of every sample in the folder's shards, with its split."""
    found = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(".json"):
                    label = json.loads(t.extractfile(m).read())
                    found[m.name[: -len(".json")]] = {**label, "split": tar.name.split("-")[0]}
    return found


@pytest.fixture(scope="module")
def votes7(tmp_path_factory: pytest.TempPathFactory) -> SyntheticTable:
    return make_synthetic_table(tmp_path_factory.mktemp("v7"), n=40, seed=3, kind="votes", k=7)


def test_votes_table_shards_with_string_keys_and_its_scale(votes7: SyntheticTable, tmp_path: Path) -> None:
    code, output = shard(votes7, tmp_path / "s")
    assert code == 0, output
    assert "rows read 40 = samples written 40 + rows skipped 0" in output
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    assert manifest["labels"] == {
        "kind": "votes",
        "k": 7,
        "scale": [1.0, 7.0],
        "higher_is_better": True,
        "threshold": None,
    }
    assert manifest["sources"]["labels_table"]["name"] == "labels.csv"
    found = samples(tmp_path / "s")
    assert len(found) == 40 and all("." not in key and " " not in key for key in found)
    label = found["sub_dir_photo_0000"]  # "sub dir/photo.0000.jpg"
    assert label["image"] == "sub dir/photo.0000.jpg" and label["kind"] == "votes"
    assert len(label["votes"]) == 7 and label["scale"] == [1.0, 7.0] and label["group"] is None
    assert label["image_id"] == 2  # the row's line in labels.csv (header = line 1)
    suffixes = {Path(label["image"]).suffix for label in found.values()}
    assert suffixes == {".jpg", ".JPG", ".png", ".bmp"}
    result = runner.invoke(app, ["inspect", str(tmp_path / "s"), "--decode"])
    assert result.exit_code == 0, result.output
    assert "mean score (1-7), 7-point votes" in " ".join(result.output.split())


def test_mos_table_needs_a_scale_and_keeps_its_direction(tmp_path: Path) -> None:
    table = make_synthetic_table(tmp_path / "t", n=24, seed=1, kind="mos", scale=(0, 9), lower_is_better=True)
    code, output = shard(table, tmp_path / "a")
    assert code == 2 and "mos labels need a scale (--scale LO:HI)" in output
    code, output = shard(table, tmp_path / "b", "--scale", "0:9", "--lower-is-better")
    assert code == 0, output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["labels"]["kind"] == "mos" and manifest["labels"]["higher_is_better"] is False
    assert "votes_per_image_mean" not in manifest["splits"]["train"]["label_stats"]
    label = next(iter(samples(tmp_path / "b").values()))
    assert 0.0 <= label["mos"] <= 9.0 and {"std", "n"} <= set(label) and "votes" not in label
    assert "MOS (0-9, lower is better)" in " ".join(output.split())


def test_bad_rows_and_images_are_recorded_with_their_line(votes7: SyntheticTable, tmp_path: Path) -> None:
    root = tmp_path / "t"
    shutil.copytree(votes7.root, root)
    lines = (root / "labels.csv").read_text().splitlines()
    lines[3] = lines[3].split(",")[0] + ",1,2,x,0,0,0,0"  # line 4: bad votes
    (root / "images" / "photo.0006.png").unlink()  # line 8: its image is missing
    (root / "images" / "photo.0007.bmp").write_bytes(b"not an image")  # line 9
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    table = SyntheticTable(root, root / "labels.csv", root / "images", votes7.qualities)
    code, output = shard(table, tmp_path / "s")
    assert code == 0, output
    assert "rows read 40 = samples written 37 + rows skipped 3" in output
    skipped = json.loads((tmp_path / "s" / "manifest.json").read_text())["skipped"]
    assert [(s["line"], s["reason"]) for s in skipped] == [
        (4, "bad votes"),
        (8, "missing"),
        (9, "not an image"),
    ]
    assert skipped[1]["detail"].startswith("photo.0006.png: ")


def test_hash_split_keeps_every_other_image_when_rows_are_removed(tmp_path: Path) -> None:
    table = make_synthetic_table(tmp_path / "t", n=120, seed=4, kind="votes", k=5)
    full = read_label_table(table.labels)
    options = ShardOptions(val_ratio=0.2, test_ratio=0.2)

    def splits(rows) -> dict[str, str]:
        parts = split_table(list(rows), table_scale(full), options)
        return {s.key: split for split, members in parts.items() for s in members}

    before = splits(full.rows)
    after = splits([r for i, r in enumerate(full.rows) if i not in (3, 17, 40, 77)])
    assert len(after) == 116
    assert all(before[key] == split for key, split in after.items())
    assert {"train", "val", "test"} == set(before.values())


def test_groups_never_straddle_and_a_split_column_wins(tmp_path: Path) -> None:
    table = make_synthetic_table(tmp_path / "t", n=60, seed=5, kind="mos", scale=(1, 5), groups=12)
    lines = table.labels.read_text().splitlines()
    lines[0] += ",split"
    lines[1:] = [line + (",test" if i == 0 else ",") for i, line in enumerate(lines[1:])]
    table.labels.write_text("\n".join(lines) + "\n")
    code, output = shard(table, tmp_path / "s", "--scale", "1:5")
    assert code == 0, output
    found = samples(tmp_path / "s")
    by_group: dict[str, set[str]] = {}
    for label in found.values():
        by_group.setdefault(label["group"], set()).add(label["split"])
    assert all(len(splits) == 1 for splits in by_group.values())
    assert by_group["ref000"] == {"test"}  # row 0 is in group ref000, its split column says test


def test_rerun_is_byte_identical_and_resumes(votes7: SyntheticTable, tmp_path: Path) -> None:
    assert shard(votes7, tmp_path / "a")[0] == 0
    assert shard(votes7, tmp_path / "b", "--workers", "2")[0] == 0
    for tar in (tmp_path / "a").glob("*.tar"):
        assert tar.read_bytes() == (tmp_path / "b" / tar.name).read_bytes()
    code, output = shard(votes7, tmp_path / "a")
    assert code == 0 and "resuming" in output
    code, output = shard(votes7, tmp_path / "c", "--limit", "10")
    assert code == 0 and "rows read 10 = samples written 10" in output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--ava-txt", "AVA.txt"],
            "give exactly one of --ava-txt, --labels, --preset or --phototriage (got --ava-txt, --labels)",
        ),
        (["--test-list", "x.jpgl"], "a labels table marks its test images in a `split` column"),
        (["--split", "official"], "put the official test images in its `split` column"),
        (["--scale", "7:1"], "--scale must be LO:HI with finite numbers and LO < HI"),
    ],
)
def test_misfit_options_are_one_line_errors(
    votes7: SyntheticTable, tmp_path: Path, extra: list[str], message: str
) -> None:
    code, output = shard(votes7, tmp_path / "s", *extra)
    assert code == 2 and message in " ".join(output.split()) and "Traceback" not in output


def test_no_input_and_ava_with_a_scale(tmp_path: Path) -> None:
    result = runner.invoke(app, ["shard", "--out", str(tmp_path / "s")])
    assert (
        result.exit_code == 2
        and "give exactly one of --ava-txt, --labels, --preset or --phototriage" in result.output
    )
    argv = ["shard", "--ava-txt", "AVA.txt", "--images", ".", "--scale", "1:10", "--out", str(tmp_path)]
    result = runner.invoke(app, argv)
    assert (
        result.exit_code == 2 and "--scale and --lower-is-better describe a --labels table" in result.output
    )


def test_preset_koniq10k_from_its_release_layout(tmp_path: Path) -> None:
    table = make_synthetic_table(tmp_path / "src", n=12, seed=6, kind="votes", k=5)
    root = tmp_path / "koniq"
    (root / "1024x768").mkdir(parents=True)
    rows = ['"image_name","c1","c2","c3","c4","c5","c_total","MOS","SD","MOS_zscore"']
    for line in table.labels.read_text().splitlines()[1:]:
        name, *votes = line.split(",")
        if "/" in name or not name.endswith(".jpg"):
            continue
        shutil.copy(table.images / name, root / "1024x768" / name)
        rows.append(f'"{name}",{",".join(votes)},{sum(map(int, votes))},3.0,0.5,50.0')
    (root / "koniq10k_scores_and_distributions.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "s"
    result = runner.invoke(app, ["shard", "--preset", "koniq10k", str(root), "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labels"]["k"] == 5 and manifest["labels"]["scale"] == [1.0, 5.0]
    assert manifest["sources"]["preset"] == "koniq10k"
    assert manifest["counts"]["samples_written"] == len(rows) - 1
    result = runner.invoke(app, ["shard", "--preset", "nope", str(root), "--out", str(out)])
    assert result.exit_code == 2 and "nope" in result.output


def test_a_name_differing_only_in_letter_case_finds_its_file(votes7: SyntheticTable, tmp_path: Path) -> None:
    root = tmp_path / "t"
    shutil.copytree(votes7.root, root)
    lines = (root / "labels.csv").read_text().splitlines()
    lines[2] = lines[2].replace("photo.0001.JPG", "PHOTO.0001.jpg")  # written on a case-blind system
    lines[3] = lines[3].replace("photo.0002.png", "Photo.0002.PNG")  # two files match: stays missing
    (root / "images" / "PHOTO.0002.png").write_bytes((root / "images" / "photo.0002.png").read_bytes())
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    table = SyntheticTable(root, root / "labels.csv", root / "images", votes7.qualities)
    code, output = shard(table, tmp_path / "s")
    assert code == 0, output
    found = samples(tmp_path / "s")
    assert found["PHOTO_0001"]["image"] == "PHOTO.0001.jpg"  # the table's name is kept
    skipped = json.loads((tmp_path / "s" / "manifest.json").read_text())["skipped"]
    assert [(s["line"], s["reason"]) for s in skipped] == [(4, "missing")]
