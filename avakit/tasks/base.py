"""What every task shares: the step context, autocast, and the `Task` interface the loops call.

`training.engine.train_one_epoch` and `training.fit` call a task's methods and nothing
task-specific; a new task (multi-frame clips) is one new module implementing `Task`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from avakit.dataset.samples import Reason, parse_label
from avakit.scores import AVA, Scale


@runtime_checkable
class TelemetryHook(Protocol):
    """What the training loop calls after each optimizer step (training.telemetry.Telemetry)."""

    def maybe_collect(self, step: int, epoch: int) -> None:
        """Called after optimizer step `step` of `epoch`; collects telemetry when it is due."""


@dataclass(kw_only=True)
class StepContext:
    """What one optimisation step needs besides the batch."""

    model: nn.Module
    normalize: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    output_mode: str
    device: torch.device
    scale: Scale = AVA  # what the labels mean: K-point votes, a MOS, or pairs
    task: Any = None  # the run's Task (None: the score task)
    options: Any = None  # the task's config section (pairs: config.PairsConfig)
    amp: str = "off"
    channels_last: bool = False
    grad_clip: float | None = None
    grad_accum_steps: int = 1
    scaler: torch.amp.GradScaler | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None  # stepped per optimizer step
    telemetry: TelemetryHook | None = None
    max_steps: int | None = None  # DDP: the same number of optimizer steps on every rank
    log_interval: int = 0  # log the running loss every N optimizer steps (0 = never)
    skipped_steps: int = 0  # fp16: optimizer steps skipped in a row by the GradScaler (inf gradients)
    # summed per-epoch training counts a task's loss may add ({"n": clips, "action_top1": hits, ...}):
    # train_one_epoch resets it and returns it in EpochStats.counts (the history's train_* keys)
    epoch_counts: dict[str, int] | None = None


@dataclass
class Prepared:
    """A batch on the device: model input `x`, its labels, `n` usable samples, `corrupt` dropped."""

    x: torch.Tensor
    labels: Any
    n: int
    corrupt: int


def read_group(sample: dict, scale: Scale) -> tuple[dict | None, int, int]:
    """A raw group sample's checked label on `scale`; None with the id and reason code its
    placeholder carries when the sample is one (a lost shard's), lacks its json, or is malformed."""
    code = sample.get("__code__")
    if code is not None:
        return None, sample["__index__"], code
    if "json" not in sample:
        return None, -1, int(Reason.MEMBERS)
    reason, label = parse_label(sample["__key__"], sample["json"], scale)
    return label, -1, int(reason)


def pass_totals(parts: list[dict], *sums: str) -> dict:
    """The totals of ranks' evaluation passes: loss_sum, n, corrupt (and `sums`) added up, the
    slowest rank's seconds and model_seconds; a task's `merge` adds its own rows."""
    totals: dict = {key: sum(q[key] for q in parts) for key in ("loss_sum", "n", "corrupt", *sums)}
    for key in ("seconds", "model_seconds"):
        totals[key] = max(q[key] for q in parts)
    return totals


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """torch.autocast for bf16/fp16, a no-op for 'off'."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def to_input(images: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """uint8 images -> the normalised float input on the device (channels_last when configured)."""
    x = ctx.normalize(images.to(ctx.device, non_blocking=ctx.device.type == "cuda"))
    if ctx.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


class Task(Protocol):
    """One learning problem: how samples decode, batch, train, evaluate and are reported."""

    name: str
    select_metrics: tuple[str, ...]  # val metrics that can pick the best epoch
    history_keys: tuple[str, ...]  # val metrics kept in training_history.json

    def decoder(
        self, preset: Callable, crop_size: int, scale: Scale, train: bool, cfg: Any
    ) -> Callable[[dict], tuple]:
        """Raw webdataset sample -> (images, label, id, reason code); picklable for workers."""

    def collate(self, samples: list[tuple]) -> tuple:
        """Decoded samples -> one batch (images, labels, ids, codes)."""

    def prepare(self, batch: tuple, ctx: StepContext) -> Prepared:
        """A loader batch on the device, corrupt samples dropped and counted."""

    def loss(self, model: nn.Module, p: Prepared, ctx: StepContext) -> tuple[torch.Tensor, int]:
        """(mean loss of the batch, the number of units it averages over), under autocast."""

    def evaluate(self, model: nn.Module, loader: Any, ctx: StepContext, advance: Any, warmup: bool) -> dict:
        """One rank's evaluation pass: outputs, labels, loss_sum, n, corrupt, seconds, model_seconds."""

    def merge(self, parts: list[dict]) -> dict:
        """Ranks' `evaluate` results joined into one, in a fixed order."""

    def summarise(
        self, merged: dict, ctx: StepContext, threshold: float | None, final: bool
    ) -> tuple[dict, dict]:
        """(metrics, predictions tables by file-name suffix: {"": images or pairs, "_photos": ...});
        `final`: the last evaluation of a split (adds what is too slow for every epoch)."""

    def metrics_line(self, found: dict, select_metric: str) -> str:
        """The metrics of one evaluation for a log line."""
