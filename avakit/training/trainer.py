"""What a training run builds once: model, optimizer, schedule, step context and data sources.

`build_trainer` turns a config into a `Trainer`; `split_loader` gives the loader of one pass over
a split (shards or a feature cache). `avakit.training.fit` runs the epochs over them.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from avakit.config import Config
from avakit.dataset.sources import DataSource, SplitSource, common_scale, resolve_split
from avakit.errors import AvakitError
from avakit.model.build import model_from_config
from avakit.model.losses import get_loss
from avakit.model.network import param_groups
from avakit.scores import SPLITS, Scale
from avakit.tasks import check_task, get_task
from avakit.tasks.base import Task
from avakit.training.checkpoint import seed_everything
from avakit.training.distributed import DistInfo
from avakit.training.engine import StepContext, WarmupSchedule, place_model, resolve_amp
from avakit.training.loader import CountingLoader, eval_loader, make_loader
from avakit.training.resume import data_definition
from avakit.training.selection import check_select_metric, eval_threshold, worst
from avakit.training.shard_share import no_shard_error, steps_per_epoch
from avakit.training.transforms import TrainPreset


class Progress(Protocol):
    """What fit(), evaluate_run() and extract_features() report to (the CLI passes a Rich one).

    `with progress.task(description, total):` starts a bar, `advance` moves it, and it stops on leaving.
    """

    def start(self, description: str, total: int | None) -> None:
        """Start a bar for `description` over `total` items (None: unknown)."""

    def advance(self, n: int, loss: float | None = None) -> None:
        """Move the bar by `n` items; `loss` is the latest batch loss, if any."""

    def stop(self) -> None:
        """Stop the current bar."""

    def task(self, description: str, total: int | None) -> contextlib.AbstractContextManager:
        """A bar for the `with` block, stopped however it ends; yields `advance`."""


@dataclass(kw_only=True)
class RunState:
    """Progress that resumes with last.pt."""

    epoch: int = 0  # next epoch to run
    step: int = 0  # optimizer steps done
    select_metric: str = "srcc"  # the val metric that picks the best epoch (training.select_metric)
    best_value: float = -math.inf  # its best value so far (selection.worst before any epoch)
    best_epoch: int = -1
    bad_epochs: int = 0
    elapsed_s: float = 0.0
    history: list[dict] = field(default_factory=list)


@dataclass(kw_only=True)
class Trainer:
    """Everything built once per run."""

    cfg: Config
    run_dir: Path
    ddp: DistInfo
    device: torch.device
    model: torch.nn.Module  # what trains: the model, DDP-wrapped, or the head only (features)
    core: torch.nn.Module  # the AestheticModel itself
    eval_model: torch.nn.Module  # what evaluates: core, or the head only (features)
    ctx: StepContext
    scheduler: torch.optim.lr_scheduler.LambdaLR
    schedule: WarmupSchedule
    sources: dict[str, DataSource]  # SplitSources, or FeatureSources for head-only training
    task: Task  # what is learned: the score or the pairwise task (avakit.tasks)
    scale: Scale  # what the labels mean: every split's manifest says the same
    threshold: float | None  # binary accuracy's cut (eval.threshold, else the data's; None: none)
    steps_per_epoch: int | None
    fraction: float
    state: RunState
    loaders: dict[str, CountingLoader] = field(default_factory=dict)  # the latest loader of each split
    classes: dict[str, list[str]] | None = None  # clip runs: the manifest's verb and noun names


def _optimizer(groups: list[dict], t) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum 0.9, over the parameter groups (training section `t`)."""
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.learning_rate, weight_decay=t.weight_decay)
    return torch.optim.SGD(
        groups, lr=t.learning_rate, momentum=0.9, nesterov=True, weight_decay=t.weight_decay
    )


def build_trainer(
    cfg: Config, run_dir: Path, fraction: float, ddp: DistInfo, device: torch.device
) -> Trainer:
    """Model, optimizer, schedule, loaders' sources and step context for one run."""
    m, t = cfg.model, cfg.training
    shard_sources = None if cfg.data.features else _shard_sources(cfg, ddp)  # bad paths fail first
    task = get_task(cfg.task)
    if shard_sources:
        scale = common_scale(shard_sources)
        check_task(cfg.task, scale, shard_sources["train"].where or "data.shards")
    else:
        from avakit.training.cached import cache_scale_for

        scale = cache_scale_for(cfg)
    threshold = eval_threshold(cfg.eval.threshold, scale)
    check_select_metric(cfg, scale)
    classes = _clip_classes(cfg, shard_sources or {}) if cfg.task == "clip" else None
    seed_everything(cfg.seed)
    core, normalize = place_model(model_from_config(cfg, scale=scale), cfg, device)
    groups = param_groups(core, t.learning_rate, t.head_lr_multiplier, t.differential_lr, t.weight_decay)
    optimizer = _optimizer(groups, t)
    if cfg.data.features:
        from avakit.training.cached import head_only_for

        sources, model = head_only_for(cfg, core, ddp.enabled)
        eval_model, normalize = model, torch.nn.Identity()
    else:
        sources = shard_sources
        model = eval_model = core
    steps = steps_per_epoch(cfg, sources["train"].samples, fraction, ddp.world_size)
    unit = steps or 1
    patience = t.plateau_patience or max(1, t.early_stop_patience // 2)
    schedule = WarmupSchedule(
        t.scheduler, t.warmup_epochs * unit, t.max_epochs * unit, patience, t.plateau_factor
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [schedule] * len(optimizer.param_groups))
    if ddp.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            core, device_ids=[device.index] if device.type == "cuda" else None
        )
    amp = resolve_amp(t.amp, device)
    ctx = StepContext(
        model=model,
        normalize=normalize,
        optimizer=optimizer,
        loss_fn=get_loss(t.loss_type).fn,
        output_mode=m.output_mode,
        device=device,
        scale=scale,
        task=task,
        options=cfg.pairs,
        amp=amp,
        channels_last=t.channels_last,
        grad_clip=t.grad_clip,
        grad_accum_steps=t.grad_accum_steps,
        scaler=torch.amp.GradScaler(device.type) if amp == "fp16" else None,
        scheduler=scheduler if steps else None,
        max_steps=steps if ddp.enabled or cfg.data.resampled else None,  # endless streams
        log_interval=cfg.log_interval,
    )
    return Trainer(
        cfg=cfg,
        run_dir=run_dir,
        ddp=ddp,
        device=device,
        model=model,
        core=core,
        eval_model=eval_model,
        ctx=ctx,
        scheduler=scheduler,
        schedule=schedule,
        sources=sources,
        task=task,
        scale=scale,
        threshold=threshold,
        steps_per_epoch=steps,
        fraction=fraction,
        state=RunState(select_metric=t.select_metric, best_value=worst(t.select_metric)),
        classes=classes,
    )


def _clip_classes(cfg: Config, sources: dict[str, SplitSource]) -> dict[str, list[str]]:
    """A clip run's verb and noun names, from its manifests, checked against clip.*_classes."""
    from avakit.dataset.clip_classes import run_classes

    manifests = sorted({s.where for s in sources.values() if s.samples is not None})
    return run_classes(manifests, cfg.clip.verb_classes, cfg.clip.noun_classes)


def _shard_sources(cfg: Config, ddp: DistInfo) -> dict[str, SplitSource]:
    """Every split's source, checked complete (all shard files, right sizes) before training starts."""
    hint = "training reads every shard: restore the folder (or re-run `avakit shard`)"
    sources = {
        s: resolve_split(cfg.data.shards, s, incomplete_hint=hint)
        for s in SPLITS
        if isinstance(cfg.data.shards, str) or s in cfg.data.shards
    }
    if "train" not in sources or "val" not in sources:
        raise AvakitError("data.shards: training needs a train and a val split")
    for split in ("train", "val"):  # an empty val split would train with NaN metrics and no best model
        if not sources[split].has_data or sources[split].samples == 0:
            raise AvakitError(
                f"{sources[split].where or 'data.shards'}: the {split} split has no samples; "
                "training needs both train and val samples"
            )
    if ddp.enabled and not cfg.data.resampled and len(sources["train"].entries) < ddp.world_size:
        raise no_shard_error("train", len(sources["train"].entries), ddp.world_size)  # before any write
    if ddp.enabled and sources["train"].samples is None and cfg.data.epoch_samples is None:
        raise AvakitError(
            "data.shards: multi-process training needs a shard folder with manifest.json "
            "(or data.resampled with data.epoch_samples)"
        )
    return sources


def split_loader(tr: Trainer, split: str, train: bool, epoch: int) -> CountingLoader:
    """The split's counting loader for one pass, kept in tr.loaders: its counts are read after the pass."""
    cfg = tr.cfg
    if cfg.data.features:
        from avakit.training.cached import cached_loader

        loader = cached_loader(
            cfg, tr.sources[split], tr.core, train=train, epoch=epoch, fraction=tr.fraction
        )
    elif train:
        loader = make_loader(
            tr.sources[split],
            tr.task.decoder(
                TrainPreset(cfg.transform), cfg.transform.crop_size, tr.sources[split].scale, True, cfg
            ),
            batch_size=cfg.training.batch_size,
            train=True,
            seed=cfg.seed,
            epoch=epoch,
            num_workers=cfg.data.num_workers,
            shuffle_buffer=cfg.data.shuffle_buffer,
            fraction=tr.fraction,
            rank=tr.ddp.rank,
            world_size=tr.ddp.world_size,
            pin_memory=tr.device.type == "cuda",
            resampled=cfg.data.resampled,
        )
    else:
        loader = eval_loader(
            tr.sources[split],
            cfg,
            batch_size=cfg.training.batch_size,
            epoch=epoch,
            fraction=tr.fraction,
            rank=tr.ddp.rank,
            world_size=tr.ddp.world_size,
            pin_memory=tr.device.type == "cuda",
            task=tr.task,
        )
    tr.loaders[split] = loader
    return loader


def run_data_definition(tr: Trainer) -> dict:
    """The data this run trains on, as last.pt stores it (training.resume.data_definition)."""
    return data_definition(tr.sources, tr.fraction, tr.cfg.data.features is not None)
