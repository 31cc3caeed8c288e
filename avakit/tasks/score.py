"""The score task: one photo, one label (K vote counts or a MOS); the model predicts its score.

AVA.txt, labels tables and presets train this task. Its sample decoder, batch collation, loss
call, evaluation pass, metrics (SRCC, PLCC, accuracy at a threshold, EMD) and predictions table
(image_id, pred_mean, gt_mean, pred_dist_*, gt_dist_*) live here; `training.engine` and
`training.fit` call them through `SCORE` (a `tasks.base.Task`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from avakit.dataset.samples import Reason, decode_image, label_values, parse_label
from avakit.model.losses import loss_targets, native_outputs
from avakit.predictions import frame_intervals, frame_metrics, metrics_line, predictions_frame
from avakit.scores import AVA, Scale
from avakit.tasks.base import Prepared, StepContext, autocast, pass_totals, to_input


class SampleDecoder:
    """Raw webdataset sample -> (uint8 crop, label, image id, reason code). Picklable for workers.

    The label is the sample's K vote counts, or its MOS as a 1-vector ([mos]), as `scale` says.
    """

    def __init__(
        self, preset: Callable[[torch.Tensor], torch.Tensor], crop_size: int, scale: Scale = AVA
    ) -> None:
        self.preset, self.scale = preset, scale
        views = getattr(preset, "views", 1)  # test-time augmentation views per image
        self.blank_shape = (3, crop_size, crop_size) if views == 1 else (views, 3, crop_size, crop_size)

    def __call__(self, sample: dict) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Decode one raw sample; a lost or bad one gives a blank crop, zero votes and its reason code."""
        code = sample.get("__code__")
        if code is not None:
            return self._blank(), self._none(), sample["__index__"], code
        if "json" not in sample or "jpg" not in sample:
            return self._blank(), self._none(), -1, int(Reason.MEMBERS)
        reason, label = parse_label(sample["__key__"], sample["json"], self.scale)
        if label is None:
            return self._blank(), self._none(), -1, int(reason)
        votes, image_id = torch.tensor(label_values(label), dtype=torch.float32), label["image_id"]
        try:
            image = self.preset(decode_image(sample["jpg"]))
        except (RuntimeError, ValueError):
            return self._blank(), votes, image_id, int(Reason.IMAGE)
        return image, votes, image_id, 0

    def _blank(self) -> torch.Tensor:
        return torch.zeros(self.blank_shape, dtype=torch.uint8)

    def _none(self) -> torch.Tensor:
        return torch.zeros(self.scale.width)


def collate(samples: list[tuple]) -> tuple:
    """Stack decoded samples into one batch (in a worker, straight into shared memory)."""
    return tuple(default_collate(samples))


def prepare_batch(batch: tuple, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Drop corrupt samples, move to device, normalise: (x, votes, ids, n_corrupt).

    x is [B, 3, H, W], or [B, V, 3, H, W] with test-time augmentation views.
    """
    images, votes, ids, valid = batch
    corrupt = int((~valid).sum())
    if corrupt:
        images, votes, ids = images[valid], votes[valid], ids[valid]
    return to_input(images, ctx), votes.to(ctx.device, non_blocking=ctx.device.type == "cuda"), ids, corrupt


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
        **pass_totals(parts),
        "n": int(len(ids)),
    }


class ScoreTask:
    """The score task (`task: score`), as `training` calls it."""

    name = "score"
    select_metrics = ("srcc", "plcc", "loss", "emd")
    history_keys = ("srcc", "plcc", "accuracy", "majority_baseline", "mae", "rmse", "emd", "std_srcc")

    def decoder(
        self, preset: Callable, crop_size: int, scale: Scale, train: bool, cfg: object = None
    ) -> SampleDecoder:
        """The sample decoder over `preset` (TrainPreset or EvalPreset); `train`, `cfg` unused."""
        return SampleDecoder(preset, crop_size, scale)

    collate = staticmethod(collate)

    def prepare(self, batch: tuple, ctx: StepContext) -> Prepared:
        """Corrupt rows dropped, images normalised on the device, votes or MOS beside them."""
        x, votes, _, corrupt = prepare_batch(batch, ctx)
        return Prepared(x, votes, len(x), corrupt)

    def loss(self, model: nn.Module, p: Prepared, ctx: StepContext) -> tuple[torch.Tensor, int]:
        """The configured loss (EMD, KL, cross-entropy, MSE, L1) of the batch, per image."""
        with autocast(ctx.device, ctx.amp):
            out = model(p.x)
        return ctx.loss_fn(out.float(), loss_targets(p.labels, ctx.scale, ctx.output_mode)), len(p.x)

    def evaluate(
        self, model: nn.Module, loader, ctx: StepContext, advance=None, warmup: bool = False
    ) -> dict:
        """`eval_one_epoch`."""
        return eval_one_epoch(model, loader, ctx, advance=advance, warmup=warmup)

    def merge(self, parts: list[dict]) -> dict:
        """`merge_results`."""
        return merge_results(parts)

    def summarise(
        self, merged: dict, ctx: StepContext, threshold: float | None, final: bool = False
    ) -> tuple:
        """(metrics without the loss, {"": predictions table} or {}); `final` adds the SRCC/PLCC
        bootstrap intervals (test and val results, not every epoch: they take a second)."""
        if not merged["n"]:
            return {"n": 0}, {}
        df = predictions_frame(merged, ctx.output_mode, ctx.scale)
        found = frame_metrics(df, ctx.scale, threshold)
        if final:
            found.update(frame_intervals(df))
        return found, {"": df}

    def metrics_line(self, found: dict, select_metric: str) -> str:
        """SRCC, PLCC (EMD), accuracy beside its majority rate."""
        return metrics_line(found, select_metric)


SCORE = ScoreTask()
