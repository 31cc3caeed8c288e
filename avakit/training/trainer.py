"""What a training run builds once: model, optimizer, schedule, step context and data sources.

`build_trainer` turns a config into a `Trainer`; `split_loader` gives the loader of one pass over
a split (shards or a feature cache). `avakit.training.fit` runs the epochs over them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from avakit import __version__
from avakit.config import Config, config_to_dict
from avakit.dataset.sources import DataSource, SplitSource, common_scale, resolve_split
from avakit.errors import AvakitError
from avakit.model.build import model_from_config
from avakit.model.losses import get_loss
from avakit.model.network import param_groups
from avakit.scores import SPLITS, Scale
from avakit.tasks import check_task, get_task
from avakit.tasks.base import Task
from avakit.training.checkpoint import check_weights, rng_state, seed_everything, set_rng_state
from avakit.training.distributed import DistInfo
from avakit.training.engine import StepContext, WarmupSchedule, place_model, resolve_amp
from avakit.training.loader import CountingLoader, eval_loader, make_loader
from avakit.training.resume import check_resume_state, data_definition
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
    )


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


def restore(tr: Trainer, ckpt: dict, path: Path) -> None:
    """Load last.pt's model, optimizer, schedule, scaler, RNG and progress into the trainer.

    Each part is checked as it loads: a crafted or foreign last.pt is one line naming the key.
    """
    state = check_resume_state(ckpt, path)
    if state["select_metric"] != tr.cfg.training.select_metric:
        raise AvakitError(
            f"training.select_metric: {path} picks its best epoch by val {state['select_metric']}; "
            f"a resumed run keeps that (drop --set training.select_metric)"
        )
    check_weights(
        tr.cfg, ckpt["model_state_dict"], f"{path} (with this run's config)", tr.scale
    )  # a --set model.*
    tr.core.load_state_dict(ckpt["model_state_dict"])
    with _part(path, "optimizer"):
        _check_optimizer(ckpt["optimizer"], tr.ctx.optimizer, path)
        tr.ctx.optimizer.load_state_dict(ckpt["optimizer"])
    # the schedule's shape (warmup, total steps) follows this run's config and data; only its
    # progress (plateau state) comes from last.pt
    shape = {key: getattr(tr.schedule, key) for key in WarmupSchedule.SHAPE}
    with _part(path, "scheduler"):
        _fill_shape(ckpt["scheduler"], shape)
        if not _same_shape(ckpt["scheduler"], tr.scheduler.state_dict()):
            raise AvakitError(f"{path}: scheduler: does not fit this run's schedule (keys or types differ)")
        tr.scheduler.load_state_dict(ckpt["scheduler"])
        tr.schedule = tr.scheduler.lr_lambdas[0]
        tr.schedule.__dict__.update(shape)
    if tr.ctx.scaler is not None and ckpt.get("scaler"):
        with _part(path, "scaler"):
            tr.ctx.scaler.load_state_dict(ckpt["scaler"])
    tr.state = RunState(**state)
    with _part(path, "rng"):
        set_rng_state(ckpt["rng"])


def _fill_shape(stored: object, shape: dict) -> None:
    """A last.pt from before a SHAPE attribute existed: add it (recomputed from the config anyway)."""
    lambdas = stored.get("lr_lambdas") if isinstance(stored, dict) else None
    for entry in lambdas if isinstance(lambdas, list) else ():
        if isinstance(entry, dict) and "kind" in entry:
            for key, value in shape.items():
                entry.setdefault(key, value)


def _same_shape(stored: object, fresh: object) -> bool:
    """`stored` has the structure of `fresh`: the same keys, lengths and value types, recursively."""
    if isinstance(fresh, dict):
        return (
            isinstance(stored, dict)
            and set(stored) == set(fresh)
            and all(_same_shape(stored[k], v) for k, v in fresh.items())
        )
    if isinstance(fresh, list | tuple):
        return (
            isinstance(stored, list | tuple)
            and len(stored) == len(fresh)
            and all(map(_same_shape, stored, fresh))
        )
    if isinstance(fresh, float) and type(stored) is int:
        return True
    return type(stored) is type(fresh)


def _check_optimizer(stored: dict, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """last.pt's optimizer state fits this run's optimizer: groups, settings and per-parameter tensors."""
    fresh = optimizer.state_dict()
    groups = stored.get("param_groups")
    if (
        set(stored) != set(fresh)
        or not _same_shape(groups, fresh["param_groups"])
        or not isinstance(stored["state"], dict)
    ):
        raise AvakitError(f"{path}: optimizer: does not fit this run's optimizer (groups or settings differ)")
    params = {
        i: p
        for group, ids in zip(optimizer.param_groups, (g["params"] for g in groups), strict=True)
        for i, p in zip(ids, group["params"], strict=True)
    }
    for pid, entry in stored["state"].items():
        if (
            pid not in params
            or not isinstance(entry, dict)
            or not all(
                isinstance(t, torch.Tensor) and (name == "step" or t.shape == params[pid].shape)
                for name, t in entry.items()
            )
        ):
            raise AvakitError(f"{path}: optimizer.state.{str(pid)[:20]}: does not fit this run's parameters")


@contextlib.contextmanager
def _part(path: Path, key: str) -> Iterator[None]:
    """Loading one part of a last.pt: torch's errors for a state of the wrong shape become one line."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as e:
        raise AvakitError(
            f"{path}: {key}: does not fit this run ({e.__class__.__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else ''})"
        ) from None


def checkpoint_payload(tr: Trainer, epoch: int, val: dict, full: bool) -> dict:
    """best_model.pt's content (model, config, epoch, metrics); `full` adds what `restore` reads."""
    payload = {
        "model_state_dict": tr.core.state_dict(),
        "config": config_to_dict(tr.cfg),
        "epoch": epoch,
        "metrics": val,
        "avakit_version": __version__,
        "manifest_sha256": tr.sources["train"].manifest_sha256,
        "preprocessing": tr.sources["train"].preprocessing,
        "labels": tr.scale.as_dict(),
    }
    if full:
        s = tr.state
        payload.update(
            optimizer=tr.ctx.optimizer.state_dict(),
            scheduler=tr.scheduler.state_dict(),
            scaler=tr.ctx.scaler.state_dict() if tr.ctx.scaler else None,
            rng=rng_state(),
            data=run_data_definition(tr),
            state={
                "epoch": s.epoch,
                "step": s.step,
                "select_metric": s.select_metric,
                "best_value": s.best_value,
                "best_epoch": s.best_epoch,
                "bad_epochs": s.bad_epochs,
                "elapsed_s": s.elapsed_s,
                "history": s.history,
            },
        )
    return payload


def run_data_definition(tr: Trainer) -> dict:
    """The data this run trains on, as last.pt stores it (training.resume.data_definition)."""
    return data_definition(tr.sources, tr.fraction, tr.cfg.data.features is not None)
