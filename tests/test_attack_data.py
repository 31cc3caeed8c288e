"""Attack pass on `shard`, `inspect` and `demo`: crafted folders, records and tars give one line or a redo."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.dataset.synthetic import SyntheticAva, make_synthetic_ava
from avakit.errors import AvakitError

runner = CliRunner()


@pytest.fixture(scope="module")
def made(
    shard_args: Callable[..., list[str]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[SyntheticAva, Path]:
    root = tmp_path_factory.mktemp("atk")
    ava = make_synthetic_ava(root / "ava", n=24, seed=7, long_side=(40, 80))
    result = runner.invoke(app, shard_args(ava, root / "shards"))
    assert result.exit_code == 0, result.output
    return ava, root / "shards"


def one_error_line(result) -> str:  # noqa: ANN001 - click's Result
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:"), result.output
    return lines[-1]


@pytest.mark.parametrize("stamp", [b"{not json", b"\xff\xfe\x00", None])
def test_unreadable_options_stamp_is_one_line(
    shard_args: Callable[..., list[str]], made, tmp_path: Path, stamp: bytes | None
) -> None:
    ava, shards = made
    out = tmp_path / "out"
    shutil.copytree(shards, out)
    path = out / ".progress" / "options.json"
    path.unlink()
    if stamp is None:
        path.mkdir()  # a folder where the stamp should be
    else:
        path.write_bytes(stamp)
    result = runner.invoke(app, shard_args(ava, out))
    assert result.exit_code == 2
    assert "options.json" in one_error_line(result)


def test_progress_folder_that_is_a_file_is_one_line(
    shard_args: Callable[..., list[str]], made, tmp_path: Path
) -> None:
    ava, _ = made
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".progress").write_text("x")
    result = runner.invoke(app, shard_args(ava, tmp_path / "out"))
    assert result.exit_code != 0
    assert ".progress" in one_error_line(result)


def test_out_below_a_file_is_one_line(shard_args: Callable[..., list[str]], made, tmp_path: Path) -> None:
    ava, _ = made
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, shard_args(ava, tmp_path / "file" / "sub"))
    assert result.exit_code != 0
    one_error_line(result)


@pytest.mark.parametrize("damage", ["flip byte", "record list", "record binary", "record foreign id"])
def test_rerun_redoes_a_shard_whose_record_does_not_hold(
    shard_args: Callable[..., list[str]], made, tmp_path: Path, damage: str
) -> None:
    """A finished shard whose tar or record was damaged is written again, byte-identical."""
    ava, shards = made
    out = tmp_path / "out"
    shutil.copytree(shards, out)
    tar = sorted(out.glob("train-*.tar"))[0]
    good = tar.read_bytes()
    record = out / ".progress" / (tar.name + ".json")
    if damage == "flip byte":
        data = bytearray(good)
        data[2000] ^= 0xFF
        tar.write_bytes(bytes(data))
    elif damage == "record list":
        record.write_text("[1, 2]")
    elif damage == "record binary":
        record.write_bytes(b"\xff\xfe\x00")
    else:
        content = json.loads(record.read_text())
        content["image_ids"][0] = 1  # an id that is not a row of this shard
        record.write_text(json.dumps(content))
    result = runner.invoke(app, shard_args(ava, out))
    assert result.exit_code == 0, result.output
    assert tar.read_bytes() == good
    assert runner.invoke(app, ["inspect", str(out)]).exit_code == 0


def _rewrite_tar(shards: Path, members: list[tuple[str, bytes]]) -> Path:
    """Replace the first train shard with these members and reseal the manifest (a crafted folder)."""
    manifest = json.loads((shards / "manifest.json").read_text())
    entry = manifest["splits"]["train"]["shards"][0]
    tar = shards / entry["name"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    tar.write_bytes(buf.getvalue())
    entry["bytes"], entry["sha256"] = len(buf.getvalue()), hashlib.sha256(buf.getvalue()).hexdigest()
    (shards / "manifest.json").write_text(json.dumps(manifest))
    return tar


def _members(tar: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar) as t:
        return [(m.name, t.extractfile(m).read()) for m in t if m.isfile()]


def test_inspect_groups_members_as_the_loader_does(made, tmp_path: Path) -> None:
    """A member repeated later in the tar is a sample of its own for the loader (lacking its json)."""
    _, shards = made
    out = tmp_path / "out"
    shutil.copytree(shards, out)
    tar = sorted(out.glob("train-*.tar"))[0]
    members = _members(tar)
    _rewrite_tar(out, [*members, members[0]])
    result = runner.invoke(app, ["inspect", str(out)])
    assert result.exit_code == 1
    assert "sample lacks its jpg or json member" in result.output


def test_inspect_prints_markup_in_member_names_literally(made, tmp_path: Path) -> None:
    _, shards = made
    out = tmp_path / "out"
    shutil.copytree(shards, out)
    tar = sorted(out.glob("train-*.tar"))[0]
    _rewrite_tar(out, [*_members(tar), ("[/x].jpg", b"x")])
    result = runner.invoke(app, ["inspect", str(out)])
    assert result.exit_code == 1, result.output
    assert "sample [/x]: sample lacks its jpg or json member" in result.output


def test_inspect_refuses_an_oversized_member_without_reading_it(made, tmp_path: Path, monkeypatch) -> None:
    from avakit.dataset import samples

    _, shards = made
    out = tmp_path / "out"
    shutil.copytree(shards, out)
    tar = sorted(out.glob("train-*.tar"))[0]
    _rewrite_tar(out, [*_members(tar), ("5.json", b" " * 100_000), ("5.jpg", b"x")])
    monkeypatch.setattr(samples, "MAX_MEMBER", 50_000)
    result = runner.invoke(app, ["inspect", str(out), "--decode"])
    assert result.exit_code == 1
    assert "unreadable tar" in result.output and "100000 bytes" in result.output


@pytest.mark.parametrize("args", [["--n", "0"], ["--n", "-5"], ["--seed", "-1"]])
def test_demo_refuses_bad_numbers(tmp_path: Path, args: list[str]) -> None:
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), *args])
    assert result.exit_code == 2
    assert not (tmp_path / "d").exists()


def test_demo_out_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "f")])
    assert result.exit_code == 2
    assert "not a folder" in one_error_line(result)


def test_demo_out_named_like_a_pipe_stays_a_folder(tmp_path: Path, monkeypatch) -> None:
    """`--out 'pipe:touch X #'` is a folder name: training reads its shards, nothing is run."""
    import avakit.training.fit

    seen = {}

    def fake_fit(cfg, **_):  # noqa: ANN001, ANN202
        seen["shards"], seen["output_dir"] = cfg.data.shards, cfg.output_dir
        raise AvakitError("stop here")

    monkeypatch.setattr(avakit.training.fit, "fit", fake_fit)
    config = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    out = f"pipe:touch {marker} #"
    make_synthetic_ava(Path(out) / "ava", n=20, seed=3, long_side=(40, 80))  # demo reuses it: fast
    result = runner.invoke(app, ["demo", "--out", out, "--config", str(config)])
    assert "stop here" in result.output, result.output
    assert Path(seen["shards"]).is_absolute() and Path(seen["shards"], "manifest.json").is_file()
    assert Path(seen["output_dir"]).is_absolute()
    assert not marker.exists()


def test_markup_in_paths_and_manifest_text_is_printed_literally(
    shard_args: Callable[..., list[str]], made, tmp_path: Path
) -> None:
    """`--out 'a[/b]'` (a folder `b]` in `a[`) and a crafted reason key print as text, no traceback."""
    ava, shards = made
    out = tmp_path / "a[/b]"
    result = runner.invoke(app, shard_args(ava, out))
    assert result.exit_code == 0, result.output
    assert "a[/b]" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["skipped_by_reason"] = {"[/i]odd": 0}
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["inspect", str(out)])
    assert result.exit_code == 0, result.output
    assert "[/i]odd" in result.output


def test_bad_workers_is_refused_before_any_work(
    shard_args: Callable[..., list[str]], made, tmp_path: Path
) -> None:
    ava, _ = made
    result = runner.invoke(app, shard_args(ava, tmp_path / "out", "--workers", "0"))
    assert result.exit_code == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change", ["bogus entries", "entry dropped", "reason count", "samples_written"])
def test_inspect_reconciles_the_skipped_list_with_the_counts(
    shard_args: Callable[..., list[str]], tmp_path: Path, change: str
) -> None:
    """The skipped list, skipped_by_reason and the counts must agree; a crafted manifest is caught."""
    from avakit.dataset.synthetic import make_synthetic_ava

    ava = make_synthetic_ava(tmp_path / "ava", n=12, seed=4, long_side=(40, 80))
    (ava.images / f"{ava.image_ids[0]}.jpg").unlink()  # one row skipped: missing
    out = tmp_path / "out"
    assert runner.invoke(app, shard_args(ava, out)).exit_code == 0
    assert runner.invoke(app, ["inspect", str(out)]).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    if change == "bogus entries":
        manifest["skipped"] = [1, "x", None]
    elif change == "entry dropped":
        manifest["skipped"] = []
    elif change == "reason count":
        manifest["skipped_by_reason"] = {"duplicate": 1}
    else:
        manifest["counts"]["samples_written"] -= 1
        manifest["counts"]["rows_read"] -= 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["inspect", str(out)])
    assert result.exit_code in (1, 2), result.output
    assert "skipped" in result.output or "samples_written" in result.output
