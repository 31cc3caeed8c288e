"""Preemption: SIGTERM / SIGUSR1 stop training at a step, last.pt holds the epoch's start, exit 75;
the resumed run (--resume RUN or --resume auto) ends with exactly an uninterrupted run's metrics."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from avakit.config import Config
from avakit.errors import EXIT_REQUEUE, Interrupted, Preempted
from avakit.training.checkpoint import run_config
from avakit.training.fit import fit

SETS = ("training.batch_size=4", "training.max_epochs=3", "telemetry.enabled=false", "name=pre")


class SignalAt:
    """A Progress that sends `sig` to this process at the `at`-th batch of the bar named `bar`."""

    def __init__(self, sig: signal.Signals, bar: str, at: int) -> None:
        self.sig, self.bar, self.at, self.current, self.seen = sig, bar, at, "", 0

    def start(self, description: str, total: int | None) -> None:
        self.current, self.seen = description, 0

    def advance(self, n: int, loss: float | None = None) -> None:
        self.seen += 1
        if self.current == self.bar and self.seen == self.at:
            os.kill(os.getpid(), self.sig)

    def stop(self) -> None:
        self.current = ""

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable]:
        self.start(description, total)
        try:
            yield self.advance
        finally:
            self.stop()


def _metrics(run: Path) -> tuple[list[dict], dict]:
    history = json.loads((run / "training_history.json").read_text())
    results = json.loads((run / "results.json").read_text())
    return history, results


def _assert_same(a: Path, b: Path) -> None:
    """Same history values and val/test metrics (as test_train's resume test: 1e-6)."""
    ha, ra = _metrics(a)
    hb, rb = _metrics(b)
    assert len(ha) == len(hb)
    for x, y in zip(ha, hb, strict=True):
        for key in ("train_loss", "val_loss", "val_srcc", "val_plcc", "steps", "samples_seen", "lr"):
            assert x[key] == pytest.approx(y[key], abs=1e-6), key
    assert ra["best_epoch"] == rb["best_epoch"] and ra["steps"] == rb["steps"]
    for split in ("val", "test"):
        for key in ("srcc", "plcc", "accuracy", "emd", "mae", "loss", "n"):
            assert ra[split][key] == pytest.approx(rb[split][key], abs=1e-6), (split, key)


@pytest.fixture(scope="module")
def reference(
    shared_shards: Path, tiny_train: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An uninterrupted in-process run of the config the tests interrupt."""
    from avakit.config import load_config

    cfg = load_config(None, [*tiny_train, f"data.shards={shared_shards}", *SETS])
    return fit(cfg, output_dir=tmp_path_factory.mktemp("reference"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "every", "bar", "at", "stopped_in"),
    [
        (signal.SIGUSR1, 2, "epoch 1", 4, 1),  # mid-epoch, last.pt on disk is older: the snapshot
        (signal.SIGTERM, 1, "epoch 1", 4, 1),  # mid-epoch, last.pt holds the epoch's start already
        (signal.SIGTERM, 2, "eval val", 2, 1),  # during epoch 0's val pass: epoch 0 finishes first
    ],
)
def test_signal_stops_and_resume_is_exact(
    tiny_cfg: Callable[..., Config],
    shared_shards: Path,
    reference: Path,
    tmp_path: Path,
    sig: signal.Signals,
    every: int,
    bar: str,
    at: int,
    stopped_in: int,
) -> None:
    cfg = tiny_cfg(shared_shards, *SETS, f"training.checkpoint_every={every}")
    with pytest.raises(Preempted) as info:
        fit(cfg, output_dir=tmp_path, progress=SignalAt(sig, bar, at))
    message = str(info.value)
    assert info.value.exit_code == EXIT_REQUEUE == 75
    assert message.startswith(
        f"preempted ({sig.name}) in epoch {stopped_in}: last.pt holds the start of epoch"
    )
    assert "\n" not in message and "continue with: avakit train --resume" in message
    (run,) = tmp_path.glob("pre-*")
    assert message in (run / "training.log").read_text()
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["state"]["epoch"] == stopped_in and len(last["state"]["history"]) == stopped_in
    assert not (run / "results.json").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    assert fit(run_config(run), resume=run) == run
    _assert_same(reference, run)


@pytest.mark.slow
def test_ctrl_c_still_interrupts(
    tiny_cfg: Callable[..., Config], shared_shards: Path, tmp_path: Path
) -> None:
    cfg = tiny_cfg(shared_shards, *SETS)
    with pytest.raises(Interrupted, match="^interrupted: run folder .* kept; resume with: avakit train"):
        fit(cfg, output_dir=tmp_path, progress=SignalAt(signal.SIGINT, "epoch 1", 3))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _train_cmd(shards: Path, out: Path, tiny_train: tuple[str, ...], *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "avakit", "train", *extra]
    for item in (*tiny_train, f"data.shards={shards}", *SETS, "log_interval=1"):
        cmd += ["--set", item]
    return cmd


@pytest.mark.slow
def test_cli_sigterm_exit_75_then_resume_auto(
    shared_shards: Path, tiny_train: tuple[str, ...], tmp_path: Path, reference: Path
) -> None:
    """`avakit train` killed by SIGTERM mid-epoch exits 75 with the one line; --resume auto finishes it."""
    out = tmp_path / "out"
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {out}\n")
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = _train_cmd(shared_shards, out, tiny_train, "--config", str(config), "--resume", "auto")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        logs = list(out.glob("pre-*/training.log"))
        if logs and "epoch 001 step" in logs[0].read_text():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stdout[-2000:] + stderr[-2000:]
    line = re.search(
        r"preempted \(SIGTERM\) in epoch 1: last.pt holds the start of epoch 1; continue.*", stderr
    )
    assert line, stderr[-2000:]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--resume auto: continuing" in done.stderr
    (run,) = out.glob("pre-*")
    _assert_same(reference, run)


def _run_folder(base: Path, name: str, results: bool = False, config: bool = True) -> Path:
    folder = base / name
    folder.mkdir(parents=True)
    if config:
        (folder / "config.yaml").write_text("name: x\n")
    if results:
        (folder / "results.json").write_text("{}")
    return folder


def test_newest_unfinished_picks_by_name_stamp_and_n(tmp_path: Path) -> None:
    from avakit.training.autoresume import newest_unfinished

    assert newest_unfinished(tmp_path / "none", "pre") is None
    assert newest_unfinished(tmp_path, "pre") is None
    _run_folder(tmp_path, "pre-20260101-120000")
    _run_folder(tmp_path, "pre-20260102-090000")
    want = _run_folder(tmp_path, "pre-20260102-090000-2")
    _run_folder(tmp_path, "pre-20260103-000000", results=True)  # finished: skipped
    _run_folder(tmp_path, "pre-20260104-000000", config=False)  # never started: skipped
    _run_folder(tmp_path, "pre-x-20260105-000000")  # another name
    _run_folder(tmp_path, "prefix-20260105-000000")  # another name
    _run_folder(tmp_path, "pre-20260105-00000")  # not a run folder name
    (tmp_path / "pre-20260106-000000").write_text("a file")
    assert newest_unfinished(tmp_path, "pre") == want
    assert newest_unfinished(tmp_path, "pre-x") == tmp_path / "pre-x-20260105-000000"


def test_resume_auto_options(tmp_path: Path, tiny_train: tuple[str, ...]) -> None:
    from avakit.errors import AvakitError
    from avakit.training.autoresume import train_target

    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'out'}\nname: pre\n")
    with pytest.raises(AvakitError, match="^--resume auto needs --config"):
        train_target(None, [], None, "auto")
    cfg, run, out = train_target(config, ["training.max_epochs=7"], None, "auto")  # nothing yet: new
    assert run is None and out is None and cfg.training.max_epochs == 7
    found = tmp_path / "out" / "pre-20260101-120000"
    found.mkdir(parents=True)
    (found / "config.yaml").write_text(f"output_dir: {tmp_path / 'out'}\nname: pre\nseed: 5\n")
    cfg, run, out = train_target(config, ["training.max_epochs=7"], tmp_path / "elsewhere", "auto")
    assert run is None and out == tmp_path / "elsewhere"  # --output-dir is where it looks
    cfg, run, out = train_target(config, ["training.max_epochs=7"], None, "auto")
    assert run == found and out is None and cfg.seed == 5 and cfg.training.max_epochs == 7  # its own config
    with pytest.raises(AvakitError, match="not --config"):
        train_target(config, [], None, str(found))
    with pytest.raises(AvakitError, match="^--output-dir: a resumed run"):
        train_target(None, [], tmp_path, str(found))


def test_cli_resume_auto_without_config_is_one_line() -> None:
    from typer.testing import CliRunner

    from avakit.cli.app import app

    result = CliRunner().invoke(app, ["train", "--resume", "auto"])
    assert result.exit_code == 2
    assert "--resume auto needs --config" in result.output
