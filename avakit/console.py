"""Terminal presentation for the CLI: Rich progress bars, log lines and result tables.

Only the CLI prints; these helpers keep `cli.py` to parsing and calling the library.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def progress_bar(description: str, total: int, unit: str = "images"):
    """A Rich progress bar with a rate column; yields an `advance(n)` callable."""
    columns = [
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task(description, total=total, rate="")

        def advance(n: int) -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:,.0f} {unit}/s" if speed else "")

        yield advance


def print_shard_summary(manifest: dict, out: Path) -> None:
    table = Table(title=f"shards in {out}")
    for col in ("split", "samples", "shards", "MB", "mean score", "votes/image"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split, info in manifest["splits"].items():
        stats = info["label_stats"]
        table.add_row(
            split, f"{info['samples']:,}", str(len(info["shards"])), f"{info['bytes'] / 1e6:,.1f}",
            f"{stats['mean_score_mean']:.2f} ± {stats['mean_score_std']:.2f}" if stats["n"] else "-",
            f"{stats['votes_per_image_mean']:.0f}" if stats["n"] else "-",
        )
    console.print(table)
    counts = manifest["counts"]
    console.print(
        f"rows read {counts['rows_read']:,} = samples written {counts['samples_written']:,}"
        f" + rows skipped {counts['rows_skipped']:,}"
    )
    if manifest["skipped_by_reason"]:
        skipped = Table(title="skipped rows by reason (all listed in manifest.json)")
        skipped.add_column("reason")
        skipped.add_column("rows", justify="right")
        for reason, n in manifest["skipped_by_reason"].items():
            skipped.add_row(reason, f"{n:,}")
        console.print(skipped)


class RichProgress:
    """train.Progress on a Rich bar: images/s, running loss, ETA; one bar per epoch/eval."""

    def __init__(self) -> None:
        self.bar: Progress | None = None

    def start(self, description: str, total: int | None) -> None:
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]} {task.fields[loss]}"), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn()]
        # Off when stderr is not a terminal (CI logs, pipes): the log lines say it all there.
        self.bar = Progress(*columns, console=err_console, transient=True,
                            disable=not err_console.is_terminal)
        self.bar.start()
        self.task = self.bar.add_task(description, total=total, rate="", loss="")
        self.loss = None

    def advance(self, n: int, loss: float | None = None) -> None:
        assert self.bar is not None
        if loss is not None:
            self.loss = loss if self.loss is None else 0.9 * self.loss + 0.1 * loss
        self.bar.advance(self.task, n)
        speed = self.bar.tasks[self.task].speed
        self.bar.update(self.task, rate=f"{speed:,.0f} img/s" if speed else "",
                        loss=f"loss {self.loss:.4f}" if self.loss is not None else "")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def log_to_console() -> None:
    """Show the library's log lines (the same lines as training.log) on the terminal."""
    from rich.logging import RichHandler

    logger = logging.getLogger("avakit")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        handler = RichHandler(console=err_console, show_path=False, show_level=False, show_time=False,
                              markup=False, highlighter=None)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def print_results(run_dir: Path) -> None:
    """The val/test metrics table of a finished run (nothing when the run was cut short)."""
    results = run_dir / "results.json"
    if results.is_file():
        found = json.loads(results.read_text())
        table = Table(title=f"best epoch {found['best_epoch']} of {found['epochs']}")
        table.add_column("split")
        for name in ("SRCC", "PLCC", "Acc", "MAE", "n"):
            table.add_column(name, justify="right")
        for split in ("val", "test"):
            if split in found:
                m = found[split]
                keys = ("srcc", "plcc", "accuracy", "mae")
                table.add_row(split, *(f"{m.get(k, float('nan')):.4f}" for k in keys), str(m.get("n", 0)))
        console.print(table)
