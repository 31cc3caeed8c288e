"""What `avakit shard` will write: the parsed AVA.txt, its split, the shard tasks, and resume state.

Each split's rows are sorted by image id and cut into fixed chunks of `shard_size` rows; chunk k
of split s becomes `{s}-{k:06d}.tar`. A shard is a pure function of its rows and the options, so
a finished shard (its record in `.progress/` still matches the tar) is never written again: an
interrupted run resumes with only the pending tasks. `avakit.dataset.shards` writes them.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from avakit import fileio
from avakit.config import QUALITY_RANGE, SHARD_SPLITS, SHORT_SIDE_RANGE, SPLIT_SEED_MAX
from avakit.dataset.ava import Skipped, official_split, parse_ava_txt, random_split, read_id_list
from avakit.errors import AvakitError
from avakit.fileio import clear_stale_tmp, file_sha256, write_json_atomic
from avakit.scores import AVA, Scale


class Row(Protocol):
    """What a shard task writes per sample: an AVA.txt row, a labels-table sample, or a photo series
    (a group sample: its photos are `files`, see `avakit.dataset.phototriage_plan.SeriesRow`)."""

    @property
    def line(self) -> int: ...  # noqa: D102 (the line of its source file)
    @property
    def image_id(self) -> int: ...  # noqa: D102 (its integer id: AVA's id, a table's line)
    @property
    def key(self) -> str: ...  # noqa: D102 (its webdataset key)
    @property
    def file(self) -> str: ...  # noqa: D102 (its image, relative to the images folder)
    @property
    def values(self) -> tuple: ...  # noqa: D102 (its label's numbers: K votes or (mos,))
    def skip_detail(self, detail: str) -> str: ...  # noqa: D102 (a skip's detail naming the image)
    def label(self) -> dict: ...  # noqa: D102 (its json member)


PROGRESS_DIR = ".progress"


MAX_SEED = SPLIT_SEED_MAX  # the split seed (numpy's default_rng takes any; bounded to 64 bits)


@dataclass(frozen=True, kw_only=True)
class ShardOptions:
    """Everything that decides the content of the shards (workers and strict do not)."""

    short_side: int = 256  # shorter side of the stored JPEG, in pixels
    quality: int = 90  # JPEG quality of the stored image
    shard_size: int = 1000  # rows per shard: AVA's train split gets ~200 shards
    split: str = "random"  # random | official
    val_ratio: float = 0.1  # share of rows for validation
    test_ratio: float = 0.1  # share of rows for test (random split only)
    seed: int = 42  # split seed: the same seed always gives the same split
    limit: int | None = None  # read only the first N rows of AVA.txt (trials)


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its split, number and rows (AVA: sorted by image id; tables: by key)."""

    split: str
    index: int
    rows: tuple[Row, ...]

    @property
    def name(self) -> str:
        """The shard's file name: `SPLIT-NNNNNN.tar`."""
        return f"{self.split}-{self.index:06d}.tar"


@dataclass(kw_only=True)
class ShardPlan:
    """What `shard` will do: the parsed input, all shard tasks and those still to write."""

    images: Path
    out: Path
    options: ShardOptions
    sources: dict
    rows_read: int
    parse_skipped: list[Skipped]
    tasks: list[ShardTask]
    scale: Scale = AVA  # what the labels mean (manifest.json's `labels`)
    split_method: str | None = None  # manifest's split.method when not options.split (PhotoTriage)
    pending: list[ShardTask] = field(default_factory=list)
    done: dict[str, dict] = field(default_factory=dict)  # shard name -> record of a finished shard
    extra: dict = field(default_factory=dict)  # manifest keys of this input (EPIC: classes, frames missing)
    stats: Callable[[str, list], dict] | None = None  # a split's label_stats from its written rows

    @property
    def pending_images(self) -> int:
        """The number of images in the shards still to write."""
        return sum(len(t.rows) for t in self.pending)


def validate_options(opt: ShardOptions, test_list: Path | None) -> None:
    """AvakitError naming the first option out of range or inconsistent with `test_list`."""
    for key, (low, high) in (("short_side", SHORT_SIDE_RANGE), ("quality", QUALITY_RANGE)):
        if not low <= getattr(opt, key) <= high:
            raise AvakitError(f"{key} must be in {low}..{high}, got {getattr(opt, key)}")
    if opt.shard_size < 1:
        raise AvakitError(f"shard_size must be at least 1, got {opt.shard_size}")
    if opt.limit is not None and opt.limit < 1:
        raise AvakitError(f"limit must be at least 1, got {opt.limit}")
    if opt.split not in SHARD_SPLITS:
        raise AvakitError(f"split must be 'random' or 'official', got {opt.split!r}")
    if opt.split == "official" and test_list is None:
        raise AvakitError("split 'official' needs test_list, the official test ids (e.g. generic_test.jpgl)")
    if opt.split != "official" and test_list is not None:
        raise AvakitError("test_list is only used with split 'official'; choose that split or drop the list")
    if not 0 <= opt.seed <= MAX_SEED:
        raise AvakitError(f"seed must be in 0..2^64-1, got {opt.seed}")


def plan_sharding(
    ava_txt: Path,
    images: Path,
    out: Path,
    options: ShardOptions,
    test_list: Path | None = None,
    strict: bool = False,
) -> ShardPlan:
    """Parse the inputs, split them, and find which shards under `out` are still to be written."""
    ava_txt, images, out = Path(ava_txt), Path(images), Path(out)
    validate_options(options, test_list)
    check_images_folder(images)
    rows, parse_skipped, rows_read = parse_ava_txt(ava_txt, strict=strict, limit=options.limit)
    ids = [r.image_id for r in rows]
    sources = {"ava_txt": {"name": ava_txt.name, "sha256": file_sha256(ava_txt)}}
    if options.split == "official":
        assert test_list is not None
        test_ids, sources["test_list"] = _read_test_list(Path(test_list), set(ids), strict)
        split_ids = official_split(ids, test_ids, options.val_ratio, options.seed)
    else:
        split_ids = random_split(ids, options.val_ratio, options.test_ratio, options.seed)
    by_id = {r.image_id: r for r in rows}
    split_rows = {split: [by_id[i] for i in members] for split, members in split_ids.items()}
    return build_plan(images, out, options, sources, rows_read, split_rows, parse_skipped, AVA)


def build_plan(
    images: Path,
    out: Path,
    options: ShardOptions,
    sources: dict,
    rows_read: int,
    split_rows: dict[str, list[Row]],
    parse_skipped: list[Skipped],
    scale: Scale,
    split_method: str | None = None,
) -> ShardPlan:
    """Cut each split's (sorted) rows into shard tasks and find those still to be written."""
    tasks = []
    for split, members in split_rows.items():
        for k, start in enumerate(range(0, len(members), options.shard_size)):
            tasks.append(ShardTask(split, k, tuple(members[start : start + options.shard_size])))
    plan = ShardPlan(
        images=images,
        out=out,
        options=options,
        sources=sources,
        rows_read=rows_read,
        parse_skipped=parse_skipped,
        tasks=tasks,
        scale=scale,
        split_method=split_method,
    )
    _prepare_out(plan)
    plan.done = {t.name: r for t in tasks if (r := load_record(out, t)) is not None}
    plan.pending = [t for t in tasks if t.name not in plan.done]
    return plan


def check_images_folder(images: Path) -> None:
    """Refuse a missing images folder, or one without a single file, before any work."""
    if not images.is_dir():
        raise AvakitError(f"{images}: images folder not found")
    try:
        with os.scandir(images) as entries:
            empty = not any(e.is_file() for e in entries)
    except OSError as e:
        raise AvakitError(f"{images}: cannot read the images folder: {e.strerror or e}") from None
    if empty:
        raise AvakitError(f"{images}: images folder holds no files")


def _read_test_list(path: Path, ava_ids: set[int], strict: bool) -> tuple[list[int], dict]:
    """The official test list's ids and its `sources` entry: checksum and counts.

    `ids_not_in_ava_txt` counts listed ids without a valid row among the AVA.txt rows read (the
    real generic_test.jpgl names ~70 of them); its malformed or repeated lines are recorded.
    """
    ids, skipped = read_id_list(path, strict=strict)
    entry = {
        "name": path.name,
        "sha256": file_sha256(path),
        "ids_listed": len(ids),
        "ids_not_in_ava_txt": sum(i not in ava_ids for i in ids),
        "lines_skipped": [{"line": s.line, "reason": s.reason, "detail": s.detail} for s in skipped],
    }
    return ids, entry


def _fingerprint(plan: ShardPlan) -> dict:
    return {"sources": plan.sources, "options": asdict(plan.options)}


def _prepare_out(plan: ShardPlan) -> None:
    """Create `out`, refuse a folder holding other shards, and clear stale temporary files.

    Temporary files of a run that was killed (or stopped by a full disk) are removed here, so
    the rerun starts clean and writes every unfinished shard again.
    """
    out = plan.out
    if out.exists() and not out.is_dir():
        raise AvakitError(f"{out}: exists and is not a folder")
    progress = out / PROGRESS_DIR
    with fileio.write_errors(progress):
        progress.mkdir(parents=True, exist_ok=True)
    stamp = progress / "options.json"
    wanted = _fingerprint(plan)
    if stamp.exists() or stamp.is_symlink():
        if _read_json(stamp) != wanted:
            raise AvakitError(
                f"{out}: holds shards made from other inputs or options ({stamp} differs or is "
                "unreadable); use another --out or delete the folder"
            )
    elif any(out.glob("*.tar")):
        raise AvakitError(f"{out}: already holds shards not made with these inputs; use another folder")
    else:
        write_json_atomic(stamp, wanted)
    clear_stale_tmp(out)
    clear_stale_tmp(progress)


def record_path(out: Path, task: ShardTask) -> Path:
    """Where the record of a finished `task` is kept: `out/.progress/NAME.tar.json`."""
    return out / PROGRESS_DIR / (task.name + ".json")


def _read_json(path: Path) -> object:
    """The JSON value stored in `path`, or None when it is not a readable JSON file."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):  # missing, a folder, a loop, not UTF-8, bad JSON
        return None


def load_record(out: Path, task: ShardTask) -> dict | None:
    """The finished shard's record, or None when the shard is still to be written.

    A record is trusted only when it describes this task and the tar on disk: name, split, each
    row written or skipped once (with its own line number), the tar's size and sha256 (hashing
    the finished tars costs seconds against the hours of writing them). Anything else (an edited
    or damaged file) means the shard is written again: a rerun never trusts a record that does
    not hold.
    """
    tar, record = out / task.name, _read_json(record_path(out, task))
    if not (
        isinstance(record, dict)
        and tar.is_file()
        and isinstance(ids := record.get("image_ids"), list)
        and isinstance(skipped := record.get("skipped"), list)
    ):
        return None
    valid = (
        record.get("name") == task.name
        and record.get("split") == task.split
        and record.get("samples") == len(ids)
        and record.get("bytes") == tar.stat().st_size
        and all(
            type(s) is dict
            and set(s) == {"line", "image_id", "reason", "detail"}
            and type(s["image_id"]) is int
            and type(s["line"]) is int
            and type(s["reason"]) is str
            and type(s["detail"]) is str
            for s in skipped
        )
        and all(type(i) is int for i in ids)
        and _accounted(task, ids, skipped)
    )
    return record if valid and record.get("sha256") == file_sha256(tar) else None


def _accounted(task: ShardTask, ids: list[int], skipped: list[dict]) -> bool:
    """Each row written or skipped once, with its own line. A folder chunk (rows with
    `photo_lines`) accounts for photos: each photo skipped at most once with its chunk's id, a
    written chunk keeps 2 or more photos, an unwritten one has every photo skipped."""
    if not hasattr(task.rows[0], "photo_lines"):
        lines = {r.image_id: r.line for r in task.rows}
        return all(s["line"] == lines.get(s["image_id"]) for s in skipped) and sorted(
            ids + [s["image_id"] for s in skipped]
        ) == sorted(lines)
    chunk_of = {n: r.image_id for r in task.rows for n in r.photo_lines}  # type: ignore[attr-defined]
    photo_lines = [s["line"] for s in skipped]
    if len(set(photo_lines)) != len(photo_lines) or len(set(ids)) != len(ids):
        return False
    if any(chunk_of.get(s["line"]) != s["image_id"] for s in skipped):
        return False
    lost = Counter(s["image_id"] for s in skipped)
    written = set(ids)
    for r in task.rows:
        left = len(r.photo_lines) - lost[r.image_id]  # type: ignore[attr-defined]
        if (r.image_id in written and left < 2) or (r.image_id not in written and left != 0):
            return False
    return written <= {r.image_id for r in task.rows}
