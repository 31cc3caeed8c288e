"""`avakit train`: fit() runs epochs, evaluation, early stopping, checkpoints and the run folder.

Run folder (the contract `report`, `evaluate` and `predict` read):
  config.yaml training.log training_history.json results.json best_model.pt last.pt
  training_curves.png predictions/val_epoch_NNN.parquet predictions/test.parquet telemetry/*.csv
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from avakit import __version__
from avakit.config import Config, save_config
from avakit.errors import AvakitError, Interrupted
from avakit.fileio import LogFileHandler, clear_stale_tmp, write_json_atomic, write_parquet_atomic
from avakit.scores import HELD_OUT_SPLITS
from avakit.training.checkpoint import load_checkpoint, make_folder, new_run_dir, with_absolute_paths
from avakit.training.distributed import DistInfo, gather_objects, init_distributed, shutdown
from avakit.training.engine import NonFiniteError
from avakit.training.epochs import run_epochs, run_evaluation
from avakit.training.preempt import Preemption
from avakit.training.resume import check_same_data, interrupted_message, run_fraction, stored_definition
from avakit.training.run_checkpoint import restore
from avakit.training.selection import warn_small_val
from avakit.training.shard_share import train_share_warning
from avakit.training.trainer import Progress, Trainer, build_trainer, run_data_definition

log = logging.getLogger("avakit.training.fit")


def _setup_logging(run_dir: Path, ddp: DistInfo) -> None:
    log.setLevel(logging.INFO)
    for handler in [h for h in log.handlers if isinstance(h, (LogFileHandler, logging.FileHandler))]:
        log.removeHandler(handler)
        handler.close()
    if ddp.is_main:
        handler = LogFileHandler(run_dir / "training.log")  # a full disk stops the run: one line
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(handler)


def _prepare_run(cfg: Config, output_dir: Path | None, resume: Path | None, ddp: DistInfo) -> tuple:
    """(config, run folder path, last.pt contents or None).

    A run folder stopped before its first last.pt (no results.json either) starts again from
    epoch 0: nothing of it was kept, and the same seed gives the same run.
    """
    from avakit.training.distributed import broadcast_object

    cfg = with_absolute_paths(cfg)
    if resume is None:
        run_dir = broadcast_object(new_run_dir(cfg, output_dir) if ddp.is_main else None, ddp)
        ckpt = None
    else:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise AvakitError(f"{run_dir / 'config.yaml'}: not found (is {run_dir} a run folder?)")
        last = run_dir / "last.pt"
        started_again = not last.is_file() and not (run_dir / "results.json").is_file()
        ckpt = None if started_again else load_checkpoint(last)
    return cfg, run_dir, ckpt


def _write_run_dir(cfg: Config, run_dir: Path, ddp: DistInfo) -> None:
    """Create the run folder (rank 0) once the run is set up: a failed start leaves nothing.

    A resumed run first removes the temporary files an interrupted one left (fileio).
    """
    if ddp.is_main:
        clear_stale_tmp(run_dir, recursive=True)
        make_folder(run_dir / "predictions")
        save_config(cfg, run_dir / "config.yaml")


def _finish(tr: Trainer, progress: Progress | None, started: float) -> dict:
    """Evaluate best_model.pt on val and test, write results.json and training_curves.png."""
    from avakit.plots import plot_training_curves

    s, best_path = tr.state, tr.run_dir / "best_model.pt"
    gather_objects(None, tr.ddp)  # wait until rank 0 has written the last checkpoint
    if best_path.is_file():
        tr.core.load_state_dict(load_checkpoint(best_path)["model_state_dict"])
    results = {
        "avakit_version": __version__,
        "best_epoch": s.best_epoch,
        "epochs": len(s.history),
        "steps": s.step,
        "world_size": tr.ddp.world_size,
        "device": str(tr.device),
        "quick_experiment": tr.fraction,
        "checkpoint": best_path.name if best_path.is_file() else None,
        "task": tr.task.name,
        "labels": tr.scale.as_dict(),
        "select_metric": s.select_metric,
        "threshold": tr.threshold,
        **({"classes": tr.classes} if tr.classes else {}),  # clip runs: the shards' class names
    }  # checkpoint None: no epoch improved
    for split in HELD_OUT_SPLITS:
        if split in tr.sources and tr.sources[split].has_data:
            found, frames = run_evaluation(tr, tr.eval_model, split, progress, final=True)
            results[split] = found
            for suffix, frame in frames.items() if tr.ddp.is_main else ():
                write_parquet_atomic(tr.run_dir / "predictions" / f"{split}{suffix}.parquet", frame)
    elapsed = s.elapsed_s + time.perf_counter() - started
    train_rates = [h["img_per_s"] for h in s.history if h["img_per_s"]]
    results.update(
        wall_time_s=round(elapsed, 2),
        train_img_per_s=round(float(np.mean(train_rates)), 2) if train_rates else 0.0,
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if tr.ddp.is_main:
        write_json_atomic(tr.run_dir / "results.json", results)
        plot_training_curves(s.history, tr.run_dir / "training_curves.png")
    if "test" in results:
        test = results["test"]
        line = tr.task.metrics_line(test, s.select_metric)
        log.info("test (best epoch %d): %s  n=%d", s.best_epoch, line, test["n"])
    return results


def fit(
    cfg: Config,
    output_dir: Path | None = None,
    quick_experiment: float | None = None,
    resume: Path | None = None,
    progress: Progress | None = None,
    stop_after_epochs: int | None = None,
) -> Path:
    """Train per `cfg` and write the run folder; returns its path.

    `resume` continues that run folder from its last.pt (pass `checkpoint.run_config(run_dir)` as cfg)
    with the data it was trained on: the stored `quick_experiment` fraction and shards; a
    different fraction, manifest or data.features is an AvakitError.
    `stop_after_epochs` ends this call after that many epochs, leaving a resumable run (for
    time-limited jobs and tests). A NaN/inf loss, gradient norm or val metric stops the run
    with NonFiniteError (exit 1) before last.pt is overwritten; Ctrl-C once the run folder
    exists raises `Interrupted` with the command that resumes it.
    """
    if quick_experiment is not None and not 0.0 < quick_experiment <= 1.0:
        raise AvakitError(f"quick_experiment must be in (0, 1], got {quick_experiment}")
    ddp, device = init_distributed(cfg.device)
    run_dir, fraction, tr = Path(resume) if resume is not None else None, quick_experiment, None
    try:
        cfg, run_dir, ckpt = _prepare_run(cfg, output_dir, resume, ddp)
        stored = stored_definition(ckpt, run_dir / "last.pt") if ckpt is not None else None
        fraction = run_fraction(stored, quick_experiment, run_dir / "last.pt")
        tr = build_trainer(cfg, run_dir, fraction, ddp, device)
        if ckpt is not None:  # before anything in the run folder changes
            check_same_data(stored, run_data_definition(tr), run_dir / "last.pt", ckpt.get("manifest_sha256"))
            restore(tr, ckpt, run_dir / "last.pt")
        _write_run_dir(cfg, run_dir, ddp)
        _train(tr, ckpt, progress, stop_after_epochs, restarted=resume is not None and ckpt is None)
        return run_dir
    except KeyboardInterrupt:
        if run_dir is None or not run_dir.is_dir():
            raise  # nothing written yet
        raise Interrupted(interrupted_message(run_dir, fraction)) from None
    except NonFiniteError as e:
        raise _stopped(tr, e) from None
    finally:
        shutdown(ddp)


def _train(
    tr: Trainer, ckpt: dict | None, progress: Progress | None, stop_after_epochs: int | None, restarted: bool
) -> None:
    """Log, restore last.pt, run the epochs with telemetry; evaluate and write results at the end."""
    from avakit.training.telemetry import Telemetry

    cfg, run_dir = tr.cfg, tr.run_dir
    _setup_logging(run_dir, tr.ddp)
    if ckpt is not None:
        log.info("resuming %s at epoch %d (step %d)", run_dir, tr.state.epoch, tr.state.step)
    else:
        log.info(
            "run %s%s: %s on %s, %s",
            run_dir,
            " (again from epoch 0: no last.pt)" if restarted else "",
            cfg.model.backbone,
            tr.device,
            f"{tr.steps_per_epoch} steps/epoch" if tr.steps_per_epoch else "epoch length unknown",
        )
    from avakit.training.frozen import fit_feature_norm

    fit_feature_norm(tr, progress)  # frozen sources: their standardiser, before the first epoch
    if cfg.task == "pairwise" and cfg.pairs.augment_anchor_only:
        log.warning(
            "pairs.augment_anchor_only: only good photos are augmented, so rotation corners and "
            "jitter mark the positives: the model can learn the augmentation instead of the photo"
        )
    if tr.ddp.is_main:
        val = tr.sources["val"].samples if "val" in tr.sources else None
        samples = None if val is None else round(val * tr.fraction)
        warn_small_val(log, samples, tr.state.select_metric, tr.task.name)
        if share := train_share_warning(cfg, tr.sources["train"], tr.ddp.world_size):
            log.warning("%s", share)
    telemetry = Telemetry(
        run_dir,
        tr.model,
        tr.ctx.optimizer,
        enabled=cfg.telemetry.enabled and tr.ddp.is_main,
        collect_every_n=cfg.telemetry.collect_every_n,
        resume_step=tr.state.step if ckpt is not None else None,
    )
    tr.ctx.telemetry = telemetry
    with telemetry, Preemption() as guard:
        guard.saved_epoch = tr.state.epoch if ckpt is not None else None  # last.pt holds its start
        run_epochs(tr, progress, stop_after_epochs, guard)
    if tr.state.epoch >= cfg.training.max_epochs or tr.state.bad_epochs >= (
        cfg.training.early_stop_patience or math.inf
    ):
        _finish(tr, progress, time.perf_counter())


def _stopped(tr: Trainer | None, error: NonFiniteError) -> NonFiniteError:
    """The NaN/inf stop as one line that says what is kept, also written to training.log."""
    if tr is None:
        return error
    last = tr.run_dir / "last.pt"
    kept = (
        f"the last good checkpoint ({last}) is kept"
        if last.is_file()
        else f"before the first checkpoint (run folder {tr.run_dir})"
    )
    message = f"{error}; stopped, {kept}"
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in log.handlers:  # the file only: the CLI prints the error line itself
        if isinstance(handler, (LogFileHandler, logging.FileHandler)):
            handler.handle(record)
    return NonFiniteError(message)
