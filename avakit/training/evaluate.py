"""`avakit evaluate`: run a run folder's checkpoint over a split and report the literature's metrics.

Uses the same loader, eval preset, normalisation and metric code as `train`, so with the same
checkpoint and split (and no test-time augmentation) the numbers equal train's results.json.
Writes `eval/{split}_{checkpoint}_tta-{tta}.json` and `.parquet` in the run folder
(`avakit.training.rundir.eval_outputs`); train's own results.json and predictions/ are never touched.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from avakit.config import Config, TrainingConfig, check_value
from avakit.dataset.sources import SplitSource, resolve_split
from avakit.errors import AvakitError
from avakit.fileio import write_error, write_json_atomic, write_parquet_atomic
from avakit.model.losses import get_loss
from avakit.scores import SPLITS, Scale
from avakit.tasks import check_task, get_task
from avakit.training.checkpoint import (
    checkpoint_scale,
    load_checkpoint,
    model_from_checkpoint,
    run_checkpoint,
)
from avakit.training.distributed import pick_device
from avakit.training.engine import StepContext, place_model, resolve_amp
from avakit.training.loader import eval_loader
from avakit.training.rundir import eval_outputs
from avakit.training.selection import eval_threshold


def evaluate_run(
    run_dir: Path,
    split: str = "test",
    shards: Path | None = None,
    checkpoint: str = "best",
    tta: str = "none",
    batch_size: int | None = None,
    device: str = "auto",
    progress=None,
    allow_missing: bool = False,
    threshold: float | None = None,
) -> dict:
    """Evaluate `run_dir`'s best or last checkpoint on `split`; returns what eval/{...}.json holds.

    `shards` defaults to the checkpoint's data.shards, which must then be plain paths (a URL or
    `pipe:` source read from a checkpoint is refused). An incomplete split (shard files missing
    or of the wrong size) is an error (exit 1) unless `allow_missing`; the report's
    samples_expected / samples_seen / lost say what was evaluated and what was not, and why.
    `threshold` (binary accuracy's cut) overrides the checkpoint config's eval.threshold, which
    overrides the data's default (AVA: 5; other data: none, so no accuracy).
    """
    if split not in SPLITS:
        raise AvakitError(f"split must be train, val or test, got {split!r}")
    if batch_size is not None:  # the same bounds as training.batch_size (0 would silently mean "default")
        check_value(TrainingConfig, "batch_size", batch_size, "batch_size")
    run_dir = Path(run_dir)
    ckpt_path = run_checkpoint(run_dir, checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    model, cfg = model_from_checkpoint(ckpt)
    scale = checkpoint_scale(ckpt)
    task = _task(cfg, scale, ckpt_path, tta)
    cut = _threshold(threshold, cfg, scale, ckpt_path)
    source = _eval_source(shards, cfg, split, ckpt_path, allow_missing, scale)
    dev = pick_device(device)
    amp = resolve_amp(cfg.training.amp, dev)  # as train evaluates on this device, so the numbers agree
    model, normalize = place_model(model, cfg, dev)
    ctx = StepContext(
        model=model,
        normalize=normalize,
        optimizer=None,
        loss_fn=get_loss(cfg.training.loss_type).fn,  # type: ignore[arg-type]
        output_mode=cfg.model.output_mode,
        device=dev,
        scale=scale,
        task=task,
        options=cfg.pairs,
        amp=amp,
        channels_last=cfg.training.channels_last,
    )
    batch, pin = batch_size or cfg.training.batch_size, dev.type == "cuda"
    loader = eval_loader(source, cfg, batch_size=batch, tta=tta, pin_memory=pin, task=task)  # checks tta
    out = eval_outputs(run_dir, split, checkpoint, tta)
    with progress.task(f"evaluate {split}", source.samples) if progress else contextlib.nullcontext():
        advance = progress.advance if progress else None
        result = task.merge([task.evaluate(model, loader, ctx, advance, True)])
    counts = loader.counts
    if not result["n"]:
        raise AvakitError(f"split {split!r}: no sample could be used ({counts.summary()})", exit_code=1)
    found, frames = task.summarise(result, ctx, cut, final=True)
    found.update(_speed(result, counts.corrupt))
    report = {
        "split": split,
        "checkpoint": ckpt_path.name,
        "epoch": ckpt.get("epoch"),
        "tta": tta,
        "batch_size": batch,
        "device": str(dev),
        "amp": amp,
        "shards": str(shards or cfg.data.shards),
        "labels": scale.as_dict(),
        "threshold": cut,
        **counts.as_dict(),
        "metrics": found,
    }
    report["predictions"] = out.parquet.relative_to(run_dir).as_posix()
    _make_folder(out.json.parent)
    for suffix, frame in frames.items():
        write_parquet_atomic(out.parquet.with_name(out.parquet.stem + suffix + ".parquet"), frame)
    write_json_atomic(out.json, report, default=_jsonable)
    return report


def _task(cfg: Config, scale: Scale, ckpt_path: Path, tta: str):
    """The checkpoint's task, checked against its labels; TTA only for the score task."""
    check_task(cfg.task, scale, f"{ckpt_path}: labels")
    task = get_task(cfg.task)
    if task.name != "score" and tta != "none":
        raise AvakitError(f"tta: the {task.name} task evaluates each photo once (use --tta none)")
    return task


def _threshold(option: float | None, cfg: Config, scale: Scale, ckpt_path: Path) -> float | None:
    """Accuracy's cut: --threshold, else the checkpoint config's eval.threshold, else the data's."""
    if option is not None:
        return eval_threshold(option, scale, "--threshold")
    return eval_threshold(cfg.eval.threshold, scale, f"{ckpt_path}: config.eval.threshold")


def _eval_source(
    shards: Path | None, cfg: Config, split: str, ckpt_path: Path, allow_missing: bool, scale: Scale
) -> SplitSource:
    """The split to evaluate: --shards, else the checkpoint's (plain paths only); labels on `scale`."""
    source = resolve_split(
        str(shards) if shards is not None else cfg.data.shards,
        split,
        origin=None if shards is not None else str(ckpt_path),
        allow_missing=allow_missing,
        incomplete_hint="pass --allow-missing to evaluate the rest",
    )
    if not source.has_data:
        raise AvakitError(f"split {split!r} has no samples in {shards or cfg.data.shards}")
    check_same_labels(scale, source.scale, source.where or str(shards))
    return source


def check_same_labels(model: Scale, data: Scale, where: str) -> None:
    """AvakitError when a model trained on one label scale meets data on another."""
    if (model.kind, model.k, model.lo, model.hi, model.higher_is_better) != (
        data.kind,
        data.k,
        data.lo,
        data.hi,
        data.higher_is_better,
    ):
        raise AvakitError(
            f"{where}: these shards hold {data.score_name} labels, the model was trained on "
            f"{model.score_name}: evaluate it on shards of its own dataset"
        )


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(exist_ok=True)
    except OSError as e:
        raise write_error(e, folder) from None


def _speed(result: dict, corrupt: int) -> dict:
    """Loss, corrupt samples and speed of an evaluation pass, per image (a group's photos each count)."""
    n, loss_n = result.get("n_images", result["n"]), result.get("loss_n", result["n"])
    return {
        "loss": result["loss_sum"] / loss_n if loss_n else float("nan"),
        "corrupt": corrupt,
        "latency_ms_per_image": 1000.0 * result["model_seconds"] / n,
        "model_img_per_s": n / result["model_seconds"] if result["model_seconds"] else 0.0,
        "end_to_end_img_per_s": n / result["seconds"] if result["seconds"] else 0.0,
    }


def _jsonable(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")
