"""Distributed set-up from slurm's environment: host lists, SLURM_* -> rank/world, bad values."""

from __future__ import annotations

import pytest

from avakit.errors import AvakitError
from avakit.training.slurm import DistEnv, dist_env, expand_hostlist

SRUN = {
    "SLURM_STEP_ID": "0",
    "SLURM_NTASKS": "8",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_NODELIST": "gpu[03-04,07],login1",
    "SLURM_JOB_ID": "123456",
}


@pytest.mark.parametrize(
    ("text", "hosts"),
    [
        ("node01", ["node01"]),
        ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
        ("a-[1-2]-x", ["a-1-x", "a-2-x"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("r[1-2]c[1-2]", ["r1c1", "r1c2", "r2c1", "r2c2"]),
        ("h.example.org,x[009-010]", ["h.example.org", "x009", "x010"]),
    ],
)
def test_expand_hostlist(text: str, hosts: list[str]) -> None:
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("text", ["", "node[01-", "node]1[", "node[3-1]", "node[a-b]", "a b", "n[1-2]]"])
def test_bad_hostlist_is_one_line(text: str) -> None:
    with pytest.raises(AvakitError, match="SLURM_JOB_NODELIST") as info:
        expand_hostlist(text)
    assert "\n" not in str(info.value)


def test_srun_step_gives_rank_world_and_rendezvous() -> None:
    assert dist_env(SRUN) == DistEnv(5, 8, 1, "gpu03", 20000 + 123456 % 20000)


def test_master_addr_and_port_set_win() -> None:
    env = {**SRUN, "MASTER_ADDR": "10.0.0.9", "MASTER_PORT": "29500"}
    assert dist_env(env) == DistEnv(5, 8, 1, "10.0.0.9", 29500)


def test_torchrun_env_wins_over_slurm() -> None:
    env = {**SRUN, "WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}
    assert dist_env(env) == DistEnv(2, 4, 0)
    assert dist_env({**SRUN, "WORLD_SIZE": "1"}) == DistEnv()


def test_batch_step_without_srun_is_single_process() -> None:
    env = {k: v for k, v in SRUN.items() if k != "SLURM_STEP_ID"}
    assert dist_env(env) == DistEnv()
    assert dist_env({**SRUN, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) == DistEnv()
    assert dist_env({}) == DistEnv()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SLURM_PROCID", "x"),
        ("SLURM_PROCID", "8"),
        ("SLURM_PROCID", "-1"),
        ("SLURM_NTASKS", "many"),
        ("SLURM_LOCALID", "1.5"),
        ("SLURM_JOB_ID", ""),
        ("MASTER_PORT", "70000"),
    ],
)
def test_bad_slurm_values_are_one_line_naming_the_variable(key: str, value: str) -> None:
    with pytest.raises(AvakitError, match=key) as info:
        dist_env({**SRUN, key: value})
    assert "\n" not in str(info.value)


def test_missing_and_bad_torchrun_values() -> None:
    with pytest.raises(AvakitError, match="RANK: not set"):
        dist_env({"WORLD_SIZE": "2"})
    with pytest.raises(AvakitError, match="WORLD_SIZE"):
        dist_env({"WORLD_SIZE": "two", "RANK": "0"})
    with pytest.raises(AvakitError, match="RANK: expected 0..1"):
        dist_env({"WORLD_SIZE": "2", "RANK": "2"})


def test_init_distributed_from_srun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1-task srun step stays single-process; no process group is started."""
    from avakit.training.distributed import init_distributed

    for key, value in {**SRUN, "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ddp, device = init_distributed("cpu")
    assert not ddp.enabled and device.type == "cpu"


def _free_slurm_job_id() -> int:
    """A SLURM_JOB_ID whose derived MASTER_PORT (20000 + id % 20000) is free here."""
    import random
    import socket

    for _ in range(100):
        job = random.randrange(1, 10**6)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 20000 + job % 20000))
            except OSError:
                continue
            return job
    pytest.skip("no free port in 20000..39999")


def test_two_srun_tasks_join_one_process_group() -> None:
    """Two processes with only srun's variables (no torchrun) form a gloo group and agree on a flag."""
    import os
    import subprocess
    import sys

    code = (
        "from avakit.training.distributed import any_rank, init_distributed, shutdown\n"
        "ddp, device = init_distributed('cpu')\n"
        "print(ddp.rank, ddp.world_size, ddp.local_rank, any_rank(ddp.rank == 1, ddp, device), flush=True)\n"
        "shutdown(ddp)\n"
    )
    base = {
        k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    job = str(_free_slurm_job_id())
    procs = []
    for rank in (0, 1):
        env = {**base, **SRUN, "SLURM_NTASKS": "2", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
        env.update(SLURM_JOB_NODELIST="localhost,other[1-3]", SLURM_JOB_ID=job, OMP_NUM_THREADS="1")
        procs.append(
            subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        )
    lines = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert lines == ["0 2 0 True", "1 2 1 True"]
