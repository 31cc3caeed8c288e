"""The inner loops, `train_one_epoch` and `eval_one_epoch`, and what they share.

Also the step context, model placement (`place_model`), the LR schedule, the non-finite checks
and `merge_results` (DDP ranks' eval results joined). Small functions in the style of
torchvision's references; `training.fit` strings them together. Batches arrive as uint8 crops;
`Normalize` runs on the training device.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from avakit.config import Config
from avakit.errors import AvakitError
from avakit.model.losses import loss_targets, native_outputs
from avakit.scores import AVA, Scale
from avakit.training.transforms import Normalize

log = logging.getLogger("avakit.training.fit")

# fp16: the GradScaler skips a step whose gradients overflow and halves its scale. This many
# skips in a row (the scale divided by 2**25) mean the gradients are not finite at any scale.
FP16_MAX_SKIPPED_STEPS = 25


class NonFiniteError(AvakitError):
    """Training produced NaN/inf (loss, gradient norm, val metric); the message names where."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message, exit_code)


class WarmupSchedule:
    """LR factor: linear warmup, then cosine to 0 or constant, times a plateau factor.

    `t` counts optimizer steps (or epochs when the step count is unknown). The object's
    __dict__ is saved by LambdaLR.state_dict(), so the plateau state resumes too; the `SHAPE`
    attributes come from the run's config and data, so a resumed run recomputes them.
    """

    SHAPE = ("kind", "warmup", "total", "patience")

    def __init__(self, kind: str, warmup: int, total: int, patience: int) -> None:
        self.kind, self.warmup, self.total = kind, warmup, max(total, 1)
        self.patience = max(1, patience)
        self.plateau_factor, self.best, self.bad_epochs = 1.0, -math.inf, 0

    def __call__(self, t: int) -> float:
        """The LR factor at `t`: warmup ramp, then cosine or constant, times the plateau factor."""
        factor = (t + 1) / self.warmup if t < self.warmup else 1.0
        if self.kind == "cosine" and t >= self.warmup:
            progress = min(1.0, (t - self.warmup) / max(1, self.total - self.warmup))
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        return factor * self.plateau_factor

    def epoch_end(self, metric: float) -> None:
        """Plateau: divide the LR by 10 after `patience` epochs without a better val SRCC."""
        if self.kind != "plateau" or not math.isfinite(metric):
            return
        if metric > self.best:
            self.best, self.bad_epochs = metric, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                self.plateau_factor, self.bad_epochs = self.plateau_factor * 0.1, 0


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
    scale: Scale = AVA  # what the labels mean: K-point votes or a MOS, and its range
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


@dataclass(kw_only=True)
class EpochStats:
    """What one training epoch did."""

    loss: float = 0.0
    samples: int = 0
    corrupt: int = 0
    steps: int = 0
    seconds: float = 0.0
    last_step: int = 0

    @property
    def img_per_s(self) -> float:
        """Training throughput in samples per second (0 when no time was measured)."""
        return self.samples / self.seconds if self.seconds else 0.0


def resolve_amp(amp: str, device: torch.device) -> str:
    """What `training.amp` means on `device`, the same for train, evaluate and features.

    Mixed precision is a cuda feature: on cuda the configured mode (bf16, fp16 or off), on any
    other device "off" (fp32), so a GPU config run on the CPU computes in fp32 there.
    """
    return amp if device.type == "cuda" else "off"


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """torch.autocast for bf16/fp16, a no-op for 'off'."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def place_model(model: nn.Module, cfg: Config, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(model on `device`, channels_last if the config says so; the config's `Normalize` on `device`).

    The one placement used by training, `avakit evaluate` and `avakit features`, so all three see the same
    memory format and normalisation.
    """
    model = model.to(device)
    if cfg.training.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, Normalize(cfg.transform.normalize_mean, cfg.transform.normalize_std).to(device)


def prepare_batch(batch: tuple, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Drop corrupt samples, move to device, normalise: (x, votes, ids, n_corrupt).

    x is [B, 3, H, W], or [B, V, 3, H, W] with test-time augmentation views.
    """
    images, votes, ids, valid = batch
    corrupt = int((~valid).sum())
    if corrupt:
        images, votes, ids = images[valid], votes[valid], ids[valid]
    non_blocking = ctx.device.type == "cuda"
    x = ctx.normalize(images.to(ctx.device, non_blocking=non_blocking))
    if ctx.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, votes.to(ctx.device, non_blocking=non_blocking), ids, corrupt


def predict_batch(model: nn.Module, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """Model outputs as probabilities [B, K] (distribution) or raw regression outputs [B].

    Raw: a MOS model's outputs are normalised to the scale ((mos - lo) / (hi - lo));
    `model.losses.native_outputs` brings them to the scale's own units.
    With views ([B, V, 3, H, W]) the outputs are averaged over the V views.
    """
    views = x.shape[1] if x.dim() == 5 else 1
    if views > 1:
        x = x.flatten(0, 1)
        if ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
    with autocast(ctx.device, ctx.amp):
        out = model(x)
    out = out.float()
    out = out.softmax(dim=1) if ctx.output_mode == "distribution" else out.reshape(-1)
    return out.unflatten(0, (-1, views)).mean(dim=1) if views > 1 else out


def _grad_norm(ctx: StepContext) -> float:
    """The total L2 norm of the gradients, clipped to `grad_clip` first when it is set."""
    params = [p for g in ctx.optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not params:
        return 0.0
    if ctx.grad_clip:
        return float(torch.nn.utils.clip_grad_norm_(params, ctx.grad_clip))
    return float(torch.nn.utils.get_total_norm([p.grad for p in params]))


def _check_grad_norm(ctx: StepContext, norm: float, step: int, epoch: int) -> None:
    """NonFiniteError for a NaN/inf gradient norm, except fp16 overflows the GradScaler skips."""
    if math.isfinite(norm):
        ctx.skipped_steps = 0
        return
    if ctx.scaler is not None and ctx.scaler.is_enabled():
        ctx.skipped_steps += 1  # the scaler skips this step and lowers its scale: normal in fp16
        if ctx.skipped_steps < FP16_MAX_SKIPPED_STEPS:
            return
        raise NonFiniteError(
            f"gradient norm is {norm} at epoch {epoch}, optimizer step {step} "
            f"({ctx.skipped_steps} fp16 steps in a row skipped for inf/NaN gradients)"
        )
    raise NonFiniteError(f"gradient norm is {norm} at epoch {epoch}, optimizer step {step}")


def _optimizer_step(ctx: StepContext, step: int, epoch: int) -> None:
    if ctx.scaler is not None:
        ctx.scaler.unscale_(ctx.optimizer)
    if ctx.telemetry is not None:
        ctx.telemetry.maybe_collect(step, epoch)
    _check_grad_norm(ctx, _grad_norm(ctx), step, epoch)  # before the step: the weights stay finite
    if ctx.scaler is not None:
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
    else:
        ctx.optimizer.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    if ctx.scheduler is not None:
        ctx.scheduler.step()


@contextlib.contextmanager
def _batchnorm_eval(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers in eval mode (running statistics) for a batch of one sample.

    A lone sample (batch_size 1, an epoch's last partial batch, or a batch whose other samples
    were corrupt) has no batch statistics where a feature map is 1x1 (small crops): BatchNorm
    in train mode would fail. It still trains, normalised with the running statistics.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in layers:
        m.eval()
    try:
        yield
    finally:
        for m in layers:
            m.train()


def train_one_epoch(
    ctx: StepContext, loader, epoch: int, step: int, advance: Callable[[int, float], None] | None = None
) -> EpochStats:
    """One pass over the loader; `step` is the global optimizer step count at the start.

    Raises NonFiniteError on a NaN/inf loss or gradient norm, naming the epoch and step.
    """
    ctx.model.train()
    stats = EpochStats(last_step=step)
    start, total, micro = time.perf_counter(), 0.0, 0
    batches = iter(loader)
    while ctx.max_steps is None or stats.steps < ctx.max_steps:
        batch = next(batches, None)
        if batch is None:
            break
        x, votes, _, corrupt = prepare_batch(batch, ctx)
        stats.corrupt += corrupt
        if len(x) == 0:
            continue
        sync = (micro + 1) % ctx.grad_accum_steps == 0
        single = _batchnorm_eval(ctx.model) if len(x) == 1 else contextlib.nullcontext()
        no_sync = getattr(ctx.model, "no_sync", None)
        with no_sync() if no_sync is not None and not sync else contextlib.nullcontext():
            with autocast(ctx.device, ctx.amp), single:
                out = ctx.model(x)
            loss = ctx.loss_fn(out.float(), loss_targets(votes, ctx.scale, ctx.output_mode))
            if not math.isfinite(loss_value := loss.item()):
                raise NonFiniteError(
                    f"loss is {loss_value} at epoch {epoch}, optimizer step {stats.last_step}"
                )
            scaled = loss / ctx.grad_accum_steps
            (ctx.scaler.scale(scaled) if ctx.scaler is not None else scaled).backward()
        micro += 1
        total += loss_value * len(x)
        stats.samples += len(x)
        if sync:
            _optimizer_step(ctx, stats.last_step, epoch)
            stats.last_step += 1
            stats.steps += 1
            if ctx.log_interval and stats.last_step % ctx.log_interval == 0:
                log.info(
                    "epoch %03d step %d  loss %.4f (epoch mean %.4f)  %.0f img/s",
                    epoch,
                    stats.last_step,
                    loss_value,
                    total / stats.samples,
                    stats.samples / (time.perf_counter() - start),
                )
        if advance is not None:
            advance(len(x), loss_value)
    if micro % ctx.grad_accum_steps and ctx.max_steps is None:  # leftover micro-batches
        _optimizer_step(ctx, stats.last_step, epoch)
        stats.last_step += 1
        stats.steps += 1
    stats.loss = total / max(stats.samples, 1)
    stats.seconds = time.perf_counter() - start
    return stats


@torch.no_grad()
def eval_one_epoch(
    model: nn.Module,
    loader,
    ctx: StepContext,
    advance: Callable[[int], None] | None = None,
    warmup: bool = False,
) -> dict:
    """Run the model over a loader.

    Returns {'ids', 'outputs', 'votes', 'loss_sum', 'n', 'corrupt', 'seconds', 'model_seconds'}:
    `outputs` are probabilities [N, K] in distribution mode, scores [N] in the scale's units in
    regression (not clamped); `votes` the labels [N, K votes or 1 MOS];
    `model_seconds` times the forward passes alone (device-synchronised), for latency figures;
    `warmup` runs the first batch once untimed first (kernel selection, allocator, caches).
    """
    model.eval()
    ids, outputs, votes_all = [], [], []
    loss_sum, corrupt, model_s, start = 0.0, 0, 0.0, time.perf_counter()
    sync = torch.cuda.synchronize if ctx.device.type == "cuda" else (lambda *a: None)
    for batch in loader:
        x, votes, batch_ids, bad = prepare_batch(batch, ctx)
        corrupt += bad
        if len(x) == 0:
            continue
        if warmup:
            predict_batch(model, x, ctx)
            warmup = False
        sync(ctx.device)
        t0 = time.perf_counter()
        out = predict_batch(model, x, ctx)
        sync(ctx.device)
        model_s += time.perf_counter() - t0
        # the loss takes logits: log-probabilities are logits of the same softmax
        logits = out.clamp_min(1e-12).log() if ctx.output_mode == "distribution" else out
        loss_sum += ctx.loss_fn(logits, loss_targets(votes, ctx.scale, ctx.output_mode)).item() * len(x)
        outputs.append(native_outputs(out, ctx.scale, ctx.output_mode).cpu())
        votes_all.append(votes.cpu())
        ids.append(batch_ids)
        if advance is not None:
            advance(len(x))
    cat = (lambda xs: torch.cat(xs).numpy()) if ids else (lambda xs: np.zeros((0,)))
    return {
        "ids": cat(ids),
        "outputs": cat(outputs),
        "votes": cat(votes_all),
        "loss_sum": loss_sum,
        "n": int(sum(len(i) for i in ids)),
        "corrupt": corrupt,
        "seconds": time.perf_counter() - start,
        "model_seconds": model_s,
    }


def check_val_finite(val: dict, epoch: int, step: int) -> None:
    """NonFiniteError when the val loss or an error metric is NaN/inf (NaN or inf predictions).

    SRCC/PLCC are left alone: constant but finite predictions make them undefined (NaN), which
    only means that the epoch is no improvement. An empty evaluation (n == 0) is not checked.
    """
    if not val.get("n"):
        return
    for key in ("loss", "mae", "rmse", "emd"):
        value = val.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            raise NonFiniteError(f"val {key} is {value} at epoch {epoch} (after optimizer step {step})")


def merge_results(parts: list[dict]) -> dict:
    """Concatenate `eval_one_epoch` results gathered from several ranks (sorted by image id)."""
    nonempty = [p for p in parts if p["n"]]
    if not nonempty:
        return {**parts[0], "n": 0, "loss_sum": 0.0}
    ids = np.concatenate([p["ids"] for p in nonempty])
    order = np.argsort(ids, kind="stable")
    return {
        "ids": ids[order],
        "outputs": np.concatenate([p["outputs"] for p in nonempty])[order],
        "votes": np.concatenate([p["votes"] for p in nonempty])[order],
        "loss_sum": sum(p["loss_sum"] for p in parts),
        "n": int(len(ids)),
        "corrupt": sum(p["corrupt"] for p in parts),
        "seconds": max(p["seconds"] for p in parts),
        "model_seconds": max(p["model_seconds"] for p in parts),
    }
