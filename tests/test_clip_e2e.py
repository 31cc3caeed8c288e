"""The clip task as a user runs it, on clip shards written here in the shard contract (verb and
noun learnable from the frames): `train` a random-init resnet18 above chance, `evaluate`, the
history's train-val gap, results.json's classes, and predict / export refused on the clip run."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.io import encode_jpeg
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.scores import CLIPS
from avakit.training.evaluate import evaluate_run

runner = CliRunner()
VERBS, NOUNS = ["stir", "cut", "wash"], ["pan", "knife", "cup", "tap"]
# noun = the frames' colour, verb = stripe orientation (crop- and flip-proof); 8 frames stored, 4 taken
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (210, 210, 40)]
FAST = (
    "task=clip",
    "training.select_metric=action_top1",
    "clip.frames=4",
    f"clip.verb_classes={len(VERBS)}",
    f"clip.noun_classes={len(NOUNS)}",
    "model.backbone=resnet18",
    "model.pretrained=false",
    "model.mlp_hidden_dims=[]",
    "model.dropout=0.1",
    "transform.resize_size=40",
    "transform.crop_size=32",
    "training.learning_rate=2e-3",
    "training.differential_lr=false",
    "training.scheduler=none",
    "training.warmup_epochs=0",
    "training.early_stop_patience=0",
    "training.max_epochs=5",
    "training.batch_size=8",
    "training.amp=off",
    "data.num_workers=0",
    "data.shuffle_buffer=100",
    "device=cpu",
    "telemetry.collect_every_n=5",
)


def frame(verb: int, noun: int, rng: np.random.Generator) -> torch.Tensor:
    """One 40 x 40 frame: the noun's colour, stripes of the verb's orientation, some noise."""
    img = np.ones((40, 40, 3)) * np.array(COLOURS[noun])
    y, x = np.mgrid[:40, :40]
    stripes = [(y // 4) % 2, (x // 4) % 2, ((x + y) // 4) % 2][verb]
    img = img * (0.55 + 0.45 * stripes[..., None]) + rng.normal(0, 12, img.shape)
    return torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8)).permute(2, 0, 1).contiguous()


def write_split(out: Path, split: str, n: int, seed: int) -> dict:
    """One shard of `n` clip samples in the contract; its manifest entry."""
    rng, name = np.random.default_rng(seed), f"{split}-000000.tar"
    with tarfile.open(out / name, "w") as tar:
        for i in range(n):
            verb, noun = i % len(VERBS), (i // len(VERBS)) % len(NOUNS)
            key = f"P{seed:02d}_{split}_{i}"
            label = {
                "key": key, "kind": "clips", "image_id": seed * 1000 + i, "narration_id": key,
                "participant": f"P{seed:02d}", "video": f"P{seed:02d}_{i // 6:02d}", "start_frame": 10,
                "stop_frame": 80, "frames": list(range(10, 90, 10)), "verb_class": verb, "noun_class": noun,
                "verb": VERBS[verb], "noun": NOUNS[noun], "narration": f"{VERBS[verb]} {NOUNS[noun]}",
                "unseen": split == "val" and i % 2 == 0, "tail_verb": None, "tail_noun": None,
                "source": "epic-kitchens",
            }  # fmt: skip
            members = {"json": json.dumps(label).encode()}
            for k in range(8):
                members[f"{k:03d}.jpg"] = encode_jpeg(frame(verb, noun, rng), quality=90).numpy().tobytes()
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = (out / name).read_bytes()
    shard = {"name": name, "samples": n, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    stats = {"n": n, "mean_score_mean": 0.0, "mean_score_std": 0.0}
    return {"samples": n, "bytes": len(data), "shards": [shard], "label_stats": stats}


def write_clip_shards(out: Path, verbs: list[str] = VERBS) -> Path:
    """Clip shards with train (72 clips) and val (36), and their manifest."""
    out.mkdir(parents=True)
    splits = {"train": write_split(out, "train", 72, 1), "val": write_split(out, "val", 36, 2)}
    splits["test"] = {"samples": 0, "bytes": 0, "shards": [], "label_stats": {"n": 0}}
    manifest = {
        "format_version": 2,
        "labels": CLIPS.as_dict(),
        "classes": {"verb": verbs, "noun": NOUNS},
        "counts": {"rows_read": 108, "samples_written": 108, "rows_skipped": 0},
        "preprocessing": {"short_side": 40, "quality": 90},
        "skipped_by_reason": {},
        "skipped": [],
        "splits": splits,
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def run(*argv: str, code: int = 0) -> str:
    result = runner.invoke(app, list(argv))
    assert result.exit_code == code, result.output
    return " ".join(result.output.split())


@pytest.mark.slow
def test_clip_run_learns_and_evaluates(tmp_path: Path) -> None:
    shards = write_clip_shards(tmp_path / "shards")
    out = tmp_path / "runs"
    sets = [a for s in (*FAST, f"data.shards={shards}", f"output_dir={out}") for a in ("--set", s)]
    run("train", "--config", "configs/epic_resnet18.yaml", *sets)
    (run_dir,) = out.iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["task"] == "clip" and results["classes"] == {"verb": VERBS, "noun": NOUNS}
    val = results["val"]
    chance = 1 / (len(VERBS) * len(NOUNS))
    assert val["n"] == 36 and val["action_top1"] > 3 * chance, val
    assert val["verb_top1"] > 1 / len(VERBS) + 0.2 and val["noun_top1"] > 1 / len(NOUNS) + 0.2, val
    assert val["unseen_n"] == 18
    history = json.loads((run_dir / "training_history.json").read_text())
    last = history[-1]
    assert {"train_action_top1", "train_verb_top1", "val_action_top1", "gap"} <= set(last)
    assert last["gap"] == pytest.approx(last["train_action_top1"] - last["val_action_top1"])
    table = pd.read_parquet(run_dir / "predictions" / "val.parquet")
    assert len(table) == 36 and table["action_correct"].mean() == pytest.approx(val["action_top1"])
    assert (run_dir / "predictions" / "val_epoch_000.parquet").is_file()
    report = evaluate_run(run_dir, split="val", device="cpu")
    assert report["metrics"]["action_top1"] == pytest.approx(val["action_top1"])
    assert len(pd.read_parquet(run_dir / report["predictions"])) == 36
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(encode_jpeg(frame(0, 0, np.random.default_rng(0))).numpy().tobytes())
    assert "avakit predict" in run("predict", str(photo), "--run", str(run_dir), code=2)
    assert "avakit export" in run("export", str(run_dir), "--output", str(tmp_path / "m.onnx"), code=2)


def test_class_counts_must_match_the_manifest(tmp_path: Path) -> None:
    shards = write_clip_shards(tmp_path / "shards", verbs=["stir", "cut"])
    sets = [a for s in (*FAST, f"data.shards={shards}", f"output_dir={tmp_path}") for a in ("--set", s)]
    text = run("train", "--config", "configs/epic_resnet18.yaml", *sets, code=2)
    assert "2 verb and 4 noun classes" in text and "clip.verb_classes 3" in text
    score = ("--set", "task=score", "--set", "training.select_metric=loss")
    assert "clips labels" in run(
        "train", "--config", "configs/small.yaml", *score, "--set", f"data.shards={shards}", code=2
    )
