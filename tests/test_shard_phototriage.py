"""`avakit shard --phototriage ROOT`: one group sample per photo series, ranks read from columns 5/6,
splits by series (official val list = test), skipped series with the file named, reviews checked
and filtering, resume and byte-identical reruns, `--limit`, misfit flags, inspect, manifest checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from shard_reading import digests, samples
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.dataset.manifest import load_manifest
from avakit.dataset.phototriage import read_pair_list
from avakit.dataset.phototriage_plan import PhotoTriageInput, plan_phototriage
from avakit.dataset.plan import ShardOptions
from avakit.dataset.samples import member_name
from avakit.dataset.shards import write_shards
from avakit.dataset.synthetic_pairs import SyntheticPhotoTriage, make_synthetic_phototriage
from avakit.errors import AvakitError

runner = CliRunner()
FAST = ["--short-side", "32", "--shard-size", "8", "--workers", "1"]


def shard(root: Path, out: Path, *extra: str) -> tuple[int, str]:
    result = runner.invoke(app, ["shard", "--phototriage", str(root), "--out", str(out), *FAST, *extra])
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> SyntheticPhotoTriage:
    return make_synthetic_phototriage(tmp_path_factory.mktemp("pt"), n_series=30, seed=5, long_side=(48, 64))


@pytest.fixture(scope="module")
def sharded(release: SyntheticPhotoTriage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("s") / "s"
    code, output = shard(release.root, out)
    assert code == 0, output
    return out


def copy_release(release: SyntheticPhotoTriage, dest: Path) -> Path:
    shutil.copytree(release.root, dest)
    return dest


def test_group_samples_and_json_as_specified(release: SyntheticPhotoTriage, sharded: Path) -> None:
    found = samples(sharded)
    assert len(found) == 30
    lists = {
        s.id: s
        for name in ("train_pairlist.txt", "val_pairlist.txt")
        for s in read_pair_list(release.root / name).series
    }
    for key, entry in found.items():
        label, series = entry["label"], lists[int(key)]
        assert key == f"{series.id:06d}"
        assert entry["images"] == [member_name(k) for k in range(series.n)]
        assert label == {
            "key": key,
            "kind": "pairs",
            "image_id": series.id,
            "group": key,
            "members": [f"{series.id:06d}-{k:02d}.JPG" for k in range(1, series.n + 1)],
            "pairs": [list(p) for p in series.pairs],
            "source": "phototriage",
        }
    manifest = load_manifest(sharded)
    assert manifest["format_version"] == 2 and manifest["labels"]["kind"] == "pairs"
    assert manifest["split"]["method"] == "phototriage"
    assert set(manifest["sources"]["phototriage"]) == {"train_list", "test_list"}
    stats = manifest["splits"]["test"]["label_stats"]
    test = [lists[i] for i in release.val_ids]
    assert stats["n"] == len(test) and stats["pairs"] == sum(len(s.pairs) for s in test)
    assert stats["photos"] == sum(s.n for s in test) and 0.5 <= stats["human_ceiling"] <= 1.0
    ps = [p[2] for s in test for p in s.pairs if p[2] != 0.5]
    assert stats["decided_pairs"] == len(ps)
    assert stats["human_ceiling"] == pytest.approx(sum(max(p, 1 - p) for p in ps) / len(ps), abs=1e-4)


def test_ranks_are_columns_5_and_6(release: SyntheticPhotoTriage, sharded: Path) -> None:
    for entry in samples(sharded).values():
        label = entry["label"]
        ranks = {}
        for i, j, _, rank_i, rank_j in label["pairs"]:
            ranks[i], ranks[j] = rank_i, rank_j
        assert sorted(ranks.values()) == list(range(1, len(label["members"]) + 1))
        best = label["members"][min(ranks, key=ranks.get)]
        q = {m: release.qualities[m] for m in label["members"]}
        assert best == max(q, key=q.get)  # the rank-1 photo is the best one, not a winner id


def test_splits_by_series_official_val_is_test(
    release: SyntheticPhotoTriage, sharded: Path, tmp_path: Path
) -> None:
    found = samples(sharded)
    split = {int(k): e["split"] for k, e in found.items()}
    assert {i for i, s in split.items() if s == "test"} == set(release.val_ids)
    assert {split[i] for i in release.train_ids} == {"train", "val"}
    # removing a series moves no other one
    root = copy_release(release, tmp_path / "r")
    gone = release.train_ids[0]
    lines = (root / "train_pairlist.txt").read_text().splitlines()
    (root / "train_pairlist.txt").write_text("".join(f"{x}\n" for x in lines if x.split()[0] != str(gone)))
    assert shard(root, tmp_path / "s")[0] == 0
    again = {int(k): e["split"] for k, e in samples(tmp_path / "s").items()}
    assert gone not in again and again == {i: s for i, s in split.items() if i != gone}


def test_missing_image_skips_the_series_and_counts_reconcile(
    release: SyntheticPhotoTriage, tmp_path: Path
) -> None:
    root = copy_release(release, tmp_path / "r")
    sid = release.train_ids[3]
    (root / "train_val_imgs" / f"{sid:06d}-02.JPG").unlink()
    with (root / "train_pairlist.txt").open("a") as f:
        f.write("12 1 2 not-a-number 1 2\n")
    code, output = shard(root, tmp_path / "s")
    assert code == 0, output
    assert "rows read 31 = samples written 29 + rows skipped 2" in output
    manifest = load_manifest(tmp_path / "s")
    skipped = {s["reason"]: s for s in manifest["skipped"]}
    assert skipped["missing"]["image_id"] == sid and f"{sid:06d}-02.JPG" in skipped["missing"]["detail"]
    first = next(
        n
        for n, x in enumerate((root / "train_pairlist.txt").read_text().splitlines(), 1)
        if x.split()[0] == str(sid)
    )
    assert skipped["missing"]["line"] == first
    assert "train_pairlist.txt" in skipped["malformed line"]["detail"]
    assert str(sid) not in {k.lstrip("0") for k in samples(tmp_path / "s")}
    result = runner.invoke(app, ["inspect", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output


def test_contradictory_reviews_are_refused(tmp_path: Path) -> None:
    bad = make_synthetic_phototriage(
        tmp_path / "bad", n_series=12, seed=2, long_side=(48, 64), contradictory=True
    )
    code, output = shard(bad.root, tmp_path / "s", "--reviews", str(bad.reviews))
    assert code == 2 and "these reviews do not belong to this pair list" in output
    assert "Traceback" not in output and not (tmp_path / "s" / "manifest.json").exists()


def test_min_agreement_filters_and_is_counted(release: SyntheticPhotoTriage, tmp_path: Path) -> None:
    code, output = shard(
        release.root, tmp_path / "s", "--reviews", str(release.reviews), "--min-agreement", "0.8"
    )
    assert code == 0, output
    manifest = load_manifest(tmp_path / "s")
    reviews = manifest["sources"]["reviews"]
    assert reviews["min_agreement"] == 0.8 and reviews["agreement"]["fraction"] > 0.9
    dropped = sum(d["pairs"] for d in reviews["pairs_dropped"].values())
    assert dropped > 0 and dropped == sum(
        d.get("min_agreement", 0) for d in reviews["pairs_dropped"].values()
    )
    kept = sum(info["label_stats"].get("pairs", 0) for info in manifest["splits"].values())
    total = sum(read_pair_list(release.root / n).n_pairs for n in ("train_pairlist.txt", "val_pairlist.txt"))
    assert kept + dropped == total
    counts = manifest["counts"]
    assert counts["rows_read"] == counts["samples_written"] + counts["rows_skipped"]


def test_resume_and_byte_identical_rerun(
    release: SyntheticPhotoTriage, sharded: Path, tmp_path: Path
) -> None:
    out = tmp_path / "s"
    given = PhotoTriageInput(root=release.root)
    options = ShardOptions(short_side=32, shard_size=8, test_ratio=0.0)
    plan = plan_phototriage(given, None, out, options)
    plan.pending = plan.pending[:2]  # a run interrupted after two shards
    with pytest.raises(AvakitError, match="not completed"):
        write_shards(plan)
    plan = plan_phototriage(given, None, out, options)
    assert len(plan.pending) == len(plan.tasks) - 2
    write_shards(plan, workers=2)
    assert digests(out) == digests(sharded)
    code, output = shard(release.root, out)
    assert code == 0 and "resuming" in output and digests(out) == digests(sharded)


def test_limit_takes_the_first_series_of_each_list(release: SyntheticPhotoTriage, tmp_path: Path) -> None:
    code, output = shard(release.root, tmp_path / "s", "--limit", "3")
    assert code == 0 and "rows read 6 = samples written 6 + rows skipped 0" in output
    found = samples(tmp_path / "s")
    first = []
    for name in ("train_pairlist.txt", "val_pairlist.txt"):
        ids = [int(x.split()[0]) for x in (release.root / name).read_text().splitlines()]
        first += list(dict.fromkeys(ids))[:3]
    assert {int(k) for k in found} == set(first)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--test-list", "x.jpgl"], "--test-list is AVA's"),
        (["--split", "official"], "--split official is AVA's"),
        (["--scale", "0:1"], "--scale and --lower-is-better describe a --labels table"),
        (["--test-ratio", "0.2"], "--test-ratio does not apply to --phototriage"),
        (["--min-agreement", "0.7"], "give --reviews DIR"),
        (["--labels", "x.csv"], "give exactly one of --ava-txt, --labels, --preset or --phototriage"),
    ],
)
def test_misfit_flags_are_one_line_errors(
    release: SyntheticPhotoTriage, tmp_path: Path, extra: list[str], message: str
) -> None:
    code, output = shard(release.root, tmp_path / "s", *extra)
    assert code == 2 and message in output and "Traceback" not in output


def test_reviews_without_phototriage_is_an_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["shard", "--labels", "x.csv", "--reviews", str(tmp_path), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "belong to --phototriage" in result.output


def test_inspect_decodes_every_member(sharded: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(sharded), "--decode"])
    assert result.exit_code == 0, result.output
    assert "series" in result.output and "photos" in result.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"decided_pairs": 10**6}, "decided_pairs: 1000000 is more than"),
        ({"human_ceiling": 0.2}, "human_ceiling: expected a share in [0.5, 1]"),
        ({"photos": 1}, "photos: 1 photos in"),
        ({"n": 1}, "series, but the split holds"),
        ({"pairs": "many"}, "pairs: expected a non-negative integer"),
    ],
)
def test_manifest_rejects_bad_pair_stats(sharded: Path, tmp_path: Path, change: dict, message: str) -> None:
    out = tmp_path / "s"
    shutil.copytree(sharded, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["train"]["label_stats"].update(change)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AvakitError, match="label_stats") as e:
        load_manifest(out)
    assert message in str(e.value)


def test_strict_stops_at_the_first_bad_line(release: SyntheticPhotoTriage, tmp_path: Path) -> None:
    root = copy_release(release, tmp_path / "r")
    with (root / "val_pairlist.txt").open("a") as f:
        f.write("7 1 2 0.5 1\n")
    code, output = shard(root, tmp_path / "s", "--strict")
    assert code == 2 and "val_pairlist.txt:" in output and "5 columns, expected 6" in output
