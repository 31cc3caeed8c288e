"""Culling your own shoots as a user runs it: synthetic good/bad folders (bad = a blurred,
darkened or noisy copy of a good photo), audit -> shard --folders -> train -> evaluate ->
export --int8 -> predict; the per-folder pair cap; augmentation of both photos by default."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.config import load_config
from avakit.dataset.synthetic_folders import make_synthetic_folders
from avakit.tasks.pair_views import PhotoView
from avakit.tasks.pairwise import PairDecoder

runner = CliRunner()
FOLDERS = Path(__file__).parents[1] / "configs" / "folders.yaml"
# fast on 2 CPU cores: a random-init resnet18 on 64 px crops (the recipe's mobilenet_v3_large
# wants ImageNet weights), 10 epochs
FAST = (
    "model.backbone=resnet18",
    "model.pretrained=false",
    "transform.resize_size=72",
    "transform.crop_size=64",
    "training.learning_rate=1e-3",
    "training.warmup_epochs=1",
    "training.max_epochs=10",
    "training.early_stop_patience=0",
    "training.amp=off",
    "data.num_workers=0",
    "device=cpu",
)


def run(*argv: str, code: int = 0) -> str:
    result = runner.invoke(app, list(argv))
    assert result.exit_code == code, result.output
    return " ".join(result.output.split())


@pytest.mark.slow
def test_audit_shard_train_evaluate_export_predict(tmp_path: Path) -> None:
    data = make_synthetic_folders(tmp_path / "data", n_folders=30, seed=4, photos=(2, 5), mos_share=0.5)
    assert "no errors" in run(
        "audit", str(data.files), "--splits", str(data.splits), "--report", str(tmp_path / "audit.json")
    )
    shards = tmp_path / "shards"
    run(
        "shard",
        "--folders",
        str(data.files),
        "--splits",
        str(data.splits),
        "--mos",
        str(data.mos),
        "--out",
        str(shards),
        "--short-side",
        "72",
    )
    sets = [f"data.shards={shards}", f"output_dir={tmp_path / 'runs'}", "name=cull", *FAST]
    run("train", "--config", str(FOLDERS), *[a for s in sets for a in ("--set", s)])
    (run_dir,) = (tmp_path / "runs").glob("cull-*")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["val"]["pair_accuracy"] >= 0.9, results["val"]
    for key in ("pair_accuracy_macro", "auc_mean", "kendall_tau_mos"):
        assert key in results["test"], key
    photos = pd.read_parquet(run_dir / "predictions" / "test_photos.parquet")
    pairs = pd.read_parquet(run_dir / "predictions" / "test.parquet")
    assert set(photos["grade"]) == {"good", "bad"} and photos["mos"].notna().any()
    assert photos["score"].between(-1, 1).all()  # the unit head's scores
    group = photos.set_index(["series", "index"])["group"]
    for col in ("i", "j"):  # never a pair across folders
        assert (group.loc[list(zip(pairs.series, pairs[col], strict=True))].to_numpy() == pairs.group).all()
    state = torch.load(run_dir / "best_model.pt", weights_only=True)["model_state_dict"]
    assert "head.direction" in state and "head.mos.weight" in state  # unit head + auxiliary MOS head

    log = tmp_path / "changelog.md"
    out = run("evaluate", str(run_dir), "--split", "test", "--changelog", str(log))
    assert "ROC AUC good vs bad" in out and "macro" in out and "vs MOS" in out
    assert "pair_accuracy" in log.read_text() and log.read_text().count("\n| ") >= 2
    onnx = tmp_path / "cull.onnx"
    out = run("export", str(run_dir), "--output", str(onnx), "--int8")
    assert "tau" in out.lower()
    photo = sorted(data.files.rglob("*.jpg"))[:3]
    rows = json.loads(
        runner.invoke(
            app,
            [
                "predict",
                *map(str, photo),
                "--onnx",
                str(onnx.with_name("cull.int8.onnx"))
                if onnx.with_name("cull.int8.onnx").is_file()
                else str(onnx),
                "--format",
                "json",
            ],
        ).output
    )
    assert len(rows) == 3 and all(-1.0 <= r["mean_score"] <= 1.0 for r in rows)


def _sample(n_good: int, n_bad: int, chunk: tuple[int, int] = (0, 1)) -> dict:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (40, 40), (120, 90, 60)).save(buf, "JPEG")
    n = n_good + n_bad
    grades = ["good"] * n_good + ["bad"] * n_bad
    label = {
        "key": "f-000",
        "kind": "pairs",
        "image_id": 0,
        "group": "f",
        "members": [f"f/{k}.jpg" for k in range(n)],
        "grades": grades,
        "chunk": list(chunk),
        "source": "folders",
        "pairs": [[g, n_good + b, 1.0, 1, 2] for g in range(n_good) for b in range(n_bad)],
    }
    return {
        "__key__": "f-000",
        "json": json.dumps(label).encode(),
        **{f"{k:03d}.jpg": buf.getvalue() for k in range(n)},
    }


def test_pairs_are_drawn_afresh_under_the_folder_cap() -> None:
    view = PhotoView(40, 32, train=True, flip=True, jitter=(0.1, 0.1), rotation=5.0)
    capped, whole = PairDecoder(view, max_pairs=16), PairDecoder(view)
    draws = [capped(_sample(5, 5))[1] for _ in range(5)]
    assert all(len(d) == 16 for d in draws) and len(whole(_sample(5, 5))[1]) == 25
    assert len({tuple(map(tuple, d[:, :2].long().tolist())) for d in draws}) > 1  # afresh each time
    assert len(capped(_sample(5, 5, chunk=(1, 2)))[1]) == 8  # a folder's cap is shared by its chunks
    assert len(capped(_sample(2, 2))[1]) == 4  # a small folder keeps all its pairs


def test_both_photos_are_augmented_by_default_and_anchor_only_warns(tmp_path: Path) -> None:
    assert load_config(FOLDERS).pairs.augment_anchor_only is False
    torch.manual_seed(0)
    img = torch.randint(0, 255, (3, 48, 48), dtype=torch.uint8)
    still = PhotoView(40, 32, train=False, flip=False, jitter=(0, 0), rotation=0)([img])[0]
    both = PhotoView(40, 32, train=True, flip=True, jitter=(0.3, 0.3), rotation=10)
    anchor = PhotoView(40, 32, train=True, flip=True, jitter=(0.3, 0.3), rotation=10, anchor_only=True)
    out = both([img, img], ["good", "bad"])
    assert not torch.equal(out[1], still)  # the bad photo is augmented too
    out = anchor([img, img], ["good", "bad"])
    assert torch.equal(out[1], still) and not torch.equal(out[0], still)

    data = make_synthetic_folders(tmp_path / "d", n_folders=6, seed=1, photos=(2, 2))
    shards = tmp_path / "shards"
    run(
        "shard",
        "--folders",
        str(data.files),
        "--splits",
        str(data.splits),
        "--out",
        str(shards),
        "--short-side",
        "48",
    )
    sets = [
        f"data.shards={shards}",
        f"output_dir={tmp_path / 'runs'}",
        "name=anchor",
        *FAST,
        "features.sources=[iqa]",
        "training.max_epochs=1",
        "pairs.augment_anchor_only=true",
    ]
    logging.getLogger("avakit").propagate = True
    run("train", "--config", str(FOLDERS), *[a for s in sets for a in ("--set", s)])
    (run_dir,) = (tmp_path / "runs").glob("anchor-*")
    assert "augment_anchor_only" in (run_dir / "training.log").read_text()


@pytest.mark.slow
def test_frozen_cache_trains_the_unit_head_with_its_mos_head(tmp_path: Path) -> None:
    data = make_synthetic_folders(tmp_path / "d", n_folders=8, seed=2, photos=(2, 3), mos_share=0.6)
    shards, cache = tmp_path / "shards", tmp_path / "cache"
    run(
        "shard",
        "--folders",
        str(data.files),
        "--splits",
        str(data.splits),
        "--mos",
        str(data.mos),
        "--out",
        str(shards),
        "--short-side",
        "48",
    )
    sets = [
        f"data.shards={shards}",
        f"output_dir={tmp_path / 'runs'}",
        "name=cached",
        *FAST,
        "features.sources=[iqa]",
        "training.max_epochs=2",
    ]
    run("features", "--config", str(FOLDERS), *[a for s in sets for a in ("--set", s)], "--out", str(cache))
    photos = pd.read_parquet(cache / "train.photos.parquet")
    assert set(photos["grade"]) == {0, 1} and photos["mos"].notna().any()  # grades and MOS cached
    run(
        "train",
        "--config",
        str(FOLDERS),
        *[a for s in [*sets, f"data.features={cache}"] for a in ("--set", s)],
    )
    (run_dir,) = (tmp_path / "runs").glob("cached-*")
    assert "auc_mean" in json.loads((run_dir / "results.json").read_text())["test"]
