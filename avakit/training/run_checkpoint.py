"""last.pt in and out: the payload a checkpoint holds, and restoring a run from it.

`checkpoint_payload` is what best_model.pt (weights, config, labels) and last.pt (plus optimizer,
schedule, progress and RNG) hold; `restore` loads last.pt into a freshly built `Trainer`, every
part checked against the run it goes into (a crafted or foreign last.pt is one line).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from avakit import __version__
from avakit.config import config_to_dict
from avakit.errors import AvakitError
from avakit.training.checkpoint import check_weights, rng_state, set_rng_state
from avakit.training.engine import WarmupSchedule
from avakit.training.resume import check_resume_state
from avakit.training.trainer import RunState, Trainer, run_data_definition


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
