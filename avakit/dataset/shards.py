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
from typing import IO

import numpy as np

from avakit import __version__, fileio
from avakit.dataset.ava import Skipped
from avakit.dataset.images import ImageSkip, encode_jpeg, load_rgb
from avakit.dataset.manifest import FORMAT_VERSION, MANIFEST
from avakit.dataset.plan import Row, ShardOptions, ShardPlan, ShardTask, load_record, record_path
from avakit.dataset.samples import member_name
from avakit.errors import AvakitError
from avakit.fileio import atomic_path, file_sha256, write_json_atomic
from avakit.scores import AVA, SPLITS, Scale

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
            try:
                sample = _sample(row, images, options)
            except ImageSkip as e:
                skipped.append(Skipped(row.line, row.image_id, e.reason, row.skip_detail(e.detail)))
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
    """A split's `label_stats`: `pair_stats` of series, else `label_stats` of the rows' values."""
    if scale.kind == "pairs":
        return pair_stats(rows)
    values = np.array([r.values for r in rows], dtype=np.float64).reshape(-1, scale.width)
    return label_stats(values, scale)


def build_manifest(plan: ShardPlan, records: list[dict]) -> dict:
    """The manifest of a finished run: plan (inputs, options) + per-shard records."""
    rows_by_id = {r.image_id: r for t in plan.tasks for r in t.rows}
    skipped = [asdict(s) for s in plan.parse_skipped]
    splits: dict[str, dict] = {}
    for split in SPLITS:
        mine = [r for r in records if r["split"] == split]
        ids = [i for r in mine for i in r["image_ids"]]
        splits[split] = {
            "samples": len(ids),
            "bytes": sum(r["bytes"] for r in mine),
            "shards": [{k: r[k] for k in ("name", "samples", "bytes", "sha256")} for r in mine],
            "label_stats": split_stats([rows_by_id[i] for i in ids], plan.scale),
        }
        skipped += [s for r in mine for s in r["skipped"]]
    skipped.sort(key=lambda s: s["line"])
    written = sum(s["samples"] for s in splits.values())
    opts = asdict(plan.options)
    method = opts.pop("split")
    return {
        "format_version": FORMAT_VERSION,
        "created_by": f"avakit {__version__}",
        "sources": plan.sources,
        "labels": plan.scale.as_dict(),
        "preprocessing": {
            "short_side": opts.pop("short_side"),
            "quality": opts.pop("quality"),
            "format": "jpg",
            "exif_orientation": "applied",
            "resample": "jpeg-dct-scaling+bilinear",
        },
        "shard_size": opts.pop("shard_size"),
        "split": {"method": plan.split_method or method, **opts},
        "counts": {"rows_read": plan.rows_read, "samples_written": written, "rows_skipped": len(skipped)},
        "splits": splits,
        "skipped_by_reason": dict(sorted(Counter(s["reason"] for s in skipped).items())),
        "skipped": skipped,
    }
