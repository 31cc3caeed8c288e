"""`shard`: image preprocessing, shard contents, determinism, resume, bad inputs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from avakit.dataset.images import ImageSkip, load_rgb
from avakit.dataset.plan import ShardOptions, plan_sharding
from avakit.dataset.shards import write_shards
from avakit.dataset.synthetic import SyntheticAva, make_synthetic_ava
from avakit.errors import AvakitError


def run_shard(ava: SyntheticAva, out: Path, workers: int = 1, **opts) -> dict:
    plan = plan_sharding(ava.ava_txt, ava.images, out, ShardOptions(**opts))
    return write_shards(plan, workers=workers)


def digests(folder: Path) -> dict[str, str]:
    files = sorted(folder.glob("*.tar")) + [folder / "manifest.json"]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_shards_are_plain_webdataset(tiny_ava: SyntheticAva, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    manifest = run_shard(tiny_ava, out, short_side=48, shard_size=8)
    counts = manifest["counts"]
    assert counts == {"rows_read": 40, "samples_written": 40, "rows_skipped": 0}
    assert [s["samples"] for s in manifest["splits"].values()] == [32, 4, 4]
    votes = {
        int(line.split()[1]): [int(v) for v in line.split()[2:12]]
        for line in tiny_ava.ava_txt.read_text().splitlines()
    }
    seen = []
    for split, info in manifest["splits"].items():
        urls = [str(out / s["name"]) for s in info["shards"]]
        assert all(Path(u).name.startswith(f"{split}-") for u in urls)
        dataset = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg", "json")
        for key, image, label in dataset:
            assert image.mode == "RGB" and min(image.size) == 48
            assert label["image_id"] == int(key) and label["votes"] == votes[int(key)]
            assert set(label) == {"image_id", "index", "votes", "tags", "challenge"}
            seen.append(int(key))
    assert sorted(seen) == sorted(tiny_ava.image_ids)
    with tarfile.open(out / manifest["splits"]["train"]["shards"][0]["name"]) as tar:
        names = [m.name for m in tar]
    assert names[:2] == [names[0].split(".")[0] + ".jpg", names[0].split(".")[0] + ".json"]


def test_aspect_kept_and_large_images_draft_decoded(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.new("RGB", (1600, 1000), (200, 30, 30)).save(path)
    im = load_rgb(path, short_side=256)
    assert im.size == (410, 256)
    assert np.allclose(np.asarray(im).reshape(-1, 3).mean(0), (200, 30, 30), atol=3)
    small = tmp_path / "small.jpg"
    Image.new("RGB", (50, 100)).save(small)
    assert load_rgb(small, short_side=64).size == (64, 128)  # small images are scaled up


def test_exif_orientation_applied(tmp_path: Path) -> None:
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:, :30] = (255, 0, 0)  # left half red, right half blue
    arr[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    im = load_rgb(path, short_side=40)
    assert im.size == (40, 60)  # portrait after rotation
    px = np.asarray(im)
    assert px[5, 20, 0] > 200 and px[55, 20, 2] > 200  # red on top, blue at the bottom


def _save(path: Path, im: Image.Image, fmt: str, **kw) -> Path:
    im.save(path, format=fmt, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16", "1"])
def test_any_mode_becomes_rgb(tmp_path: Path, mode: str) -> None:
    if mode == "I;16":
        im = Image.fromarray(np.full((30, 40), 40000, np.uint16))
        path = _save(tmp_path / "x.jpg", im, "PNG")  # a 16-bit PNG named .jpg
    elif mode in ("CMYK", "L"):
        path = _save(tmp_path / "x.jpg", Image.new(mode, (40, 30)), "JPEG")
    else:
        path = _save(tmp_path / "x.jpg", Image.new(mode, (40, 30)), "PNG")
    im = load_rgb(path, short_side=32)
    assert im.mode == "RGB" and im.size == (43, 32)
    if mode == "I;16":
        assert abs(int(np.asarray(im)[0, 0, 0]) - round(40000 / 65535 * 255)) <= 1
    if mode in ("RGBA", "LA"):
        assert np.asarray(im)[0, 0].tolist() == [255, 255, 255]  # transparent -> white


def test_bad_images_are_skipped_with_reasons(tmp_path: Path, monkeypatch) -> None:
    ava = make_synthetic_ava(tmp_path / "ava", n=12, seed=3, long_side=(64, 96))
    ids = list(ava.image_ids)
    (ava.images / f"{ids[0]}.jpg").unlink()
    (ava.images / f"{ids[1]}.jpg").write_bytes(b"")
    data = (ava.images / f"{ids[2]}.jpg").read_bytes()
    (ava.images / f"{ids[2]}.jpg").write_bytes(data[: len(data) // 2])
    (ava.images / f"{ids[3]}.jpg").write_text("this is not an image\n")
    _save(ava.images / f"{ids[4]}.jpg", Image.new("RGB", (400, 400)), "JPEG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300 // 2)  # 400x400 is now a "bomb"
    with ava.ava_txt.open("a") as f:
        f.write("13 999 1 2 3\n")  # malformed
        f.write(ava.ava_txt.read_text().splitlines()[5].replace(" ", " ", 1) + "\n")  # duplicate
    manifest = run_shard(ava, tmp_path / "out", short_side=32, shard_size=4)
    by_id = {s["image_id"]: s for s in manifest["skipped"]}
    assert by_id[ids[0]]["reason"] == "missing"
    assert by_id[ids[1]]["reason"] == "empty"
    assert by_id[ids[2]]["reason"] == "truncated/undecodable"
    assert by_id[ids[3]]["reason"] == "not an image"
    assert by_id[ids[4]]["reason"] == "too large"
    assert by_id[999]["reason"] == "malformed line" and by_id[999]["line"] == 13
    assert by_id[ids[5]]["reason"] == "duplicate" and by_id[ids[5]]["line"] == 14
    counts = manifest["counts"]
    assert counts == {"rows_read": 14, "samples_written": 7, "rows_skipped": 7}
    assert sum(manifest["skipped_by_reason"].values()) == 7


def test_load_rgb_reasons_from_bytes() -> None:
    with pytest.raises(ImageSkip, match="empty"):
        load_rgb(b"")
    with pytest.raises(ImageSkip, match="not an image"):
        load_rgb(b"GIF89a-not-really")


def test_byte_identical_rerun_and_workers(shared_ava: SyntheticAva, tmp_path: Path) -> None:
    a = tmp_path / "a"
    run_shard(shared_ava, a, workers=1, short_side=40, shard_size=7)
    b = tmp_path / "b"
    run_shard(shared_ava, b, workers=2, short_side=40, shard_size=7)
    assert digests(a) == digests(b)
    before = digests(a)
    run_shard(shared_ava, a, workers=1, short_side=40, shard_size=7)  # complete: a no-op
    assert digests(a) == before


def test_resume_after_partial_run(shared_ava: SyntheticAva, tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    run_shard(shared_ava, ref, short_side=40, shard_size=7)
    out = tmp_path / "out"
    plan = plan_sharding(
        shared_ava.ava_txt, shared_ava.images, out, ShardOptions(short_side=40, shard_size=7)
    )
    plan.pending = plan.pending[:3]
    with pytest.raises(AvakitError, match="not completed"):
        write_shards(plan)
    (out / "train-000004.tar.123.tmp").write_bytes(b"half a shard")  # as a killed writer leaves
    plan = plan_sharding(
        shared_ava.ava_txt, shared_ava.images, out, ShardOptions(short_side=40, shard_size=7)
    )
    assert len(plan.pending) == len(plan.tasks) - 3
    write_shards(plan)
    assert digests(out) == digests(ref)
    assert not list(out.glob("*.tmp"))


def test_changed_options_refused(shared_ava: SyntheticAva, tmp_path: Path) -> None:
    run_shard(shared_ava, tmp_path / "s", short_side=40, shard_size=30)
    with pytest.raises(AvakitError, match="other inputs or options"):
        run_shard(shared_ava, tmp_path / "s", short_side=48, shard_size=30)


def test_resume_after_kill_is_byte_identical(tmp_path: Path) -> None:
    ava = make_synthetic_ava(tmp_path / "ava", n=160, seed=4, long_side=(500, 700))
    args = [
        sys.executable,
        "-m",
        "avakit",
        "shard",
        "--ava-txt",
        str(ava.ava_txt),
        "--images",
        str(ava.images),
        "--shard-size",
        "4",
        "--short-side",
        "64",
    ]
    ref, out = tmp_path / "ref", tmp_path / "out"
    subprocess.run([*args, "--out", str(ref), "--workers", "2"], check=True, capture_output=True)
    proc = subprocess.Popen(
        [*args, "--out", str(out), "--workers", "2"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while len(list(out.glob("*.tar"))) < 2 and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 the command and its workers
    proc.wait()
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
    time.sleep(0.2)
    subprocess.run([*args, "--out", str(out), "--workers", "2"], check=True, capture_output=True)
    assert digests(out) == digests(ref)


def test_plain_reader_sees_every_member(shared_ava: SyntheticAva, tmp_path: Path) -> None:
    out = tmp_path / "s"
    manifest = run_shard(shared_ava, out, short_side=40, shard_size=100)
    url = str(out / manifest["splits"]["val"]["shards"][0]["name"])
    sample = next(iter(wds.WebDataset(url, shardshuffle=False)))
    assert set(sample) >= {"__key__", "jpg", "json"}
    assert Image.open(io.BytesIO(sample["jpg"])).format == "JPEG"
    assert json.loads(sample["json"])["image_id"] == int(sample["__key__"])
