"""Head-only training: a feature cache (`avakit features`) in memory, fed to the model's head.

`trainer.build_trainer` plugs this in when `data.features` is set: `head_only_setup` loads the
cache (refusing a stale one) and wraps the model in `HeadOnly`; `feature_loader` yields batches
shaped like the shard loader's, so the trainer, run folder and telemetry are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from avakit.config import Config
from avakit.errors import AvakitError
from avakit.model.iqa import IQA_NAMES
from avakit.scores import AVA, SPLITS, Scale
from avakit.training.checkpoint import check_state, read_torch_file
from avakit.training.features import cache_scale, check_cache, label_columns
from avakit.training.loader import CountingLoader, keep_sample


class CachedSplit:
    """What every cached split is as a `training.loader.DataSource`: in memory, no shards or URLs.

    Subclasses define `samples`."""

    samples: int

    @property
    def has_data(self) -> bool:
        """True when the split holds any cached sample."""
        return bool(self.samples)

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


@dataclass(frozen=True, kw_only=True)
class FeatureSource(CachedSplit):
    """One split of a feature cache, loaded in memory: a `training.loader.DataSource`."""

    split: str
    ids: np.ndarray  # int64 [N]
    features: np.ndarray  # float16 [N, D]
    votes: np.ndarray  # float32 [N, K] vote counts, or [N, 1] MOS
    iqa: np.ndarray  # float32 [N, 5]
    manifest_sha256: str | None
    preprocessing: dict | None
    scale: Scale = AVA  # what the labels mean (meta.json `labels`; AVA for older caches)

    @property
    def samples(self) -> int:
        """The number of cached samples."""
        return len(self.ids)


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
    scale = cache_scale(meta, str(cache / "meta.json"))
    columns = ["image_id", *label_columns(scale), *IQA_NAMES]
    index = _read_cache_file(index_path, lambda: pd.read_parquet(index_path, columns=columns), redo)
    feats = _read_cache_file(feats_path, lambda: np.load(feats_path, allow_pickle=False), redo)
    n, width = meta["splits"][split], feature_dim or meta["feature_dim"]
    if len(index) != n:
        raise AvakitError(f"{index_path}: {len(index)} rows, meta.json promises {n}; {redo}")
    if feats.dtype != np.float16 or feats.shape != (n, width):
        raise AvakitError(
            f"{feats_path}: {feats.dtype} {list(feats.shape)}, expected float16 [{n}, {width}]; {redo}"
        )
    votes = index[label_columns(scale)].to_numpy(np.float32)
    iqa = index[list(IQA_NAMES)].to_numpy(np.float32)
    if scale.kind == "votes":
        labels_ok = (votes >= 0).all() and (votes.sum(axis=1) > 0).all()
    else:
        labels_ok = ((votes >= scale.lo) & (votes <= scale.hi)).all()
    if not (np.isfinite(feats).all() and np.isfinite(iqa).all() and np.isfinite(votes).all() and labels_ok):
        raise AvakitError(
            f"{cache}: {split} features, IQA values or labels are not finite "
            f"(votes: non-negative counts; mos: within {scale.text}); {redo}"
        )
    return FeatureSource(
        split=split,
        ids=index["image_id"].to_numpy(np.int64),
        features=feats,
        votes=votes,
        iqa=iqa,
        manifest_sha256=meta["fingerprint"].get("manifest_sha256"),
        preprocessing=meta.get("preprocessing"),
        scale=scale,
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


def feature_scale(cfg: Config) -> Scale:
    """What the labels of the cache `cfg.data.features` mean (checked fresh for `cfg` first)."""
    cache = Path(cfg.data.features)
    return cache_scale(check_cache(cache, cfg), str(cache / "meta.json"))


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
