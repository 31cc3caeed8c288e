"""`avakit demo` as a library function: the whole loop on a synthetic AVA-like dataset.

Generate, shard, train, evaluate, report and score one photo, all under one folder. Nothing is
printed here: each step goes to a `DemoReporter` (the CLI's prints with Rich).
Stage modules are imported inside `run_demo`, so importing this module stays light.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from avakit.errors import AvakitError

if TYPE_CHECKING:
    from avakit.training.trainer import Progress


class DemoReporter(Protocol):
    """Where `run_demo` reports its steps."""

    def line(self, text: str) -> None:
        """A line of text (paths in it are text, not markup)."""

    def sharding(self, total: int) -> AbstractContextManager[Callable[[int], None]]:
        """A progress context over `total` images to shard; yields `advance(n)`."""

    def sharded(self, manifest: dict, folder: Path) -> None:
        """The shards are written: their manifest and folder."""

    def training(self) -> Progress | None:
        """Training starts; returns the `avakit.training.trainer.Progress` for training and evaluation."""

    def trained(self, run_dir: Path) -> None:
        """Training ended: its run folder."""


@dataclass(frozen=True)
class DemoResult:
    """What the demo made: the run folder and its report.html."""

    run_dir: Path
    report: str


def run_demo(
    out: Path,
    config: Path,
    n: int = 600,
    seed: int = 0,
    reporter: DemoReporter | None = None,
    workers: int = 1,
) -> DemoResult:
    """Everything goes under `out`: ava/ (AVA.txt, tags, challenges, images), shards/, outputs/.

    An existing synthetic dataset in out/ava is reused (`n` and `seed` are then not applied).
    """
    from avakit.config import load_config
    from avakit.dataset.plan import ShardOptions, plan_sharding
    from avakit.dataset.shards import write_shards
    from avakit.dataset.synthetic import make_synthetic_ava
    from avakit.inference.predict import load_scorer, score_images
    from avakit.report.build import build_report
    from avakit.training import fit as fitting
    from avakit.training.evaluate import evaluate_run

    report = reporter or _Silent()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AvakitError(f"out {out}: exists and is not a folder")
    # absolute paths as quoted YAML strings: a folder named `pipe:...` or `[1]` stays a folder
    where = {"data.shards": out.resolve() / "shards", "output_dir": out.resolve() / "outputs"}
    cfg = load_config(config, [f"{key}={json.dumps(str(path))}" for key, path in where.items()])
    data = out / "ava"
    if not (data / "AVA.txt").is_file():
        report.line(f"1/6 generating {n} synthetic AVA-like images in {data}")
        make_synthetic_ava(data, n=n, seed=seed)
    else:
        report.line(f"1/6 using the synthetic dataset in {data} (--n and --seed not applied)")
    report.line(f"2/6 sharding into {out / 'shards'}")
    plan = plan_sharding(data / "AVA.txt", data / "images", out / "shards", ShardOptions(shard_size=100))
    with report.sharding(plan.pending_images) as advance:
        manifest = write_shards(plan, workers, advance)
    report.sharded(manifest, out / "shards")
    report.line(f"3/6 training {config}")
    progress = report.training()
    run_dir = fitting.fit(cfg, progress=progress)
    report.trained(run_dir)
    report.line("4/6 evaluating best_model.pt on the test split")
    metrics = evaluate_run(run_dir, "test", progress=progress)["metrics"]
    report.line(
        f"test SRCC {metrics['srcc']:.4f}, PLCC {metrics['plcc']:.4f}, "
        f"Acc {metrics['accuracy']:.4f} (majority class {metrics['majority_baseline']:.4f}), "
        f"n={metrics['n']}"
    )
    report.line("5/6 writing the report")
    summary = build_report(run_dir, tags=data / "tags.txt", challenges=data / "challenges.txt")
    photo = sorted((data / "images").glob("*.jpg"))[0]
    report.line(f"6/6 scoring one photo: {photo}")
    scored = score_images(load_scorer(run=run_dir), [photo])[0]
    report.line(f"{photo.name}: mean score {scored.mean_score:.2f} (std {scored.std:.2f})")
    return DemoResult(run_dir, summary["report"])


class _Silent:
    """A reporter that reports nothing (a library caller that only wants the result)."""

    def line(self, text: str) -> None:
        pass

    def sharding(self, total: int) -> AbstractContextManager[Callable[[int], None]]:
        from contextlib import nullcontext

        return nullcontext(lambda n: None)

    def sharded(self, manifest: dict, folder: Path) -> None:
        pass

    def training(self) -> None:
        return None

    def trained(self, run_dir: Path) -> None:
        pass
