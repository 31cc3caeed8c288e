"""What `avakit report` reads from the shards: each image's label, gallery thumbnails, group stats.

Shards are read with the one shard reader (avakit.dataset.samples.read_shard); only the selected
images' JPEGs are kept. Thumbnails
are written through `avakit.fileio` (whole or not at all).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pandas as pd

from avakit import metrics
from avakit.dataset.manifest import shard_files
from avakit.dataset.samples import read_shard
from avakit.errors import AvakitError
from avakit.fileio import atomic_write

THUMB_DIR, THUMB_PX = "thumbs", 160


def _label(sample: dict) -> dict | None:
    """The sample's json member as a dict; None when absent or not a JSON object."""
    try:
        label = json.loads(sample["json"]) if "json" in sample else None
    except ValueError:
        return None
    return label if isinstance(label, dict) else None


def _image_id(key: str, label: dict | None) -> int | None:
    """The predictions' image id of a sample: a labels table's json "image_id" (its row in the
    table; its key is a file name), else the key of an AVA sample (ASCII digits: the image id)."""
    if label is not None and "kind" in label:
        image_id = label.get("image_id")
        return image_id if type(image_id) is int else None
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses
    return int(key) if key.isascii() and key.isdigit() else None


def read_split_samples(shards_dir: Path, split: str, wanted: set[int]) -> tuple[dict, dict, list[str]]:
    """(image id -> json label for every sample, image id -> JPEG bytes of `wanted` ids, problems)."""
    labels: dict[int, dict] = {}
    jpgs: dict[int, bytes] = {}
    try:
        paths = shard_files(shards_dir, split)
    except AvakitError as e:
        return labels, jpgs, [str(e)]
    problems = []
    for path in paths:
        try:
            for sample in read_shard(path):
                label = _label(sample)
                image_id = _image_id(Path(sample["__key__"]).name, label)
                if image_id is None:
                    continue
                if "jpg" in sample and image_id in wanted:
                    jpgs[image_id] = sample["jpg"]
                if label is not None:
                    labels[image_id] = label
        except (tarfile.TarError, EOFError, ValueError, OSError) as e:
            problems.append(f"{path.name}: unreadable: {e}")
    return labels, jpgs, problems


def write_thumbs(jpgs: dict[int, bytes], out: Path, prefix: str) -> dict[int, str]:
    """Small JPEG copies under out/thumbs/; image id -> path relative to `out`."""
    from PIL import Image

    (out / THUMB_DIR).mkdir(parents=True, exist_ok=True)
    thumbs = {}
    for image_id, data in jpgs.items():
        name = f"{THUMB_DIR}/{prefix}_{image_id}.jpg"
        try:
            with Image.open(io.BytesIO(data)) as im:
                small = im.convert("RGB")
                small.thumbnail((THUMB_PX, THUMB_PX))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        with atomic_write(out / name) as f:
            small.save(f, format="JPEG", quality=85)
        thumbs[image_id] = name
    return thumbs


def group_ids(label: dict | None, kind: str) -> set[int | str]:
    """The non-zero tag (kind 'tags') or challenge ids of one shard label, or a labels table's
    group (kind 'group': a non-empty string, none when null)."""
    ids = (label or {}).get(kind, [])
    if kind == "group":
        return {ids} if isinstance(ids, str) and ids else set()
    return {
        g
        for g in (ids if isinstance(ids, list) else [ids])
        if isinstance(g, int) and not isinstance(g, bool) and g
    }


def group_stats(
    df: pd.DataFrame, labels: dict[int, dict], kind: str, names: dict[int, str], min_group: int
) -> pd.DataFrame:
    """Per tag (kind 'tags'), challenge or group: id, name, count, mae, srcc, mean_real, mean_pred.

    Id 0 (none) is excluded, an image counts once in each of its groups, groups with fewer than
    `min_group` images are dropped; sorted by count (largest first), then id. A group (a labels
    table's) is named by itself.
    """
    table = df[["image_id", "pred_mean", "gt_mean"]].itertuples(index=False)
    rows = [
        (gid, pred, gt) for image_id, pred, gt in table for gid in group_ids(labels.get(int(image_id)), kind)
    ]
    frame = pd.DataFrame(rows, columns=["id", "pred", "gt"])
    out = [
        {
            "id": gid if isinstance(gid, str) else int(gid),
            "name": gid if isinstance(gid, str) else names.get(int(gid), f"#{gid}"),
            "count": len(g),
            "mae": metrics.mae(g["pred"], g["gt"]),
            "srcc": metrics.srcc(g["pred"], g["gt"]),
            "mean_real": float(g["gt"].mean()),
            "mean_pred": float(g["pred"].mean()),
        }
        for gid, g in frame.groupby("id")
        if len(g) >= min_group
    ]
    cols = ["id", "name", "count", "mae", "srcc", "mean_real", "mean_pred"]
    stats = pd.DataFrame(out, columns=cols)
    return stats.sort_values(["count", "id"], ascending=[False, True], kind="stable").reset_index(drop=True)
