"""`avakit features`: run the frozen backbone once over the shards and cache what it sees.

Cache folder layout (one set of files per split, written atomically, so extraction resumes per
split):
  meta.json              fingerprint (backbone, layer, weights, eval transform, shard manifest
                         sha256), feature width, the manifest's preprocessing, finished splits
  backbone.pt            the backbone weights used (so a head trained on the cache composes
                         into a full model that scores raw photos)
  {split}.features.npy   float16 [N, D] pooled CNN features
  {split}.index.parquet  image_id, votes_1..10, mean_score, and the 5 IQA features (float32)
A cache whose fingerprint differs from the config asking for it is refused as stale.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from avakit import __version__
from avakit.config import Config
from avakit.dataset.images import check_preprocessing
from avakit.errors import AvakitError
from avakit.fileio import atomic_write, clear_stale_tmp, file_sha256, write_json_atomic, write_parquet_atomic
from avakit.model.iqa import IQA_NAMES, iqa_features
from avakit.model.network import model_from_config
from avakit.scores import N_POINTS, SPLITS, mean_score, point_names
from avakit.training.checkpoint import check_state, make_folder, read_torch_file
from avakit.training.distributed import pick_device
from avakit.training.engine import autocast, place_model, resolve_amp
from avakit.training.loader import CountingLoader, eval_loader, resolve_split
from avakit.training.rundir import read_json

VOTE_COLS = point_names("votes_")


@dataclass(frozen=True, kw_only=True)
class FeatureSource:
    """One split of a feature cache, loaded in memory: a `training.loader.DataSource`."""

    split: str
    ids: np.ndarray  # int64 [N]
    features: np.ndarray  # float16 [N, D]
    votes: np.ndarray  # float32 [N, 10]
    iqa: np.ndarray  # float32 [N, 5]
    manifest_sha256: str | None
    preprocessing: dict | None

    @property
    def samples(self) -> int:
        """The number of cached samples."""
        return len(self.ids)

    @property
    def has_data(self) -> bool:
        """True when the split holds any cached sample."""
        return bool(len(self.ids))

    @property
    def entries(self) -> tuple[str, ...]:
        """No shards: a cached split loses no sample with a shard."""
        return ()

    @property
    def urls(self) -> tuple[str, ...]:
        """No URLs: resume's data definition then stores none (the cache's fingerprint says the rest)."""
        return ()

    @property
    def where(self) -> str:
        """Empty: no manifest path or data.shards key for messages to name."""
        return ""


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


def _extract_split(model, normalize, loader, device, amp: str, progress) -> tuple:
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
            np.zeros((0, N_POINTS)),
            [],
        )
    return np.concatenate(feats), np.concatenate(iqa), np.concatenate(votes), np.concatenate(ids)


def _write_split(out: Path, split: str, feats, iqa, votes, ids) -> None:
    """{split}.index.parquet, then {split}.features.npy, each atomic (the .npy marks a finished split)."""
    index = pd.DataFrame({"image_id": np.asarray(ids, np.int64)})
    for k, col in enumerate(VOTE_COLS):
        index[col] = votes[:, k].astype(np.float32) if len(votes) else np.zeros(0, np.float32)
    index["mean_score"] = mean_score(votes) if len(votes) else []
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
    make_folder(out)
    clear_stale_tmp(out)  # left by a run that was killed or stopped by a full disk
    torch.manual_seed(cfg.seed)  # a random-init backbone is the same for the same seed
    dev = pick_device(device)
    model, normalize = place_model(model_from_config(cfg).eval(), cfg, dev)
    amp = resolve_amp(cfg.training.amp, dev)
    if meta is None:
        with atomic_write(out / "backbone.pt") as f:
            torch.save(model.backbone.state_dict(), f)
        meta = {
            "format_version": 1,
            "created_by": f"avakit {__version__}",
            "fingerprint": wanted,
            "feature_dim": model.spec.feature_dim,
            "iqa_names": list(IQA_NAMES),
            "splits": {},
            "preprocessing": None,
        }
    for split in splits:
        if split in meta["splits"] and (out / f"{split}.features.npy").is_file():
            continue  # finished in an earlier run
        source = sources[split]
        meta["preprocessing"] = meta["preprocessing"] or source.preprocessing
        loader = eval_loader(source, cfg, batch_size=cfg.features.batch_size, pin_memory=dev.type == "cuda")
        with progress.task(f"features {split}", source.samples) if progress else contextlib.nullcontext():
            arrays = _extract_split(model, normalize, loader, dev, amp, progress)
        _write_split(out, split, *arrays)
        meta["splits"][split] = len(arrays[3])
        meta.setdefault("counts", {})[split] = loader.counts.as_dict()
        write_json_atomic(out / "meta.json", meta)
    images = sum(meta["splits"].get(s, 0) for s in splits)
    return {**meta, "cache": str(cache), "images_per_s": images / (time.perf_counter() - started)}


def load_feature_split(cache: Path, split: str, meta: dict, feature_dim: int | None = None) -> FeatureSource:
    """One cached split in memory (features stay float16 until batched), checked against meta.json.

    A damaged, foreign or inconsistent file (rows, width, non-finite features, votes that are not
    counts with a positive sum) is one AvakitError naming it, never a traceback or a silent loss.
    """
    cache = Path(cache)
    if split not in meta["splits"]:
        raise AvakitError(f"{cache}: no cached features for split {split!r} (run `avakit features`)")
    index_path, feats_path = cache / f"{split}.index.parquet", cache / f"{split}.features.npy"
    redo = "re-run `avakit features` into a new folder"
    columns = ["image_id", *VOTE_COLS, *IQA_NAMES]
    index = _read_cache_file(index_path, lambda: pd.read_parquet(index_path, columns=columns), redo)
    feats = _read_cache_file(feats_path, lambda: np.load(feats_path, allow_pickle=False), redo)
    n, width = meta["splits"][split], feature_dim or meta["feature_dim"]
    if len(index) != n:
        raise AvakitError(f"{index_path}: {len(index)} rows, meta.json promises {n}; {redo}")
    if feats.dtype != np.float16 or feats.shape != (n, width):
        raise AvakitError(
            f"{feats_path}: {feats.dtype} {list(feats.shape)}, expected float16 [{n}, {width}]; {redo}"
        )
    votes = index[VOTE_COLS].to_numpy(np.float32)
    iqa = index[list(IQA_NAMES)].to_numpy(np.float32)
    if not (
        np.isfinite(feats).all()
        and np.isfinite(iqa).all()
        and np.isfinite(votes).all()
        and (votes >= 0).all()
        and (votes.sum(axis=1) > 0).all()
    ):
        raise AvakitError(
            f"{cache}: {split} features, IQA values or votes are not finite, non-negative counts; {redo}"
        )
    return FeatureSource(
        split=split,
        ids=index["image_id"].to_numpy(np.int64),
        features=feats,
        votes=votes,
        iqa=iqa,
        manifest_sha256=meta["fingerprint"].get("manifest_sha256"),
        preprocessing=meta.get("preprocessing"),
    )


def _read_cache_file(path: Path, read, redo: str):
    """`read()` of a cache file; a missing, damaged or foreign file is one line naming it."""
    import pyarrow

    if not path.is_file():
        raise AvakitError(f"{path}: missing from the feature cache; {redo}")
    try:
        return read()
    except (OSError, ValueError, EOFError, KeyError, pyarrow.ArrowException) as e:
        raise AvakitError(
            f"{path}: unreadable feature cache file ({e.__class__.__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else ''}); {redo}"
        ) from None


def _load_backbone(core: torch.nn.Module, path: Path) -> None:
    """The cache's backbone.pt into `core.backbone`: names, shapes and dtypes checked first."""
    try:
        state = read_torch_file(path, "backbone state of the feature cache")
        check_state(state, core.backbone.state_dict(), str(path), key="backbone")
    except AvakitError as e:
        raise AvakitError(f"{e}; re-run `avakit features` into a new folder", exit_code=e.exit_code) from None
    core.backbone.load_state_dict(state)


class HeadOnly(torch.nn.Module):
    """Trains/evaluates an AestheticModel's head on cached head inputs (the backbone is skipped).

    `module` is the full model, so checkpoints and telemetry see the real AestheticModel.
    """

    def __init__(self, core: torch.nn.Module) -> None:
        super().__init__()
        self.module = core

    def forward(self, head_input: torch.Tensor) -> torch.Tensor:
        """The model's head outputs for a batch of cached head inputs."""
        return self.module.forward_head(head_input)

    def train(self, mode: bool = True) -> HeadOnly:
        """Set train/eval mode on the full model (a frozen backbone stays in eval) and on this wrapper."""
        self.module.train(mode)  # a frozen backbone stays in eval mode
        self.training = mode
        return self


def head_only_setup(cfg: Config, core: torch.nn.Module) -> tuple[dict[str, FeatureSource], HeadOnly]:
    """Load the cache `cfg.data.features` (refusing a stale one) into memory for head training.

    The cache's backbone weights go into `core`, and with `features.iqa` the IQA
    standardisation statistics of the train split, so `core` scores raw photos afterwards.
    """
    cache = Path(cfg.data.features)
    meta = check_cache(cache, cfg)
    if "train" not in meta["splits"] or "val" not in meta["splits"]:
        raise AvakitError(f"{cache}: head-only training needs cached train and val features")
    sources = {
        s: load_feature_split(cache, s, meta, core.spec.feature_dim) for s in SPLITS if s in meta["splits"]
    }
    _load_backbone(core, cache / "backbone.pt")
    if core.iqa is not None:
        train_iqa = torch.tensor(sources["train"].iqa)
        core.iqa.feature_mean.copy_(train_iqa.mean(dim=0))
        core.iqa.feature_std.copy_(train_iqa.std(dim=0).clamp_min(1e-6))
    return sources, HeadOnly(core)


def feature_loader(
    source: FeatureSource,
    core: torch.nn.Module,
    *,
    batch_size: int,
    train: bool,
    seed: int,
    epoch: int,
    fraction: float = 1.0,
) -> CountingLoader:
    """Batches (head input float32, votes, ids, valid) from a cached split; shuffled per epoch, counted."""
    batches = _feature_batches(source, core, batch_size, train, seed, epoch, fraction)
    return CountingLoader(batches, source, source.samples if fraction >= 1.0 else None)


def _feature_batches(
    source: FeatureSource,
    core: torch.nn.Module,
    batch_size: int,
    train: bool,
    seed: int,
    epoch: int,
    fraction: float,
):
    from avakit.training.loader import keep_sample

    order = np.arange(source.samples)
    if fraction < 1.0:
        order = np.array([i for i in order if keep_sample(str(source.ids[i]), fraction)], dtype=np.int64)
    if train:
        order = np.random.default_rng(seed * 10_007 + epoch).permutation(order)
    for start in range(0, len(order), batch_size):
        idx = np.sort(order[start : start + batch_size]) if not train else order[start : start + batch_size]
        x = torch.from_numpy(source.features[idx].astype(np.float32))
        if core.iqa is not None:
            with torch.no_grad():
                x = torch.cat([x, core.iqa.standardise(torch.from_numpy(source.iqa[idx]))], dim=1)
        yield (
            x,
            torch.from_numpy(source.votes[idx]),
            torch.from_numpy(source.ids[idx]),
            torch.ones(len(idx), dtype=torch.bool),
        )
