"""`avakit shard --folders ROOT --splits splits.json`: one group sample per folder chunk (json as the
contract says), pairs never across folders, chunking of large folders, splits.json problems as one
line, unreadable photos skipped alone with counts reconciled, mos.csv carried or refused, resume
and byte-identical reruns, misfit flags, inspect, manifest checks of the folder counts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from shard_reading import digests, samples
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.dataset.folders_plan import FoldersInput, plan_folders
from avakit.dataset.manifest import load_manifest, verify_shards
from avakit.dataset.plan import ShardOptions
from avakit.dataset.samples import check_group_label, member_name
from avakit.dataset.shards import write_shards
from avakit.dataset.synthetic_folders import SyntheticFolders, make_synthetic_folders
from avakit.errors import AvakitError

runner = CliRunner()
FAST = ["--short-side", "32", "--shard-size", "3", "--workers", "1"]


def shard(
    data: SyntheticFolders | Path, out: Path, *extra: str, splits: Path | None = None
) -> tuple[int, str]:
    root = data.root if isinstance(data, SyntheticFolders) else data
    splits = splits or root / "splits.json"
    args = ["shard", "--folders", str(root), "--splits", str(splits), "--out", str(out), *FAST, *extra]
    result = runner.invoke(app, args)
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> SyntheticFolders:
    return make_synthetic_folders(
        tmp_path_factory.mktemp("f"), n_folders=8, seed=3, size=(64, 48), mos_share=0.5
    )


@pytest.fixture(scope="module")
def sharded(data: SyntheticFolders, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("s") / "s"
    code, output = shard(data, out, "--mos", str(data.mos))
    assert code == 0, output
    return out


def copy_data(data: SyntheticFolders, dest: Path) -> Path:
    shutil.copytree(data.root, dest)
    return dest


def test_group_samples_and_json_as_specified(data: SyntheticFolders, sharded: Path) -> None:
    found = samples(sharded)
    assert len(found) == 8
    mos = dict(line.split(",") for line in data.mos.read_text().splitlines()[1:])  # type: ignore[union-attr]
    lo, hi = min(map(float, mos.values())), max(map(float, mos.values()))
    ids = set()
    for key, entry in found.items():
        label, folder = entry["label"], key.rsplit("-", 1)[0]
        good = sorted(f"{folder}/good/{p.name}" for p in (data.files / folder / "good").glob("*.jpg"))
        bad = sorted(f"{folder}/bad/{p.name}" for p in (data.files / folder / "bad").glob("*.jpg"))
        assert key == f"{folder}-000" and entry["split"] == data.folders[folder]
        assert entry["images"] == [member_name(k) for k in range(len(good) + len(bad))]
        assert label == {
            "key": key,
            "kind": "pairs",
            "image_id": label["image_id"],
            "group": folder,
            "members": good + bad,
            "grades": ["good"] * len(good) + ["bad"] * len(bad),
            "mos": [float(mos[m]) if m in mos else None for m in good + bad],
            "mos_scale": [lo, hi],
            "chunk": [0, 1],
            "pairs": [
                [g, b, 1.0, 1, 2] for g in range(len(good)) for b in range(len(good), len(good) + len(bad))
            ],
            "source": "folders",
        }
        assert check_group_label(key, label).name == "OK"
        ids.add(label["image_id"])
    assert len(ids) == 8
    manifest = load_manifest(sharded)
    assert manifest["labels"]["kind"] == "pairs" and manifest["split"] == {
        "method": "splits.json",
        "limit": None,
    }
    assert (
        manifest["sources"]["splits_json"]["name"] == "splits.json"
        and "sha256" in manifest["sources"]["mos_csv"]
    )
    assert manifest["sources"]["rows"].startswith("photos")
    train = [e["label"] for e in found.values() if e["split"] == "train"]
    stats = manifest["splits"]["train"]["label_stats"]
    assert stats["n"] == stats["folders"] == len(train)
    assert stats["photos"] == sum(len(la["members"]) for la in train) == stats["good"] + stats["bad"]
    assert stats["pairs"] == stats["decided_pairs"] == sum(len(la["pairs"]) for la in train)
    assert stats["human_ceiling"] == 1.0
    assert stats["mos"] == sum(m is not None for la in train for m in la["mos"])


def test_no_pair_across_folders(sharded: Path) -> None:
    for key, entry in samples(sharded).items():
        label = entry["label"]
        for g, b, *_ in label["pairs"]:
            for m in (label["members"][g], label["members"][b]):
                assert m.split("/")[0] == label["group"] == key.rsplit("-", 1)[0]
            assert label["grades"][g] == "good" and label["grades"][b] == "bad"


def test_large_folder_is_chunked_with_both_grades(tmp_path: Path) -> None:
    big = make_synthetic_folders(tmp_path / "d", n_folders=3, seed=1, size=(48, 40), photos=(20, 20))
    code, output = shard(big, tmp_path / "s", "--group-size", "8")
    assert code == 0, output
    found = samples(tmp_path / "s")
    assert len(found) == 3 * 5  # 40 photos per folder, 8 per chunk
    per_folder: dict[str, list[str]] = {}
    for key, entry in found.items():
        label = entry["label"]
        assert len(label["members"]) == 8 and set(label["grades"]) == {"good", "bad"}
        assert label["chunk"][1] == 5 and key == f"{label['group']}-{label['chunk'][0]:03d}"
        assert entry["split"] == big.folders[label["group"]]
        per_folder.setdefault(label["group"], []).extend(label["members"])
    for folder, members in per_folder.items():
        assert sorted(members) == sorted(
            str(p.relative_to(big.files)) for p in (big.files / folder).rglob("*.jpg")
        )  # every photo in exactly one chunk
    assert "rows read 120 = photos written 120 + rows skipped 0" in output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "expected a JSON object"),
        ('{"train": ["shoot_000"], "tests": []}', "'tests': unknown split"),
        ('{"train": "shoot_000"}', "train: expected a list of folder names"),
        (
            '{"train": ["shoot_000"], "test": ["shoot_000"]}',
            "test[0]: folder 'shoot_000' is listed in both train and test",
        ),
        ('{"train": ["shoot_000", "shoot_000"]}', "train[1]: folder 'shoot_000' is listed twice"),
        ('{"train": ["../x"]}', "is not a folder name"),
        ('{"train": ["nowhere"]}', "train: folder 'nowhere' not found"),
        ('{"train": []}', "lists no folder"),
        ('{"train": [', "invalid JSON"),
    ],
)
def test_splits_json_problems_are_one_line(
    data: SyntheticFolders, tmp_path: Path, content: str, message: str
) -> None:
    splits = tmp_path / "splits.json"
    splits.write_text(content)
    code, output = shard(data, tmp_path / "s", splits=splits)
    assert code == 2 and message in output and "splits.json" in output, output
    assert "Traceback" not in output and not (tmp_path / "s" / "manifest.json").exists()


def test_unlisted_folder_skipped_with_reason(data: SyntheticFolders, tmp_path: Path) -> None:
    lists = json.loads(data.splits.read_text())
    gone = lists["train"].pop(0)
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps(lists))
    code, output = shard(data, tmp_path / "s", splits=splits)
    assert code == 0, output
    manifest = load_manifest(tmp_path / "s")
    assert manifest["sources"]["folders"]["unlisted"] == [gone]
    n = len(list((data.files / gone).rglob("*.jpg")))
    assert manifest["skipped_by_reason"] == {"folder in no split": n}
    assert all(s["detail"].startswith(f"{gone}/") for s in manifest["skipped"])
    assert gone not in {e["label"]["group"] for e in samples(tmp_path / "s").values()}


def test_unreadable_photo_is_skipped_alone_and_counts_reconcile(
    data: SyntheticFolders, tmp_path: Path
) -> None:
    root = copy_data(data, tmp_path / "r")
    folder = next(f for f, s in data.folders.items() if s == "train")
    broken = sorted((root / "training_files" / folder / "good").glob("*.jpg"))[0]
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    (root / "training_files" / folder / "bad" / "notes.txt").write_text("not a photo")
    # a two-photo folder that loses one photo is skipped whole, both photos named
    pair = root / "training_files" / "zz_pair"
    for grade in ("good", "bad"):
        (pair / grade).mkdir(parents=True)
        shutil.copy(
            broken
            if grade == "good"
            else sorted((root / "training_files" / folder / "bad").glob("*.jpg"))[0],
            pair / grade / "a.jpg",
        )
    lists = json.loads((root / "splits.json").read_text())
    lists["val"].append("zz_pair")
    (root / "splits.json").write_text(json.dumps(lists))
    code, output = shard(root, tmp_path / "s")
    assert code == 0, output
    total = sum(1 for _ in (root / "training_files").rglob("*.jpg"))
    assert f"rows read {total} = photos written {total - 3} + rows skipped 3" in output
    manifest = load_manifest(tmp_path / "s")
    assert manifest["sources"]["folders"]["other_files_ignored"] == 1
    details = {s["detail"].split(":")[0]: s for s in manifest["skipped"]}
    rel = f"{folder}/good/{broken.name}"
    assert set(details) == {rel, "zz_pair/good/a.jpg", "zz_pair/bad/a.jpg"}
    assert details["zz_pair/bad/a.jpg"]["reason"] == "fewer than 2 photos in its chunk"
    label = next(e["label"] for e in samples(tmp_path / "s").values() if e["label"]["group"] == folder)
    assert rel not in label["members"] and label["grades"].count("good") == label[
        "members"
    ].__len__() - label["grades"].count("bad")
    assert all(label["grades"][g] == "good" for g, *_ in label["pairs"])
    assert len(label["pairs"]) == label["grades"].count("good") * label["grades"].count("bad")
    assert verify_shards(tmp_path / "s", decode=True)[1] == []
    result = runner.invoke(app, ["inspect", str(tmp_path / "s"), "--decode"])
    assert result.exit_code == 0, result.output
    # the resume record of a shard with a photo skipped is trusted: a rerun writes nothing again
    code, output = shard(root, tmp_path / "s")
    assert code == 0 and "resuming" in output


def test_mos_rows_unknown_counted_bad_refused(data: SyntheticFolders, tmp_path: Path) -> None:
    mos = tmp_path / "mos.csv"
    mos.write_text(data.mos.read_text() + "shoot_999/good/x.jpg,3.0\n")  # type: ignore[union-attr]
    code, output = shard(data, tmp_path / "s", "--mos", str(mos), "--mos-scale", "1:5")
    assert code == 0, output
    source = load_manifest(tmp_path / "s")["sources"]["mos_csv"]
    assert source["unknown_images"] == 1 and source["unknown_first"] == ["shoot_999/good/x.jpg"]
    assert source["scale"] == [1.0, 5.0]
    for text, message in (
        ("shoot_000/good/shoot_000_00.jpg,nan\n", "mos.csv:2: mos 'nan' is not a finite number"),
        ("shoot_000/good/shoot_000_00.jpg,high\n", "mos.csv:2: mos 'high' is not a number"),
        ("shoot_000/good/shoot_000_00.jpg,9\n", "mos.csv:2: mos 9 is outside --mos-scale 1:5"),
        ("shoot_000/good/shoot_000_00.jpg,3\nshoot_000/good/shoot_000_00.jpg,4\n", "mos.csv:3:"),
    ):
        mos.write_text("image,mos\n" + text)
        code, output = shard(data, tmp_path / "t", "--mos", str(mos), "--mos-scale", "1:5")
        assert code == 2 and message in output and "Traceback" not in output, output


def test_resume_and_byte_identical_rerun(data: SyntheticFolders, sharded: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    given = FoldersInput(root=data.root, splits=data.splits, mos=data.mos)
    options = ShardOptions(short_side=32, shard_size=3)
    plan = plan_folders(given, None, out, options)
    assert len(plan.tasks) >= 3
    plan.pending = plan.pending[:2]  # a run interrupted after two shards
    with pytest.raises(AvakitError, match="not completed"):
        write_shards(plan)
    plan = plan_folders(given, None, out, options)
    assert len(plan.pending) == len(plan.tasks) - 2
    write_shards(plan, workers=2)
    assert digests(out) == digests(sharded)
    code, output = shard(data, out, "--mos", str(data.mos))
    assert code == 0 and "resuming" in output and digests(out) == digests(sharded)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--val-ratio", "0.2"], "--val-ratio, --test-ratio and --seed do not apply to --folders"),
        (["--seed", "3"], "do not apply to --folders"),
        (["--images", "x"], "--images does not apply to --folders"),
        (["--split", "official"], "--split official are AVA's"),
        (["--limit", "2"], "--limit does not apply to --folders"),
        (["--strict"], "--strict does not apply to --folders"),
        (["--mos-scale", "1:5"], "--mos-scale describes a --mos file"),
        (["--scale", "0:1"], "--scale and --lower-is-better describe a --labels table"),
        (
            ["--labels", "x.csv"],
            "give exactly one of --ava-txt, --labels, --preset, --phototriage or --folders",
        ),
        (["--group-size", "65"], "--group-size must be in 2..64"),
    ],
)
def test_misfit_flags_are_one_line_errors(
    data: SyntheticFolders, tmp_path: Path, extra: list[str], message: str
) -> None:
    code, output = shard(data, tmp_path / "s", *extra)
    assert code == 2 and message in output and "Traceback" not in output, output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--folders", "."], "--folders needs --splits FILE"),
        (["--labels", "x.csv", "--splits", "s.json"], "belong to --folders ROOT"),
        (["--labels", "x.csv", "--group-size", "4"], "belong to --folders ROOT"),
    ],
)
def test_folders_flags_need_each_other(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["shard", *args, "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and message in result.output, result.output


def test_inspect_passes_and_shows_folder_counts(sharded: Path) -> None:
    result = runner.invoke(app, ["inspect", str(sharded), "--decode"])
    assert result.exit_code == 0, result.output
    for word in ("chunks", "folders", "good", "bad", "pairs", "photos written"):
        assert word in result.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"good": 10**6}, "is not the"),
        ({"folders": 0}, "folders: 0 folders in"),
        ({"mos": 10**6}, "more than the"),
        ({"bad": -1}, "bad: expected a non-negative integer"),
    ],
)
def test_manifest_rejects_bad_folder_counts(
    sharded: Path, tmp_path: Path, change: dict, message: str
) -> None:
    out = tmp_path / "s"
    shutil.copytree(sharded, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["train"]["label_stats"].update(change)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AvakitError, match="label_stats") as e:
        load_manifest(out)
    assert message in str(e.value)


def test_photos_written_must_reconcile(sharded: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    shutil.copytree(sharded, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["counts"]["photos_written"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_shards(out)[1]
    assert "counts: rows_read != photos_written + rows_skipped" in problems
