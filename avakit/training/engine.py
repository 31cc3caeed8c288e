"""The training loop, `train_one_epoch`, and what every task's steps share.

Also model placement (`place_model`), the LR schedule, the optimizer step with its non-finite
checks and the val checks. The loop calls the run's task (`avakit.tasks`: `prepare` a batch,
its `loss`); the score task's eval pass (`eval_one_epoch`, `merge_results`) and the step context
live in `avakit.tasks` and are re-exported here. Small functions in the style of torchvision's
references; `training.fit` strings them together. Batches arrive as uint8 crops; `Normalize`
runs on the training device.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from avakit.config import Config
from avakit.errors import AvakitError
from avakit.tasks.base import Prepared, StepContext, TelemetryHook, autocast  # noqa: F401 (re-exported)
from avakit.tasks.score import SCORE, eval_one_epoch, merge_results, predict_batch, prepare_batch  # noqa: F401
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
    attributes come from the run's config and data, so a resumed run recomputes them (and a
    last.pt written before one of them existed still loads: `run_checkpoint.restore` fills it in).
    """

    SHAPE = ("kind", "warmup", "total", "patience", "factor")

    def __init__(self, kind: str, warmup: int, total: int, patience: int, factor: float = 0.1) -> None:
        self.kind, self.warmup, self.total = kind, warmup, max(total, 1)
        self.patience, self.factor = max(1, patience), factor
        self.plateau_factor, self.best, self.bad_epochs = 1.0, -math.inf, 0

    def __call__(self, t: int) -> float:
        """The LR factor at `t`: warmup ramp, then cosine or constant, times the plateau factor."""
        factor = (t + 1) / self.warmup if t < self.warmup else 1.0
        if self.kind == "cosine" and t >= self.warmup:
            progress = min(1.0, (t - self.warmup) / max(1, self.total - self.warmup))
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        return factor * self.plateau_factor

    def epoch_end(self, metric: float) -> None:
        """Plateau: LR times `factor` after `patience` epochs without a better `metric` (maximised)."""
        if self.kind != "plateau" or not math.isfinite(metric):
            return
        if metric > self.best:
            self.best, self.bad_epochs = metric, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                self.plateau_factor, self.bad_epochs = self.plateau_factor * self.factor, 0


@dataclass(kw_only=True)
class EpochStats:
    """What one training epoch did."""

    loss: float = 0.0
    samples: int = 0
    corrupt: int = 0
    steps: int = 0
    seconds: float = 0.0
    last_step: int = 0
    # the task's training counts (StepContext.epoch_counts)
    counts: dict[str, int] = field(default_factory=dict)
    stopped: bool = False  # ended early by `stop` (preemption): the epoch is incomplete

    @property
    def img_per_s(self) -> float:
        """Training throughput in samples per second (0 when no time was measured)."""
        return self.samples / self.seconds if self.seconds else 0.0


def summed_counts(parts: list[dict[str, int]]) -> dict[str, int]:
    """Ranks' EpochStats.counts added up key by key (zeros kept)."""
    return {k: sum(p.get(k, 0) for p in parts) for k in dict.fromkeys(k for p in parts for k in p)}


def train_rates(counts: dict[str, int], val: dict, gap_metric: str | None) -> dict[str, float]:
    """A task's summed training counts as train_* rates (hits / counts["n"]), and gap = train - val
    of `gap_metric` (the clip task: action_top1) when both are known."""
    n = counts.get("n", 0)
    out = {f"train_{k}": v / n for k, v in counts.items() if k != "n" and n}
    if gap_metric and f"train_{gap_metric}" in out and isinstance(val.get(gap_metric), float):
        out["gap"] = out[f"train_{gap_metric}"] - val[gap_metric]
    return out


def resolve_amp(amp: str, device: torch.device) -> str:
    """What `training.amp` means on `device`, the same for train, evaluate and features.

    Mixed precision is a cuda feature: on cuda the configured mode (bf16, fp16 or off), on any
    other device "off" (fp32), so a GPU config run on the CPU computes in fp32 there.
    """
    return amp if device.type == "cuda" else "off"


def place_model(model: nn.Module, cfg: Config, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(model on `device`, channels_last if the config says so; the config's `Normalize` on `device`).

    The one placement used by training, `avakit evaluate` and `avakit features`, so all three see the same
    memory format and normalisation.
    """
    model = model.to(device)
    if cfg.training.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, Normalize(cfg.transform.normalize_mean, cfg.transform.normalize_std).to(device)


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
    ctx: StepContext,
    loader,
    epoch: int,
    step: int,
    advance: Callable[[int, float], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> EpochStats:
    """One pass over the loader; `step` is the global optimizer step count at the start.

    `stop` is asked after each optimizer step (the same answer on every rank); True ends the
    epoch there with `stopped` set.

    Raises NonFiniteError on a NaN/inf loss or gradient norm, naming the epoch and step.
    """
    ctx.model.train()
    task = ctx.task or SCORE
    stats = EpochStats(last_step=step)
    ctx.epoch_counts = stats.counts
    start, total, units, micro = time.perf_counter(), 0.0, 0, 0
    batches = iter(loader)
    while ctx.max_steps is None or stats.steps < ctx.max_steps:
        batch = next(batches, None)
        if batch is None:
            break
        p = task.prepare(batch, ctx)
        stats.corrupt += p.corrupt
        if p.n == 0:
            continue
        sync = (micro + 1) % ctx.grad_accum_steps == 0
        single = _batchnorm_eval(ctx.model) if len(p.x) == 1 else contextlib.nullcontext()
        no_sync = getattr(ctx.model, "no_sync", None)
        with no_sync() if no_sync is not None and not sync else contextlib.nullcontext():
            with single:
                loss, n_units = task.loss(ctx.model, p, ctx)
            if not math.isfinite(loss_value := loss.item()):
                raise NonFiniteError(
                    f"loss is {loss_value} at epoch {epoch}, optimizer step {stats.last_step}"
                )
            scaled = loss / ctx.grad_accum_steps
            (ctx.scaler.scale(scaled) if ctx.scaler is not None else scaled).backward()
        micro += 1
        total += loss_value * n_units
        units += n_units
        stats.samples += len(p.x)
        if sync:
            _optimizer_step(ctx, stats.last_step, epoch)
            stats.last_step += 1
            stats.steps += 1
            if stop is not None and stop():
                stats.stopped = True
                break
            if ctx.log_interval and stats.last_step % ctx.log_interval == 0:
                log.info(
                    "epoch %03d step %d  loss %.4f (epoch mean %.4f)  %.0f img/s",
                    epoch,
                    stats.last_step,
                    loss_value,
                    total / max(units, 1),
                    stats.samples / (time.perf_counter() - start),
                )
        if advance is not None:
            advance(p.n, loss_value)
    if micro % ctx.grad_accum_steps and ctx.max_steps is None and not stats.stopped:  # leftover micro-batches
        _optimizer_step(ctx, stats.last_step, epoch)
        stats.last_step += 1
        stats.steps += 1
    stats.loss = total / max(units, 1)
    stats.seconds = time.perf_counter() - start
    return stats


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
