"""Two torchrun agents on 127.0.0.1 as two nodes (--nnodes 2, one gloo process each): every val/test
sample seen once, the same metrics as a single process evaluating the same model; then a run
stopped by SIGTERM to both agents and finished with `--resume auto` ends as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

SETS = (
    "training.batch_size=2",
    "training.max_epochs=3",
    "telemetry.enabled=false",
    "name=mn",
    "log_interval=1",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agents(port: int, args: list[str]) -> list[subprocess.Popen]:
    """Start the two agents (node_rank 0 and 1), each with one worker running `avakit train args`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node)]
        cmd += ["--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port)]
        cmd += ["-m", "avakit", "train", *args]
        procs.append(
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        )
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float = 600) -> list[tuple[int, str]]:
    return [(p.wait(timeout=timeout), p.stdout.read()) for p in procs]  # type: ignore[union-attr]


def _train_args(shards: Path, tiny_train: tuple[str, ...], *extra: str) -> list[str]:
    args = list(extra)
    for item in (*tiny_train, f"data.shards={shards}", *SETS):
        args += ["--set", item]
    return args


def _metrics(run: Path) -> tuple[list[dict], dict]:
    return (
        json.loads((run / "training_history.json").read_text()),
        json.loads((run / "results.json").read_text()),
    )


@pytest.fixture(scope="module")
def two_node_run(
    shared_shards: Path, tiny_train: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("multinode") / "out"
    outputs = _wait(_agents(_free_port(), _train_args(shared_shards, tiny_train, "--output-dir", str(out))))
    for rc, text in outputs:
        assert rc == 0, text[-3000:]
    (run,) = out.glob("mn-*")
    return run


@pytest.mark.slow
def test_two_nodes_see_every_sample_once_and_match_one_process(
    two_node_run: Path, shared_shards: Path
) -> None:
    from avakit.training.evaluate import evaluate_run

    run = two_node_run
    history, results = _metrics(run)
    manifest = json.loads((shared_shards / "manifest.json").read_text())
    assert results["world_size"] == 2 and len(history) == 3
    train_n = manifest["splits"]["train"]["samples"]
    assert [h["steps"] for h in history] == [train_n // (2 * 2)] * 3  # the same steps on both ranks
    for split in ("val", "test"):
        n = manifest["splits"][split]["samples"]
        assert results[split]["n"] == n
        df = pd.read_parquet(run / "predictions" / f"{split}.parquet")
        assert df["image_id"].is_unique and len(df) == n
        # one process evaluating the same model (best_model.pt) gives the same metrics
        single = evaluate_run(run, split=split, device="cpu")
        found = single.get("metrics", single)
        for key in ("srcc", "plcc", "accuracy", "emd", "mae", "rmse"):
            assert found[key] == pytest.approx(results[split][key], abs=1e-5), (split, key)
    for h in history:
        assert h["val_samples_seen"] == manifest["splits"]["val"]["samples"]


@pytest.mark.slow
def test_two_nodes_sigterm_then_resume_auto(
    two_node_run: Path, shared_shards: Path, tiny_train: tuple[str, ...], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {out}\n")
    args = _train_args(shared_shards, tiny_train, "--config", str(config), "--resume", "auto")
    args += ["--set", "training.checkpoint_every=2"]  # last.pt is older than epoch 1: the snapshot
    procs = _agents(_free_port(), args)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        logs = list(out.glob("mn-*/training.log"))
        if logs and "epoch 001 step" in logs[0].read_text():
            break
        time.sleep(0.05)
    for p in procs:  # slurm signals every node's agent; torchrun forwards SIGTERM to its worker
        p.send_signal(signal.SIGTERM)
    outputs = _wait(procs)
    (run,) = out.glob("mn-*")
    text = (run / "training.log").read_text()
    assert "preempted (SIGTERM) in epoch" in text, "\n".join(t[-2000:] for _, t in outputs)
    assert not (run / "results.json").exists()
    stopped = torch.load(run / "last.pt", weights_only=True)["state"]["epoch"]
    assert stopped in (1, 2), stopped  # mid-epoch 1 (or, on a slow machine, its val pass)
    outputs = _wait(_agents(_free_port(), args))
    for rc, log_text in outputs:
        assert rc == 0, log_text[-3000:]
    assert "--resume auto: continuing" in outputs[0][1]
    assert list(out.glob("mn-*")) == [run]
    ha, ra = _metrics(two_node_run)
    hb, rb = _metrics(run)
    for x, y in zip(ha, hb, strict=True):
        for key in ("train_loss", "val_loss", "val_srcc", "val_plcc", "steps", "lr"):
            assert x[key] == pytest.approx(y[key], abs=1e-6), key
    for split in ("val", "test"):
        for key in ("srcc", "plcc", "accuracy", "emd", "mae", "loss", "n"):
            assert ra[split][key] == pytest.approx(rb[split][key], abs=1e-6), (split, key)
