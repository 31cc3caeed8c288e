"""Multi-process training under torchrun: 2 CPU processes with the gloo backend."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_gloo_processes(shared_shards: Path, tmp_path: Path) -> None:
    sets = [
        "model.backbone=resnet18",
        "model.pretrained=false",
        "model.mlp_hidden_dims=[8]",
        "transform.resize_size=40",
        "transform.crop_size=32",
        "training.batch_size=8",
        "training.max_epochs=2",
        "training.amp=off",
        "data.num_workers=1",
        "device=cpu",
        f"data.shards={shared_shards}",
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
        str(free_port()),
        "-m",
        "avakit",
        "train",
        "--output-dir",
        str(tmp_path / "out"),
    ]
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = list((tmp_path / "out").glob("ddp-*"))
    assert len(runs) == 1  # only rank 0 made a run folder
    run = runs[0]
    results = json.loads((run / "results.json").read_text())
    manifest = json.loads((shared_shards / "manifest.json").read_text())
    assert results["world_size"] == 2
    # every val / test sample evaluated exactly once across the two ranks
    for split in ("val", "test"):
        assert results[split]["n"] == manifest["splits"][split]["samples"]
        df = pd.read_parquet(run / "predictions" / f"{split}.parquet")
        assert df["image_id"].is_unique and len(df) == manifest["splits"][split]["samples"]
    history = json.loads((run / "training_history.json").read_text())
    train_n = manifest["splits"]["train"]["samples"]
    assert [h["steps"] for h in history] == [train_n // (2 * 8)] * 2  # equal steps on both ranks
