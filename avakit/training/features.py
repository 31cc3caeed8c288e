"""`avakit features`: run the frozen backbone once over the shards and cache what it sees.

Cache folder layout (one set of files per split, written atomically, so extraction resumes per
split):
  meta.json              fingerprint (backbone, layer, weights, eval transform, shard manifest
                         sha256), feature width, the manifest's preprocessing, finished splits
  backbone.pt            the backbone weights used (so a head trained on the cache composes
                         into a full model that scores raw photos)
  {split}.features.npy   float16 [N, D] pooled CNN features
  {split}.index.parquet  image_id, the labels (votes_1..K, or mos), mean_score, and the 5 IQA
                         features (float32); meta.json's `labels` says what they mean
A cache whose fingerprint differs from the config asking for it is refused as stale.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from avakit import __version__
from avakit.config import Config
from avakit.dataset.images import check_preprocessing
from avakit.dataset.sources import common_scale, resolve_split
from avakit.errors import AvakitError
from avakit.fileio import atomic_write, clear_stale_tmp, file_sha256, write_json_atomic, write_parquet_atomic
from avakit.model.build import model_from_config
from avakit.model.iqa import IQA_NAMES, iqa_features
from avakit.scores import SPLITS, Scale, refuse_clip, stored_scale
from avakit.training.checkpoint import make_folder
from avakit.training.distributed import pick_device
from avakit.training.engine import autocast, place_model, resolve_amp
from avakit.training.loader import eval_loader
from avakit.training.rundir import read_json


def label_columns(scale: Scale) -> list[str]:
    """The index's label columns on `scale`: votes_1..votes_K, or mos."""
    return scale.point_names("votes_") if scale.kind == "votes" else ["mos"]


def cache_scale(meta: dict, where: str) -> Scale:
    """What a cache's labels mean (meta.json `labels`, validated); AVA for caches written before it."""
    return stored_scale(meta, where)


def fingerprint(cfg: Config) -> dict:
    """What decides the cached numbers: backbone, weights, layer, eval transform, shards."""
    m, t = cfg.model, cfg.transform
    weights = (
        f"file:{file_sha256(Path(m.weights_path))}"
        if m.weights_path
        else "torchvision-default"
        if m.pretrained
        else f"random-init-seed-{cfg.seed}"
    )
    manifest = Path(str(cfg.data.shards)) / "manifest.json" if isinstance(cfg.data.shards, str) else None
    return {
        "backbone": m.backbone,
        "layer": cfg.features.layer,
        "weights": weights,
        "resize_size": t.resize_size,
        "crop_size": t.crop_size,
        "normalize_mean": list(t.normalize_mean),
        "normalize_std": list(t.normalize_std),
        "manifest_sha256": file_sha256(manifest) if manifest and manifest.is_file() else None,
    }


def start_cache(out: Path, model: torch.nn.Module, fingerprint: dict, scale: Scale, **extra: object) -> dict:
    """A new feature cache: its frozen backbone written to backbone.pt, and the meta.json content
    that names it (`extra`: the cache kind's own keys; splits fill in as they are extracted)."""
    with atomic_write(out / "backbone.pt") as f:
        torch.save(model.backbone.state_dict(), f)
    meta = {
        "format_version": 1,
        "created_by": f"avakit {__version__}",
        "fingerprint": fingerprint,
        "feature_dim": model.spec.feature_dim,
    }
    return {**meta, **extra, "splits": {}, "preprocessing": None, "labels": scale.as_dict()}


def _read_meta(out: Path) -> dict | None:
    """The cache's meta.json (None when there is none yet), its structure checked: one line naming the key."""
    path = Path(out) / "meta.json"
    if not path.exists() and not path.is_symlink():
        return None
    meta = read_json(path)
    bad = _meta_problem(meta)
    if bad:
        raise AvakitError(
            f"{path}: {bad}; not a feature cache written by `avakit features` "
            "(delete the folder or use another --out)"
        )
    check_preprocessing(meta.get("preprocessing"), str(path))
    cache_scale(meta, str(path))
    return meta


def _meta_problem(meta: Any) -> str | None:
    """What makes `meta` unusable as a feature cache's meta.json, or None."""
    if not isinstance(meta, dict):
        return f"expected a JSON object, got {type(meta).__name__}"
    for key, kind in (("fingerprint", dict), ("splits", dict), ("feature_dim", int), ("iqa_names", list)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            return f"{key}: missing or not a {kind.__name__}"
    if not 0 < meta["feature_dim"] <= 1 << 16:
        return f"feature_dim: {meta['feature_dim']} is out of range"
    for split, n in meta["splits"].items():
        if split not in SPLITS or type(n) is not int or n < 0:
            return f"splits.{split}: expected a split name and a sample count >= 0, got {str(n)[:40]!r}"
    if not isinstance(meta.get("counts", {}), dict):
        return "counts: not a mapping"
    return None


def check_cache(cache: Path, cfg: Config) -> dict:
    """The cache's meta.json if it was made for `cfg`; AvakitError naming the difference if stale."""
    meta = _read_meta(Path(cache))
    if meta is None:
        raise AvakitError(f"{Path(cache) / 'meta.json'}: not found (run `avakit features` first)")
    wanted = fingerprint(cfg)
    for key, value in wanted.items():
        if key == "manifest_sha256" and value is None:
            continue  # no manifest to compare with (URL sources)
        if meta["fingerprint"].get(key) != value:
            raise AvakitError(
                f"{cache}: stale feature cache: {key} is {meta['fingerprint'].get(key)!r}, "
                f"the config needs {value!r}; re-run `avakit features` into a new folder"
            )
    return meta


def _extract_split(model, normalize, loader, device, amp: str, progress, width: int) -> tuple:
    feats, iqa, votes, ids = [], [], [], []
    with torch.no_grad():
        for images, batch_votes, batch_ids, valid in loader:
            images, batch_votes, batch_ids = images[valid], batch_votes[valid], batch_ids[valid]
            if not len(images):
                continue
            images = images.to(device)
            with autocast(device, amp):
                out = model.features(normalize(images))
            feats.append(out.float().cpu().numpy().astype(np.float16))
            iqa.append(iqa_features(images).cpu().numpy())
            votes.append(batch_votes.numpy())
            ids.append(batch_ids.numpy())
            if progress is not None:
                progress.advance(len(images))
    if not ids:
        return (
            np.zeros((0, model.spec.feature_dim), np.float16),
            np.zeros((0, 5)),
            np.zeros((0, width)),
            [],
        )
    return np.concatenate(feats), np.concatenate(iqa), np.concatenate(votes), np.concatenate(ids)


def _write_split(out: Path, split: str, scale: Scale, feats, iqa, votes, ids) -> None:
    """{split}.index.parquet, then {split}.features.npy, each atomic (the .npy marks a finished split)."""
    index = pd.DataFrame({"image_id": np.asarray(ids, np.int64)})
    for k, col in enumerate(label_columns(scale)):
        index[col] = votes[:, k].astype(np.float32) if len(votes) else np.zeros(0, np.float32)
    index["mean_score"] = scale.label_means(votes) if len(votes) else []
    for k, name in enumerate(IQA_NAMES):
        index[name] = iqa[:, k].astype(np.float32) if len(iqa) else np.zeros(0, np.float32)
    write_parquet_atomic(out / f"{split}.index.parquet", index)
    with atomic_write(out / f"{split}.features.npy") as f:
        np.save(f, feats)


def extract_features(
    cfg: Config,
    splits: tuple[str, ...] = SPLITS,
    out: Path | None = None,
    device: str = "auto",
    progress=None,
    allow_missing: bool = False,
) -> dict:
    """Write the feature cache for `splits` into `out`; returns meta.json's contents plus `cache`
    (the folder) and `images_per_s` (images of `splits` in the cache per second of this call).

    An incomplete split (shard files missing or of the wrong size) is an error (exit 1) unless
    `allow_missing`; meta.json's `counts` then say per split how many samples were cached and
    how many were lost, and why (corrupt samples are counted the same way).
    """
    refuse_clip(cfg.task, "features", "config")
    if not splits or any(s not in SPLITS for s in splits):
        raise AvakitError(f"splits must list train, val and/or test, got {','.join(splits)!r}")
    started = time.perf_counter()
    cache = out or cfg.data.features or "features"
    out = Path(cache)
    wanted = fingerprint(cfg)
    meta = _read_meta(out)
    if meta is not None and meta["fingerprint"] != wanted:
        raise AvakitError(f"{out}: holds features made with other settings; use another folder or delete it")
    sources = {
        split: resolve_split(
            cfg.data.shards,
            split,
            allow_missing=allow_missing,
            incomplete_hint="pass --allow-missing to cache the rest",
        )
        for split in splits
    }  # bad paths fail first
    scale = common_scale(sources)
    if meta is not None and cache_scale(meta, str(out)) != scale:
        raise AvakitError(f"{out}: holds features of other labels; use another folder or delete it")
    make_folder(out)
    clear_stale_tmp(out)  # left by a run that was killed or stopped by a full disk
    torch.manual_seed(cfg.seed)  # a random-init backbone is the same for the same seed
    dev = pick_device(device)
    model, normalize = place_model(model_from_config(cfg, scale=scale).eval(), cfg, dev)
    amp = resolve_amp(cfg.training.amp, dev)
    if meta is None:
        meta = start_cache(out, model, wanted, scale, iqa_names=list(IQA_NAMES))
    for split in splits:
        if split in meta["splits"] and (out / f"{split}.features.npy").is_file():
            continue  # finished in an earlier run
        source = sources[split]
        meta["preprocessing"] = meta["preprocessing"] or source.preprocessing
        loader = eval_loader(source, cfg, batch_size=cfg.features.batch_size, pin_memory=dev.type == "cuda")
        with progress.task(f"features {split}", source.samples) if progress else contextlib.nullcontext():
            arrays = _extract_split(model, normalize, loader, dev, amp, progress, scale.width)
        _write_split(out, split, scale, *arrays)
        meta["splits"][split] = len(arrays[3])
        meta.setdefault("counts", {})[split] = loader.counts.as_dict()
        write_json_atomic(out / "meta.json", meta)
    images = sum(meta["splits"].get(s, 0) for s in splits)
    return {**meta, "cache": str(cache), "images_per_s": images / (time.perf_counter() - started)}
