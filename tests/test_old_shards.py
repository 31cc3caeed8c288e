"""Shards and checkpoints written by the previous version (manifest format 1, no `labels`) still work.

The fixture shards AVA data with today's CLI, then rewrites manifest.json as the previous
version wrote it (format_version 1, no "labels" key; the tars are untouched: AVA shards are
byte-identical across the two versions). `inspect`, `train`, `evaluate` must read them as AVA,
and a best_model.pt saved without "labels" must still load and evaluate as AVA.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.config import Config
from avakit.dataset.manifest import load_manifest, manifest_scale
from avakit.dataset.synthetic import make_synthetic_ava
from avakit.fileio import file_sha256
from avakit.scores import AVA
from avakit.training.evaluate import evaluate_run
from avakit.training.fit import fit

runner = CliRunner()


def as_version_1(shards: Path) -> None:
    """Rewrite shards/manifest.json the way the previous avakit wrote it: format 1, no labels."""
    path = shards / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["format_version"] == 2 and manifest["labels"] == AVA.as_dict()
    del manifest["labels"]
    manifest["format_version"] = 1
    path.write_text(json.dumps(manifest, indent=2))


@pytest.fixture(scope="module")
def old_shards(tmp_path_factory: pytest.TempPathFactory, shard_args: Callable[..., list[str]]) -> Path:
    """AVA shards of 60 synthetic photos with a version-1 manifest (read-only: copy to change)."""
    root = tmp_path_factory.mktemp("old")
    ava = make_synthetic_ava(root / "ava", n=60, seed=5, long_side=(64, 128))
    out = root / "shards"
    result = runner.invoke(app, shard_args(ava, out, "--val-ratio", "0.2", "--test-ratio", "0.2"))
    assert result.exit_code == 0, result.output
    tars = {p.name: file_sha256(p) for p in out.glob("*.tar")}
    as_version_1(out)
    assert {p.name: file_sha256(p) for p in out.glob("*.tar")} == tars
    return out


@pytest.fixture(scope="module")
def old_run(old_shards: Path, tiny_cfg: Callable[..., Config]) -> Path:
    """A tiny run trained on the version-1 shards."""
    return fit(tiny_cfg(old_shards, "name=old"), output_dir=old_shards.parent / "runs")


def test_version_1_manifest_reads_as_ava(old_shards: Path) -> None:
    manifest = load_manifest(old_shards)
    assert manifest["format_version"] == 1 and "labels" not in manifest
    assert manifest_scale(manifest) == AVA


def test_inspect_accepts_version_1(old_shards: Path) -> None:
    result = runner.invoke(app, ["inspect", str(old_shards), "--decode"])
    assert result.exit_code == 0, result.output


def test_train_on_version_1_shards_is_ava(old_run: Path) -> None:
    results = json.loads((old_run / "results.json").read_text())
    assert results["labels"] == AVA.as_dict()
    assert results["test"]["n"] > 0 and "accuracy" in results["test"]  # AVA: threshold 5 applies
    ckpt = torch.load(old_run / "best_model.pt", weights_only=True)
    assert ckpt["labels"] == AVA.as_dict()


def test_evaluate_version_1_shards(old_run: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(old_run), "--split", "test"])
    assert result.exit_code == 0, result.output
    assert "majority" in result.output


def test_checkpoint_without_labels_evaluates_as_ava(old_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(old_run, run)
    ckpt = torch.load(run / "best_model.pt", weights_only=True)
    del ckpt["labels"]
    torch.save(ckpt, run / "best_model.pt")
    found = evaluate_run(run, "test", device="cpu")
    trained = json.loads((old_run / "results.json").read_text())["test"]
    assert found["labels"] == AVA.as_dict()
    for key in ("srcc", "plcc", "accuracy", "n"):
        assert found["metrics"][key] == pytest.approx(trained[key], abs=1e-5), key
    result = runner.invoke(app, ["evaluate", str(run), "--split", "val"])
    assert result.exit_code == 0, result.output
