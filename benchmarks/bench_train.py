"""Benchmark training throughput with avakit's real shard loader against in-memory batches.

Generates full-size JPEGs (800x534, ~90 KB at quality 90, like AVA's photos), shards them with
avakit (short side 256) and builds the model, optimizer and step context with avakit's own
`build_trainer` from configs/cpu.yaml (backbone resnet18 by default, pretrained false: no
download). Then times the same number of optimizer steps with `train_one_epoch` two ways:

* loader: batches streamed by `make_loader` over the train split with `TrainPreset`, with
  `--workers` DataLoader workers, exactly as `avakit train` builds it (the workers decode and
  augment while the model steps, on the same cores);
* in memory: the same batches (same seed and epoch) loaded into a list beforehand, so only
  the model step is timed.

Each way has its own freshly built trainer (same seed: same weights) and runs one untimed
warm-up step (worker start-up, first allocations); then `--repeats` rounds alternate the two
ways, each round timing `--steps` optimizer steps per way, so a neighbour's load on a shared
machine hits both alike (the load average is printed before and after). With one step per
round (the default) the loader's workers refill the batch a step took while that step runs,
so the loading work still lands in the loader's rounds. Each way's best round counts.

Target: loader throughput >= 95 % of in-memory throughput.

On a busy shared machine torch's intra-op threads stall at every parallel region whenever a
neighbour holds a core, and both ways slow down several-fold in those rounds (the median
column shows it); --threads 1 is steadier there (but is not what `avakit train` runs with).

    .venv/bin/python benchmarks/bench_train.py [--steps 1] [--repeats 15] [--batch-size 16]
        [--workers 2] [--backbone resnet18] [--crop 224] [--threads 0]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from benchlog import Check, command_line, load, save

from avakit.config import Config, load_config
from avakit.dataset.plan import ShardOptions, plan_sharding
from avakit.dataset.shards import write_shards
from avakit.dataset.sources import resolve_split
from avakit.dataset.synthetic import make_synthetic_ava
from avakit.training.distributed import DistInfo
from avakit.training.engine import EpochStats, train_one_epoch
from avakit.training.loader import Batch, SampleDecoder, make_loader
from avakit.training.trainer import Trainer, build_trainer
from avakit.training.transforms import TrainPreset

CPU_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cpu.yaml"


def prepare_shards(tmp: Path, n: int) -> Path:
    """Generate n full-size photos and shard them with avakit (10 % validation, 32 per shard)."""
    ava = make_synthetic_ava(tmp / "ava", n=n, seed=0, fixed_size=(800, 534), quality=90)
    plan = plan_sharding(
        ava.ava_txt,
        ava.images,
        tmp / "shards",
        ShardOptions(short_side=256, quality=90, shard_size=32, val_ratio=0.1, test_ratio=0.0),
    )
    write_shards(plan, workers=2)
    return tmp / "shards"


def images_needed(batches: int, batch_size: int, workers: int) -> int:
    """Images to generate so that the first `batches` batches are all full.

    Each worker streams its own shards (32 images) and ends on a partial batch; batches come
    from the workers in turn, so every worker needs its share plus one batch, plus one shard
    for an uneven split; 10 % of the images go to validation.
    """
    per_worker = math.ceil(batches / max(1, workers)) + 1
    train = max(1, workers) * per_worker * batch_size + 32
    return math.ceil(train / 0.9) + 1


def make_config(args: argparse.Namespace, shards: Path, out: Path) -> Config:
    """configs/cpu.yaml with the benchmark's overrides (no pretrained weights, no telemetry)."""
    overrides = [
        f"data.shards={shards}",
        f"data.num_workers={args.workers}",
        f"output_dir={out}",
        f"model.backbone={args.backbone}",
        "model.pretrained=false",
        f"transform.crop_size={args.crop}",
        f"transform.resize_size={max(256, args.crop)}",
        "telemetry.enabled=false",
        "device=cpu",
    ]
    if args.batch_size:
        overrides.append(f"training.batch_size={args.batch_size}")
    return load_config(CPU_CONFIG, overrides)


def train_loader(cfg: Config, epoch: int = 0) -> torch.utils.data.DataLoader:
    """The training loader as `avakit train` builds it for one epoch (single process, CPU)."""
    source = resolve_split(cfg.data.shards, "train")
    decoder = SampleDecoder(TrainPreset(cfg.transform), cfg.transform.crop_size)
    return make_loader(
        source,
        decoder,
        batch_size=cfg.training.batch_size,
        train=True,
        seed=cfg.seed,
        epoch=epoch,
        num_workers=cfg.data.num_workers,
        shuffle_buffer=cfg.data.shuffle_buffer,
    )


def fresh_trainer(cfg: Config, run_dir: Path) -> Trainer:
    """A newly built trainer: the same seed gives the same initial weights every time."""
    return build_trainer(cfg, run_dir, 1.0, DistInfo(), torch.device("cpu"))


class Way:
    """One way of feeding the model: its trainer, batch stream and own torch RNG state (dropout)."""

    def __init__(self, tr: Trainer, batches: Iterable[Batch]) -> None:
        self.tr = tr
        self.it = iter(batches)  # an iterator: every call below continues the same stream
        self.rng = torch.get_rng_state()
        self.rounds: list[EpochStats] = []

    def steps(self, steps: int, first_step: int) -> EpochStats:
        """`steps` optimizer steps with `train_one_epoch`, which times them."""
        torch.set_rng_state(self.rng)
        self.tr.ctx.max_steps = steps
        stats = train_one_epoch(self.tr.ctx, self.it, 0, first_step)
        self.rng = torch.get_rng_state()
        if stats.steps < steps:
            raise SystemExit(f"only {stats.steps} of {steps} steps had data; raise --n")
        return stats


def run(cfg: Config, run_dir: Path, steps: int, rounds: int) -> dict[str, Way]:
    """Warm-up step each way, then `rounds` rounds of `steps` timed steps, alternating the ways.

    The in-memory batches are exactly the loader's first 1 + rounds * steps batches (same seed
    and epoch), and both trainers start from the same weights, so both ways compute the same
    losses (with workers > 0; with 0, the crops draw from the same RNG as dropout). The
    loader's workers keep their prefetch queue full: the batch a step takes is replaced
    while that step runs, so the loading work lands in the loader's own rounds.
    """
    loader_it = iter(train_loader(cfg))
    batches = [next(loader_it) for _ in range(1 + rounds * steps)]
    del loader_it  # shuts its workers down
    ways = {
        "memory": Way(fresh_trainer(cfg, run_dir), batches),
        "loader": Way(fresh_trainer(cfg, run_dir), train_loader(cfg)),
    }
    for way in ways.values():
        way.steps(1, 0)  # warm-up: worker start-up, first allocations
    for r in range(rounds):
        for way in ways.values():
            way.rounds.append(way.steps(steps, 1 + r * steps))
    return ways


def report(ways: dict[str, Way], cfg: Config, steps: int) -> dict[str, dict[str, float]]:
    """Print the table (best and median round, mean loss), the ratio and the PASS/FAIL line.

    Returns the best and median images/s of each way.
    """
    t, rounds = cfg.training, len(ways["memory"].rounds)
    print(
        f"\n{cfg.model.backbone}, crop {cfg.transform.crop_size}, batch {t.batch_size}, {rounds} rounds x "
        f"{steps} step(s) each way, {cfg.data.num_workers} loader workers, "
        f"{torch.get_num_threads()} torch threads"
    )
    print(f"{'batches from':28s} {'best img/s':>10s} {'s/step':>7s} {'median img/s':>13s} {'mean loss':>10s}")
    names = {"memory": "in-memory list (model only)", "loader": "avakit shard loader"}
    best, median = {}, {}
    for key, way in ways.items():
        best[key] = max(s.img_per_s for s in way.rounds)
        median[key] = statistics.median(s.img_per_s for s in way.rounds)
        loss = sum(s.loss * s.samples for s in way.rounds) / sum(s.samples for s in way.rounds)
        per_step = t.batch_size / best[key]
        print(f"{names[key]:28s} {best[key]:10.2f} {per_step:7.3f} {median[key]:13.2f} {loss:10.4f}")
    print(f"\nloader vs in-memory, medians: {median['loader'] / median['memory']:.1%}")
    return {"best_img_per_s": best, "median_img_per_s": median}


def main() -> int:
    """Generate and shard the photos, time both ways, print the table and the verdict; 1 on FAIL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1, help="timed optimizer steps per round")
    parser.add_argument("--batch-size", type=int, default=0, help="batch size (0 = configs/cpu.yaml's)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (>= 0)")
    parser.add_argument("--backbone", default="resnet18", help="model.backbone")
    parser.add_argument("--crop", type=int, default=224, help="transform.crop_size")
    parser.add_argument("--repeats", type=int, default=15, help="rounds, alternating the ways; best of each")
    parser.add_argument("--n", type=int, default=0, help="images to generate (0 = just enough)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for the model (0 = default)")
    args = parser.parse_args()
    if args.steps < 1 or args.repeats < 1 or args.workers < 0:
        parser.error("--steps and --repeats must be >= 1, --workers >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    load_before = load()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        probe = make_config(args, tmp / "shards", tmp / "runs")
        n = args.n or images_needed(args.repeats * args.steps + 1, probe.training.batch_size, args.workers)
        start = time.perf_counter()
        cfg = make_config(args, prepare_shards(tmp, n), tmp / "runs")
        print(f"{n} images generated and sharded in {time.perf_counter() - start:.0f} s")
        ways = run(cfg, tmp / "runs", args.steps, args.repeats)
    figures = report(ways, cfg, args.steps)
    best, median = figures["best_img_per_s"], figures["median_img_per_s"]
    check = Check("loader vs in-memory, best rounds", best["loader"] / best["memory"], 0.95, unit="%")
    print(check.line())
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    median_ratio = median["loader"] / median["memory"]
    measured = (
        f"{best['loader']:.1f} vs {best['memory']:.1f} img/s best rounds (**{check.value:.0%}**), "
        f"medians {median_ratio:.1%}"
    ).replace("%", " %")
    return save(
        "bench_train",
        command=command_line(),
        what=f"training img/s ({cfg.model.backbone}, {cfg.transform.crop_size} px, batch "
        f"{cfg.training.batch_size}) with the real loader vs in-memory tensors",
        measured=measured,
        target=">= 95 %",
        checks=[check],
        figures={**figures, "ratio_best": check.value, "ratio_median": median_ratio, "images": n},
        load_before=load_before,
        options=vars(args),
    )


if __name__ == "__main__":
    raise SystemExit(main())
