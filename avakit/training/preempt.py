"""Preemption: SIGTERM / SIGUSR1 stop training cleanly at an epoch boundary, resumable exactly.

slurm signals a job before it preempts or times it out (`#SBATCH --signal=B:USR1@120`, SIGTERM
at the end). `Preemption` turns either signal into a flag; the training loop checks it after
each optimizer step (on every rank: an all_reduce MAX) and ends the epoch early. The partial
epoch is thrown away: last.pt gets the state the interrupted epoch began with (model, optimizer,
schedule, progress, RNG), so `avakit train --resume` repeats that epoch exactly as an
uninterrupted run trains it. When last.pt on disk is not that state (checkpoint_every > 1, or the
first epoch), rank 0 keeps a CPU copy of it taken at the epoch's start.
"""

from __future__ import annotations

import copy
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preemption:
    """Context manager: SIGTERM and SIGUSR1 only set `signal_name` (main thread; old handlers back on exit).

    Also tracks the epoch-start state: `saved_epoch` is the epoch whose start last.pt on disk
    holds (None: unknown), `snapshot` the CPU copy of that state when it is not on disk.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.saved_epoch: int | None = None
        self.snapshot: dict | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """True once a signal arrived in this process."""
        return self.signal_name is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old.clear()

    def keep(self, epoch: int, payload: Callable[[], dict] | None) -> None:
        """At the start of `epoch`: keep a CPU copy of `payload()` unless last.pt already holds this
        state (`payload` None: not the process that writes)."""
        self.snapshot = None if self.saved_epoch == epoch or payload is None else cpu_copy(payload())


def cpu_copy(obj: Any) -> Any:
    """A deep copy with every tensor cloned to the CPU (a checkpoint payload that training cannot change)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, cpu_copy(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


def preempted_message(signal_name: str, epoch: int, run_dir: Any) -> str:
    """The one line a preempted run prints and logs."""
    import shlex

    return (
        f"preempted ({signal_name}) in epoch {epoch}: last.pt holds the start of epoch {epoch}; "
        f"continue with: avakit train --resume {shlex.quote(str(run_dir))}"
    )
