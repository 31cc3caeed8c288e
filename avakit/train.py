"""`avakit train`: fit() runs epochs, evaluation, early stopping, checkpoints and the run folder.

Run folder (the contract `report`, `evaluate` and `predict` read):
  config.yaml training.log training_history.json results.json best_model.pt last.pt
  training_curves.png predictions/val_epoch_NNN.parquet predictions/test.parquet telemetry/*.csv
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from avakit import __version__
from avakit.checkpoint import (
    load_checkpoint,
    new_run_dir,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    with_absolute_paths,
)
from avakit.config import Config, config_to_dict, save_config
from avakit.data import SampleDecoder, SplitSource, make_loader, resolve_split
from avakit.distributed import DistInfo, gather_objects, init_distributed, shutdown
from avakit.engine import (
    EpochStats,
    StepContext,
    WarmupSchedule,
    evaluate,
    merge_results,
    train_one_epoch,
)
from avakit.errors import AvakitError
from avakit.fileio import LogFileHandler, clear_stale_tmp, write_json_atomic, write_parquet_atomic
from avakit.losses import get_loss
from avakit.model import model_from_config, param_groups
from avakit.predictions import frame_metrics, predictions_frame
from avakit.transforms import EvalPreset, Normalize, TrainPreset

log = logging.getLogger("avakit.train")


class Progress(Protocol):
    """What fit() reports to (the CLI passes a Rich implementation)."""

    def start(self, description: str, total: int | None) -> None: ...
    def advance(self, n: int, loss: float | None = None) -> None: ...
    def stop(self) -> None: ...


@dataclass
class RunState:
    """Progress that resumes with last.pt."""

    epoch: int = 0  # next epoch to run
    step: int = 0  # optimizer steps done
    best_srcc: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    elapsed_s: float = 0.0
    history: list[dict] = field(default_factory=list)


@dataclass
class Trainer:
    """Everything built once per run."""

    cfg: Config
    run_dir: Path
    dist: DistInfo
    device: torch.device
    model: torch.nn.Module  # what trains: the model, DDP-wrapped, or the head only (features)
    core: torch.nn.Module  # the AestheticModel itself
    eval_model: torch.nn.Module  # what evaluates: core, or the head only (features)
    ctx: StepContext
    scheduler: torch.optim.lr_scheduler.LambdaLR
    schedule: WarmupSchedule
    sources: dict[str, SplitSource]
    steps_per_epoch: int | None
    fraction: float
    state: RunState


def _setup_logging(run_dir: Path, dist: DistInfo) -> None:
    log.setLevel(logging.INFO)
    for handler in [h for h in log.handlers if isinstance(h, (LogFileHandler, logging.FileHandler))]:
        log.removeHandler(handler)
        handler.close()
    if dist.is_main:
        handler = LogFileHandler(run_dir / "training.log")  # a full disk stops the run: one line
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(handler)


def _steps_per_epoch(cfg: Config, source: SplitSource, fraction: float, world: int) -> int | None:
    if source.samples is None:
        return None
    per_rank = source.samples * fraction / world
    batch = cfg.training.batch_size
    batches = per_rank // batch if world > 1 else math.ceil(per_rank / batch)
    return max(1, int(batches) // cfg.training.grad_accum_steps)


def build_trainer(
    cfg: Config, run_dir: Path, fraction: float, dist: DistInfo, device: torch.device
) -> Trainer:
    """Model, optimizer, schedule, loaders' sources and step context for one run."""
    m, t = cfg.model, cfg.training
    shard_sources = None if cfg.data.features else _shard_sources(cfg, dist)  # bad paths fail first
    seed_everything(cfg.seed)
    core = model_from_config(cfg).to(device)
    if t.channels_last:
        core = core.to(memory_format=torch.channels_last)
    groups = param_groups(core, t.learning_rate, t.head_lr_multiplier, t.differential_lr, t.weight_decay)
    if t.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=t.learning_rate, weight_decay=t.weight_decay)
    else:
        optimizer = torch.optim.SGD(groups, lr=t.learning_rate, momentum=0.9, nesterov=True,
                                    weight_decay=t.weight_decay)
    if cfg.data.features:
        if dist.enabled:
            raise AvakitError("data.features: head-only training runs in one process (no torchrun)")
        from avakit.features import head_only_setup

        sources, model = head_only_setup(cfg, core)
        eval_model, normalize = model, torch.nn.Identity()
    else:
        sources = shard_sources
        model = eval_model = core
        normalize = Normalize(cfg.transform.normalize_mean, cfg.transform.normalize_std).to(device)
    steps = _steps_per_epoch(cfg, sources["train"], fraction, dist.world_size)
    unit = steps or 1
    schedule = WarmupSchedule(t.scheduler, t.warmup_epochs * unit, t.max_epochs * unit,
                              max(1, t.early_stop_patience // 2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [schedule] * len(optimizer.param_groups))
    if dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            core, device_ids=[device.index] if device.type == "cuda" else None)
    ctx = StepContext(
        model=model, normalize=normalize,
        optimizer=optimizer, loss_fn=get_loss(t.loss_type).fn, output_mode=m.output_mode, device=device,
        amp=t.amp, channels_last=t.channels_last, grad_clip=t.grad_clip,
        grad_accum_steps=t.grad_accum_steps,
        scaler=torch.amp.GradScaler(device.type) if t.amp == "fp16" else None,
        scheduler=scheduler if steps else None, max_steps=steps if dist.enabled else None,
        log_interval=cfg.log_interval,
    )
    return Trainer(cfg, run_dir, dist, device, model, core, eval_model, ctx, scheduler, schedule, sources,
                   steps, fraction, RunState())


def _shard_sources(cfg: Config, dist: DistInfo) -> dict[str, SplitSource]:
    sources = {s: resolve_split(cfg.data.shards, s) for s in ("train", "val", "test")
               if isinstance(cfg.data.shards, str) or s in cfg.data.shards}
    if "train" not in sources or "val" not in sources:
        raise AvakitError("data.shards: training needs a train and a val split")
    if dist.enabled and sources["train"].samples is None:
        raise AvakitError("data.shards: multi-process training needs a shard folder with manifest.json")
    return sources


def _loader(tr: Trainer, split: str, train: bool, epoch: int):
    cfg = tr.cfg
    if cfg.data.features:
        from avakit.features import feature_loader

        return feature_loader(tr.sources[split], tr.core, batch_size=cfg.training.batch_size, train=train,
                              seed=cfg.seed, epoch=epoch, fraction=tr.fraction)
    preset = TrainPreset(cfg.transform) if train else EvalPreset(cfg.transform)
    return make_loader(
        tr.sources[split], SampleDecoder(preset, cfg.transform.crop_size),
        batch_size=cfg.training.batch_size,
        train=train, seed=cfg.seed, epoch=epoch, num_workers=cfg.data.num_workers,
        shuffle_buffer=cfg.data.shuffle_buffer, fraction=tr.fraction, rank=tr.dist.rank,
        world_size=tr.dist.world_size, pin_memory=tr.device.type == "cuda",
    )


def run_evaluation(tr: Trainer, model: torch.nn.Module, split: str, progress: Progress | None) -> tuple:
    """Evaluate `model` on a split across all ranks: (metrics incl. loss, predictions frame)."""
    loader = _loader(tr, split, train=False, epoch=0)
    if progress is not None:
        progress.start(f"eval {split}", tr.sources[split].samples)
    result = evaluate(model, loader, tr.ctx, advance=progress.advance if progress else None)
    if progress is not None:
        progress.stop()
    merged = merge_results(gather_objects(result, tr.dist))
    df = predictions_frame(merged, tr.cfg.model.output_mode) if merged["n"] else None
    found = frame_metrics(df) if df is not None else {"n": 0}
    found["loss"] = merged["loss_sum"] / merged["n"] if merged["n"] else float("nan")
    found["img_per_s"] = merged["n"] / merged["seconds"] if merged["seconds"] else 0.0
    if merged["corrupt"]:
        log.warning("%s: %d corrupt samples skipped", split, merged["corrupt"])
    return found, df


def _checkpoint_payload(tr: Trainer, epoch: int, val: dict, full: bool) -> dict:
    payload = {"model_state_dict": tr.core.state_dict(), "config": config_to_dict(tr.cfg),
               "epoch": epoch, "metrics": val, "avakit_version": __version__,
               "manifest_sha256": tr.sources["train"].manifest_sha256,
               "preprocessing": tr.sources["train"].preprocessing}
    if full:
        s = tr.state
        payload.update(
            optimizer=tr.ctx.optimizer.state_dict(), scheduler=tr.scheduler.state_dict(),
            scaler=tr.ctx.scaler.state_dict() if tr.ctx.scaler else None, rng=rng_state(),
            state={"epoch": s.epoch, "step": s.step, "best_srcc": s.best_srcc, "best_epoch": s.best_epoch,
                   "bad_epochs": s.bad_epochs, "elapsed_s": s.elapsed_s, "history": s.history})
    return payload


def _epoch_record(epoch: int, stats: EpochStats, val: dict, lrs: list[float], world: int) -> dict:
    record = {"epoch": epoch, "train_loss": stats.loss, "val_loss": val["loss"]}
    for key in ("srcc", "plcc", "accuracy", "mae", "rmse", "emd", "std_srcc"):
        if key in val:
            record[f"val_{key}"] = val[key]
    record.update(lr=lrs, img_per_s=stats.img_per_s * world, time_s=stats.seconds, corrupt=stats.corrupt,
                  steps=stats.steps)
    return record


def _end_of_epoch(tr: Trainer, epoch: int, stats: EpochStats, val: dict, df) -> bool:
    """Record the epoch, save predictions and checkpoints; True when early stopping says stop."""
    s, cfg = tr.state, tr.cfg
    # the learning rates the epoch's last step used (a per-step scheduler has moved on since)
    t = max(stats.last_step - 1, 0) if tr.ctx.scheduler is not None else epoch
    lrs = [base * tr.schedule(t) for base in tr.scheduler.base_lrs]
    s.history.append(_epoch_record(epoch, stats, val, lrs, tr.dist.world_size))
    srcc = val.get("srcc", float("nan"))
    improved = math.isfinite(srcc) and srcc > s.best_srcc
    if improved:
        s.best_srcc, s.best_epoch, s.bad_epochs = srcc, epoch, 0
    else:
        s.bad_epochs += 1
    tr.schedule.epoch_end(srcc)
    if tr.ctx.scheduler is None:  # step count unknown (URL sources): the schedule counts epochs
        tr.scheduler.step()
    s.epoch, s.step = epoch + 1, stats.last_step
    patience = cfg.training.early_stop_patience
    stop = bool(patience) and s.bad_epochs >= patience
    log.info("epoch %03d  train_loss %.4f  val_loss %.4f  SRCC %.4f  PLCC %.4f  Acc %.4f  lr %s  "
             "%.0f img/s%s",
             epoch, stats.loss, val["loss"], srcc, val.get("plcc", float("nan")),
             val.get("accuracy", float("nan")), "/".join(f"{lr:.2e}" for lr in lrs),
             stats.img_per_s * tr.dist.world_size, "  *best*" if improved else "")
    if not tr.dist.is_main:
        return stop
    if cfg.save_val_predictions and df is not None:
        write_parquet_atomic(tr.run_dir / "predictions" / f"val_epoch_{epoch:03d}.parquet", df)
    if improved:
        save_checkpoint(tr.run_dir / "best_model.pt", _checkpoint_payload(tr, epoch, val, full=False))
    last = stop or epoch + 1 >= cfg.training.max_epochs
    if (epoch + 1) % cfg.training.checkpoint_every == 0 or last:
        save_checkpoint(tr.run_dir / "last.pt", _checkpoint_payload(tr, epoch, val, full=True))
    write_json_atomic(tr.run_dir / "training_history.json", s.history)
    return stop


def _restore(tr: Trainer, ckpt: dict) -> None:
    """Load last.pt's model, optimizer, schedule, scaler, RNG and progress into the trainer."""
    tr.core.load_state_dict(ckpt["model_state_dict"])
    tr.ctx.optimizer.load_state_dict(ckpt["optimizer"])
    tr.scheduler.load_state_dict(ckpt["scheduler"])
    tr.schedule = tr.scheduler.lr_lambdas[0]
    if tr.ctx.scaler is not None and ckpt.get("scaler"):
        tr.ctx.scaler.load_state_dict(ckpt["scaler"])
    tr.state = RunState(**ckpt["state"])
    set_rng_state(ckpt["rng"])


def _prepare_run(cfg: Config, output_dir: Path | None, resume: Path | None, dist: DistInfo) -> tuple:
    """(config, run folder path, last.pt contents or None)."""
    from avakit.distributed import broadcast_object

    if resume is None:
        cfg = with_absolute_paths(cfg)
        run_dir = broadcast_object(new_run_dir(cfg, output_dir) if dist.is_main else None, dist)
        ckpt = None
    else:
        run_dir = Path(resume)
        ckpt = load_checkpoint(run_dir / "last.pt")
    return cfg, run_dir, ckpt


def _write_run_dir(cfg: Config, run_dir: Path, dist: DistInfo) -> None:
    """Create the run folder (rank 0) once the run is set up: a failed start leaves nothing.

    A resumed run first removes the temporary files an interrupted one left (fileio).
    """
    if dist.is_main:
        clear_stale_tmp(run_dir, recursive=True)
        (run_dir / "predictions").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")


def _finish(tr: Trainer, progress: Progress | None, started: float) -> dict:
    """Evaluate best_model.pt on val and test, write results.json and training_curves.png."""
    from avakit.plots import plot_training_curves

    s, best_path = tr.state, tr.run_dir / "best_model.pt"
    gather_objects(None, tr.dist)  # wait until rank 0 has written the last checkpoint
    if best_path.is_file():
        tr.core.load_state_dict(load_checkpoint(best_path)["model_state_dict"])
    results = {"avakit_version": __version__, "best_epoch": s.best_epoch, "epochs": len(s.history),
               "steps": s.step, "world_size": tr.dist.world_size, "device": str(tr.device),
               "quick_experiment": tr.fraction, "checkpoint": "best_model.pt"}
    for split in ("val", "test"):
        if split in tr.sources and tr.sources[split].urls:
            found, df = run_evaluation(tr, tr.eval_model, split, progress)
            results[split] = found
            if df is not None and tr.dist.is_main:
                write_parquet_atomic(tr.run_dir / "predictions" / f"{split}.parquet", df)
    elapsed = s.elapsed_s + time.perf_counter() - started
    train_rates = [h["img_per_s"] for h in s.history if h["img_per_s"]]
    results.update(wall_time_s=round(elapsed, 2),
                   train_img_per_s=round(float(np.mean(train_rates)), 2) if train_rates else 0.0,
                   finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if tr.dist.is_main:
        write_json_atomic(tr.run_dir / "results.json", results)
        plot_training_curves(s.history, tr.run_dir / "training_curves.png")
    if "test" in results:
        log.info("test (best epoch %d): SRCC %.4f  PLCC %.4f  Acc %.4f  n=%d", s.best_epoch,
                 results["test"].get("srcc", float("nan")), results["test"].get("plcc", float("nan")),
                 results["test"].get("accuracy", float("nan")), results["test"]["n"])
    return results


def fit(
    cfg: Config, output_dir: Path | None = None, quick_experiment: float | None = None,
    resume: Path | None = None, progress: Progress | None = None, stop_after_epochs: int | None = None,
) -> Path:
    """Train per `cfg` and write the run folder; returns its path.

    `resume` continues that run folder from its last.pt (pass `checkpoint.run_config(run_dir)` as cfg).
    `stop_after_epochs` ends this call after that many epochs, leaving a resumable run (for
    time-limited jobs and tests).
    """
    from avakit.telemetry import Telemetry

    fraction = 1.0 if quick_experiment is None else quick_experiment
    if not 0.0 < fraction <= 1.0:
        raise AvakitError(f"--quick-experiment must be in (0, 1], got {fraction}")
    dist, device = init_distributed(cfg.device)
    try:
        cfg, run_dir, ckpt = _prepare_run(cfg, output_dir, resume, dist)
        tr = build_trainer(cfg, run_dir, fraction, dist, device)
        _write_run_dir(cfg, run_dir, dist)
        _setup_logging(run_dir, dist)
        if ckpt is not None:
            _restore(tr, ckpt)
            log.info("resuming %s at epoch %d (step %d)", run_dir, tr.state.epoch, tr.state.step)
        else:
            log.info("run %s: %s on %s, %s", run_dir, cfg.model.backbone, device,
                     f"{tr.steps_per_epoch} steps/epoch" if tr.steps_per_epoch else "epoch length unknown")
        telemetry = Telemetry(run_dir, tr.model, tr.ctx.optimizer,
                              enabled=cfg.telemetry.enabled and dist.is_main,
                              collect_every_n=cfg.telemetry.collect_every_n,
                              resume_step=tr.state.step if ckpt is not None else None)
        tr.ctx.telemetry = telemetry
        with telemetry:
            _epochs(tr, progress, stop_after_epochs)
        if tr.state.epoch >= cfg.training.max_epochs or tr.state.bad_epochs >= (
                cfg.training.early_stop_patience or math.inf):
            _finish(tr, progress, time.perf_counter())
        return run_dir
    finally:
        shutdown(dist)


def _epochs(tr: Trainer, progress: Progress | None, stop_after_epochs: int | None) -> None:
    """The epoch loop: train, evaluate, record; early stopping and partial sessions."""
    cfg, s = tr.cfg, tr.state
    first = s.epoch
    while s.epoch < cfg.training.max_epochs:
        if stop_after_epochs is not None and s.epoch - first >= stop_after_epochs:
            return
        epoch, started = s.epoch, time.perf_counter()
        if progress is not None:
            total = tr.steps_per_epoch * cfg.training.batch_size * cfg.training.grad_accum_steps \
                if tr.steps_per_epoch else None
            progress.start(f"epoch {epoch}", total)
        stats = train_one_epoch(tr.ctx, _loader(tr, "train", True, epoch), epoch, s.step,
                                advance=progress.advance if progress else None)
        if progress is not None:
            progress.stop()
        if stats.corrupt:
            log.warning("epoch %d: %d corrupt training samples skipped", epoch, stats.corrupt)
        val, df = run_evaluation(tr, tr.eval_model, "val", progress)
        s.elapsed_s += time.perf_counter() - started
        if _end_of_epoch(tr, epoch, stats, val, df):
            log.info("early stopping: no better val SRCC for %d epochs (best %.4f at epoch %d)",
                     s.bad_epochs, s.best_srcc, s.best_epoch)
            return
