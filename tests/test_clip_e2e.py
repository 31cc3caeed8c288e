"""The clip task as a user runs it: a synthetic EPIC-KITCHENS layout (verb and noun learnable
from the frames), `shard --epic-kitchens`, `train` a random-init resnet18 above chance, `evaluate`,
the history's train-val gap, results.json's classes, predict / export refused on the clip run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
from torchvision.io import encode_jpeg
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.dataset.synthetic_epic import SyntheticEpic, make_synthetic_epic
from avakit.training.evaluate import evaluate_run

runner = CliRunner()
MAJORITY = {"verb": lambda s: s.verb_class, "noun": lambda s: s.noun_class}
MAJORITY["action"] = lambda s: (s.verb_class, s.noun_class)
FAST = (
    "task=clip",
    "training.select_metric=action_top1",
    "clip.frames=2",
    "clip.verb_classes=5",
    "clip.noun_classes=6",
    "model.backbone=resnet18",
    "model.pretrained=false",
    "model.mlp_hidden_dims=[]",
    "model.dropout=0.1",
    "transform.resize_size=32",
    "transform.crop_size=32",
    "training.learning_rate=2e-3",
    "training.differential_lr=false",
    "training.scheduler=none",
    "training.warmup_epochs=0",
    "training.early_stop_patience=0",
    "training.max_epochs=4",
    "training.batch_size=8",
    "training.amp=off",
    "data.num_workers=0",
    "data.shuffle_buffer=100",
    "device=cpu",
    "telemetry.collect_every_n=5",
)


@pytest.fixture(scope="module")
def epic(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticEpic, Path]:
    """(a synthetic EPIC layout, its shards): 5 verbs, 6 nouns, 96 segments, 8 frames stored each."""
    root = tmp_path_factory.mktemp("epic")
    layout = make_synthetic_epic(root / "release", segments_per_video=12)
    out = root / "shards"
    args = ["--short-side", "32", "--frames-per-segment", "8", "--shard-size", "12", "--workers", "1"]
    run(
        "shard",
        "--epic-kitchens",
        str(layout.annotations),
        "--frames",
        str(layout.frames),
        "--out",
        str(out),
        *args,
    )
    return layout, out


def run(*argv: str, code: int = 0) -> str:
    result = runner.invoke(app, list(argv))
    assert result.exit_code == code, result.output
    return " ".join(result.output.split())


@pytest.mark.slow
def test_clip_run_learns_and_evaluates(epic: tuple[SyntheticEpic, Path], tmp_path: Path) -> None:
    layout, shards = epic
    out = tmp_path / "runs"
    sets = [a for s in (*FAST, f"data.shards={shards}", f"output_dir={out}") for a in ("--set", s)]
    run("train", "--config", "configs/epic_resnet18.yaml", *sets)
    (run_dir,) = out.iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["task"] == "clip" and results["classes"] == {
        "verb": list(layout.verbs),
        "noun": list(layout.nouns),
    }
    val = results["val"]
    segs = [s for s in layout.segments if s.split == "val"]
    n_val = len(segs)
    # above chance (1/30 actions, 1/5 verbs, 1/6 nouns) and above always answering the most
    # frequent val class (the layout's classes are imbalanced: actions 1/6, nouns 1/3, verbs 0.58)
    majority = {k: max(Counter(f(s) for s in segs).values()) / n_val for k, f in MAJORITY.items()}
    assert val["n"] == n_val and val["action_top1"] > max(3 / 30, 2 * majority["action"]), (val, majority)
    assert val["verb_top1"] > 1 / 5 + 0.15 and val["noun_top1"] > majority["noun"] + 0.15, (val, majority)
    assert val["unseen_n"] > 0 and "tail_n" in val
    history = json.loads((run_dir / "training_history.json").read_text())
    last = history[-1]
    assert {"train_action_top1", "train_verb_top1", "val_action_top1", "val_verb_top5", "gap"} <= set(last)
    assert last["gap"] == pytest.approx(last["train_action_top1"] - last["val_action_top1"])
    table = pd.read_parquet(run_dir / "predictions" / "val.parquet")
    assert len(table) == n_val and table["action_correct"].mean() == pytest.approx(val["action_top1"])
    assert (run_dir / "predictions" / "val_epoch_000.parquet").is_file()
    report = evaluate_run(run_dir, split="val", device="cpu")
    assert report["metrics"]["action_top1"] == pytest.approx(val["action_top1"])
    assert len(pd.read_parquet(run_dir / report["predictions"])) == n_val
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(encode_jpeg(torch.zeros((3, 32, 32), dtype=torch.uint8)).numpy().tobytes())
    assert "avakit predict" in run("predict", str(photo), "--run", str(run_dir), code=2)
    assert "avakit export" in run("export", str(run_dir), "--output", str(tmp_path / "m.onnx"), code=2)


def test_class_counts_and_task_must_match_the_shards(
    epic: tuple[SyntheticEpic, Path], tmp_path: Path
) -> None:
    _, shards = epic
    sets = [a for s in (*FAST, f"data.shards={shards}", f"output_dir={tmp_path}") for a in ("--set", s)]
    text = run(
        "train", "--config", "configs/epic_resnet18.yaml", *sets, "--set", "clip.verb_classes=97", code=2
    )
    assert "5 verb and 6 noun classes" in text and "clip.verb_classes 97" in text
    score = ("--set", "task=score", "--set", "training.select_metric=loss", "--set", f"data.shards={shards}")
    assert "clips labels" in run("train", "--config", "configs/small.yaml", *score, code=2)


@pytest.mark.slow
def test_a_resumed_clip_run_ends_as_an_uninterrupted_one(
    epic: tuple[SyntheticEpic, Path], tmp_path: Path
) -> None:
    from avakit.config import load_config
    from avakit.training.checkpoint import run_config
    from avakit.training.fit import fit

    _, shards = epic
    sets = [*FAST, "training.max_epochs=2", "training.checkpoint_every=1", f"data.shards={shards}"]
    whole = fit(load_config("configs/epic_resnet18.yaml", [*sets, "name=whole"]), output_dir=tmp_path)
    part = fit(
        load_config("configs/epic_resnet18.yaml", [*sets, "name=part"]),
        output_dir=tmp_path,
        stop_after_epochs=1,
    )
    part = fit(run_config(part), resume=part)
    history = [json.loads((r / "training_history.json").read_text()) for r in (whole, part)]
    for key in ("val_loss", "train_action_top1", "val_action_top1", "gap"):
        assert [h[key] for h in history[0]] == pytest.approx([h[key] for h in history[1]], abs=1e-6), key
    results = [json.loads((r / "results.json").read_text())["val"] for r in (whole, part)]
    assert results[0]["action_top1"] == results[1]["action_top1"]


@pytest.mark.slow
def test_torchrun_clip_run_sees_every_val_clip_once(epic: tuple[SyntheticEpic, Path], tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    layout, shards = epic
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
    ]
    cmd += ["--master_port", str(port), "-m", "avakit", "train", "--config", "configs/epic_resnet18.yaml"]
    sets = [
        *FAST,
        "training.max_epochs=1",
        "data.num_workers=1",
        f"data.shards={shards}",
        f"output_dir={tmp_path}",
    ]
    cmd += [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = tmp_path.glob("epic-resnet18-*")
    n_val = sum(s.split == "val" for s in layout.segments)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["val"]["n"] == n_val
    table = pd.read_parquet(run_dir / "predictions" / "val.parquet")
    assert table["key"].is_unique and len(table) == n_val
    history = json.loads((run_dir / "training_history.json").read_text())
    assert 0.0 <= history[0]["train_action_top1"] <= 1.0 and "gap" in history[0]
