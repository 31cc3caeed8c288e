"""`avakit shard --epic-kitchens DIR --frames ROOT`: one group sample per segment with the clip
contract, uniform inclusive frame sampling, missing frames and videos skipped and reported, bad
rows counted with their lines, the participant test split, unseen/tail flags, manifest classes and
statistics, byte-identical reruns and resume, `--limit`, inspect, and one-line CLI errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from shard_reading import digests, samples
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.dataset import epic
from avakit.dataset.epic_plan import EpicInput, frame_path, pick_test_participants, plan_epic, sample_frames
from avakit.dataset.manifest import load_manifest
from avakit.dataset.plan import ShardOptions
from avakit.dataset.samples import Reason, check_clip_label, member_name
from avakit.dataset.shards import write_shards
from avakit.dataset.synthetic_epic import SyntheticEpic, make_synthetic_epic
from avakit.errors import AvakitError

runner = CliRunner()
FAST = ["--short-side", "32", "--shard-size", "8", "--workers", "1", "--frames-per-segment", "8"]
FAULTS = ("missing_frame", "missing_video", "bad_row", "corrupt_frame")


def shard(e: SyntheticEpic | Path, out: Path, *extra: str, frames: Path | None = None) -> tuple[int, str]:
    ann, fr = (e.annotations, e.frames) if isinstance(e, SyntheticEpic) else (e / "annotations", e / "frames")
    args = ["shard", "--epic-kitchens", str(ann), "--frames", str(frames or fr), "--out", str(out), *FAST]
    result = runner.invoke(app, [*args, *extra])
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> SyntheticEpic:
    return make_synthetic_epic(tmp_path_factory.mktemp("epic"), segments_per_video=6)


@pytest.fixture(scope="module")
def sharded(layout: SyntheticEpic, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("s") / "s"
    code, output = shard(layout, out, "--test-share", "0.4")
    assert code == 0, output
    return out, output


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> SyntheticEpic:
    return make_synthetic_epic(tmp_path_factory.mktemp("faulty"), segments_per_video=6, faults=FAULTS)


def copy_layout(e: SyntheticEpic, dest: Path) -> Path:
    shutil.copytree(e.root, dest)
    return dest


def test_samples_follow_the_clip_contract(layout: SyntheticEpic, sharded: tuple[Path, str]) -> None:
    out, _ = sharded
    found = samples(out)
    assert set(found) == {s.narration_id for s in layout.segments}
    next_id = {"train": 0, "val": 0, "test": 0}
    for s in layout.segments:  # CSV order: train rows, then validation rows
        entry = found[s.narration_id]
        label, split = entry["label"], entry["split"]
        assert check_clip_label(s.narration_id, label) == Reason.OK
        assert entry["images"] == [member_name(k) for k in range(8)]
        assert label["image_id"] == next_id[split]
        next_id[split] += 1
        frames = label.pop("frames")
        assert (
            frames == list(sample_frames(s.start, s.stop, 8))
            and frames[0] == s.start
            and frames[-1] == s.stop
        )
        assert label == {
            "key": s.narration_id,
            "kind": "clips",
            "image_id": label["image_id"],
            "narration_id": s.narration_id,
            "participant": s.participant,
            "video": s.video,
            "start_frame": s.start,
            "stop_frame": s.stop,
            "verb_class": s.verb_class,
            "noun_class": s.noun_class,
            "verb": layout.verbs[s.verb_class],
            "noun": layout.nouns[s.noun_class],
            "narration": f"{layout.verbs[s.verb_class]} {layout.nouns[s.noun_class]}",
            "unseen": s.participant in layout.unseen,
            "tail_verb": s.verb_class in layout.tail_verbs,
            "tail_noun": s.noun_class in layout.tail_nouns,
            "source": "epic-kitchens",
        }
        assert (split == "val") == (s.split == "val")


def test_uniform_inclusive_frame_spacing() -> None:
    assert sample_frames(1, 16, 16) == tuple(range(1, 17))
    assert sample_frames(1, 100, 4) == (1, 34, 67, 100)
    assert sample_frames(10, 12, 5) == (10, 11, 11, 12, 12)  # short segments repeat frames, half up
    assert sample_frames(7, 7, 3) == (7, 7, 7)


def test_split_by_participant(layout: SyntheticEpic, sharded: tuple[Path, str]) -> None:
    out, output = sharded
    manifest = load_manifest(out)
    test = manifest["epic_kitchens"]["test_participants"]
    assert test and f"test participants: {', '.join(test)}" in output
    people = {
        split: set(manifest["splits"][split]["label_stats"]["participants"]) for split in ("train", "test")
    }
    assert people["test"] == set(test) and not people["train"] & people["test"] and people["train"]
    assert manifest["split"] == {
        "method": "participant",
        "val_ratio": 0.0,
        "test_ratio": 0.4,
        "seed": 42,
        "limit": None,
    }
    everyone = [f"P{i:02d}" for i in range(1, 30)]
    for share in (0.01, 0.3, 0.99):
        chosen = pick_test_participants(everyone, share, 7)
        assert 1 <= len(chosen) < len(everyone) and chosen == pick_test_participants(everyone, share, 7)
    assert pick_test_participants(everyone, 0.3, 7) != pick_test_participants(everyone, 0.3, 8)
    assert pick_test_participants(["P01"], 0.0, 0) == []
    with pytest.raises(AvakitError, match="needs 2 or more participants"):
        pick_test_participants(["P01"], 0.5, 0)


def test_manifest_classes_and_label_stats(layout: SyntheticEpic, sharded: tuple[Path, str]) -> None:
    manifest = load_manifest(sharded[0])
    assert manifest["format_version"] == 2 and manifest["labels"]["kind"] == "clips"
    assert manifest["classes"] == {"verb": list(layout.verbs), "noun": list(layout.nouns)}
    val = [s for s in layout.segments if s.split == "val"]
    stats = manifest["splits"]["val"]["label_stats"]
    assert stats["segments"] == stats["n"] == len(val) and stats["frames_per_segment"] == 8
    assert stats["verb_counts"] == [sum(s.verb_class == k for s in val) for k in range(len(layout.verbs))]
    assert stats["noun_counts"] == [sum(s.noun_class == k for s in val) for k in range(len(layout.nouns))]
    assert stats["unseen"] == sum(s.participant in layout.unseen for s in val) > 0
    assert stats["tail_noun"] == sum(s.noun_class in layout.tail_nouns for s in val)
    assert stats["skipped_missing_frames"] == 0
    counts = manifest["counts"]
    assert (
        counts["rows_read"] == len(layout.segments) == counts["samples_written"]
        and not counts["rows_skipped"]
    )


def test_without_lists_the_flags_are_null(tmp_path: Path) -> None:
    e = make_synthetic_epic(tmp_path / "e", n_participants=2, segments_per_video=2, lists=False, uid=True)
    code, output = shard(e, tmp_path / "s")
    assert code == 0, output
    for entry in samples(tmp_path / "s").values():
        assert entry["label"]["unseen"] is entry["label"]["tail_verb"] is entry["label"]["tail_noun"] is None
    stats = load_manifest(tmp_path / "s")["splits"]["train"]["label_stats"]
    assert stats["unseen"] is stats["tail_verb"] is stats["tail_noun"] is None


def test_faults_are_skipped_counted_and_reported(faulty: SyntheticEpic, tmp_path: Path) -> None:
    code, output = shard(faulty, tmp_path / "s")
    assert code == 0, output
    manifest = load_manifest(tmp_path / "s")
    lost = [s for s in faulty.segments if s.video == faulty.faults["missing_video"]]
    assert manifest["skipped_by_reason"] == {
        "bad frame range": 1,
        "frames missing": 1,
        "not an image": 1,
        "video folder missing": len(lost),
    }
    counts = manifest["counts"]
    assert counts["rows_read"] == len(faulty.segments) + 1
    assert counts["rows_read"] == counts["samples_written"] + counts["rows_skipped"]
    assert f"rows read {counts['rows_read']} = samples written {counts['samples_written']}" in output
    found = samples(tmp_path / "s")
    for fault in ("missing_frame", "corrupt_frame", "bad_row"):
        assert faulty.faults[fault] not in found
    assert not {s.narration_id for s in lost} & set(found)
    skipped = {s["reason"]: s for s in manifest["skipped"]}
    n_train = sum(s.split == "train" for s in faulty.segments)
    assert skipped["bad frame range"]["line"] == n_train + 2  # header, then the appended row
    assert "EPIC_100_train.csv" in skipped["bad frame range"]["detail"]
    assert faulty.faults["corrupt_frame"] in skipped["not an image"]["detail"]
    missing = manifest["epic_kitchens"]["frames_missing"]["train"]
    assert missing["segments_skipped"] == 1 + len(lost) and missing["videos_missing"] == [
        f"P03/{lost[0].video}"
    ]
    assert missing["frames_missing"] == 1 + sum(s.stop - s.start + 1 for s in lost)
    assert len(missing["first_missing_frames"]) == 20
    assert manifest["splits"]["train"]["label_stats"]["skipped_missing_frames"] == 1 + len(lost)
    assert f"train: {1 + len(lost)} segments skipped" in output
    result = runner.invoke(app, ["inspect", str(tmp_path / "s"), "--decode"])
    assert result.exit_code == 0, result.output


def test_only_the_last_frame_missing_skips_the_segment(layout: SyntheticEpic, tmp_path: Path) -> None:
    root = copy_layout(layout, tmp_path / "r")
    s = next(s for s in layout.segments if s.split == "val")
    last = frame_path(s.participant, s.video, s.stop)
    (root / "frames" / last).unlink()
    code, output = shard(root, tmp_path / "s")
    assert code == 0, output
    assert s.narration_id not in samples(tmp_path / "s")
    manifest = load_manifest(tmp_path / "s")
    (entry,) = manifest["skipped"]
    assert entry["reason"] == "frames missing" and last in entry["detail"] and entry["line"] == 2
    assert manifest["epic_kitchens"]["frames_missing"]["val"]["first_missing_frames"] == [last]
    assert "val: 1 segments skipped, 1 frames missing" in output


def test_bad_rows_are_counted_with_their_lines(layout: SyntheticEpic, tmp_path: Path) -> None:
    path = tmp_path / epic.TRAIN_CSV
    good = "P01_01_0,P01,P01_01,00:00:01.0,00:00:01.0,00:00:02.0,2,9,open door,open,3,door,3,\"['door']\",[3]"
    bad = [
        "P01 01_1,P01,P01_01,x,x,x,2,9,open door,open,3,door,3,\"['door']\",[3]",  # id with a space
        "P01_01_2,P01,P01_01,x,x,x,two,9,open door,open,3,door,3,\"['door']\",[3]",  # not an integer
        "P01_01_3,P01,P01_01,x,x,x,2,9,open door,open,4,door,3,\"['door']\",[3]",  # verb class 4 of 4
        "P01_01_4,P01,P01_01,x,x,x,9,2,open door,open,3,door,3,\"['door']\",[3]",  # stop < start
        "P01_01_0,P01,P01_01,x,x,x,2,9,open door,open,3,door,3,\"['door']\",[3]",  # repeated id
        "P01_01_5,P01,P01_01,x,x,x,2,9",  # too few fields
        "P01_01_6,P01,P01_01,x,x,x,-2,9,open door,open,3,door,3,\"['door']\",[3]",  # negative
    ]
    path.write_text(
        ",".join(epic.COLUMNS)
        + ",extra\n"
        + "\n".join(f"{r},more" for r in [good, *bad[:5]])
        + "\n"
        + bad[5]
        + "\n"
        + bad[6]
        + ",more\n"
    )
    read = epic.read_annotations(path, 4, 5, set())
    assert [s.narration_id for s in read.segments] == ["P01_01_0"] and read.rows_read == 8
    assert [(s.line, s.reason) for s in read.skipped] == [
        (3, epic.BAD_ID),
        (4, epic.MALFORMED),
        (5, epic.BAD_CLASS),
        (6, epic.BAD_RANGE),
        (7, epic.DUPLICATE),
        (8, epic.MALFORMED),
        (9, epic.MALFORMED),
    ]
    assert all(s.detail.startswith(f"{epic.TRAIN_CSV}: ") for s in read.skipped)
    assert (
        "negative value" in read.skipped[-1].detail
        and "8 fields, the header has 16" in read.skipped[-2].detail
    )
    with pytest.raises(AvakitError, match=rf"{epic.TRAIN_CSV}:3: bad id"):
        epic.read_annotations(path, 4, 5, set(), strict=True)


def test_class_tables_and_lists(tmp_path: Path) -> None:
    path = tmp_path / "classes.csv"
    path.write_text(
        "id,key,instances,category\n0,knead,['knead'],make\n1,take,\"['take', 'grab']\",retrieve\n"
    )
    assert epic.read_classes(path) == ["knead", "take"]
    for text, message in (
        ("id,key\n0,a\n2,b\n", "ids must be exactly 0..1; id 1 is missing"),
        ("id,key\n0,a\n0,b\n", "line 3: id 0 listed twice"),
        ("id,key\nx,a\n", "line 2: id: not an integer"),
        ("id,instances\n0,a\n", "column 'key' missing"),
        ("id,key\n", "no class listed"),
    ):
        path.write_text(text)
        with pytest.raises(AvakitError, match="classes.csv") as e:
            epic.read_classes(path)
        assert message in str(e.value)
    path.write_text("verb\n3\n9\n")
    with pytest.raises(AvakitError, match="line 3: verb: '9' is above the limit 4"):
        epic.read_tail(path, "verb", 5)
    path.write_text("participant_id\nP18\nP32\n")
    assert epic.read_participants(path) == {"P18", "P32"}


def test_resume_and_byte_identical_rerun(
    layout: SyntheticEpic, sharded: tuple[Path, str], tmp_path: Path
) -> None:
    out = tmp_path / "s"
    given = EpicInput(
        annotations=layout.annotations, frames=layout.frames, frames_per_segment=8, test_share=0.4
    )
    options = ShardOptions(short_side=32, shard_size=8)
    plan = plan_epic(given, None, out, options)
    plan.pending = plan.pending[:2]  # a run interrupted after two shards
    with pytest.raises(AvakitError, match="not completed"):
        write_shards(plan)
    plan = plan_epic(given, None, out, options)
    assert len(plan.pending) == len(plan.tasks) - 2
    write_shards(plan, workers=2)
    assert digests(out) == digests(sharded[0])
    assert (out / "manifest.json").read_bytes() == (sharded[0] / "manifest.json").read_bytes()
    code, output = shard(layout, out, "--test-share", "0.4")
    assert code == 0 and "resuming" in output and digests(out) == digests(sharded[0])


def test_limit_takes_the_first_rows_of_each_csv(layout: SyntheticEpic, tmp_path: Path) -> None:
    code, output = shard(layout, tmp_path / "s", "--limit", "3")
    assert code == 0 and "rows read 6 = samples written 6 + rows skipped 0" in output
    train = [s.narration_id for s in layout.segments if s.split == "train"][:3]
    val = [s.narration_id for s in layout.segments if s.split == "val"][:3]
    assert set(samples(tmp_path / "s")) == set(train + val)


def test_inspect_decodes_every_member(sharded: tuple[Path, str]) -> None:
    result = runner.invoke(app, ["inspect", str(sharded[0]), "--decode"])
    assert result.exit_code == 0, result.output
    assert "segments" in result.output and "every shard matches the manifest and decodes" in result.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n": 1}, "segments, but the split holds"),
        ({"verb_counts": [1]}, "verb_counts: expected counts per class"),
        ({"frames_per_segment": 0}, "frames_per_segment: expected 1..64"),
        ({"participants": [1]}, "participants: expected a list of participant ids"),
    ],
)
def test_manifest_rejects_bad_clip_stats(
    sharded: tuple[Path, str], tmp_path: Path, change: dict, message: str
) -> None:
    out = tmp_path / "s"
    shutil.copytree(sharded[0], out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["train"]["label_stats"].update(change)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AvakitError, match="label_stats") as e:
        load_manifest(out)
    assert message in str(e.value)


def _drop(root: Path, name: str) -> None:
    (root / "annotations" / name).unlink()


def _bad_ids(root: Path, name: str) -> None:
    (root / "annotations" / epic.NOUN_CSV).write_text(
        "id,key,instances,category\n0,tap,['tap'],x\n5,pan,['pan'],x\n"
    )


def _no_column(root: Path, name: str) -> None:
    path = root / "annotations" / epic.TRAIN_CSV
    path.write_text(path.read_text().replace("stop_frame", "end_frame", 1))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_drop, f"{epic.VAL_CSV}: not found"),
        (_bad_ids, f"{epic.NOUN_CSV}: ids must be exactly 0..1; id 1 is missing"),
        (_no_column, f"{epic.TRAIN_CSV}: line 1: column 'stop_frame' missing"),
    ],
)
def test_bad_annotation_files_are_one_line_errors(
    layout: SyntheticEpic, tmp_path: Path, damage, message: str
) -> None:
    root = copy_layout(layout, tmp_path / "r")
    damage(root, epic.VAL_CSV)
    code, output = shard(root, tmp_path / "s")
    assert code == 2 and message in output and "Traceback" not in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frames", "F"], "belong to --epic-kitchens ANNOTATIONS_DIR"),
        (["--test-share", "0.2"], "belong to --epic-kitchens ANNOTATIONS_DIR"),
        (["--frames-per-segment", "4"], "belong to --epic-kitchens ANNOTATIONS_DIR"),
    ],
)
def test_epic_flags_without_it_are_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(
        app, ["shard", "--labels", "x.csv", "--images", "i", "--out", str(tmp_path), *args]
    )
    assert result.exit_code == 2 and message in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--images", "x"], "--images does not apply to --epic-kitchens"),
        (["--test-ratio", "0.2"], "--val-ratio and --test-ratio do not apply to --epic-kitchens"),
        (["--split", "official"], "--test-list and --split official are AVA's"),
        (["--labels", "x.csv"], "--epic-kitchens is an input of its own"),
        (["--frames-per-segment", "65"], "--frames-per-segment must be in 1..64"),
        (["--test-share", "1"], "--test-share must be in [0, 1)"),
    ],
)
def test_misfit_flags_are_one_line_errors(
    layout: SyntheticEpic, tmp_path: Path, extra: list[str], message: str
) -> None:
    code, output = shard(layout, tmp_path / "s", *extra)
    assert code == 2 and message in output and "Traceback" not in output


def test_frames_folder_missing_or_not_given(layout: SyntheticEpic, tmp_path: Path) -> None:
    code, output = shard(layout, tmp_path / "s", frames=tmp_path / "nowhere")
    assert code == 2 and "--frames" in output and "folder not found" in output
    result = runner.invoke(
        app, ["shard", "--epic-kitchens", str(layout.annotations), "--out", str(tmp_path / "t")]
    )
    assert result.exit_code == 2 and "--epic-kitchens needs --frames" in " ".join(result.output.split())
    code, output = shard(tmp_path / "nothing", tmp_path / "u", frames=layout.frames)
    assert code == 2 and "annotations folder not found" in output and "Traceback" not in output
