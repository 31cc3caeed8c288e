"""The epoch loop of `avakit train`: train, evaluate on val, record, checkpoint; preemption stops.

`fit` sets the run up and finishes it; `run_epochs` runs the epochs between. On SIGTERM/SIGUSR1
(training.preempt) the interrupted epoch is thrown away, last.pt holds its start, and
`Preempted` (exit 75) says how to go on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from functools import partial

import torch

from avakit.dataset.samples import SampleCounts
from avakit.errors import Preempted
from avakit.fileio import LogFileHandler, write_json_atomic, write_parquet_atomic
from avakit.tasks.base import Task
from avakit.training.checkpoint import save_checkpoint
from avakit.training.distributed import any_rank, gather_objects
from avakit.training.engine import EpochStats, check_val_finite, summed_counts, train_one_epoch, train_rates
from avakit.training.preempt import Preemption, preempted_message
from avakit.training.run_checkpoint import checkpoint_payload
from avakit.training.selection import NAMES, improves, plateau_value
from avakit.training.trainer import Progress, Trainer, split_loader

log = logging.getLogger("avakit.training.fit")


def run_evaluation(
    tr: Trainer, model: torch.nn.Module, split: str, progress: Progress | None, final: bool = False
) -> tuple[dict, dict]:
    """Evaluate `model` on a split across all ranks: (metrics incl. loss, predictions tables by
    file-name suffix); `final` for the end-of-run evaluation (the task adds slower figures)."""
    loader = split_loader(tr, split, train=False, epoch=0)
    with progress.task(f"eval {split}", tr.sources[split].samples) if progress else contextlib.nullcontext():
        result = tr.task.evaluate(model, loader, tr.ctx, progress.advance if progress else None, False)
    merged = tr.task.merge(gather_objects(result, tr.ddp))
    counts = _pass_counts(tr, split, f"{split} evaluation")
    found, frames = tr.task.summarise(merged, tr.ctx, tr.threshold, final)
    loss_n = merged.get("loss_n", merged["n"])
    found["loss"] = merged["loss_sum"] / loss_n if loss_n else float("nan")
    images = merged.get("n_images", merged["n"])  # a pairwise group counts its photos
    found["img_per_s"] = images / merged["seconds"] if merged["seconds"] else 0.0
    found.update(counts.as_dict())
    return found, frames


def _pass_counts(tr: Trainer, split: str, what: str) -> SampleCounts:
    """The last pass's sample counts of `split`, summed over ranks, and logged (a warning if any lost)."""
    first, *rest = gather_objects(tr.loaders[split].counts, tr.ddp)
    counts = first.merged(*rest)
    (log.warning if counts.lost else log.info)("%s: %s", what, counts.summary())
    return counts


def _epoch_record(
    epoch: int, stats: EpochStats, val: dict, lrs: list[float], world: int, counts: SampleCounts, task: Task
) -> dict:
    """One training_history.json entry: losses, val metrics, LRs, speed and the samples accounted for.

    samples_expected = samples_seen + sum(lost) for the train pass (reasons: corrupt samples and
    samples lost with their shard; corrupt / missing are those two totals); val_* the same for val.
    A task's training counts become train_* rates; its gap_metric (clip) gap = train - val.
    """
    record = {"epoch": epoch, "train_loss": stats.loss, "val_loss": val["loss"]}
    for key in (*task.history_keys, *counts.as_dict()):
        if key in val:
            record[f"val_{key}"] = val[key]
    record.update(train_rates(stats.counts, val, getattr(task, "gap_metric", None)))
    record.update(
        lr=lrs,
        img_per_s=stats.img_per_s * world,
        time_s=stats.seconds,
        corrupt=counts.corrupt,
        missing=counts.n_lost - counts.corrupt,
        steps=stats.steps,
        **counts.as_dict(),
    )
    return record


def _end_of_epoch(tr: Trainer, epoch: int, stats: EpochStats, val: dict, frames: dict) -> bool:
    """Record the epoch, save predictions and checkpoints; True when early stopping says stop."""
    s, cfg = tr.state, tr.cfg
    # the learning rates the epoch's last step used (a per-step scheduler has moved on since)
    t = max(stats.last_step - 1, 0) if tr.ctx.scheduler is not None else epoch
    lrs = [base * tr.schedule(t) for base in tr.scheduler.base_lrs]
    counts = _pass_counts(tr, "train", f"epoch {epoch} training")
    stats.counts = summed_counts(gather_objects(stats.counts, tr.ddp))  # every rank's training counts
    s.history.append(_epoch_record(epoch, stats, val, lrs, tr.ddp.world_size, counts, tr.task))
    value = val.get(s.select_metric, math.nan)
    improved = improves(s.select_metric, value, s.best_value, cfg.training.early_stop_min_delta)
    if improved:
        s.best_value, s.best_epoch, s.bad_epochs = value, epoch, 0
    else:
        s.bad_epochs += 1
    tr.schedule.epoch_end(plateau_value(s.select_metric, value))
    if tr.ctx.scheduler is None:  # step count unknown (URL sources): the schedule counts epochs
        tr.scheduler.step()
    s.epoch, s.step = epoch + 1, stats.last_step
    patience = cfg.training.early_stop_patience
    stop = bool(patience) and s.bad_epochs >= patience
    log.info(
        "epoch %03d  train_loss %.4f  val_loss %.4f  %s  lr %s  %.0f img/s%s",
        epoch,
        stats.loss,
        val["loss"],
        tr.task.metrics_line(val, s.select_metric),
        "/".join(f"{lr:.2e}" for lr in lrs),
        stats.img_per_s * tr.ddp.world_size,
        "  *best*" if improved else "",
    )
    if not tr.ddp.is_main:
        return stop
    if cfg.save_val_predictions and "" in frames:  # the main table (images, or pairs) of every epoch
        write_parquet_atomic(tr.run_dir / "predictions" / f"val_epoch_{epoch:03d}.parquet", frames[""])
    if improved:
        save_checkpoint(tr.run_dir / "best_model.pt", checkpoint_payload(tr, epoch, val, full=False))
    last = stop or epoch + 1 >= cfg.training.max_epochs
    if (epoch + 1) % cfg.training.checkpoint_every == 0 or last:
        save_checkpoint(tr.run_dir / "last.pt", checkpoint_payload(tr, epoch, val, full=True))
    write_json_atomic(tr.run_dir / "training_history.json", s.history)
    return stop


def run_epochs(
    tr: Trainer, progress: Progress | None, stop_after_epochs: int | None, guard: Preemption
) -> None:
    """The epoch loop: train, evaluate, record; early stopping, partial sessions and preemption.

    `guard.saved_epoch` is the epoch whose start last.pt holds on entry (None: none). A signal
    during the train pass ends it after the current optimizer step; one during the val pass
    lets the epoch finish. Either way `Preempted` is raised before the next epoch starts.
    """
    cfg, s = tr.cfg, tr.state
    first, last_val = s.epoch, None

    def stop() -> bool:
        return any_rank(guard.requested, tr.ddp, tr.device)

    while s.epoch < cfg.training.max_epochs:
        if stop_after_epochs is not None and s.epoch - first >= stop_after_epochs:
            return
        epoch, started = s.epoch, time.perf_counter()
        if stop():  # between epochs: the state now is the start of `epoch`
            raise _preempted(tr, guard, epoch, partial(_start_payload, tr, last_val))
        guard.keep(epoch, (partial(_start_payload, tr, last_val)) if tr.ddp.is_main else None)
        total = (
            tr.steps_per_epoch * cfg.training.batch_size * cfg.training.grad_accum_steps
            if tr.steps_per_epoch
            else None
        )
        with progress.task(f"epoch {epoch}", total) if progress else contextlib.nullcontext():
            stats = train_one_epoch(
                tr.ctx,
                split_loader(tr, "train", True, epoch),
                epoch,
                s.step,
                advance=progress.advance if progress else None,
                stop=stop,
            )
        if stats.stopped:  # the partial epoch is thrown away
            raise _preempted(tr, guard, epoch, lambda: guard.snapshot)
        val, frames = run_evaluation(tr, tr.eval_model, "val", progress)
        check_val_finite(val, epoch, stats.last_step)  # before last.pt or best_model.pt is written
        s.elapsed_s += time.perf_counter() - started
        last_val = val
        if _end_of_epoch(tr, epoch, stats, val, frames):
            log.info(
                "early stopping: no better val %s for %d epochs (best %.4f at epoch %d)",
                NAMES[s.select_metric],
                s.bad_epochs,
                s.best_value,
                s.best_epoch,
            )
            return
        if (epoch + 1) % cfg.training.checkpoint_every == 0:
            guard.saved_epoch = epoch + 1


def _start_payload(tr: Trainer, last_val: dict | None) -> dict:
    """last.pt's content for the start of epoch `tr.state.epoch` (the state right now)."""
    epoch = tr.state.epoch - 1 if tr.state.epoch else None  # the epoch the state ends: none yet
    return checkpoint_payload(tr, epoch, last_val, full=True)  # type: ignore[arg-type]


def _preempted(tr: Trainer, guard: Preemption, epoch: int, payload) -> Preempted:  # noqa: ANN001
    """Write last.pt (rank 0, unless it already holds the start of `epoch`), wait for it on every
    rank, log the line: the `Preempted` to raise."""
    if tr.ddp.is_main and guard.saved_epoch != epoch:
        save_checkpoint(tr.run_dir / "last.pt", payload())
    gather_objects(None, tr.ddp)  # every rank exits after last.pt is written
    message = preempted_message(guard.signal_name or "signal on another rank", epoch, tr.run_dir)
    record = log.makeRecord(log.name, logging.WARNING, __file__, 0, message, None, None)
    for handler in log.handlers:  # the file only: the CLI prints the error line itself
        if isinstance(handler, (LogFileHandler, logging.FileHandler)):
            handler.handle(record)
    return Preempted(message)
