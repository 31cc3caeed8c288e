"""manifest.json: building it from finished shards, reading it, and checking shards against it.

The manifest is the shard folder's table of contents: format version, source checksums,
preprocessing settings, split method and seed, per split the shard names, sample counts,
bytes and sha256, label statistics, and every skipped row with its reason. Its counts
reconcile: rows read = samples written + rows skipped.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from avakit import __version__
from avakit.errors import AvakitError
from avakit.fileio import file_sha256, write_json_atomic  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from avakit.shards import ShardPlan

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def label_stats(votes: np.ndarray) -> dict:
    """Statistics of a split's labels: mean score mean/std, votes per image, share above 5."""
    if len(votes) == 0:
        return {"n": 0}
    votes = np.asarray(votes, dtype=np.float64)
    counts = votes.sum(axis=1)
    means = (votes * np.arange(1, 11)).sum(axis=1) / counts
    return {
        "n": int(len(votes)),
        "mean_score_mean": round(float(means.mean()), 4),
        "mean_score_std": round(float(means.std()), 4),
        "mean_score_min": round(float(means.min()), 4),
        "mean_score_max": round(float(means.max()), 4),
        "share_above_5": round(float((means > 5).mean()), 4),
        "votes_per_image_mean": round(float(counts.mean()), 2),
        "votes_per_image_min": int(counts.min()),
        "votes_per_image_max": int(counts.max()),
    }


def build_manifest(plan: ShardPlan, records: list[dict]) -> dict:
    """The manifest of a finished run: plan (inputs, options) + per-shard records."""
    votes_by_id = {r.image_id: r.votes for r in plan.rows}
    skipped = [asdict(s) for s in plan.parse_skipped]
    splits: dict[str, dict] = {}
    for split in ("train", "val", "test"):
        mine = [r for r in records if r["split"] == split]
        ids = [i for r in mine for i in r["image_ids"]]
        splits[split] = {
            "samples": len(ids),
            "bytes": sum(r["bytes"] for r in mine),
            "shards": [{k: r[k] for k in ("name", "samples", "bytes", "sha256")} for r in mine],
            "label_stats": label_stats(np.array([votes_by_id[i] for i in ids]).reshape(-1, 10)),
        }
        skipped += [s for r in mine for s in r["skipped"]]
    skipped.sort(key=lambda s: s["line"])
    written = sum(s["samples"] for s in splits.values())
    opts = asdict(plan.options)
    return {
        "format_version": FORMAT_VERSION,
        "created_by": f"avakit {__version__}",
        "sources": plan.sources,
        "preprocessing": {
            "short_side": opts.pop("short_side"), "quality": opts.pop("quality"),
            "format": "jpg", "exif_orientation": "applied", "resample": "jpeg-dct-scaling+bilinear",
        },
        "shard_size": opts.pop("shard_size"),
        "split": {"method": opts.pop("split"), **opts},
        "counts": {"rows_read": plan.rows_read, "samples_written": written,
                   "rows_skipped": len(skipped)},
        "splits": splits,
        "skipped_by_reason": dict(sorted(Counter(s["reason"] for s in skipped).items())),
        "skipped": skipped,
    }


def load_manifest(shards_dir: Path) -> dict:
    """Read `shards_dir/manifest.json`, raising AvakitError with the path on any problem."""
    path = Path(shards_dir) / MANIFEST
    if not path.is_file():
        raise AvakitError(f"{path}: not found (is {shards_dir} a folder made by `avakit shard`?)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AvakitError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise AvakitError(f"{path}: unsupported format_version {manifest.get('format_version')!r}")
    return manifest


def _check_label(key: str, label: Any) -> str | None:
    """None if a sample's json member is valid, else what is wrong with it."""
    if not isinstance(label, dict):
        return "json member is not an object"
    votes = label.get("votes")
    if not (isinstance(votes, list) and len(votes) == 10
            and all(isinstance(v, int) and v >= 0 for v in votes) and sum(votes) > 0):
        return "votes must be 10 non-negative integers with a positive sum"
    if str(label.get("image_id")) != key:
        return f"image_id {label.get('image_id')!r} differs from the key"
    tags = label.get("tags")
    if not (isinstance(tags, list) and len(tags) == 2 and all(isinstance(t, int) for t in tags)):
        return "tags must be 2 integers"
    if not isinstance(label.get("challenge"), int):
        return "challenge must be an integer"
    return None


def _read_shard(path: Path, decode: bool) -> tuple[int, list[str]]:
    """(number of samples, problems) of one tar; with `decode`, every image and label checked."""
    from PIL import Image

    problems: list[str] = []
    members: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                data = tar.extractfile(info).read() if decode and info.isfile() else b""
                members.setdefault(key, {})[ext] = data
    except (tarfile.TarError, OSError) as e:
        return 0, [f"{path.name}: unreadable tar: {e}"]
    for key, sample in members.items():
        if set(sample) != {"jpg", "json"}:
            problems.append(f"{path.name}: sample {key} has members {sorted(sample)}")
            continue
        if not decode:
            continue
        try:
            with Image.open(io.BytesIO(sample["jpg"])) as im:
                im.load()
        except Exception as e:  # noqa: BLE001 - any decoder failure is a finding
            problems.append(f"{path.name}: sample {key}: image does not decode: {e}")
        try:
            bad = _check_label(key, json.loads(sample["json"]))
        except json.JSONDecodeError:
            bad = "json member is not valid JSON"
        if bad:
            problems.append(f"{path.name}: sample {key}: {bad}")
    return len(members), problems


def verify_shards(
    shards_dir: Path, decode: bool = False, progress: Callable[[int], None] | None = None
) -> tuple[dict, list[str]]:
    """Check every shard listed in the manifest: exists, bytes, sha256, sample count.

    With `decode`, every image is decoded and every label validated. Returns the manifest and
    the list of problems found (empty when all is well); `progress` is called once per shard.
    """
    shards_dir = Path(shards_dir)
    manifest = load_manifest(shards_dir)
    problems: list[str] = []
    listed = set()
    for split, info in manifest["splits"].items():
        if info["samples"] != sum(s["samples"] for s in info["shards"]):
            problems.append(f"{split}: sample count {info['samples']} differs from its shards' sum")
        for shard in info["shards"]:
            listed.add(shard["name"])
            problems += _check_shard(shards_dir / shard["name"], shard, decode)
            if progress is not None:
                progress(1)
    counts = manifest["counts"]
    if counts["rows_read"] != counts["samples_written"] + counts["rows_skipped"]:
        problems.append("counts: rows_read != samples_written + rows_skipped")
    for stray in sorted(p.name for p in shards_dir.glob("*.tar") if p.name not in listed):
        problems.append(f"{stray}: tar file not listed in the manifest")
    return manifest, problems


def _check_shard(path: Path, shard: dict, decode: bool) -> list[str]:
    if not path.is_file():
        return [f"{path.name}: missing"]
    if path.stat().st_size != shard["bytes"]:
        return [f"{path.name}: {path.stat().st_size} bytes, manifest says {shard['bytes']}"]
    if file_sha256(path) != shard["sha256"]:
        return [f"{path.name}: sha256 differs from the manifest"]
    n, problems = _read_shard(path, decode)
    if n != shard["samples"]:
        problems.append(f"{path.name}: {n} samples, manifest says {shard['samples']}")
    return problems


def shard_files(shards_dir: Path, split: str) -> list[Path]:
    """The shard paths of one split, in manifest order."""
    manifest = load_manifest(shards_dir)
    if split not in manifest["splits"]:
        raise AvakitError(f"{shards_dir}: manifest has no split {split!r}")
    return [Path(shards_dir) / s["name"] for s in manifest["splits"][split]["shards"]]
