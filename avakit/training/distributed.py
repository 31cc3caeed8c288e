"""Multi-process (DDP) helpers: set-up from torchrun's or srun's environment, gathering, rank checks.

`torchrun --nproc_per_node N avakit train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; `srun` with
one task per GPU sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID (training.slurm reads both);
without them everything here is a no-op for a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

from avakit.config import DEVICES
from avakit.errors import AvakitError
from avakit.training.slurm import dist_env


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, local rank; rank 0 writes the run folder."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes the run folder."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains (DDP)."""
        return self.world_size > 1


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """auto -> cuda if available else cpu; cuda without a GPU, or any other name, is a user error."""
    if preference not in DEVICES:
        allowed = ", ".join(f"'{d}'" for d in DEVICES)
        raise AvakitError(f"device: must be one of {allowed} (got {str(preference)[:60]!r})")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise AvakitError("device: 'cuda' requested but no CUDA GPU is available (use auto or cpu)")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_preference: str) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun or srun (NCCL on GPU, gloo on CPU)."""
    env = dist_env(os.environ)
    if env.world_size <= 1:
        return DistInfo(), pick_device(device_preference)
    ddp = DistInfo(env.rank, env.world_size, env.local_rank)
    device = pick_device(device_preference, ddp.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        if env.master_addr is not None:  # srun: the rendezvous torchrun would have set up
            os.environ.update(
                MASTER_ADDR=env.master_addr,
                MASTER_PORT=str(env.master_port),
                RANK=str(env.rank),
                WORLD_SIZE=str(env.world_size),
                LOCAL_RANK=str(env.local_rank),
            )
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
    return ddp, device


def any_rank(flag: bool, ddp: DistInfo, device: torch.device) -> bool:
    """True on every rank when `flag` is True on any rank (an all_reduce MAX; `flag` alone for one)."""
    if not ddp.enabled:
        return flag
    box = torch.tensor([int(flag)], device=device)
    tdist.all_reduce(box, op=tdist.ReduceOp.MAX)
    return bool(box.item())


def gather_objects(obj: Any, ddp: DistInfo) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank ([obj] for a single process)."""
    if not ddp.enabled:
        return [obj]
    out: list[Any] = [None] * ddp.world_size
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ddp: DistInfo) -> Any:
    """Rank 0's `obj` on every rank."""
    if not ddp.enabled:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(ddp: DistInfo) -> None:
    """Leave the process group."""
    if ddp.enabled and tdist.is_initialized():
        tdist.destroy_process_group()
