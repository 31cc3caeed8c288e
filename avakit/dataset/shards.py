"""`avakit shard`: AVA.txt + images/ -> preprocessed WebDataset shards + manifest.json.

Each split's rows are sorted by image id and cut into fixed chunks of `shard_size` rows; chunk k
of split s becomes `{s}-{k:06d}.tar` (rows whose image is unusable are left out of it and
recorded). A shard is therefore a pure function of its rows and the options, so shards are
written in parallel, one per worker task, and a run that was interrupted resumes by writing
only the shards that are not complete yet: the result is byte-identical either way.

A shard is written to a temporary name, its record (counts, sha256, skipped rows) is saved in
`.progress/`, and only then is the tar renamed into place. Every file goes through
`avakit.fileio`: a full disk stops the run (in any worker) with one AvakitError naming the file,
the unfinished shard's temporary file is removed, and the same command resumes later.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import queue as queue_mod
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import webdataset as wds

from avakit import fileio
from avakit.dataset.ava import AvaRow, Skipped, official_split, parse_ava_txt, random_split, read_id_list
from avakit.dataset.images import ImageSkip, encode_jpeg, load_rgb
from avakit.dataset.manifest import build_manifest, file_sha256, write_json_atomic
from avakit.errors import AvakitError
from avakit.fileio import atomic_path, clear_stale_tmp

PROGRESS_DIR = ".progress"
TAR_MTIME = 0  # fixed tar header time: the same inputs give byte-identical shards
MAX_SEED = 2**64 - 1  # the split seed (numpy's default_rng takes any; bounded to 64 bits)


@dataclass(frozen=True)
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
    """One shard to write: its split, number and rows (sorted by image id)."""

    split: str
    index: int
    rows: tuple[AvaRow, ...]

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}.tar"


@dataclass
class ShardPlan:
    """What `shard` will do: the parsed input, all shard tasks and those still to write."""

    ava_txt: Path
    images: Path
    out: Path
    options: ShardOptions
    sources: dict
    rows_read: int
    rows: list[AvaRow]
    parse_skipped: list[Skipped]
    tasks: list[ShardTask]
    pending: list[ShardTask] = field(default_factory=list)
    done: dict[str, dict] = field(default_factory=dict)  # shard name -> record of a finished shard

    @property
    def pending_images(self) -> int:
        return sum(len(t.rows) for t in self.pending)


def _validate_options(opt: ShardOptions, test_list: Path | None) -> None:
    if not 1 <= opt.short_side <= 4096:
        raise AvakitError(f"--short-side must be in 1..4096, got {opt.short_side}")
    if not 1 <= opt.quality <= 100:
        raise AvakitError(f"--quality must be in 1..100, got {opt.quality}")
    if opt.shard_size < 1:
        raise AvakitError(f"--shard-size must be at least 1, got {opt.shard_size}")
    if opt.limit is not None and opt.limit < 1:
        raise AvakitError(f"--limit must be at least 1, got {opt.limit}")
    if opt.split not in ("random", "official"):
        raise AvakitError(f"--split must be 'random' or 'official', got {opt.split!r}")
    if opt.split == "official" and test_list is None:
        raise AvakitError("--split official needs --test-list (e.g. generic_test.jpgl)")
    if opt.split != "official" and test_list is not None:
        raise AvakitError("--test-list is only used with --split official; add --split official or drop it")
    if not 0 <= opt.seed <= MAX_SEED:
        raise AvakitError(f"--seed must be in 0..2^64-1, got {opt.seed}")


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
    _validate_options(options, test_list)
    _check_images_folder(images)
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
    tasks = []
    for split, members in split_ids.items():
        for k, start in enumerate(range(0, len(members), options.shard_size)):
            chunk = members[start:start + options.shard_size]
            tasks.append(ShardTask(split, k, tuple(by_id[i] for i in chunk)))
    plan = ShardPlan(ava_txt, images, out, options, sources, rows_read, rows, parse_skipped, tasks)
    _prepare_out(plan)
    plan.done = {t.name: r for t in tasks if (r := _load_record(out, t)) is not None}
    plan.pending = [t for t in tasks if t.name not in plan.done]
    return plan


def _check_images_folder(images: Path) -> None:
    """Refuse a missing images folder, or one without a single file, before any work."""
    if not images.is_dir():
        raise AvakitError(f"{images}: images folder not found")
    try:
        with os.scandir(images) as entries:
            empty = not any(e.is_file() for e in entries)
    except OSError as e:
        raise AvakitError(f"{images}: cannot read the images folder: {e.strerror or e}") from None
    if empty:
        raise AvakitError(f"{images}: images folder holds no files (expected {{image id}}.jpg)")


def _read_test_list(path: Path, ava_ids: set[int], strict: bool) -> tuple[list[int], dict]:
    """The official test list's ids and its `sources` entry: checksum and counts.

    `ids_not_in_ava_txt` counts listed ids without a valid row among the AVA.txt rows read (the
    real generic_test.jpgl names ~70 of them); its malformed or repeated lines are recorded.
    """
    ids, skipped = read_id_list(path, strict=strict)
    entry = {
        "name": path.name, "sha256": file_sha256(path), "ids_listed": len(ids),
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
        raise AvakitError(f"{out}: already holds shards not made by this command; use another --out")
    else:
        write_json_atomic(stamp, wanted)
    clear_stale_tmp(out)
    clear_stale_tmp(progress)


def _record_path(out: Path, task: ShardTask) -> Path:
    return out / PROGRESS_DIR / (task.name + ".json")


def _read_json(path: Path) -> object:
    """The JSON value stored in `path`, or None when it is not a readable JSON file."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):  # missing, a folder, a loop, not UTF-8, bad JSON
        return None


def _load_record(out: Path, task: ShardTask) -> dict | None:
    """The finished shard's record, or None when the shard is still to be written.

    A record is trusted only when it describes this task and the tar on disk: name, split, each
    row written or skipped once (with its own line number), the tar's size and sha256 (hashing
    the finished tars costs seconds against the hours of writing them). Anything else (an edited
    or damaged file) means the shard is written again: a rerun never trusts a record that does
    not hold.
    """
    tar, record = out / task.name, _read_json(_record_path(out, task))
    if not (isinstance(record, dict) and tar.is_file() and isinstance(ids := record.get("image_ids"), list)
            and isinstance(skipped := record.get("skipped"), list)):
        return None
    lines = {r.image_id: r.line for r in task.rows}
    valid = (
        record.get("name") == task.name and record.get("split") == task.split
        and record.get("samples") == len(ids) and record.get("bytes") == tar.stat().st_size
        and all(type(s) is dict and set(s) == {"line", "image_id", "reason", "detail"}
                and type(s["image_id"]) is int and s["line"] == lines.get(s["image_id"])
                and type(s["reason"]) is str and type(s["detail"]) is str for s in skipped)
        and all(type(i) is int for i in ids)
        and sorted(ids + [s["image_id"] for s in skipped]) == sorted(lines)
    )
    return record if valid and record.get("sha256") == file_sha256(tar) else None


_progress_queue: mp.Queue | None = None
_parent_pid: int | None = None


def _init_worker(progress_queue: mp.Queue, parent_pid: int) -> None:
    global _progress_queue, _parent_pid
    _progress_queue, _parent_pid = progress_queue, parent_pid


def _tick(n: int, progress: Callable[[int], None] | None) -> None:
    if progress is not None:
        progress(n)
    elif _progress_queue is not None:
        if os.getppid() != _parent_pid:  # the parent was killed: stop, the rerun resumes
            os._exit(1)
        _progress_queue.put(n)


def write_shard(
    task: ShardTask, images: Path, out: Path, options: ShardOptions,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Preprocess the task's images into one shard; return its record (also saved to disk).

    The tar is written to a temporary file beside it (fileio.atomic_path), its record is
    saved, and only then is the tar renamed into place; on any failure (disk full included)
    the temporary tar is removed.
    """
    skipped: list[Skipped] = []
    written: list[int] = []
    opened: list[IO[bytes]] = []
    with atomic_path(out / task.name) as tmp:

        def opener(fname: str) -> IO[bytes]:
            opened.append(fileio._open(tmp, "wb"))
            return opened[-1]

        def finish(fname: str) -> None:
            opened[-1].close()
            record = {
                "name": task.name, "split": task.split, "samples": len(written),
                "bytes": tmp.stat().st_size, "sha256": file_sha256(tmp),
                "image_ids": written, "skipped": [asdict(s) for s in skipped],
            }
            write_json_atomic(_record_path(out, task), record)

        try:
            _write_samples(task, images, options, opener, finish, skipped, written, progress)
        except BaseException:
            for f in opened:  # closed before atomic_path removes the file
                with contextlib.suppress(OSError):
                    f.close()
            raise
    return json.loads(_record_path(out, task).read_text())


def _write_samples(
    task: ShardTask, images: Path, options: ShardOptions, opener: Callable, finish: Callable,
    skipped: list[Skipped], written: list[int], progress: Callable[[int], None] | None,
) -> None:
    """Feed the task's usable images through one ShardWriter; record the skipped ones."""
    sink = wds.ShardWriter(
        f"{task.split}-%06d.tar", maxcount=len(task.rows) + 1, start_shard=task.index,
        opener=opener, post=finish, verbose=0, mtime=TAR_MTIME,
    )
    try:
        for n, row in enumerate(task.rows, start=1):
            try:
                im = load_rgb(images / f"{row.image_id}.jpg", short_side=options.short_side)
                sample = {
                    "__key__": str(row.image_id),
                    "jpg": encode_jpeg(im, options.quality),
                    "json": json.dumps(row.label()).encode(),
                }
            except ImageSkip as e:
                skipped.append(Skipped(row.line, row.image_id, e.reason, e.detail))
            else:
                sink.write(sample)
                written.append(row.image_id)
            if n % 16 == 0 or n == len(task.rows):
                _tick(16 if n % 16 == 0 else n % 16, progress)
        sink.close()
    except BaseException:
        # abandon the tar: close its stream now, or tarfile's __del__ would write the rest of its
        # buffer into the closed file at exit and print "Exception ignored ... Traceback"
        if getattr(sink, "tarstream", None) is not None:
            with contextlib.suppress(OSError, ValueError):
                sink.tarstream.close()
        raise


def _run_pool(plan: ShardPlan, workers: int, progress: Callable[[int], None] | None) -> None:
    """Write the pending shards in `workers` processes, feeding `progress` image counts."""
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    progress_queue = ctx.Queue()
    args = (plan.images, plan.out, plan.options)
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(progress_queue, os.getpid())
    ) as pool:
        futures = {pool.submit(write_shard, t, *args) for t in plan.pending}
        try:
            while futures:
                done, futures = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in done:
                    fut.result()
                _drain(progress_queue, progress)
        except BaseException:
            # stop cleanly: no new shard starts, the running ones end (each removes its own
            # temporary file on failure), and their progress is drained so they can exit
            pool.shutdown(wait=False, cancel_futures=True)
            while futures:  # done() (not wait()) also counts a future cancelled but never notified
                wait(futures, timeout=0.2)
                futures = {f for f in futures if not f.done()}
                _drain(progress_queue, None)
            raise
    _drain(progress_queue, progress)


def _drain(progress_queue: mp.Queue, progress: Callable[[int], None] | None) -> None:
    while True:
        try:
            n = progress_queue.get_nowait()
        except queue_mod.Empty:
            return
        if progress is not None:
            progress(n)


def write_shards(
    plan: ShardPlan, workers: int = 1, progress: Callable[[int], None] | None = None
) -> dict:
    """Write every pending shard (in `workers` processes), then manifest.json; return the manifest."""
    if workers < 1:
        raise AvakitError(f"--workers must be at least 1, got {workers}")
    workers = min(workers, max(1, len(plan.pending)))
    if workers == 1:
        for task in plan.pending:
            write_shard(task, plan.images, plan.out, plan.options, progress)
    else:
        _run_pool(plan, workers, progress)
    records = []
    for task in plan.tasks:
        record = plan.done.get(task.name) or _load_record(plan.out, task)
        if record is None:
            raise AvakitError(f"{plan.out / task.name}: shard was not completed")
        records.append(record)
    manifest = build_manifest(plan, records)
    write_json_atomic(plan.out / "manifest.json", manifest)
    check_written(manifest, plan.out)
    return manifest


def check_written(manifest: dict, out: Path) -> None:
    """Exit 1 (after the manifest with its honest counts is written) when no sample was written."""
    counts = manifest["counts"]
    if counts["samples_written"] > 0:
        return
    reasons = ", ".join(f"{reason} {n}" for reason, n in manifest["skipped_by_reason"].items())
    first = manifest["skipped"][0] if manifest["skipped"] else None
    example = (f"; first: line {first['line']} (image {first['image_id']}): {first['reason']}: "
               f"{first['detail']}" if first else "")
    raise AvakitError(f"{out}: no sample could be written: {counts['rows_read']} rows read, "
                      f"{counts['rows_skipped']} skipped ({reasons}){example}; see {out / 'manifest.json'}",
                      exit_code=1)
