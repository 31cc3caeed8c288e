"""The slurm templates (scripts/slurm/): their #SBATCH lines, bash syntax, and their command lines
run locally with a stub `srun` (drops its options, runs the command) and a stub `scontrol`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from avakit.config import load_config, save_config

ROOT = Path(__file__).resolve().parent.parent
SLURM = ROOT / "scripts" / "slurm"
TEMPLATES = ["train.sbatch", "sweep.sbatch", "epic_resnet18.sbatch"]
KNOWN = {  # sbatch options a template may set (`sbatch --help`); anything else is a typo
    "job-name", "nodes", "ntasks", "ntasks-per-node", "gpus-per-node", "gpus", "cpus-per-task",
    "mem", "time", "partition", "output", "error", "signal", "requeue", "open-mode", "array",
    "account", "qos", "constraint", "exclusive",
}  # fmt: skip
VENV = Path(sys.prefix)
JOB = "4242"

SRUN = """#!/bin/bash
# stub srun: drop srun's own options, run the command here
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
echo "srun $*" >> "$STUB_LOG"
[ -z "${STUB_SRUN_EXIT:-}" ] || exit "$STUB_SRUN_EXIT"
if [ -n "${STUB_SRUN_SLEEP:-}" ]; then
    # a step that stops (143) or finishes (0) on SIGTERM
    trap 'kill "$child"; exit "${STUB_SRUN_ON_TERM:-143}"' TERM
    sleep "$STUB_SRUN_SLEEP" >/dev/null 2>&1 & child=$!
    touch "$STUB_LOG.started"; wait; exit 0
fi
exec "$@"
"""
SCONTROL = """#!/bin/bash
# stub scontrol: `show hostnames` prints localhost, `requeue` records its call
echo "scontrol $*" >> "$STUB_LOG"
case "$1 $2" in "show hostnames") echo localhost ;; esac
"""


def sbatch_options(path: Path) -> dict[str, str]:
    """The `#SBATCH --key[=value]` lines before the first command, as {key: value}."""
    options: dict[str, str] = {}
    for line in path.read_text().splitlines()[1:]:
        if line.startswith("#SBATCH"):
            word = line.split(maxsplit=1)[1]
            assert word.startswith("--") and " " not in word.strip(), f"{path.name}: {line!r}"
            key, _, value = word[2:].partition("=")
            options[key] = value
        elif line.strip() and not line.startswith("#"):
            break  # sbatch stops reading #SBATCH lines at the first command
    return options


@pytest.mark.parametrize("name", TEMPLATES)
def test_sbatch_lines(name: str) -> None:
    options = sbatch_options(SLURM / name)
    assert set(options) <= KNOWN, set(options) - KNOWN
    assert options["signal"].startswith("B:USR1@") and int(options["signal"].split("@")[1]) >= 60
    assert "requeue" in options and options["open-mode"] == "append"
    assert options["ntasks-per-node"] == "1" and options["nodes"] == "1"
    for log in ("output", "error"):
        assert "%j" in options[log] and options[log].startswith("logs/")
    if name == "sweep.sbatch":
        assert options["array"].startswith("1-")


@pytest.mark.parametrize("name", [*TEMPLATES, "requeue.sh"])
def test_bash_syntax(name: str) -> None:
    proc = subprocess.run(["bash", "-n", str(SLURM / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_train_template_command_lines() -> None:
    text = (SLURM / "train.sbatch").read_text()
    for piece in (
        'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1',
        '--nnodes "$SLURM_NNODES" --node_rank "$SLURM_NODEID" --nproc_per_node "$GPUS"',
        '-m avakit train --config "$0" --resume auto "$@"',
        "bash -c '",  # SLURM_NODEID read by each node's task, not by the batch shell
    ):
        assert piece in text
    sweep = (SLURM / "sweep.sbatch").read_text()
    assert '--sweep "$SWEEP_FILE" --sweep-line "$SLURM_ARRAY_TASK_ID" --resume auto' in sweep
    epic = (SLURM / "epic_resnet18.sbatch").read_text()
    assert 'exec bash "$AVAKIT_HOME/scripts/slurm/train.sbatch" configs/epic_resnet18.yaml' in epic


@pytest.fixture
def stubs(tmp_path: Path) -> dict[str, str]:
    """The environment slurm would give a one-node job, with the stub srun/scontrol first on PATH."""
    if not (VENV / "bin" / "activate").is_file():
        pytest.skip(f"{VENV} is not a virtual environment (the templates source its bin/activate)")
    bin_dir = tmp_path / "stubbin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "AVAKIT_VENV": str(VENV),
        "STUB_LOG": str(tmp_path / "stub.log"),
        "MASTER_PORT": str(port),
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_JOB_ID": JOB,
        "SLURM_JOB_NODELIST": "node001",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_GPUS_ON_NODE": "1",
        "SLURM_CPUS_PER_TASK": "2",
        "SLURM_ARRAY_JOB_ID": JOB,
        "SLURM_ARRAY_TASK_ID": "2",
    }


def _calls(env: dict[str, str]) -> list[str]:
    path = Path(env["STUB_LOG"])
    return path.read_text().splitlines() if path.exists() else []


def _run(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_step_exit_75_requeues(stubs: dict[str, str]) -> None:
    for template in (
        ["train.sbatch", "C.yaml"],
        ["sweep.sbatch", "C.yaml", "S.txt"],
        ["epic_resnet18.sbatch"],
    ):
        Path(stubs["STUB_LOG"]).unlink(missing_ok=True)
        proc = _run([str(SLURM / template[0]), *template[1:]], {**stubs, "STUB_SRUN_EXIT": "75"})
        assert proc.returncode == 75, proc.stderr
        assert _calls(stubs)[-1] == f"scontrol requeue {JOB}", _calls(stubs)
        assert f"requeueing job {JOB}" in proc.stderr


def _signalled(env: dict[str, str], template: str) -> tuple[int, str, float]:
    """Run `template` with a stub step that sleeps, send the batch shell USR1 (slurm's
    --signal=B:USR1@120); (exit code, stderr, seconds from the signal to the exit)."""
    args = ["bash", str(SLURM / template), "C.yaml", "S.txt"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    started = Path(env["STUB_LOG"] + ".started")
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    begin = time.monotonic()
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err, time.monotonic() - begin


@pytest.mark.parametrize("template", TEMPLATES)
def test_usr1_is_forwarded_then_requeued(stubs: dict[str, str], template: str) -> None:
    code, err, seconds = _signalled({**stubs, "STUB_SRUN_SLEEP": "60"}, template)
    assert seconds < 10  # the step got SIGTERM; nobody waited for the sleep
    assert code == 75, err
    assert "got SIGUSR1" in err and _calls(stubs)[-1] == f"scontrol requeue {JOB}"


def test_a_step_that_finishes_after_the_signal_is_not_requeued(stubs: dict[str, str]) -> None:
    code, err, _ = _signalled({**stubs, "STUB_SRUN_SLEEP": "60", "STUB_SRUN_ON_TERM": "0"}, "train.sbatch")
    assert code == 0, err
    assert "got SIGUSR1" in err and not any("requeue" in c for c in _calls(stubs))


@pytest.mark.parametrize(
    ("unset", "message"),
    [("SLURM_JOB_ID", "SLURM_JOB_ID must be"), ("SLURM_ARRAY_TASK_ID", "submit with sbatch --array")],
)
def test_missing_slurm_variable_exits_2(stubs: dict[str, str], unset: str, message: str) -> None:
    env = {k: v for k, v in stubs.items() if k != unset}
    proc = _run([str(SLURM / "sweep.sbatch"), "C.yaml", "S.txt"], env)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not _calls(env)  # nothing started


def _tiny_config(tmp_path: Path, shards: Path, tiny_train: tuple[str, ...]) -> Path:
    """A config file of the tiny CPU run (one epoch), its run folders under tmp_path/out."""
    sets = [*tiny_train, f"data.shards={shards}", "training.max_epochs=1", "name=tiny"]
    path = tmp_path / "tiny.yaml"
    save_config(load_config(None, [*sets, f"output_dir={tmp_path / 'out'}"]), path)
    return path


@pytest.mark.slow
def test_train_sbatch_runs_torchrun(
    stubs: dict[str, str], shared_shards: Path, tiny_train: tuple[str, ...], tmp_path: Path
) -> None:
    config = _tiny_config(tmp_path, shared_shards, tiny_train)
    proc = _run([str(SLURM / "train.sbatch"), str(config), "--set", "seed=7"], stubs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = list((tmp_path / "out").glob("tiny-*"))
    assert len(runs) == 1 and (runs[0] / "results.json").is_file()
    assert yaml.safe_load((runs[0] / "config.yaml").read_text())["seed"] == 7  # options reach avakit train
    calls = _calls(stubs)
    assert calls[0] == "scontrol show hostnames node001" and not any("requeue" in c for c in calls)
    assert calls[1].startswith("srun bash -c exec torchrun --nnodes")  # one task per node, torchrun in it


@pytest.mark.slow
def test_sweep_sbatch_runs_its_line(
    stubs: dict[str, str], shared_shards: Path, tiny_train: tuple[str, ...], tmp_path: Path
) -> None:
    config = _tiny_config(tmp_path, shared_shards, tiny_train)
    sweep = tmp_path / "lr.txt"
    sweep.write_text(
        "# two runs\ntraining.learning_rate=1e-3\n\ntraining.learning_rate=3e-4 model.dropout=0.2\n"
    )
    proc = _run([str(SLURM / "sweep.sbatch"), str(config), str(sweep)], stubs)  # array task 2
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = list((tmp_path / "out").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("tiny-learning_rate=3e-4_dropout=0.2-"), runs
    assert (runs[0] / "results.json").is_file()
    stored = yaml.safe_load((runs[0] / "config.yaml").read_text())
    assert stored["training"]["learning_rate"] == pytest.approx(3e-4) and stored["model"]["dropout"] == 0.2
    assert not any("requeue" in c for c in _calls(stubs))


def _wait_for_step(out: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until the run's training.log shows a training step (the job is mid-epoch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any("epoch 000 step 2 " in p.read_text() for p in out.glob("tiny-*/training.log")):
            return
        time.sleep(0.1)
    raise AssertionError(f"no training step before the deadline (exit {proc.poll()})")


@pytest.mark.slow
def test_train_sbatch_preempted_requeued_and_continued(
    stubs: dict[str, str], shared_shards: Path, tiny_train: tuple[str, ...], tmp_path: Path
) -> None:
    """USR1 mid-epoch: the batch shell SIGTERMs the step, torchrun's worker writes last.pt and exits,
    the job is requeued; the requeued job (same command) continues the run and finishes it."""
    config = _tiny_config(tmp_path, shared_shards, tiny_train)
    args = ["bash", str(SLURM / "train.sbatch"), str(config), "--set", "training.batch_size=4"]
    proc = subprocess.Popen(
        args, cwd=ROOT, env=stubs, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    _wait_for_step(tmp_path / "out", proc)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, out[-3000:]
    assert _calls(stubs)[-1] == f"scontrol requeue {JOB}"
    (run,) = (tmp_path / "out").glob("tiny-*")
    assert (run / "last.pt").is_file() and not (run / "results.json").exists()

    again = _run(args[1:], stubs)  # the requeued job runs the same script
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert list((tmp_path / "out").glob("tiny-*")) == [run] and (run / "results.json").is_file()
    assert "preempted (SIGTERM) in epoch 0" in (run / "training.log").read_text()
    assert "--resume auto: continuing" in again.stdout + again.stderr
    assert [c for c in _calls(stubs) if "requeue" in c] == [f"scontrol requeue {JOB}"]
