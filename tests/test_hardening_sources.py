"""Issue 8, points 1, 3, 4 and 12: where shards come from, every sample counted, bad labels, bad manifests."""

from __future__ import annotations

import io
import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.config import Config, TransformConfig, load_config
from avakit.dataset.manifest import load_manifest
from avakit.dataset.sources import ShardFile, SplitSource, resolve_split
from avakit.errors import AvakitError
from avakit.fileio import file_sha256
from avakit.training.checkpoint import run_config, with_absolute_paths
from avakit.training.loader import SampleDecoder, make_loader
from avakit.training.rundir import eval_outputs
from avakit.training.transforms import EvalPreset

runner = CliRunner()


def error_line(result, code: int) -> str:
    """The command failed with `code` and one `error:` line, no traceback; that line."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture
def run(trained_run: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained_run, tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def shards(trained_run: Path, tmp_path: Path) -> Path:
    """A writable copy of the fixture run's shard folder."""
    shutil.copytree(trained_run.parent / "shards", tmp_path / "shards")
    return tmp_path / "shards"


def edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    new = change(manifest)
    manifest = new if isinstance(new, list) else manifest
    (folder / "manifest.json").write_text(json.dumps(manifest))


def set_checkpoint_shards(run: Path, value: object, name: str = "best_model.pt") -> None:
    ckpt = torch.load(run / name, weights_only=True)
    ckpt["config"]["data"]["shards"] = value
    torch.save(ckpt, run / name)


@pytest.fixture
def train_args(tiny_train: tuple[str, ...]) -> Callable[..., list[str]]:
    """`train_args(shards, out, *extra)`: the `avakit train` arguments of one tiny epoch on `shards`."""

    def make(shards: Path, out: Path, *extra: str) -> list[str]:
        sets = [*tiny_train, "training.max_epochs=1", f"data.shards={shards}", *extra]
        return ["train", "--output-dir", str(out), *sum((["--set", s] for s in sets), [])]

    return make


@pytest.fixture
def tcfg(tiny_config: Callable[..., Config]) -> TransformConfig:
    """The transform settings of the tiny config (resize 40, crop 32)."""
    return tiny_config().transform


# -- point 1: a command runs a `pipe:` source only when the user wrote it ------------------------------


@pytest.mark.parametrize("value", ["dict", "str"])
def test_evaluate_refuses_pipe_from_checkpoint(run: Path, tmp_path: Path, value: str) -> None:
    marker = tmp_path / "MARKER"
    command = f"pipe:touch {marker}"
    set_checkpoint_shards(run, {"test": command} if value == "dict" else command)
    line = error_line(runner.invoke(app, ["evaluate", str(run)]), 2)
    assert "best_model.pt is not a plain path" in line and "--shards" in line
    assert not marker.exists()


def test_evaluate_refuses_pipe_shard_name_in_manifest(
    run: Path, shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def rename(m: dict) -> None:
        m["splits"]["test"]["shards"][0]["name"] = "pipe:touch MARKER"

    edit_manifest(shards, rename)
    monkeypatch.chdir(shards)  # `cd SHARDS && avakit evaluate RUN --shards .`
    line = error_line(runner.invoke(app, ["evaluate", str(run), "--shards", "."]), 2)
    assert "manifest.json: splits.test.shards[0].name" in line
    assert not (shards / "MARKER").exists()


def test_export_refuses_pipe_from_checkpoint(run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    set_checkpoint_shards(run, {"val": f"pipe:touch {marker}"})
    result = runner.invoke(
        app, ["export", str(run), "--output", str(tmp_path / "m.onnx"), "--parity-images", "4"]
    )
    assert "data.shards.val" in error_line(result, 2) and not marker.exists()


def test_resume_config_yaml_urls_must_be_given_again(run: Path) -> None:
    text = (run / "config.yaml").read_text()
    shards = load_config(run / "config.yaml").data.shards
    bad = text.replace(f"shards: {shards}", "shards: {train: 'pipe:touch X', val: 'pipe:touch Y'}")
    assert bad != text
    (run / "config.yaml").write_text(bad)
    with pytest.raises(AvakitError, match=r"data.shards.train 'pipe:touch X' read from .*config.yaml"):
        run_config(run)
    with pytest.raises(AvakitError, match="data.shards.val"):  # only train given again
        run_config(run, ["data.shards.train=pipe:cat a.tar"])
    cfg = run_config(run, ["data.shards={train: 'pipe:cat a.tar', val: 'pipe:cat b.tar'}"])
    assert cfg.data.shards["train"] == "pipe:cat a.tar"  # this command's own --set is allowed
    (run / "config.yaml").write_text(text.replace("weights_path: null", "weights_path: 'http://x/w.pth'"))
    with pytest.raises(AvakitError, match="model.weights_path"):
        run_config(run)


def test_user_urls_kept_as_written_and_local_paths_made_absolute(tmp_path: Path) -> None:
    cfg = with_absolute_paths(load_config(None, ["data.shards={train: 'pipe:cat a.tar', val: v.tar}"]))
    assert cfg.data.shards["train"] == "pipe:cat a.tar" and Path(cfg.data.shards["val"]).is_absolute()
    user = resolve_split(cfg.data.shards, "train")  # the user's own URL: webdataset opens it
    assert user.urls == ("pipe:cat a.tar",) and not user.files
    with pytest.raises(AvakitError, match="not a plain path"):
        resolve_split(cfg.data.shards, "train", origin="RUN/best_model.pt")
    read_back = resolve_split(cfg.data.shards, "val", origin="RUN/best_model.pt")  # opened by avakit
    assert not read_back.urls and read_back.files == (ShardFile(Path(cfg.data.shards["val"])),)


@pytest.mark.parametrize(
    "name",
    [
        "../x.tar",
        "sub/x.tar",
        "a\\x.tar",
        "pipe:x.tar",
        "x.tgz",
        ".x.tar",
        "x..tar",
        "-x.tar",
        "file:x.tar",
        "",
    ],
)
def test_manifest_shard_names_are_bare_tar_names(shards: Path, name: str) -> None:
    edit_manifest(shards, lambda m: m["splits"]["val"]["shards"][1].update(name=name))
    with pytest.raises(AvakitError, match=r"manifest.json: splits.val.shards\[1\].name: .* not a bare .tar"):
        load_manifest(shards)


# -- point 3: nothing lost without a count -----------------------------------------------------------


def test_train_refuses_missing_val_shard_before_training(
    train_args: Callable[..., list[str]], shards: Path, tmp_path: Path
) -> None:
    (shards / "val-000001.tar").unlink()
    line = error_line(runner.invoke(app, train_args(shards, tmp_path / "out")), 1)
    assert "split 'val' is incomplete" in line and "val-000001.tar: shard file missing" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_train_refuses_wrong_size_shard(
    train_args: Callable[..., list[str]], shards: Path, tmp_path: Path
) -> None:
    with open(shards / "train-000002.tar", "ab") as f:
        f.write(b"\0" * 512)
    line = error_line(runner.invoke(app, train_args(shards, tmp_path / "out")), 1)
    assert "train-000002.tar: shard size differs from the manifest" in line


def flip_byte_in_image(path: Path) -> None:
    """Same size, different bytes: a foreign shard that reads fine."""
    data = bytearray(path.read_bytes())
    at = data.index(b"\xff\xd8") + 700  # inside the first JPEG's entropy-coded data
    data[at] ^= 0x55
    path.write_bytes(bytes(data))


def test_train_stops_on_sha256_mismatch(
    train_args: Callable[..., list[str]], shards: Path, tmp_path: Path
) -> None:
    flip_byte_in_image(shards / "train-000001.tar")
    line = error_line(runner.invoke(app, train_args(shards, tmp_path / "out")), 1)
    assert "train-000001.tar: sha256 differs from" in line and "manifest.json" in line


def test_evaluate_missing_shard_exit_1_then_allow_missing_counts(run: Path, shards: Path) -> None:
    manifest = load_manifest(shards)
    lost = manifest["splits"]["test"]["shards"][0]
    (shards / lost["name"]).unlink()
    line = error_line(runner.invoke(app, ["evaluate", str(run), "--shards", str(shards)]), 1)
    assert f"{lost['name']}: shard file missing" in line and "--allow-missing" in line
    result = runner.invoke(app, ["evaluate", str(run), "--shards", str(shards), "--allow-missing"])
    assert result.exit_code == 0, result.output
    report = json.loads(eval_outputs(run, "test", "best", "none").json.read_text())
    total = manifest["splits"]["test"]["samples"]
    assert report["samples_expected"] == total and report["lost"] == {"shard file missing": lost["samples"]}
    assert report["samples_seen"] == report["metrics"]["n"] == total - lost["samples"]
    assert "shard file missing" in result.output


def test_features_missing_shard_exit_1_then_allow_missing_counts(
    tiny_train: tuple[str, ...], trained_run: Path, shards: Path, tmp_path: Path
) -> None:
    from avakit.training.features import extract_features

    (shards / "val-000000.tar").unlink()
    cfg = load_config(None, [*tiny_train, f"data.shards={shards}"])
    with pytest.raises(AvakitError, match="val-000000.tar: shard file missing.*--allow-missing") as e:
        extract_features(cfg, ("val",), tmp_path / "cache", device="cpu")
    assert e.value.exit_code == 1
    meta = extract_features(cfg, ("val",), tmp_path / "cache", device="cpu", allow_missing=True)
    counts = json.loads((tmp_path / "cache" / "meta.json").read_text())["counts"]["val"]
    assert counts == meta["counts"]["val"] and counts["lost"] == {"shard file missing": 16}
    assert counts["samples_seen"] + 16 == counts["samples_expected"] == 24 == meta["splits"]["val"] + 16


def test_run_folder_accounts_for_every_sample(trained_run: Path) -> None:
    history = json.loads((trained_run / "training_history.json").read_text())
    for record in history:
        assert record["samples_expected"] == record["samples_seen"] == 72 and record["lost"] == {}
        assert record["val_samples_expected"] == record["val_samples_seen"] == 24
        assert record["corrupt"] == record["missing"] == 0
    results = json.loads((trained_run / "results.json").read_text())
    for split in ("val", "test"):
        assert results[split]["samples_expected"] == results[split]["samples_seen"] == results[split]["n"]
    assert results["checkpoint"] == "best_model.pt" and (trained_run / "best_model.pt").is_file()
    log = (trained_run / "training.log").read_text()
    assert "epoch 0 training: 72 of 72 samples seen" in log and "test evaluation: 24 of 24" in log


def test_truncated_shard_counts_the_rest_as_lost(tcfg: TransformConfig, shards: Path) -> None:
    source = resolve_split(str(shards), "val")
    first = source.files[0]
    data = (first.path).read_bytes()
    first.path.write_bytes(data[: len(data) // 2])  # changed after the start check: found by reading
    loader = make_loader(
        source, SampleDecoder(EvalPreset(tcfg), tcfg.crop_size), batch_size=5, train=False, seed=0, epoch=0
    )
    with pytest.raises(AvakitError, match="val-000000.tar: sha256 differs"):
        list(loader)
    unchecked = SplitSource(
        "val", files=(ShardFile(first.path, samples=first.samples),), samples=first.samples
    )
    loader = make_loader(
        unchecked, SampleDecoder(EvalPreset(tcfg), tcfg.crop_size), batch_size=5, train=False, seed=0, epoch=0
    )
    seen = sum(int(valid.sum()) for *_, valid in loader)
    counts = loader.counts
    assert 0 < seen == counts.seen < first.samples and counts.expected == first.samples
    assert counts.lost == {"shard unreadable (truncated or not a tar)": first.samples - seen}
    assert counts.shards_lost == {"val-000000.tar": "shard unreadable (truncated or not a tar)"}


def test_url_source_failures_are_counted_not_warned(
    tcfg: TransformConfig, shards: Path, tmp_path: Path
) -> None:
    data = (shards / "val-000000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    patterns = {
        "val": [str(tmp_path / "cut.tar"), str(tmp_path / "gone.tar"), str(shards / "val-000001.tar")]
    }
    source = resolve_split(patterns, "val")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # webdataset's warn_and_continue, the old way
        loader = make_loader(
            source,
            SampleDecoder(EvalPreset(tcfg), tcfg.crop_size),
            batch_size=4,
            train=False,
            seed=0,
            epoch=0,
        )
        seen = sum(int(valid.sum()) for *_, valid in loader)
    counts = loader.counts
    assert counts.expected is None and counts.seen == seen > 8
    assert counts.lost["unreadable shard data (URL source: events, not samples)"] >= 2
    assert {"cut.tar", "gone.tar"} <= {Path(s).name for s in counts.shards_lost}


# -- point 4: malformed labels are corrupt samples with a reason --------------------------------------


def jpeg_bytes(fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), (120, 30, 200)).save(buf, format=fmt)
    return buf.getvalue()


GOOD = {"index": 1, "votes": [0, 0, 1, 2, 3, 2, 1, 0, 0, 0], "tags": [0, 0], "challenge": 1}
VOTES = "votes are not K integers (K of the manifest's scale) in 0..10^9 with a positive sum"
BAD_LABELS = [  # (json member, reason)
    (b"{not json", "label is not valid JSON"),
    (b"[1, 2]", "label is not a JSON object"),
    ({k: v for k, v in GOOD.items() if k != "votes"}, VOTES),
    ({**GOOD, "votes": [1] * 9}, VOTES),
    ({**GOOD, "votes": ["1"] * 10}, VOTES),
    ({**GOOD, "votes": [-1] + [1] * 9}, VOTES),
    ({**GOOD, "votes": [0] * 10}, VOTES),
    ({**GOOD, "votes": [10**40] + [1] * 9}, VOTES),
    ({**GOOD, "votes": [True] * 10}, VOTES),
    ({**GOOD, "votes": [1.5] * 10}, VOTES),
    ({**GOOD, "image_id": "../../x"}, "image_id is not an integer below 2^63 (AVA: the sample key)"),
    ({**GOOD, "image_id": 999}, "image_id is not an integer below 2^63 (AVA: the sample key)"),
    ({**GOOD, "tags": "none"}, "tags are not 2 integers"),
    (b'{"votes": [' + b"1" * 5000 + b"]}", "label is not valid JSON"),
]


def write_bad_shard(path: Path) -> dict[str, int]:
    """A tar with 3 good samples, every bad label above, a PNG stored as .jpg and a sample without jpg."""
    expected: dict[str, int] = {}
    with wds.TarWriter(str(path), mtime=0) as sink:
        for i in range(3):
            sink.write(
                {
                    "__key__": str(900 + i),
                    "jpg": jpeg_bytes(),
                    "json": json.dumps({**GOOD, "image_id": 900 + i}).encode(),
                }
            )
        for i, (label, reason) in enumerate(BAD_LABELS):
            key = str(800 + i)
            raw = label if isinstance(label, bytes) else json.dumps({"image_id": 800 + i, **label}).encode()
            sink.write({"__key__": key, "jpg": jpeg_bytes(), "json": raw})
            expected[reason] = expected.get(reason, 0) + 1
        png_label = json.dumps({**GOOD, "image_id": 850}).encode()
        sink.write({"__key__": "850", "jpg": jpeg_bytes("PNG"), "json": png_label})
        sink.write({"__key__": "851", "json": json.dumps({**GOOD, "image_id": 851}).encode()})
    expected["image does not decode as JPEG"] = 1
    expected["sample lacks its jpg or json member"] = 1
    return expected


def replace_test_shard(shards: Path) -> tuple[dict[str, int], int]:
    """Swap the first test shard for the bad one, manifest updated to match; (reasons, samples)."""
    manifest = load_manifest(shards)
    entry = manifest["splits"]["test"]["shards"][0]
    (shards / entry["name"]).unlink()
    expected = write_bad_shard(shards / entry["name"])
    n = 3 + len(BAD_LABELS) + 2
    manifest["splits"]["test"]["samples"] += n - entry["samples"]
    for key in ("samples_written", "rows_read"):  # the counts reconcile (inspect checks them)
        manifest["counts"][key] += n - entry["samples"]
    path = shards / entry["name"]
    entry.update(samples=n, bytes=path.stat().st_size, sha256=file_sha256(path))
    (shards / "manifest.json").write_text(json.dumps(manifest))
    return expected, manifest["splits"]["test"]["samples"]


def test_malformed_labels_are_counted_by_reason(tcfg: TransformConfig, shards: Path) -> None:
    expected, total = replace_test_shard(shards)
    loader = make_loader(
        resolve_split(str(shards), "test"),
        SampleDecoder(EvalPreset(tcfg), tcfg.crop_size),
        batch_size=8,
        train=False,
        seed=0,
        epoch=0,
        num_workers=1,
    )
    ids = [int(i) for _, _, batch_ids, valid in loader for i in batch_ids[valid]]
    counts = loader.counts
    assert dict(counts.lost) == expected and counts.expected == total == counts.seen + counts.n_lost
    assert {900, 901, 902} <= set(ids) and len(ids) == counts.seen


def test_evaluate_counts_malformed_labels(run: Path, shards: Path) -> None:
    expected, total = replace_test_shard(shards)
    result = runner.invoke(app, ["evaluate", str(run), "--shards", str(shards)])
    assert result.exit_code == 0, result.output
    report = json.loads(eval_outputs(run, "test", "best", "none").json.read_text())
    assert report["lost"] == dict(sorted(expected.items())) and report["samples_expected"] == total
    assert report["samples_seen"] + sum(expected.values()) == total
    assert report["metrics"]["corrupt"] == sum(expected.values())


def test_inspect_decode_reports_bad_labels_and_png(shards: Path) -> None:
    expected, _ = replace_test_shard(shards)
    result = runner.invoke(app, ["inspect", str(shards), "--decode"])
    assert result.exit_code == 1, result.output
    for reason in expected:
        assert reason in result.output, reason
    assert "sample 850: image does not decode as JPEG (PNG)" in result.output
    assert f"{sum(expected.values())} problem(s) found" in result.output


# -- point 12: a structurally wrong manifest.json is one line naming the key --------------------------


def _drop(key: str):
    return lambda m: m.pop(key)


MANIFESTS = [
    (lambda m: [m], "expected a JSON object, got list"),
    (_drop("splits"), "splits: missing"),
    (_drop("counts"), "counts: missing"),
    (lambda m: m["counts"].update(rows_read="120"), "counts.rows_read: expected a non-negative integer"),
    (lambda m: m["counts"].update(rows_read=-1), "counts.rows_read: expected a non-negative integer"),
    (lambda m: m.update(splits=[]), "splits: expected a mapping"),
    (lambda m: m["splits"]["val"].update(shards={}), "splits.val.shards: expected a list"),
    (lambda m: m["splits"]["val"]["shards"][0].pop("sha256"), r"splits.val.shards\[0\].sha256: missing"),
    (lambda m: m["splits"]["val"]["shards"][0].update(sha256="abc"), r"sha256: expected 64 lowercase hex"),
    (lambda m: m["splits"]["val"]["shards"][0].update(samples=True), r"shards\[0\].samples: expected a non"),
    (lambda m: m["splits"]["val"].update(samples=99), "splits.val.samples: 99 differs from the sum"),
    (lambda m: m["splits"]["val"]["shards"].append(m["splits"]["val"]["shards"][0]), "listed twice"),
    (lambda m: m["splits"].update(holdout={}), "splits.holdout: unknown split"),
    (lambda m: m["preprocessing"].update(quality=1000), "preprocessing.quality must be an integer in 1..100"),
    (lambda m: m["splits"]["val"]["label_stats"].update(mean_score_mean="5"), "label_stats.mean_score_mean"),
    (lambda m: m.update(skipped_by_reason=[]), "skipped_by_reason: expected a mapping"),
]


@pytest.mark.parametrize(("change", "message"), MANIFESTS)
def test_bad_manifest_structure_is_one_line(shards: Path, change, message: str) -> None:
    edit_manifest(shards, change)
    with pytest.raises(AvakitError, match=message):
        load_manifest(shards)


@pytest.mark.parametrize("command", ["inspect", "evaluate", "train"])
def test_bad_manifest_in_every_command(
    train_args: Callable[..., list[str]], run: Path, shards: Path, tmp_path: Path, command: str
) -> None:
    edit_manifest(shards, lambda m: m["splits"]["test"]["shards"][0].update(samples="16"))
    args = {
        "inspect": ["inspect", str(shards)],
        "evaluate": ["evaluate", str(run), "--shards", str(shards)],
        "train": train_args(shards, tmp_path / "out"),
    }[command]
    line = error_line(runner.invoke(app, args), 2)
    assert "manifest.json: splits.test.shards[0].samples: expected a non-negative integer, got str" in line


def test_manifest_not_json_or_not_utf8(shards: Path) -> None:
    (shards / "manifest.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(AvakitError, match="manifest.json: invalid JSON"):
        load_manifest(shards)
    (shards / "manifest.json").write_text("[" * 100_000)
    with pytest.raises(AvakitError, match="manifest.json"):
        load_manifest(shards)
