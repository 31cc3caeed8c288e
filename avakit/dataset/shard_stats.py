"""A finished shard folder's label statistics, per split (manifest.json's `label_stats`).

Votes and MOS rows: the mean score's mean, spread and range (and votes per image); PhotoTriage
series: pairs, photos, decided pairs and the human ceiling; folder chunks: those plus folders,
good, bad and MOS counts (`avakit.dataset.folders_plan.folder_stats`).
"""

from __future__ import annotations

import numpy as np

from avakit.dataset.plan import Row
from avakit.scores import AVA, Scale


def label_stats(values: np.ndarray, scale: Scale = AVA) -> dict:
    """Statistics of a split's labels [N, K votes or 1 MOS]: mean score mean/std/min/max, share
    good (with a threshold), votes per image (votes)."""
    if len(values) == 0:
        return {"n": 0}
    values = np.asarray(values, dtype=np.float64)
    means = scale.label_means(values)
    stats = {
        "n": int(len(values)),
        "mean_score_mean": round(float(means.mean()), 4),
        "mean_score_std": round(float(means.std()), 4),
        "mean_score_min": round(float(means.min()), 4),
        "mean_score_max": round(float(means.max()), 4),
    }
    if scale.threshold is not None:
        stats[f"share_above_{scale.threshold:g}"] = round(float(scale.good(means, scale.threshold).mean()), 4)
    if scale.kind == "votes":
        counts = values.sum(axis=1)
        stats.update(
            votes_per_image_mean=round(float(counts.mean()), 2),
            votes_per_image_min=int(counts.min()),
            votes_per_image_max=int(counts.max()),
        )
    return stats


def pair_stats(rows: list) -> dict:
    """Statistics of a split's photo series (group rows): series, pairs, photos, decided pairs
    (p != 0.5) and the human ceiling, the mean over decided pairs of max(p, 1 - p): how often a
    random rater agrees with the majority (None without a decided pair)."""
    if not rows:
        return {"n": 0}
    ps = np.array([p[2] for r in rows for p in r.series.pairs], dtype=np.float64)
    decided = ps[ps != 0.5]
    ceiling = round(float(np.maximum(decided, 1.0 - decided).mean()), 4) if len(decided) else None
    return {
        "n": len(rows),
        "pairs": int(len(ps)),
        "photos": sum(r.series.n for r in rows),
        "decided_pairs": int(len(decided)),
        "human_ceiling": ceiling,
    }


def split_stats(rows: list[Row], scale: Scale) -> dict:
    """A split's `label_stats`: `folder_stats` of folder chunks, `pair_stats` of series, else
    `label_stats` of the rows' values."""
    if scale.kind == "pairs":
        from avakit.dataset.folders_plan import FolderChunk, folder_stats

        if rows and isinstance(rows[0], FolderChunk):
            return folder_stats(rows)  # type: ignore[arg-type]
        return pair_stats(rows)
    values = np.array([r.values for r in rows], dtype=np.float64).reshape(-1, scale.width)
    return label_stats(values, scale)


def as_written(rows_by_id: dict[int, Row], ids: list[int], skipped: list[dict]) -> list[Row]:
    """The written rows; a folder chunk less the photos skipped from it (the writer dropped them)."""
    dropped: dict[int, set[int]] = {}
    for s in skipped:
        dropped.setdefault(s["image_id"], set()).add(s["line"])
    return [rows_by_id[i].without(dropped[i]) if i in dropped else rows_by_id[i] for i in ids]  # type: ignore[attr-defined]
