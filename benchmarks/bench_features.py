"""Benchmark frozen-feature work against end-to-end training, on this CPU, in one run.

Measures, for one backbone (resnet50 by default, random init: no download):
  - end-to-end training: images/s of full train steps (decode + augment + forward + backward)
  - feature extraction: images/s of `avakit features` (decode + eval transform + forward, no grad)
  - head-only training: samples/s of `avakit train` on the cache (data.features)
and prints the ratios (extraction vs a training step; head-only vs end-to-end).

    .venv/bin/python benchmarks/bench_features.py [--backbone resnet50] [--n 160] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchlog import command_line, load, save

from avakit.config import load_config
from avakit.dataset.plan import ShardOptions, plan_sharding
from avakit.dataset.shards import write_shards
from avakit.dataset.sources import resolve_split
from avakit.dataset.synthetic import make_synthetic_ava
from avakit.model.build import model_from_config
from avakit.model.losses import get_loss
from avakit.model.network import param_groups
from avakit.training.engine import StepContext, train_one_epoch
from avakit.training.features import extract_features
from avakit.training.fit import fit
from avakit.training.loader import SampleDecoder, make_loader
from avakit.training.transforms import Normalize, TrainPreset


def end_to_end_rate(cfg, steps: int) -> float:
    """Images/s of `steps` full training steps after one warm-up step."""
    import torch

    model, t, tf = model_from_config(cfg), cfg.training, cfg.transform
    groups = param_groups(model, t.learning_rate, t.head_lr_multiplier)
    ctx = StepContext(
        model=model,
        normalize=Normalize(tf.normalize_mean, tf.normalize_std),
        optimizer=torch.optim.AdamW(groups, lr=t.learning_rate),
        loss_fn=get_loss(t.loss_type).fn,
        output_mode=cfg.model.output_mode,
        device=torch.device("cpu"),
    )
    decoder = SampleDecoder(TrainPreset(tf), tf.crop_size)
    loader = make_loader(
        resolve_split(cfg.data.shards, "train"),
        decoder,
        batch_size=t.batch_size,
        train=True,
        seed=0,
        epoch=0,
        num_workers=cfg.data.num_workers,
    )
    batches = iter(loader)
    ctx.max_steps = 1
    train_one_epoch(ctx, batches, 0, 0)  # warm-up
    ctx.max_steps = steps
    stats = train_one_epoch(ctx, batches, 0, 1)
    return stats.img_per_s


def main() -> int:
    """Time end-to-end steps, extraction and head-only training; print, write the JSON (no target)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--n", type=int, default=160, help="synthetic images")
    parser.add_argument("--steps", type=int, default=4, help="timed end-to-end training steps")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    load_before = load()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ava = make_synthetic_ava(root / "ava", n=args.n, seed=0, fixed_size=(800, 534))
        write_shards(plan_sharding(ava.ava_txt, ava.images, root / "shards", ShardOptions(shard_size=40)), 2)
        batch = args.batch_size
        cfg = load_config(
            None,
            [*_overrides(args.backbone, root, batch), "data.num_workers=1", f"training.batch_size={batch}"],
        )
        e2e = end_to_end_rate(cfg, args.steps)
        start = time.perf_counter()
        meta = extract_features(cfg, ("train", "val", "test"), root / "cache", device="cpu")
        extract = sum(meta["splits"].values()) / (time.perf_counter() - start)
        shared = _overrides(args.backbone, root, batch)
        head_cfg = load_config(None, [*shared, f"data.features={root / 'cache'}", "training.batch_size=64"])
        run = fit(head_cfg, output_dir=root / "runs")
        history = json.loads((run / "training_history.json").read_text())
        head = sorted(h["img_per_s"] for h in history)[len(history) // 2]
    print(f"{args.backbone}, CPU, batch {args.batch_size}, {args.n} images 800x534 sharded at 256 px")
    print(f"{'end-to-end training step':28s} {e2e:10.1f} images/s")
    print(f"{'feature extraction':28s} {extract:10.1f} images/s   ({extract / e2e:.1f}x a training step)")
    print(f"{'head-only training':28s} {head:10.1f} samples/s  ({head / e2e:.0f}x end-to-end)")
    measured = (
        f"end-to-end train step {e2e:.1f} img/s; feature extraction {extract:.1f} img/s "
        f"(**{extract / e2e:.1f}x**); head-only training {head:,.0f} samples/s "
        f"(**~{head / e2e:,.0f}x**)"
    )
    return save(
        "bench_features",
        command=command_line(),
        what=f"{args.backbone} on CPU",
        measured=measured,
        target="—",
        checks=[],
        load_before=load_before,
        options=vars(args),
        figures={
            "end_to_end_img_per_s": e2e,
            "extraction_img_per_s": extract,
            "head_only_samples_per_s": head,
            "extraction_vs_step": extract / e2e,
            "head_only_vs_end_to_end": head / e2e,
        },
    )


def _overrides(backbone: str, root: Path, batch: int) -> list[str]:
    """The settings both runs share (the cache fingerprint must match)."""
    return [
        f"model.backbone={backbone}",
        "model.pretrained=false",
        "device=cpu",
        f"data.shards={root / 'shards'}",
        "training.amp=off",
        "training.max_epochs=20",
        "training.early_stop_patience=0",
        "telemetry.enabled=false",
        "save_val_predictions=false",
        f"features.batch_size={batch}",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
