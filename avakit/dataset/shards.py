"""`avakit shard`'s writer: the planned shard tasks -> WebDataset tars + manifest.json.

Shards are written in parallel, one per worker task (`avakit.dataset.plan` cut them); the result
is byte-identical whatever the worker count or however often the run was interrupted.

A shard is written to a temporary name, its record (counts, sha256, skipped rows) is saved in
`.progress/`, and only then is the tar renamed into place. Every file goes through
`avakit.fileio`: a full disk stops the run (in any worker) with one AvakitError naming the file,
the unfinished shard's temporary file is removed, and the same command resumes later. When all
are done, `build_manifest` writes the table of contents that `avakit.dataset.manifest` reads.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import queue as queue_mod
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from avakit import __version__, fileio
from avakit.dataset.ava import Skipped
from avakit.dataset.images import ImageSkip, encode_jpeg, load_rgb
from avakit.dataset.manifest import FORMAT_VERSION, MANIFEST
from avakit.dataset.plan import Row, ShardOptions, ShardPlan, ShardTask, load_record, record_path
from avakit.dataset.samples import member_name
from avakit.dataset.shard_stats import as_written, split_stats
from avakit.errors import AvakitError
from avakit.fileio import atomic_path, file_sha256, write_json_atomic
from avakit.scores import SPLITS

TAR_MTIME = 0  # fixed tar header time: the same inputs give byte-identical shards


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
    task: ShardTask,
    images: Path,
    out: Path,
    options: ShardOptions,
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
                "name": task.name,
                "split": task.split,
                "samples": len(written),
                "bytes": tmp.stat().st_size,
                "sha256": file_sha256(tmp),
                "image_ids": written,
                "skipped": [asdict(s) for s in skipped],
            }
            write_json_atomic(record_path(out, task), record)

        try:
            _write_samples(task, images, options, opener, finish, skipped, written, progress)
        except BaseException:
            for f in opened:  # closed before atomic_path removes the file
                with contextlib.suppress(OSError):
                    f.close()
            raise
    return json.loads(record_path(out, task).read_text())


def _write_samples(
    task: ShardTask,
    images: Path,
    options: ShardOptions,
    opener: Callable,
    finish: Callable,
    skipped: list[Skipped],
    written: list[int],
    progress: Callable[[int], None] | None,
) -> None:
    """Feed the task's usable images through one ShardWriter; record the skipped ones."""
    import webdataset as wds  # imports torch: only where shards are written

    sink = wds.ShardWriter(
        f"{task.split}-%06d.tar",
        maxcount=len(task.rows) + 1,
        start_shard=task.index,
        opener=opener,
        post=finish,
        verbose=0,
        mtime=TAR_MTIME,
    )
    try:
        for n, row in enumerate(task.rows, start=1):
            _write_row(row, images, options, sink, skipped, written)
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


def _write_row(
    row: Row, images: Path, options: ShardOptions, sink: Any, skipped: list[Skipped], written: list[int]
) -> None:
    """Write one row's sample to `sink`, or record why it was skipped.

    A folder chunk (a row with `photo_lines`) loses only its unreadable photos (`_chunk_sample`);
    every other row is written whole or skipped whole.
    """
    if hasattr(row, "photo_lines"):
        sample, photo_skips = _chunk_sample(row, images, options)
        skipped += photo_skips
    else:
        try:
            sample = _sample(row, images, options)
        except ImageSkip as e:
            skipped.append(Skipped(row.line, row.image_id, e.reason, row.skip_detail(e.detail)))
            return
    if sample is not None:
        sink.write(sample)
        written.append(row.image_id)


def _chunk_sample(row: Any, images: Path, options: ShardOptions) -> tuple[dict | None, list[Skipped]]:
    """A folder chunk's sample without its unreadable photos (each skipped with its file and
    reason, its pairs re-derived), or None when fewer than 2 photos are left (those skipped too)."""
    from avakit.dataset.folders_plan import TOO_FEW

    skips: list[Skipped] = []
    encoded: dict[int, bytes] = {}
    for photo in row.photos:
        try:
            im = load_rgb(images / photo.file, short_side=options.short_side)
        except ImageSkip as e:
            skips.append(
                Skipped(photo.number, row.image_id, e.reason, row.skip_detail(f"{photo.file}: {e.detail}"))
            )
        else:
            encoded[photo.number] = encode_jpeg(im, options.quality)
    if len(encoded) < 2:
        left = [p for p in row.photos if p.number in encoded]
        skips += [
            Skipped(
                p.number,
                row.image_id,
                TOO_FEW,
                row.skip_detail(f"{p.file}: {TOO_FEW} after unreadable photos"),
            )
            for p in left
        ]
        return None, sorted(skips, key=lambda s: s.line)
    kept = row.without({s.line for s in skips})
    sample = {"__key__": kept.key}
    sample.update({member_name(k): encoded[p.number] for k, p in enumerate(kept.photos)})
    sample["json"] = json.dumps(kept.label()).encode()
    return sample, skips


def _sample(row: Row, images: Path, options: ShardOptions) -> dict:
    """One row's sample: its image as `jpg`, or a group's photos as `000.jpg, 001.jpg, ...`.

    A group sample is all or nothing: its first unusable photo raises ImageSkip, whose detail
    then names that photo's file.
    """
    files = getattr(row, "files", None)
    if files is None:
        im = load_rgb(images / row.file, short_side=options.short_side)
        return {
            "__key__": row.key,
            "jpg": encode_jpeg(im, options.quality),
            "json": json.dumps(row.label()).encode(),
        }
    sample = {"__key__": row.key}
    for k, name in enumerate(files):
        try:
            im = load_rgb(images / name, short_side=options.short_side)
        except ImageSkip as e:
            raise ImageSkip(e.reason, f"{name}: {e.detail}") from None
        sample[member_name(k)] = encode_jpeg(im, options.quality)
    sample["json"] = json.dumps(row.label()).encode()
    return sample


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


def write_shards(plan: ShardPlan, workers: int = 1, progress: Callable[[int], None] | None = None) -> dict:
    """Write every pending shard (in `workers` processes), then manifest.json; return the manifest."""
    if workers < 1:
        raise AvakitError(f"workers must be at least 1, got {workers}")
    workers = min(workers, max(1, len(plan.pending)))
    if workers == 1:
        for task in plan.pending:
            write_shard(task, plan.images, plan.out, plan.options, progress)
    else:
        _run_pool(plan, workers, progress)
    records = []
    for task in plan.tasks:
        record = plan.done.get(task.name) or load_record(plan.out, task)
        if record is None:
            raise AvakitError(f"{plan.out / task.name}: shard was not completed")
        records.append(record)
    manifest = build_manifest(plan, records)
    write_json_atomic(plan.out / MANIFEST, manifest)
    check_written(manifest, plan.out)
    return manifest


def check_written(manifest: dict, out: Path) -> None:
    """Exit 1 (after the manifest with its honest counts is written) when no sample was written."""
    counts = manifest["counts"]
    if counts["samples_written"] > 0:
        return
    reasons = ", ".join(f"{reason} {n}" for reason, n in manifest["skipped_by_reason"].items())
    first = manifest["skipped"][0] if manifest["skipped"] else None
    example = (
        f"; first: line {first['line']} (image {first['image_id']}): {first['reason']}: {first['detail']}"
        if first
        else ""
    )
    raise AvakitError(
        f"{out}: no sample could be written: {counts['rows_read']} rows read, "
        f"{counts['rows_skipped']} skipped ({reasons}){example}; see {out / 'manifest.json'}",
        exit_code=1,
    )


def build_manifest(plan: ShardPlan, records: list[dict]) -> dict:
    """The manifest of a finished run: plan (inputs, options) + per-shard records."""
    skipped = [asdict(s) for s in plan.parse_skipped]
    splits: dict[str, dict] = {}
    for split in SPLITS:
        rows_by_id = {r.image_id: r for t in plan.tasks if t.split == split for r in t.rows}
        mine = [r for r in records if r["split"] == split]
        ids = [i for r in mine for i in r["image_ids"]]
        mine_skipped = [s for r in mine for s in r["skipped"]]
        rows = as_written(rows_by_id, ids, mine_skipped)
        splits[split] = {
            "samples": len(ids),
            "bytes": sum(r["bytes"] for r in mine),
            "shards": [{k: r[k] for k in ("name", "samples", "bytes", "sha256")} for r in mine],
            "label_stats": plan.stats(split, rows) if plan.stats else split_stats(rows, plan.scale),
        }
        skipped += mine_skipped
    skipped.sort(key=lambda s: s["line"])
    written = sum(s["samples"] for s in splits.values())
    counts = {"rows_read": plan.rows_read, "samples_written": written, "rows_skipped": len(skipped)}
    opts = asdict(plan.options)
    method = opts.pop("split")
    if plan.split_method == "splits.json":  # folders: rows are photos, splits.json decides the split
        counts["photos_written"] = sum(s["label_stats"].get("photos", 0) for s in splits.values())
        for name in ("val_ratio", "test_ratio", "seed"):
            opts.pop(name)
    return {
        "format_version": FORMAT_VERSION,
        "created_by": f"avakit {__version__}",
        "sources": plan.sources,
        "labels": plan.scale.as_dict(),
        **plan.extra,
        "preprocessing": {
            "short_side": opts.pop("short_side"),
            "quality": opts.pop("quality"),
            "format": "jpg",
            "exif_orientation": "applied",
            "resample": "jpeg-dct-scaling+bilinear",
        },
        "shard_size": opts.pop("shard_size"),
        "split": {"method": plan.split_method or method, **opts},
        "counts": counts,
        "splits": splits,
        "skipped_by_reason": dict(sorted(Counter(s["reason"] for s in skipped).items())),
        "skipped": skipped,
    }
