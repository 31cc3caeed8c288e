"""Benchmark `avakit shard` against a naive one-process Pillow loop on the same images.

Both read the same generated full-size JPEGs (800x534, ~100 KB, like AVA's photos) and write
256-px-short-side JPEGs at quality 90. Reports images/s per core for each and the ratio
(target >= 2x per core), and the scaling of `shard` with --workers (target: near-linear).

    .venv/bin/python benchmarks/bench_shard.py [--n 200] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

from benchlog import Check, command_line, load, save
from PIL import Image

from avakit.dataset.plan import ShardOptions, plan_sharding
from avakit.dataset.shards import write_shards
from avakit.dataset.synthetic import make_synthetic_ava


def naive_baseline(ids: list[int], images: Path, out: Path) -> float:
    """Seconds for the hand-rolled loop: full decode, resize (Pillow's default filter), encode, tar."""
    start = time.perf_counter()
    with tarfile.open(out, "w") as tar:
        for image_id in ids:
            im = Image.open(images / f"{image_id}.jpg").convert("RGB")
            scale = 256 / min(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=90)
            info = tarfile.TarInfo(f"{image_id}.jpg")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    return time.perf_counter() - start


def avakit_shard(data: Path, out: Path, workers: int) -> float:
    """Seconds for `avakit shard` (library call) with `workers` processes."""
    start = time.perf_counter()
    plan = plan_sharding(
        data / "AVA.txt", data / "images", out, ShardOptions(shard_size=25, val_ratio=0, test_ratio=0)
    )
    write_shards(plan, workers=workers)
    return time.perf_counter() - start


def main() -> int:
    """Time the naive loop and `avakit shard` per worker count; print, write the JSON; 1 on FAIL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of images")
    parser.add_argument("--workers", default=f"1,{os.cpu_count()}", help="worker counts to try")
    parser.add_argument("--repeats", type=int, default=3, help="best of N timings")
    args = parser.parse_args()
    load_before = load()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ava = make_synthetic_ava(tmp / "ava", n=args.n, seed=0, fixed_size=(800, 534), quality=90)
        sizes = [p.stat().st_size for p in ava.images.iterdir()]
        print(f"{args.n} images 800x534, median {statistics.median(sizes) / 1e3:.0f} KB")
        base = min(
            naive_baseline(list(ava.image_ids), ava.images, tmp / f"naive{r}.tar")
            for r in range(args.repeats)
        )
        base_rate = args.n / base
        print(f"{'naive Pillow loop, 1 process':32s} {base_rate:8.1f} img/s  {base_rate:8.1f} img/s/core")
        rates = {}
        for workers in [int(w) for w in args.workers.split(",")]:
            best = min(avakit_shard(ava.root, tmp / f"s{workers}-{r}", workers) for r in range(args.repeats))
            rates[workers] = args.n / best
            print(
                f"{f'avakit shard --workers {workers}':32s} {rates[workers]:8.1f} img/s  "
                f"{rates[workers] / workers:8.1f} img/s/core"
            )
    check = Check("per-core speed-up vs naive", rates[1] / base_rate, 2, unit="x")
    print(f"\n{check.line()}")
    measured = f"{rates[1]:.0f} vs {base_rate:.0f} img/s per core: **{check.value:.1f}x**"
    scaling = {}
    for workers, rate in rates.items():
        if workers > 1:
            scaling[workers] = rate / rates[1]
            print(
                f"scaling 1 -> {workers} workers: {scaling[workers]:.2f}x "
                f"({scaling[workers] / workers:.0%} of linear)"
            )
            measured += (
                f"; {workers} workers {rate:.0f} img/s (**{scaling[workers]:.1f}x**, "
                f"{scaling[workers] / workers:.0%} of linear)"
            ).replace("%", " %")
    figures = {
        "images": args.n,
        "naive_img_per_s": base_rate,
        "shard_img_per_s": {str(w): r for w, r in rates.items()},
        "per_core_speedup": check.value,
        "scaling": {str(w): s for w, s in scaling.items()},
    }
    return save(
        "bench_shard",
        command=command_line(),
        what=f"`avakit shard` vs a naive one-process Pillow loop (full decode, `resize`, encode) on "
        f"{args.n} photos of 800x534 (~90 KB)",
        measured=measured,
        target=">= 2x per core, near-linear",
        checks=[check],
        figures=figures,
        load_before=load_before,
        options=vars(args),
    )


if __name__ == "__main__":
    raise SystemExit(main())
