"""manifest.json: reading it whole and valid, and checking shards against it (`avakit inspect`).

The manifest is the shard folder's table of contents: format version, source checksums,
preprocessing settings, split method and seed, per split the shard names, sample counts,
bytes and sha256, label statistics, and every skipped row with its reason. Its counts
reconcile: rows read = samples written + rows skipped. `dataset.shards.build_manifest` writes it.
"""

from __future__ import annotations

import re
import tarfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avakit.dataset.samples import MAX_MEMBERS, Reason, decode_image, member_name, parse_label, read_shard
from avakit.errors import AvakitError
from avakit.fileio import file_sha256, load_json
from avakit.scores import AVA, SPLITS, Scale, stored_scale

FORMAT_VERSION = 2  # 2: the `labels` block (a Scale); 1 (no `labels`): AVA's 1..10 votes
READABLE_VERSIONS = (1, 2)  # shards written by the previous version still train and evaluate
MANIFEST = "manifest.json"
GROUP_KINDS = ("pairs", "clips")  # label kinds whose samples hold members 000.jpg, 001.jpg, ...


def manifest_scale(manifest: dict) -> Scale:
    """What the labels of a loaded (validated) manifest mean; AVA's scale for a version-1 manifest."""
    return stored_scale(manifest, MANIFEST)


def load_manifest(shards_dir: Path) -> dict:
    """Read and validate `shards_dir/manifest.json`; one AvakitError line naming the key on any problem.

    Every reader (the loader, inspect, evaluate, features, report) gets a structurally checked
    dict: types and ranges of every key they use, shard names that are bare `.tar` file names in
    this folder, sha256 digests, and split sample counts equal to the sum of their shards'.
    """
    path = Path(shards_dir) / MANIFEST
    if not path.is_file():
        raise AvakitError(f"{path}: not found (is {shards_dir} a folder made by `avakit shard`?)")
    manifest = load_json(path)
    _check_structure(manifest, path)
    return manifest


SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.tar")  # a bare file name: no `/`, `\`, `:`
SHA256 = re.compile(r"[0-9a-f]{64}")


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


class _Checker:
    """Type and range checks of one JSON document, each failure one line naming the file and key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> AvakitError:
        return AvakitError(f"{self.path}: {key}: {problem}")

    def get(self, obj: dict, key: str, name: str) -> Any:
        if name not in obj:
            raise self.fail(f"{key}.{name}" if key else name, "missing")
        return obj[name]

    def typed(self, value: Any, kind: type | tuple[type, ...], what: str, key: str) -> Any:
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise self.fail(key, f"expected {what}, got {_show(value)}")
        return value

    def count(self, obj: dict, key: str, name: str) -> int:
        value = self.typed(self.get(obj, key, name), int, "a non-negative integer", f"{key}.{name}")
        if value < 0:
            raise self.fail(f"{key}.{name}", f"expected a non-negative integer, got {value}")
        return value

    def mapping(self, obj: dict, key: str, name: str) -> dict:
        return self.typed(self.get(obj, key, name), dict, "a mapping", f"{key}.{name}" if key else name)


def _check_structure(manifest: Any, path: Path) -> None:
    """Raise AvakitError naming the first key of `manifest` that a reader could not use."""
    from avakit.dataset.images import check_preprocessing

    c = _Checker(path)
    if not isinstance(manifest, dict):
        raise AvakitError(f"{path}: expected a JSON object, got {_show(manifest)}")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS or type(version) is not int:
        raise c.fail("format_version", f"unsupported {version!r} (expected one of {READABLE_VERSIONS})")
    if version >= 2 and manifest.get("labels") is None:
        raise c.fail("labels", "missing (format 2 records what the labels mean)")
    stored_scale(manifest, str(path))
    counts = c.mapping(manifest, "", "counts")
    for name in ("rows_read", "samples_written", "rows_skipped"):
        c.count(counts, "counts", name)
    if "photos_written" in counts:  # folders: the rows are photos
        c.count(counts, "counts", "photos_written")
    check_preprocessing(manifest.get("preprocessing"), f"{path}")
    for reason in c.mapping(manifest, "", "skipped_by_reason"):
        c.count(manifest["skipped_by_reason"], "skipped_by_reason", reason)
    for i, entry in enumerate(c.typed(manifest.get("skipped", []), list, "a list", "skipped")):
        c.typed(entry, dict, "a mapping", f"skipped[{i}]")
        c.count(entry, f"skipped[{i}]", "line")
        c.typed(c.get(entry, f"skipped[{i}]", "reason"), str, "a string", f"skipped[{i}].reason")
    names: set[str] = set()
    for split, info in c.mapping(manifest, "", "splits").items():
        if split not in SPLITS:
            raise c.fail(f"splits.{split}", "unknown split (expected train, val or test)")
        info = c.typed(info, dict, "a mapping", f"splits.{split}")
        _check_split(c, info, f"splits.{split}", names, manifest_scale(manifest).kind)


def _check_split(c: _Checker, info: dict, key: str, names: set[str], kind: str) -> None:
    """One split: counts, its shard entries (bare unique names, sha256) and label statistics."""
    samples = c.count(info, key, "samples")
    c.count(info, key, "bytes")
    shards = c.typed(c.get(info, key, "shards"), list, "a list", f"{key}.shards")
    for i, shard in enumerate(shards):
        where = f"{key}.shards[{i}]"
        c.typed(shard, dict, "a mapping", where)
        name = c.typed(c.get(shard, where, "name"), str, "a string", f"{where}.name")
        if not SHARD_NAME.fullmatch(name) or ".." in name:
            raise c.fail(f"{where}.name", f"{name[:80]!r} is not a bare .tar file name in this folder")
        if name in names:
            raise c.fail(f"{where}.name", f"{name!r} is listed twice")
        names.add(name)
        c.count(shard, where, "samples")
        c.count(shard, where, "bytes")
        digest = c.typed(c.get(shard, where, "sha256"), str, "a string", f"{where}.sha256")
        if not SHA256.fullmatch(digest):
            raise c.fail(f"{where}.sha256", f"expected 64 lowercase hex characters, got {digest[:70]!r}")
    total = sum(s["samples"] for s in shards)
    if samples != total:
        raise c.fail(f"{key}.samples", f"{samples} differs from the sum of its shards' samples ({total})")
    stats = c.mapping(info, key, "label_stats")
    if kind == "pairs":
        _check_pair_stats(c, stats, f"{key}.label_stats", samples)
    elif kind == "clips":
        _check_clip_stats(c, stats, f"{key}.label_stats", samples)
    elif c.count(stats, f"{key}.label_stats", "n"):
        for name in (
            "mean_score_mean",
            "mean_score_std",
            *(("votes_per_image_mean",) if kind == "votes" else ()),
        ):
            c.typed(
                c.get(stats, f"{key}.label_stats", name),
                (int, float),
                "a number",
                f"{key}.label_stats.{name}",
            )


def _check_pair_stats(c: _Checker, stats: dict, key: str, samples: int) -> None:
    """A pairwise split's label_stats: n = its series, pairs, photos (2..64 per series), decided
    pairs (at most the pairs) and the human ceiling in [0.5, 1] (null without a decided pair)."""
    n = c.count(stats, key, "n")
    if n != samples:
        raise c.fail(f"{key}.n", f"{n} series, but the split holds {samples} samples")
    if not n:
        return
    pairs, photos = c.count(stats, key, "pairs"), c.count(stats, key, "photos")
    decided = c.count(stats, key, "decided_pairs")
    if not 2 * n <= photos <= MAX_MEMBERS * n:
        raise c.fail(f"{key}.photos", f"{photos} photos in {n} series (each holds 2..{MAX_MEMBERS})")
    if decided > pairs:
        raise c.fail(f"{key}.decided_pairs", f"{decided} is more than the {pairs} pairs")
    ceiling = c.get(stats, key, "human_ceiling")
    if ceiling is not None or decided:
        c.typed(ceiling, (int, float), "a number", f"{key}.human_ceiling")
        if not 0.5 <= ceiling <= 1.0:
            raise c.fail(f"{key}.human_ceiling", f"expected a share in [0.5, 1], got {ceiling!r}")
    _check_folder_counts(c, stats, key, n, photos)


def _check_clip_stats(c: _Checker, stats: dict, key: str, samples: int) -> None:
    """A clips split's label_stats: n = segments = its samples, frames per segment in 1..64, verb
    and noun counts (one per class) summing to the segments, participants a list of strings."""
    for name in ("n", "segments"):
        if c.count(stats, key, name) != samples:
            raise c.fail(f"{key}.{name}", f"{stats[name]} segments, but the split holds {samples} samples")
    if not 1 <= c.count(stats, key, "frames_per_segment") <= MAX_MEMBERS:
        raise c.fail(
            f"{key}.frames_per_segment", f"expected 1..{MAX_MEMBERS}, got {stats['frames_per_segment']}"
        )
    for name in ("verb_counts", "noun_counts"):
        counts = c.typed(c.get(stats, key, name), list, "a list", f"{key}.{name}")
        if not all(type(n) is int and n >= 0 for n in counts) or sum(counts) != samples:
            raise c.fail(f"{key}.{name}", f"expected counts per class summing to the {samples} segments")
    people = c.typed(c.get(stats, key, "participants"), list, "a list", f"{key}.participants")
    if not all(isinstance(p, str) for p in people):
        raise c.fail(f"{key}.participants", "expected a list of participant ids")


def _check_folder_counts(c: _Checker, stats: dict, key: str, n: int, photos: int) -> None:
    """A folders split's optional counts: folders (1..n chunks), good + bad = photos, photos with a
    MOS and chunks without pairs (at most the photos, the chunks)."""
    counts = {
        name: c.count(stats, key, name)
        for name in ("folders", "good", "bad", "mos", "chunks_without_pairs")
        if name in stats
    }
    if "folders" in counts and not 1 <= counts["folders"] <= n:
        raise c.fail(f"{key}.folders", f"{counts['folders']} folders in {n} chunks")
    if {"good", "bad"} <= set(counts) and counts["good"] + counts["bad"] != photos:
        raise c.fail(f"{key}.good", f"{counts['good']} good + {counts['bad']} bad is not the {photos} photos")
    if counts.get("mos", 0) > photos:
        raise c.fail(f"{key}.mos", f"{counts['mos']} photos with a MOS, more than the {photos} photos")
    if counts.get("chunks_without_pairs", 0) > n:
        raise c.fail(
            f"{key}.chunks_without_pairs", f"{counts['chunks_without_pairs']} is more than the {n} chunks"
        )


def _read_shard(path: Path, decode: bool, scale: Scale = AVA) -> tuple[int, list[str]]:
    """(number of samples, problems) of one tar; with `decode`, every image and label checked.

    Reads the tar as the loader does (samples.read_shard over samples.tar_samples: the same
    members, grouping and size cap) and checks samples with its own checks (samples.parse_label,
    samples.decode_image), so inspect reports exactly the samples training would count as corrupt
    or lost.
    """
    problems: list[str] = []
    n = 0
    try:
        for sample in read_shard(path):
            n += 1
            key = sample["__key__"]
            shown = key if key.isprintable() else repr(key)  # a newline in a name stays on one line
            first = member_name(0) if scale.kind in GROUP_KINDS else "jpg"
            if first not in sample or "json" not in sample:
                members = sorted(k for k in sample if not k.startswith("__"))
                problems.append(f"{path.name}: sample {shown}: {Reason.MEMBERS.text} (has {members})")
            elif decode:
                problems += [
                    f"{path.name}: sample {shown}: {reason}"
                    for reason in _sample_problems(key, sample, scale)
                ]
    except (tarfile.TarError, EOFError, ValueError, OSError) as e:
        problems.append(f"{path.name}: unreadable tar after {n} samples: {str(e).splitlines()[0][:200]}")
    return n, problems


def _sample_problems(key: str, sample: dict[str, bytes], scale: Scale) -> list[str]:
    """The reasons the loader would count this sample as corrupt (empty when it is usable)."""
    reasons = []
    images = sorted(k for k in sample if k.endswith(".jpg")) if scale.kind in GROUP_KINDS else ["jpg"]
    for name in images:
        try:
            decode_image(sample[name])
        except (RuntimeError, ValueError):
            data = sample[name]
            kind = (
                "PNG"
                if data.startswith(b"\x89PNG")
                else "not a JPEG"
                if not data.startswith(b"\xff\xd8")
                else "damaged JPEG"
            )
            reasons.append(f"{Reason.IMAGE.text} ({kind}{f', {name}' if name != 'jpg' else ''})")
    reason, label = parse_label(key, sample["json"], scale)
    if reason:
        reasons.append(reason.text)
    elif scale.kind in GROUP_KINDS:
        n = len(label["members" if scale.kind == "pairs" else "frames"])
        if images != [member_name(k) for k in range(n)]:
            reasons.append(f"{Reason.MEMBERS.text}: the label names {n} members, the sample holds {images}")
    return reasons


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
    scale = manifest_scale(manifest)
    for info in manifest["splits"].values():
        for shard in info["shards"]:
            listed.add(shard["name"])
            problems += _check_shard(shards_dir / shard["name"], shard, decode, scale)
            if progress is not None:
                progress(1)
    counts = manifest["counts"]
    if "photos_written" in counts:  # folders: the rows are photos
        photos = sum(info["label_stats"].get("photos", 0) for info in manifest["splits"].values())
        if counts["rows_read"] != counts["photos_written"] + counts["rows_skipped"]:
            problems.append("counts: rows_read != photos_written + rows_skipped")
        if counts["photos_written"] != photos:
            problems.append(f"counts.photos_written: {counts['photos_written']}, the splits hold {photos}")
    elif counts["rows_read"] != counts["samples_written"] + counts["rows_skipped"]:
        problems.append("counts: rows_read != samples_written + rows_skipped")
    written = sum(info["samples"] for info in manifest["splits"].values())
    if counts["samples_written"] != written:
        problems.append(f"counts.samples_written: {counts['samples_written']}, the splits hold {written}")
    skipped = manifest.get("skipped", [])
    by_reason = dict(Counter(s["reason"] for s in skipped))
    stated = {reason: n for reason, n in manifest["skipped_by_reason"].items() if n}
    if len(skipped) != counts["rows_skipped"] or by_reason != stated:
        problems.append(
            f"skipped: {len(skipped)} rows listed {dict(sorted(by_reason.items()))}, counts say "
            f"{counts['rows_skipped']} {stated}"
        )
    for stray in sorted(p.name for p in shards_dir.glob("*.tar") if p.name not in listed):
        shown = stray if stray.isprintable() else repr(stray)
        problems.append(f"{shown}: tar file not listed in the manifest")
    return manifest, problems


def _check_shard(path: Path, shard: dict, decode: bool, scale: Scale) -> list[str]:
    if not path.is_file():
        return [f"{path.name}: missing"]
    if path.stat().st_size != shard["bytes"]:
        return [f"{path.name}: {path.stat().st_size} bytes, manifest says {shard['bytes']}"]
    if file_sha256(path) != shard["sha256"]:
        return [f"{path.name}: sha256 differs from the manifest"]
    n, problems = _read_shard(path, decode, scale)
    if n != shard["samples"]:
        problems.append(f"{path.name}: {n} samples, manifest says {shard['samples']}")
    return problems


def shard_files(shards_dir: Path, split: str) -> list[Path]:
    """The shard paths of one split, in manifest order."""
    manifest = load_manifest(shards_dir)
    if split not in manifest["splits"]:
        raise AvakitError(f"{shards_dir}: manifest has no split {split!r}")
    return [Path(shards_dir) / s["name"] for s in manifest["splits"][split]["shards"]]
