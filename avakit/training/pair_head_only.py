"""Head-only training of the pairwise task from its feature cache (`training.pair_cache`).

`trainer.build_trainer` plugs this in for `task: pairwise` with `data.features`: the cached
splits load into memory, the sources' weights into the model, its standardiser is fitted on the
cached train split, and `pair_feature_loader` yields batches shaped like the pairwise shard
loader's (features in place of photos), so fit, evaluation and the run folder are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from avakit.config import Config
from avakit.errors import AvakitError
from avakit.scores import PAIRS, SPLITS
from avakit.training.head_only import CachedSplit, _load_backbone, _read_cache_file
from avakit.training.loader import CountingLoader, keep_sample
from avakit.training.pair_cache import REDO, check_pair_cache


@dataclass(frozen=True, kw_only=True)
class PairFeatureSource(CachedSplit):
    """One split of a pairwise feature cache in memory: a `training.loader.DataSource` of series."""

    split: str
    features: np.ndarray  # float16 [N photos, D], each series' photos in consecutive rows
    photos: pd.DataFrame  # series, index, rank, member
    pairs: pd.DataFrame  # series, i, j, p, rank_i, rank_j (sorted by series)
    series: np.ndarray  # int64 [S] series ids, in row order
    photo_start: np.ndarray  # int64 [S + 1]: series k's photos are rows photo_start[k]:photo_start[k+1]
    pair_start: np.ndarray  # int64 [S + 1]: the same for its pairs
    manifest_sha256: str | None
    preprocessing: dict | None
    scale = PAIRS

    @property
    def samples(self) -> int:
        """The number of cached series."""
        return len(self.series)


def load_pair_split(cache: Path, split: str, meta: dict) -> PairFeatureSource:
    """One cached split in memory, checked against meta.json and itself: one line naming the file."""
    cache = Path(cache)
    if split not in meta["splits"]:
        raise AvakitError(f"{cache}: no cached features for split {split!r} (run `avakit features`)")
    paths = {k: cache / f"{split}.{k}" for k in ("features.npy", "photos.parquet", "pairs.parquet")}
    feats = _read_cache_file(
        paths["features.npy"], lambda: np.load(paths["features.npy"], allow_pickle=False), REDO
    )
    photos = _read_cache_file(
        paths["photos.parquet"],
        lambda: pd.read_parquet(
            paths["photos.parquet"], columns=["series", "index", "rank", "member", "grade", "mos", "group"]
        ),
        REDO,
    )
    pairs = _read_cache_file(
        paths["pairs.parquet"],
        lambda: pd.read_parquet(
            paths["pairs.parquet"], columns=["series", "i", "j", "p", "rank_i", "rank_j"]
        ),
        REDO,
    )
    n_photos = meta.get("photos", {}).get(split)
    if feats.dtype != np.float16 or feats.shape != (n_photos, meta["feature_dim"]) or len(photos) != n_photos:
        raise AvakitError(
            f"{paths['features.npy']}: {feats.dtype} {list(feats.shape)} for {len(photos)} photos, "
            f"meta.json promises float16 [{n_photos}, {meta['feature_dim']}]; {REDO}"
        )
    series, starts = _series_rows(photos, paths["photos.parquet"])
    if len(series) != meta["splits"][split] or not np.isfinite(feats).all():
        raise AvakitError(
            f"{cache}: {split}: {len(series)} series or non-finite features, "
            f"meta.json promises {meta['splits'][split]}; {REDO}"
        )
    pairs = pairs.sort_values("series", kind="stable").reset_index(drop=True)
    pair_start = np.searchsorted(pairs["series"].to_numpy(), series, side="left")
    pair_start = np.append(pair_start, len(pairs))
    sizes = np.repeat(np.diff(starts), np.diff(pair_start))
    ok = (
        np.isin(pairs["series"], series).all()
        and pairs["p"].between(0.0, 1.0).all()
        and ((pairs[["i", "j"]].to_numpy() >= 0).all() and (pairs[["i", "j"]].max(axis=1) < sizes).all())
        and (pairs["i"] != pairs["j"]).all()
    )
    if not ok:
        raise AvakitError(f"{paths['pairs.parquet']}: pairs outside their series or p outside 0..1; {REDO}")
    return PairFeatureSource(
        split=split,
        features=feats,
        photos=photos,
        pairs=pairs,
        series=series,
        photo_start=starts,
        pair_start=pair_start,
        manifest_sha256=meta["fingerprint"].get("manifest_sha256"),
        preprocessing=meta.get("preprocessing"),
    )


def _series_rows(photos: pd.DataFrame, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(series ids, row starts + end): each series' photos consecutive, indexed 0..M-1 in order."""
    s, idx = photos["series"].to_numpy(), photos["index"].to_numpy()
    first = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if len(s) else np.zeros(0, np.int64)
    starts = np.append(first, len(s)).astype(np.int64)
    expected = np.concatenate([np.arange(n) for n in np.diff(starts)]) if len(s) else idx
    if len(np.unique(s[first])) != len(first) or not np.array_equal(idx, expected):
        raise AvakitError(f"{path}: a series' photos are not consecutive rows indexed 0..M-1; {REDO}")
    return s[first].astype(np.int64), starts


class PairHeadOnly(torch.nn.Module):
    """The scorer head on cached raw source features: standardised by the model's own standardiser,
    then scored (or paired). `module` is the full model, so checkpoints and telemetry see it whole."""

    def __init__(self, core: torch.nn.Module) -> None:
        super().__init__()
        self.module = core
        self.pair_head = core.pair_head

    def head_input(self, feats: torch.Tensor) -> torch.Tensor:
        """Cached raw features -> what the head reads."""
        return self.module.feature_norm(feats)

    def forward_head(self, emb: torch.Tensor) -> torch.Tensor:
        """Scores [N] of standardised features."""
        return self.module.forward_head(emb)

    def pair_logits(self, emb: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """Pair logits [P] of standardised features."""
        return self.module.pair_logits(emb, pairs)

    def forward(
        self, feats: torch.Tensor, pairs: torch.Tensor | None = None, with_mos: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Scores, or with `pairs` the pair logits (and each photo's MOS with `with_mos`), of
        cached features."""
        emb = self.head_input(feats)
        if pairs is None:
            return self.forward_head(emb)
        logits = self.pair_logits(emb, pairs)
        return (logits, self.module.head.mos_score(emb)) if with_mos else logits

    def train(self, mode: bool = True) -> PairHeadOnly:
        """Train/eval mode on the full model (its frozen sources stay in eval) and this wrapper."""
        self.module.train(mode)
        self.training = mode
        return self


def pair_head_only_setup(cfg: Config, core: torch.nn.Module) -> tuple[dict, PairHeadOnly]:
    """Load the cache `cfg.data.features` (refusing a stale one) for head training: the cached
    sources' weights go into `core` and its standardiser is fitted on the cached train split."""
    if getattr(core, "feature_norm", None) is None:
        raise AvakitError(
            "data.features: a pairwise cache holds frozen sources' features; set features.sources"
        )
    cache = Path(cfg.data.features)
    meta = check_pair_cache(cache, cfg)
    if "train" not in meta["splits"] or "val" not in meta["splits"]:
        raise AvakitError(f"{cache}: head-only training needs cached train and val features")
    sources = {s: load_pair_split(cache, s, meta) for s in SPLITS if s in meta["splits"]}
    _load_backbone(core, cache / "backbone.pt")
    core.feature_norm.fit(
        torch.from_numpy(sources["train"].features.astype(np.float32)), core.backbone.slices
    )
    return sources, PairHeadOnly(core)


def pair_feature_loader(
    source: PairFeatureSource, *, batch_size: int, train: bool, seed: int, epoch: int, fraction: float = 1.0
) -> CountingLoader:
    """Batches shaped as the pairwise shard loader's (features in place of photos), `batch_size`
    series each; shuffled per epoch in training; `fraction` keeps whole series (by key)."""
    return CountingLoader(
        _batches(source, batch_size, train, seed, epoch, fraction),
        source,
        source.samples if fraction >= 1.0 else None,
    )


def _batches(source: PairFeatureSource, batch_size: int, train: bool, seed: int, epoch: int, fraction: float):
    order = np.arange(source.samples)
    if fraction < 1.0:  # the shard key of a PhotoTriage series is its zero-padded id
        order = np.array(
            [k for k in order if keep_sample(f"{source.series[k]:06d}", fraction)], dtype=np.int64
        )
    if train:
        order = np.random.default_rng(seed * 10_007 + epoch).permutation(order)
    ph, pr = source.photos, source.pairs
    for start in range(0, len(order), batch_size):
        ks = order[start : start + batch_size]
        rows = np.concatenate([np.arange(source.photo_start[k], source.photo_start[k + 1]) for k in ks])
        prow = np.concatenate([np.arange(source.pair_start[k], source.pair_start[k + 1]) for k in ks])
        offsets = np.repeat(
            np.cumsum(np.r_[0, np.diff(source.photo_start)[ks]])[:-1], np.diff(source.pair_start)[ks]
        )
        local = torch.from_numpy(pr[["i", "j"]].to_numpy()[prow].astype(np.int64))
        labels = {
            "idx": local + torch.from_numpy(offsets.astype(np.int64))[:, None],
            "local": local,
            "meta": torch.from_numpy(pr[["p", "rank_i", "rank_j"]].to_numpy()[prow].astype(np.float32)),
            "pair_series": torch.from_numpy(pr["series"].to_numpy()[prow].astype(np.int64)),
            "photo_series": torch.from_numpy(ph["series"].to_numpy()[rows].astype(np.int64)),
            "photo_index": torch.from_numpy(ph["index"].to_numpy()[rows].astype(np.int64)),
            "photo_rank": torch.from_numpy(ph["rank"].to_numpy()[rows].astype(np.int64)),
            "photo_grade": torch.from_numpy(ph["grade"].to_numpy()[rows].astype(np.int64)),
            "photo_mos": torch.from_numpy(ph["mos"].to_numpy()[rows].astype(np.float32)),
            "photo_mos_raw": torch.full((len(rows),), float("nan")),  # not cached (the 0..1 one is)
            "photo_group": ph["group"].to_numpy()[rows].tolist(),
            "members": ph["member"].to_numpy()[rows].tolist(),
        }
        feats = torch.from_numpy(source.features[rows].astype(np.float32))
        yield feats, labels, torch.from_numpy(source.series[ks]), torch.ones(len(ks), dtype=torch.bool)
