"""Frozen mode's one preparation step: fit the feature standardiser on the train split.

Before the first epoch, every training photo goes once through the frozen sources (eval
geometry, no augmentation) and `SourceStandardiser` gathers each feature's mean and std. The
statistics are buffers of the model, so checkpoints carry them and a resumed run skips this.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from avakit.training.loader import eval_loader
from avakit.training.trainer import Progress, Trainer

log = logging.getLogger("avakit.training.fit")


def fit_feature_norm(tr: Trainer, progress: Progress | None = None) -> None:
    """Fit `tr.core.feature_norm` on the train split when the model has an unfitted one."""
    norm = getattr(tr.core, "feature_norm", None)
    if norm is None or norm.fitted:
        return
    cfg, source = tr.cfg, tr.sources["train"]
    loader = eval_loader(  # the whole split in this process: every rank computes the same statistics
        source,
        cfg,
        batch_size=cfg.training.batch_size,
        pin_memory=tr.device.type == "cuda",
        fraction=tr.fraction,
        task=tr.task,
    )
    tr.core.eval()
    bar = (
        progress.task("frozen features: standardise", source.samples)
        if progress
        else contextlib.nullcontext()
    )
    with bar, torch.no_grad():
        for batch in loader:
            p = tr.task.prepare(batch, tr.ctx)
            if p.n:
                norm.update(tr.core.features(p.x))
                if progress is not None:
                    progress.advance(p.n)
    norm.finish(tr.core.backbone.slices)
    log.info(
        "frozen sources %s: standardised on %s", "+".join(tr.core.backbone.sources), loader.counts.summary()
    )
