"""The pairwise task as a user runs it: a synthetic PhotoTriage release in the official layout,
`shard --phototriage`, `train` end to end and in frozen mode, `evaluate`, `report`, `predict` and
`export` on the pairwise run; the model's antisymmetry; series-level subsets; task mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.config import load_config
from avakit.dataset.sources import resolve_split
from avakit.dataset.synthetic_pairs import make_synthetic_phototriage
from avakit.model.build import model_from_config
from avakit.scores import PAIRS
from avakit.tasks.pairwise import PAIRWISE
from avakit.training.loader import eval_loader

runner = CliRunner()
E2E = Path(__file__).parents[1] / "configs" / "pairwise_e2e.yaml"
# small and fast on 2 CPU cores: a random-init resnet18 on 48 px photos, 4 epochs
FAST = (
    "model.backbone=resnet18",
    "model.pretrained=false",
    "model.mlp_hidden_dims=[32]",
    "model.dropout=0.1",
    "model.freeze=none",
    "transform.resize_size=48",
    "transform.crop_size=48",
    "training.learning_rate=1e-3",
    "training.differential_lr=false",
    "training.max_epochs=4",
    "training.batch_size=8",
    "training.amp=off",
    "data.num_workers=0",
    "device=cpu",
    "telemetry.collect_every_n=5",
)


def run(*argv: str, code: int = 0) -> str:
    result = runner.invoke(app, list(argv))
    assert result.exit_code == code, result.output
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the synthetic release, its shards): 90 series, val carved from train, the val list = test."""
    root = tmp_path_factory.mktemp("pt")
    data = make_synthetic_phototriage(root / "PhotoTriage", n_series=90, seed=3, long_side=(64, 96))
    shards = root / "shards"
    run(
        "shard",
        "--phototriage",
        str(data.root),
        "--out",
        str(shards),
        "--short-side",
        "48",
        "--val-ratio",
        "0.25",
        "--workers",
        "1",
    )
    return data.root, shards


def train(shards: Path, out: Path, name: str, *extra: str) -> Path:
    sets = [f"data.shards={shards}", f"output_dir={out}", f"name={name}", *FAST, *extra]
    run("train", "--config", str(E2E), *[a for s in sets for a in ("--set", s)])
    (run_dir,) = out.glob(f"{name}-*")
    return run_dir


@pytest.mark.slow
def test_end_to_end_run_learns_the_ranks_and_serves_every_command(release, tmp_path: Path) -> None:
    root, shards = release
    run_dir = train(shards, tmp_path / "runs", "e2e")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["task"] == "pairwise" and results["labels"] == PAIRS.as_dict()
    assert results["select_metric"] == "pair_accuracy"
    assert results["val"]["pair_accuracy"] >= 0.85, results["val"]
    assert 0.5 < results["test"]["human_ceiling"] <= 1.0 and results["test"]["n_pairs"] > 0
    pairs = pd.read_parquet(run_dir / "predictions" / "test.parquet")
    photos = pd.read_parquet(run_dir / "predictions" / "test_photos.parquet")
    assert {"series", "i", "j", "p_true", "p_pred", "rank_i", "rank_j"} <= set(pairs.columns)
    assert {"series", "index", "member", "score", "rank"} <= set(photos.columns)
    # P(i > j) is sigmoid of the photos' score difference: the pair table and the photo table agree
    s = photos.set_index(["series", "index"])["score"]
    diff = (
        s.loc[list(zip(pairs.series, pairs.i, strict=True))].to_numpy()
        - s.loc[list(zip(pairs.series, pairs.j, strict=True))].to_numpy()
    )
    assert torch.allclose(torch.tensor(pairs.p_pred.to_numpy()), torch.sigmoid(torch.tensor(diff)), atol=1e-5)

    assert "pair" in run("evaluate", str(run_dir)).lower()
    evaluated = json.loads(next((run_dir / "eval").glob("test_best*.json")).read_text())
    assert evaluated["metrics"]["pair_accuracy"] == pytest.approx(results["test"]["pair_accuracy"])
    run("report", str(run_dir))
    assert (run_dir / "report" / "report.html").is_file()

    photo = sorted((root / "train_val_imgs").glob("*.JPG"))[:2]
    table = json.loads(
        runner.invoke(app, ["predict", *map(str, photo), "--run", str(run_dir), "--format", "json"]).output
    )
    assert len(table) == 2 and all(isinstance(row["mean_score"], float) for row in table)
    assert "relative score" in table[0]["score"]
    onnx = tmp_path / "pt.onnx"
    run("export", str(run_dir), "--output", str(onnx))
    by_onnx = json.loads(
        runner.invoke(app, ["predict", *map(str, photo), "--onnx", str(onnx), "--format", "json"]).output
    )
    for a, b in zip(table, by_onnx, strict=True):
        assert a["mean_score"] == pytest.approx(b["mean_score"], abs=1e-3)  # a logit, never clamped


@pytest.mark.slow
def test_frozen_mode_learns_from_standardised_sources(release, tmp_path: Path) -> None:
    _, shards = release
    run_dir = train(
        shards,
        tmp_path / "runs",
        "frozen",
        "features.sources=[iqa,resnet50_layer3]",
        "model.mlp_hidden_dims=[64]",
        "training.learning_rate=3e-3",
    )
    results = json.loads((run_dir / "results.json").read_text())
    assert results["val"]["pair_accuracy"] >= 0.85, results["val"]
    state = torch.load(run_dir / "best_model.pt", weights_only=True)["model_state_dict"]
    assert bool(state["feature_norm.fitted_flag"])  # fitted on train before the first epoch
    assert not any(k.startswith("backbone.") and "head" in k for k in state)


@pytest.mark.parametrize("head", ["difference", "concat"])
def test_p_a_over_b_is_one_minus_p_b_over_a(head: str) -> None:
    cfg = load_config(E2E, [*FAST, f"pairs.head={head}"])
    model = model_from_config(cfg, scale=PAIRS, load_weights=False).eval()
    x = torch.rand(4, 3, 48, 48)
    pairs = torch.tensor([[0, 1], [2, 3], [1, 3]])
    with torch.no_grad():
        ab, ba = model(x, pairs), model(x, pairs.flip(1))
    torch.testing.assert_close(torch.sigmoid(ab), 1 - torch.sigmoid(ba))
    if head == "concat":  # compares two photos: no score for one alone
        with pytest.raises(Exception, match="concat head"):
            model(x)


def test_quick_experiment_keeps_whole_series(release) -> None:
    _, shards = release
    cfg = load_config(E2E, [*FAST, f"data.shards={shards}"])
    source = resolve_split(str(shards), "train")
    full = {
        int(i) for b in eval_loader(source, cfg, batch_size=8, pin_memory=False, task=PAIRWISE) for i in b[2]
    }
    seen: dict[int, int] = {}
    for photos, labels, _, _ in eval_loader(
        source, cfg, batch_size=8, pin_memory=False, fraction=0.5, task=PAIRWISE
    ):
        for sid in labels["pair_series"].tolist():
            seen[sid] = seen.get(sid, 0) + 1
        assert len(photos) == len(labels["photo_series"])
    assert 0 < len(seen) < len(full)  # a subset of the series ...
    manifest_pairs = {}
    for batch in eval_loader(source, cfg, batch_size=8, pin_memory=False, task=PAIRWISE):
        for sid in batch[1]["pair_series"].tolist():
            manifest_pairs[sid] = manifest_pairs.get(sid, 0) + 1
    assert all(seen[s] == manifest_pairs[s] for s in seen)  # ... each with every one of its pairs


def test_task_and_shards_must_match(release, tmp_path: Path) -> None:
    _, shards = release
    sets = [f"data.shards={shards}", f"output_dir={tmp_path}", *FAST]
    out = run(
        "train",
        "--config",
        str(E2E),
        *[a for s in [*sets, "task=score", "training.select_metric=loss"] for a in ("--set", s)],
        code=2,
    )
    assert "task: score" in out and "pairwise" in out
    out = run(
        "train",
        "--config",
        str(E2E),
        *[a for s in [*sets, "model.output_mode=distribution"] for a in ("--set", s)],
        code=2,
    )
    assert "model.output_mode" in out and "regression" in out
    assert not list(tmp_path.glob("*-*"))  # nothing written by a refused start


def test_small_val_warning_speaks_of_series(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from avakit.training.selection import warn_small_val

    log = logging.getLogger("avakit.test.smallval")
    with caplog.at_level(logging.WARNING, logger="avakit.test.smallval"):
        warn_small_val(log, 19, "pair_accuracy", "pairwise")
        warn_small_val(log, 195, "pair_accuracy", "pairwise")  # the official val list's size: fine
    assert len(caplog.records) == 1 and "19 series" in caplog.text and "SRCC" not in caplog.text


@pytest.mark.slow
def test_torchrun_two_processes_evaluate_every_series_once(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    data = make_synthetic_phototriage(tmp_path / "PT", n_series=40, seed=2, long_side=(64, 80))
    shards = tmp_path / "shards"
    run(
        "shard",
        "--phototriage",
        str(data.root),
        "--out",
        str(shards),
        "--short-side",
        "48",
        "--shard-size",
        "8",
        "--val-ratio",
        "0.25",
    )  # several shards per split: one rank each at least
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sets = [
        *FAST,
        "model.mlp_hidden_dims=[8]",
        "training.max_epochs=2",
        "training.batch_size=4",
        "data.num_workers=1",
        f"data.shards={shards}",
        "name=ddp",
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        "-m",
        "avakit",
        "train",
        "--config",
        str(E2E),
        "--output-dir",
        str(tmp_path / "out"),
        *[a for s in sets for a in ("--set", s)],
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "out").glob("ddp-*")
    results = json.loads((run_dir / "results.json").read_text())
    manifest = json.loads((shards / "manifest.json").read_text())
    assert results["world_size"] == 2
    for split in ("val", "test"):
        stats = manifest["splits"][split]["label_stats"]
        assert results[split]["n"] == stats["n"] and results[split]["n_pairs"] == stats["pairs"]
        pairs = pd.read_parquet(run_dir / "predictions" / f"{split}.parquet")
        assert not pairs.duplicated(["series", "i", "j"]).any() and len(pairs) == stats["pairs"]


@pytest.mark.slow
def test_a_resumed_pairwise_run_ends_exactly_as_an_uninterrupted_one(release, tmp_path: Path) -> None:
    from avakit.training.checkpoint import run_config
    from avakit.training.fit import fit

    _, shards = release
    sets = [*FAST, "training.max_epochs=3", f"data.shards={shards}"]
    whole = fit(load_config(E2E, [*sets, "name=whole"]), output_dir=tmp_path)
    part = fit(load_config(E2E, [*sets, "name=part"]), output_dir=tmp_path, stop_after_epochs=1)
    part = fit(run_config(part), resume=part)
    history = [json.loads((r / "training_history.json").read_text()) for r in (whole, part)]
    assert [h["val_loss"] for h in history[0]] == [h["val_loss"] for h in history[1]]
    results = [json.loads((r / "results.json").read_text())["test"] for r in (whole, part)]
    assert results[0]["pair_accuracy"] == results[1]["pair_accuracy"]
    assert results[0]["log_loss"] == results[1]["log_loss"]
