"""`avakit shard`, `inspect` and `demo` through Typer's CliRunner: output, exit codes, errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.dataset.synthetic import SyntheticAva

runner = CliRunner()


@pytest.fixture(scope="module")
def sharded(shard_args: Callable[..., list[str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from avakit.dataset.synthetic import make_synthetic_ava

    root = tmp_path_factory.mktemp("cli")
    ava = make_synthetic_ava(root / "ava", n=30, seed=5, long_side=(48, 96))
    result = runner.invoke(app, shard_args(ava, root / "shards"))
    assert result.exit_code == 0, result.output
    assert "rows read 30 = samples written 30 + rows skipped 0" in result.output
    return root / "shards"


def test_inspect_ok(sharded: Path) -> None:
    result = runner.invoke(app, ["inspect", str(sharded), "--decode"])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output and "train" in result.output


def test_inspect_catches_tampering(sharded: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(sharded, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    first = copy / manifest["splits"]["train"]["shards"][0]["name"]
    data = bytearray(first.read_bytes())
    data[1000] ^= 0xFF  # flip one byte inside the first image
    first.write_bytes(bytes(data))
    (copy / manifest["splits"]["val"]["shards"][0]["name"]).unlink()
    (copy / "train-999999.tar").write_bytes(b"")
    result = runner.invoke(app, ["inspect", str(copy)])
    assert result.exit_code == 1
    assert f"{first.name}: sha256 differs" in result.output
    assert "val-000000.tar: missing" in result.output
    assert "train-999999.tar: tar file not listed" in result.output


def test_inspect_decode_finds_bad_label(sharded: Path, tmp_path: Path) -> None:
    import io
    import shutil
    import tarfile

    copy = tmp_path / "copy"
    shutil.copytree(sharded, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = manifest["splits"]["test"]["shards"][0]
    path = copy / entry["name"]
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(path, "w") as tar:
        for m, data in members:
            if m.name.endswith(".json"):
                label = json.loads(data)
                label["votes"] = [0] * 10
                data = json.dumps(label).encode()
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    from avakit.fileio import file_sha256

    entry["sha256"], entry["bytes"] = file_sha256(path), path.stat().st_size
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert runner.invoke(app, ["inspect", str(copy)]).exit_code == 0  # metadata all agree
    result = runner.invoke(app, ["inspect", str(copy), "--decode"])
    assert result.exit_code == 1 and "votes are not K integers" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "official"], "split 'official' needs test_list"),
        (["--quality", "0"], "Invalid value for '--quality'"),
        (["--val-ratio", "0.6", "--test-ratio", "0.5"], "below 1"),
        (["--split", "weird"], "'weird' is not one of 'random', 'official'"),
        (["--workers", "0"], "Invalid value for '--workers'"),
    ],
)
def test_bad_options_exit_2(
    shard_args: Callable[..., list[str]],
    tiny_ava: SyntheticAva,
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    result = runner.invoke(app, shard_args(tiny_ava, tmp_path / "s", *args))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_bad_paths_exit_2(tiny_ava: SyntheticAva, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "shard",
            "--ava-txt",
            str(tmp_path / "missing.txt"),
            "--images",
            str(tiny_ava.images),
            "--out",
            str(tmp_path / "s"),
        ],
    )
    assert result.exit_code == 2 and "missing.txt: AVA.txt not found" in result.output
    result = runner.invoke(
        app,
        [
            "shard",
            "--ava-txt",
            str(tiny_ava.ava_txt),
            "--images",
            str(tmp_path / "noimg"),
            "--out",
            str(tmp_path / "s"),
        ],
    )
    assert result.exit_code == 2 and "noimg: images folder not found" in result.output
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 2 and "manifest.json: not found" in result.output


def test_strict_stops_at_malformed_line(
    shard_args: Callable[..., list[str]], tiny_ava: SyntheticAva, tmp_path: Path
) -> None:
    with tiny_ava.ava_txt.open("a") as f:
        f.write("41 5 1 2\n")
    result = runner.invoke(app, shard_args(tiny_ava, tmp_path / "s", "--strict"))
    assert result.exit_code == 2 and "AVA.txt:41: malformed line" in result.output
    result = runner.invoke(app, shard_args(tiny_ava, tmp_path / "s2"))
    assert result.exit_code == 0 and "rows skipped 1" in result.output
    assert "malformed line" in result.output


def test_official_split_cli(
    shard_args: Callable[..., list[str]], tiny_ava: SyntheticAva, tmp_path: Path
) -> None:
    out = tmp_path / "s"
    result = runner.invoke(
        app, shard_args(tiny_ava, out, "--split", "official", "--test-list", str(tiny_ava.test_list))
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {int(x) for x in tiny_ava.test_list.read_text().split()}
    assert manifest["splits"]["test"]["samples"] == len(listed & set(tiny_ava.image_ids))
    assert manifest["split"]["method"] == "official"
    assert manifest["sources"]["test_list"]["name"] == "generic_test.jpgl"


def test_synthetic_scores_are_learnable_from_pixels(tiny_ava: SyntheticAva) -> None:
    """Brightness alone already ranks the synthetic images: the signal a CNN learns is there."""
    from PIL import Image

    from avakit.dataset.ava import parse_ava_txt

    rows, _, _ = parse_ava_txt(tiny_ava.ava_txt)
    brightness = [
        np.asarray(Image.open(tiny_ava.images / f"{r.image_id}.jpg").convert("L")).mean() for r in rows
    ]
    from scipy.stats import spearmanr

    assert spearmanr(brightness, [r.mean_score for r in rows])[0] > 0.5


def test_synthetic_is_deterministic(tmp_path: Path) -> None:
    from avakit.dataset.synthetic import make_synthetic_ava

    a = make_synthetic_ava(tmp_path / "a", n=5, seed=9, long_side=(40, 60))
    b = make_synthetic_ava(tmp_path / "b", n=5, seed=9, long_side=(40, 60))
    assert a.ava_txt.read_text() == b.ava_txt.read_text()
    assert all(
        (a.images / f"{i}.jpg").read_bytes() == (b.images / f"{i}.jpg").read_bytes() for i in a.image_ids
    )
    assert len(a.ava_txt.read_text().split("\n")[0].split()) == 15


def test_help_does_not_import_torch() -> None:
    """`avakit --help` and the light commands stay fast: torch is imported only where needed."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom avakit.cli.app import app\ntry:\n    app(['--help'])\n"
        "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
