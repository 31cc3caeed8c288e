"""Where a process stands from the environment: torchrun's variables, else an srun step's.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR / MASTER_PORT). `srun` with one
task per GPU sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID instead; the rendezvous address
is then the first host of SLURM_JOB_NODELIST and the port follows SLURM_JOB_ID. torch-free:
`distributed.init_distributed` applies what `dist_env` returns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from avakit.errors import AvakitError

MAX_WORLD = 1 << 20  # more processes than any cluster runs: a larger value is a typo
PORT_BASE, PORT_SPAN = 20000, 20000  # MASTER_PORT = 20000 + SLURM_JOB_ID % 20000
_HOST = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class DistEnv:
    """rank, world size, local rank; the rendezvous MASTER_ADDR / MASTER_PORT to set (or None)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None


def env_int(env: Mapping[str, str], name: str, low: int, high: int) -> int:
    """The integer environment variable `name` in low..high; anything else is one line naming it."""
    raw = env.get(name)
    if raw is None:
        raise AvakitError(f"environment variable {name}: not set (needed for distributed training)")
    try:
        value = int(raw.strip())
    except ValueError:
        raise AvakitError(f"environment variable {name}: expected an integer, got {raw[:60]!r}") from None
    if not low <= value <= high:
        raise AvakitError(f"environment variable {name}: expected {low}..{high}, got {value}")
    return value


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets: 'a[1-2,4],b' -> ['a[1-2,4]', 'b']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth < 0 or depth > 1:
            raise ValueError("unbalanced brackets")
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError("unbalanced brackets")
    parts.append(text[start:])
    return parts


def _expand_range(spec: str) -> list[str]:
    """'01-03,07' -> ['01', '02', '03', '07'] (zero padding kept)."""
    out = []
    for item in spec.split(","):
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad range {item!r}")
        if not sep:
            out.append(lo)
            continue
        if int(hi) < int(lo) or int(hi) - int(lo) > MAX_WORLD:
            raise ValueError(f"bad range {item!r}")
        out += [str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1)]
    return out


def _expand_host(pattern: str) -> list[str]:
    """One host pattern, possibly with several bracket groups: 'a-[1-2]-x' -> ['a-1-x', 'a-2-x']."""
    match = re.search(r"\[([^\]]*)\]", pattern)
    if match is None:
        if not _HOST.fullmatch(pattern):
            raise ValueError(f"bad host name {pattern!r}")
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [h for n in _expand_range(match.group(1)) for h in _expand_host(head + n + tail)]


def expand_hostlist(text: str, name: str = "SLURM_JOB_NODELIST") -> list[str]:
    """Slurm's compressed host list as host names: 'node[01-02],gpu5' -> ['node01', 'node02', 'gpu5']."""
    try:
        hosts = [h for part in _split_top(text.strip()) for h in _expand_host(part.strip())]
    except ValueError as e:
        raise AvakitError(
            f"environment variable {name}: not a slurm host list ({e}): {text[:80]!r}"
        ) from None
    if not hosts:
        raise AvakitError(f"environment variable {name}: empty host list")
    return hosts


def _torchrun(env: Mapping[str, str]) -> DistEnv:
    world = env_int(env, "WORLD_SIZE", 1, MAX_WORLD)
    if world == 1:
        return DistEnv()
    rank = env_int(env, "RANK", 0, world - 1)
    local = env_int(env, "LOCAL_RANK", 0, world - 1) if "LOCAL_RANK" in env else 0
    return DistEnv(rank, world, local)


def _srun(env: Mapping[str, str]) -> DistEnv:
    world = env_int(env, "SLURM_NTASKS", 1, MAX_WORLD)
    rank = env_int(env, "SLURM_PROCID", 0, world - 1)
    local = env_int(env, "SLURM_LOCALID", 0, world - 1)
    addr = env.get("MASTER_ADDR") or expand_hostlist(env.get("SLURM_JOB_NODELIST", ""))[0]
    if "MASTER_PORT" in env:
        port = env_int(env, "MASTER_PORT", 1, 65535)
    else:
        port = PORT_BASE + env_int(env, "SLURM_JOB_ID", 0, 2**63) % PORT_SPAN
    return DistEnv(rank, world, local, addr, port)


def dist_env(env: Mapping[str, str]) -> DistEnv:
    """torchrun's variables when WORLD_SIZE is set; else an srun step's (SLURM_STEP_ID set,
    SLURM_NTASKS > 1); else a single process (also a batch script's own step, without srun)."""
    if "WORLD_SIZE" in env:
        return _torchrun(env)
    srun = "SLURM_STEP_ID" in env and "SLURM_NTASKS" in env
    if srun and env_int(env, "SLURM_NTASKS", 1, MAX_WORLD) > 1:
        return _srun(env)
    return DistEnv()
