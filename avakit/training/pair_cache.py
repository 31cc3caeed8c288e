"""Frozen mode's feature cache for the pairwise task: `avakit features` on a `task: pairwise`
config with `features.sources`, and head-only training from it (`data.features`).

The frozen sources see each photo once; every later run with the same sources, weights,
transform and shards trains its scorer head on the cached features, thousands of pairs per
second on a CPU. Cache folder (one set of files per split, each written atomically):
  meta.json                fingerprint, feature width and source slices, series/photos per split,
                           sample counts, `labels` (PAIRS), the shards' preprocessing
  backbone.pt              the fused sources' weights (a head trained here composes into a full model)
  {split}.features.npy     float16 [N photos, D] raw fused features, photos in series order
  {split}.photos.parquet   series, index, rank, member (one row per photo, the .npy's rows)
  {split}.pairs.parquet    series, i, j, p, rank_i, rank_j
A cache whose fingerprint differs from the config asking for it is refused as stale.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from avakit.config import Config
from avakit.dataset.sources import common_scale, resolve_split
from avakit.errors import AvakitError
from avakit.fileio import atomic_write, clear_stale_tmp, file_sha256, write_json_atomic, write_parquet_atomic
from avakit.model.build import model_from_config
from avakit.scores import PAIRS
from avakit.tasks import check_task
from avakit.tasks.pairwise import PAIRWISE, batch_rows
from avakit.training.checkpoint import make_folder
from avakit.training.distributed import pick_device
from avakit.training.engine import StepContext, autocast, place_model, resolve_amp
from avakit.training.features import _read_meta, start_cache
from avakit.training.loader import eval_loader

REDO = "re-run `avakit features` into a new folder"


def pair_fingerprint(cfg: Config) -> dict:
    """What decides the cached numbers: the sources and their weights, the geometry, the shards."""
    f, t = cfg.features, cfg.transform
    files = {"resnet50": f.resnet50_weights, "vgg16": f.vgg16_weights, "clip": f.clip_weights}
    default = "library-default" if cfg.model.pretrained else f"random-init-seed-{cfg.seed}"
    manifest = Path(str(cfg.data.shards)) / "manifest.json" if isinstance(cfg.data.shards, str) else None
    return {
        "backbone": "+".join(f.sources),
        "layer": "sources",
        "weights": {k: f"file:{file_sha256(Path(v))}" if v else default for k, v in files.items()},
        "view": cfg.pairs.view,
        "resize_size": t.resize_size,
        "crop_size": t.crop_size,
        "normalize_mean": list(t.normalize_mean),
        "normalize_std": list(t.normalize_std),
        "manifest_sha256": file_sha256(manifest) if manifest and manifest.is_file() else None,
    }


def check_pair_cache(cache: Path, cfg: Config) -> dict:
    """The cache's meta.json if it was made for `cfg`; AvakitError naming the difference if stale."""
    meta = _read_meta(Path(cache))
    if meta is None:
        raise AvakitError(f"{Path(cache) / 'meta.json'}: not found (run `avakit features` first)")
    if meta.get("labels") != PAIRS.as_dict():
        raise AvakitError(f"{cache}: a score task's feature cache; a pairwise run needs its own ({REDO})")
    for key, value in pair_fingerprint(cfg).items():
        if not (key == "manifest_sha256" and value is None) and meta["fingerprint"].get(key) != value:
            raise AvakitError(
                f"{cache}: stale feature cache: {key} is {str(meta['fingerprint'].get(key))[:80]!r}, "
                f"the config needs {str(value)[:80]!r}; {REDO}"
            )
    return meta


def extract_pair_features(
    cfg: Config, splits: tuple[str, ...], out: Path | None, device: str, progress, allow_missing: bool
) -> dict:
    """Write the pairwise feature cache for `splits` into `out` (resumes per split); returns meta.json
    plus `cache` and `images_per_s` (photos of `splits` per second of this call)."""
    started, out = time.perf_counter(), Path(out or cfg.data.features or "features")
    wanted = pair_fingerprint(cfg)
    meta = _read_meta(out)
    if meta is not None and (meta["fingerprint"] != wanted or meta.get("labels") != PAIRS.as_dict()):
        raise AvakitError(f"{out}: holds features made with other settings; use another folder or delete it")
    sources = {
        s: resolve_split(
            cfg.data.shards,
            s,
            allow_missing=allow_missing,
            incomplete_hint="pass --allow-missing to cache the rest",
        )
        for s in splits
    }
    check_task("pairwise", common_scale(sources), str(cfg.data.shards))
    make_folder(out)
    clear_stale_tmp(out)
    torch.manual_seed(cfg.seed)  # random-init sources are the same for the same seed
    dev = pick_device(device)
    model, normalize = place_model(model_from_config(cfg, scale=PAIRS).eval(), cfg, dev)
    ctx = StepContext(
        model=model,
        normalize=normalize,
        optimizer=None,
        loss_fn=None,
        output_mode="regression",
        device=dev,
        scale=PAIRS,
        task=PAIRWISE,
        options=cfg.pairs,
        amp=resolve_amp(cfg.training.amp, dev),
    )  # type: ignore[arg-type]
    if meta is None:
        meta = start_cache(out, model, wanted, PAIRS, slices=model.backbone.slices, iqa_names=[], photos={})
    for split in splits:
        if split in meta["splits"] and (out / f"{split}.features.npy").is_file():
            continue  # finished in an earlier run
        loader = eval_loader(
            sources[split],
            cfg,
            batch_size=cfg.features.batch_size,
            pin_memory=dev.type == "cuda",
            task=PAIRWISE,
        )
        with (
            progress.task(f"features {split}", sources[split].samples)
            if progress
            else contextlib.nullcontext()
        ):
            n_series, n_photos = _extract_split(out, split, loader, ctx, progress)
        meta["preprocessing"] = meta["preprocessing"] or sources[split].preprocessing
        meta["splits"][split], meta["photos"][split] = n_series, n_photos
        meta.setdefault("counts", {})[split] = loader.counts.as_dict()
        write_json_atomic(out / "meta.json", meta)
    photos = sum(meta["photos"].get(s, 0) for s in splits)
    return {**meta, "cache": str(out), "images_per_s": photos / (time.perf_counter() - started)}


def _extract_split(out: Path, split: str, loader, ctx: StepContext, progress) -> tuple[int, int]:
    """One split's features, photos and pairs, written atomically (the .npy last); (series, photos)."""
    feats, photos, pairs, members, mos, groups, n = [], [], [], [], [], [], 0
    with torch.no_grad():
        for batch in loader:
            p = PAIRWISE.prepare(batch, ctx)
            if not p.n:
                continue
            with autocast(ctx.device, ctx.amp):
                feats.append(ctx.model.features(p.x).float().cpu().numpy().astype(np.float16))
            lab, n = p.labels, n + p.n
            pair_rows, photo_rows = batch_rows(lab)
            photos.append(photo_rows.numpy())
            pairs.append(pair_rows.numpy())
            mos.append(lab["photo_mos"].cpu().numpy())
            groups += lab["photo_group"]
            members += lab["members"]
            if progress is not None:
                progress.advance(p.n)
    ph = np.concatenate(photos) if photos else np.zeros((0, 4), np.int64)
    pr = np.concatenate(pairs) if pairs else np.zeros((0, 6))
    photo_df = pd.DataFrame(
        {
            "series": ph[:, 0],
            "index": ph[:, 1],
            "rank": ph[:, 2],
            "member": members,
            "grade": ph[:, 3],
            "mos": np.concatenate(mos) if mos else np.zeros(0, np.float32),
            "group": groups,
        }
    )  # grade 1 good, 0 bad, -1 none; mos normalised to 0..1 (NaN unknown); group: the folder
    pair_df = pd.DataFrame(
        {
            "series": pr[:, 0].astype(np.int64),
            "i": pr[:, 1].astype(np.int64),
            "j": pr[:, 2].astype(np.int64),
            "p": pr[:, 3],
            "rank_i": pr[:, 4].astype(np.int64),
            "rank_j": pr[:, 5].astype(np.int64),
        }
    )
    write_parquet_atomic(out / f"{split}.photos.parquet", photo_df)
    write_parquet_atomic(out / f"{split}.pairs.parquet", pair_df)
    width = ctx.model.spec.feature_dim
    with atomic_write(out / f"{split}.features.npy") as f:
        np.save(f, np.concatenate(feats) if feats else np.zeros((0, width), np.float16))
    return n, len(ph)
