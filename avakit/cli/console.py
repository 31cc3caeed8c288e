"""Terminal presentation for the CLI: Rich progress bars, log lines and result tables.

Only the CLI prints; these helpers keep `cli.py` to parsing and calling the library.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from typer.core import TyperGroup

from avakit.cli import cells
from avakit.cli.cells import with_interval, with_majority
from avakit.cli.eval_extras import latency_rows
from avakit.cli.shard_summary import print_summary
from avakit.errors import AvakitError, Interrupted
from avakit.scores import AVA, HELD_OUT_SPLITS, Scale

console = Console()
err_console = Console(stderr=True)


def say(text: str) -> None:
    """Print a line holding paths or file contents: their `[...]` is text, not Rich markup."""
    console.print(escape(text), highlight=False)


def cpu_count() -> int:
    """The number of CPUs this process may run on (its affinity set where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def progress_bar(description: str, total: int, unit: str = "images"):
    """A Rich progress bar with a rate column; yields an `advance(n)` callable."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
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
    """Print a manifest's per-split table, its row counts and its skipped rows by reason."""
    print_summary(console, manifest, out)


class RichProgress:
    """trainer.Progress on a Rich bar: images/s, running loss, ETA; one bar per epoch/eval."""

    def __init__(self) -> None:
        self.bar: Progress | None = None

    def start(self, description: str, total: int | None) -> None:
        """Start a transient bar over `total` items (disabled when stderr is not a terminal)."""
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} {task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        ]
        # Off when stderr is not a terminal (CI logs, pipes): the log lines say it all there.
        self.bar = Progress(
            *columns, console=err_console, transient=True, disable=not err_console.is_terminal
        )
        self.bar.start()
        self.task_id = self.bar.add_task(description, total=total, rate="", loss="")
        self.loss = None

    def advance(self, n: int, loss: float | None = None) -> None:
        """Move the bar by `n` images; `loss` updates the running loss shown (EMA, weight 0.1)."""
        assert self.bar is not None
        if loss is not None:
            self.loss = loss if self.loss is None else 0.9 * self.loss + 0.1 * loss
        self.bar.advance(self.task_id, n)
        speed = self.bar.tasks[self.task_id].speed
        self.bar.update(
            self.task_id,
            rate=f"{speed:,.0f} img/s" if speed else "",
            loss=f"loss {self.loss:.4f}" if self.loss is not None else "",
        )

    def stop(self) -> None:
        """Stop and drop the current bar, if there is one."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        """One bar for the `with` block (stopped however it ends); yields `advance`."""
        self.start(description, total)
        try:
            yield self.advance
        finally:
            self.stop()


class RichDemoReporter:
    """avakit.demo.DemoReporter on the terminal: step lines, the shard bar and tables, training logs."""

    def __init__(self) -> None:
        self.progress = RichProgress()

    def line(self, text: str) -> None:
        """Print a line; paths in it are text, not markup."""
        say(text)

    def sharding(self, total: int) -> Any:
        """A Rich progress bar over the `total` images to shard; yields `advance(n)`."""
        return progress_bar("sharding", total)

    def sharded(self, manifest: dict, folder: Path) -> None:
        """Print the shard summary of `manifest` for `folder`."""
        print_shard_summary(manifest, folder)

    def training(self) -> RichProgress:
        """Show the library's log lines on the terminal; returns the Rich progress for training."""
        log_to_console()
        return self.progress

    def trained(self, run_dir: Path) -> None:
        """Print the val/test metrics table of the run in `run_dir`."""
        print_results(run_dir)


def log_to_console() -> None:
    """Show the library's log lines (the same lines as training.log) on the terminal."""
    from rich.logging import RichHandler

    logger = logging.getLogger("avakit")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        handler = RichHandler(
            console=err_console,
            show_path=False,
            show_level=False,
            show_time=False,
            markup=False,
            highlighter=None,
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def print_results(run_dir: Path) -> None:
    """The val/test metrics table of a finished run (nothing when the run was cut short).

    SRCC and PLCC with their 95% intervals; Acc (beside the majority-class rate) only where a
    threshold applied.
    """
    results = run_dir / "results.json"
    if not results.is_file():
        return
    found = json.loads(results.read_text())
    if cells.run_task(found) in ("pairwise", "clip"):
        return console.print(cells.task_results_table(found, cells.run_task(found)))
    splits = [s for s in HELD_OUT_SPLITS if isinstance(found.get(s), dict)]
    has_acc = any("accuracy" in found[s] for s in splits)
    chosen = found.get("select_metric", "srcc")
    table = Table(title=f"best epoch {found['best_epoch']} of {found['epochs']} (by val {chosen})")
    table.add_column("split")
    for name in ("SRCC [95% CI]", "PLCC [95% CI]", *(["Acc"] if has_acc else []), "MAE", "n"):
        table.add_column(name, justify="right")
    for split in splits:
        m = found[split]
        acc = [with_majority(m, "\n") if "accuracy" in m else "-"] if has_acc else []
        cis = (with_interval(m, key, "\n") for key in ("srcc", "plcc"))
        table.add_row(split, *cis, *acc, f"{m.get('mae', float('nan')):.4f}", str(m.get("n", 0)))
    console.print(table)


# What Ctrl-C leaves behind, per command (train, once its run folder exists, says it itself).
INTERRUPTED = {
    "shard": "finished shards are kept; run the same command to resume",
    "features": "splits already in the cache are kept; run the same command to resume",
    "train": "nothing was written (the run folder did not exist yet)",
    "evaluate": "results are written only when complete, so none were written; run the same command again",
    "predict": "no scores were written; run the same command again",
    "report": "the report folder may be incomplete; run the same command again to rebuild it",
    "export": "the ONNX file(s) may be missing or not parity-checked; run the same command again",
    "inspect": "inspect writes nothing; run it again to check the shards",
    "demo": "the synthetic data and finished shards are kept and reused by the same command; its "
    "training then starts a new run",
}


def interrupted_line(command: str | None, error: KeyboardInterrupt) -> str:
    """The line Ctrl-C prints: what is kept and how to go on."""
    if isinstance(error, Interrupted):
        return str(error)
    return f"interrupted: {INTERRUPTED.get(command or '', 'nothing more was done')}"


def print_lost(split: str, counts: dict) -> None:
    """One line: how many of a split's samples were not used, and why."""
    lost = ", ".join(f"{reason} {n:,}" for reason, n in counts["lost"].items())
    of = f" of {counts['samples_expected']:,}" if counts["samples_expected"] is not None else ""
    seen = counts["samples_seen"]
    err_console.print(
        f"[yellow]{split}:[/yellow] {seen:,}{of} samples used; not used: {lost}", highlight=False
    )


def print_features(meta: dict) -> None:
    """The features table: images cached per split, losses, where and how fast (extract_features' result)."""
    pairs = "photos" in meta  # a pairwise cache: series of photos
    extra = "" if pairs else f" + {len(meta['iqa_names'])} IQA"
    table = Table(
        title=f"features: {meta['fingerprint']['backbone']} {meta['fingerprint']['layer']}, "
        f"{meta['feature_dim']}-d{extra}"
    )
    table.add_column("split")
    for col in ("series", "photos") if pairs else ("images",):
        table.add_column(col, justify="right")
    for split, count in meta["splits"].items():
        table.add_row(split, f"{count:,}", *((f"{meta['photos'].get(split, 0):,}",) if pairs else ()))
    console.print(table)
    for split, counts in meta.get("counts", {}).items():
        if counts["lost"]:
            print_lost(split, counts)
    console.print(
        escape(f"cache: {meta['cache']}  ({meta['images_per_s']:,.0f} images/s this run)"), highlight=False
    )


def print_predictions(predictions: list, scale: Scale = AVA) -> None:
    """`predict --format table`: a row per image (score, std, error), the score headed by what it
    is (scale.score_name, e.g. "MOS (0-100)"); a pairwise model's relative score: no std, a note."""
    pairs = scale.kind == "pairs"
    table = Table(caption=cells.RELATIVE_SCORE if pairs else None, caption_justify="left")
    score_cols = ("relative score",) if pairs else (scale.score_name, "std")
    for col in ("image", *score_cols, "error"):
        table.add_column(escape(col), justify="left" if col in ("image", "error") else "right")
    for p in predictions:
        score = f"{p.mean_score:.3f}" if p.mean_score is not None else "-"
        std = () if pairs else (f"{p.std:.3f}" if p.std is not None else "-",)
        table.add_row(escape(p.path), score, *std, escape(p.error or ""))
    console.print(table)


def print_unscored(predictions: list) -> int:
    """One red line per image that could not be scored; returns how many."""
    failed = [p for p in predictions if p.error]
    for p in failed:
        err_console.print(
            f"[red]could not score[/red] {escape(f'{p.path}: {p.error}')}", highlight=False, soft_wrap=True
        )
    return len(failed)


def print_evaluation(report: dict, run_name: str, written: Any) -> None:
    """The metrics table of one `evaluate` call, its losses and the files it wrote."""
    m, split = report["metrics"], report["split"]
    epoch, tta = report["epoch"], report["tta"]
    title = f"{run_name}: {split} split, {report['checkpoint']} (epoch {epoch}), tta {tta}"
    task = cells.run_task(report)
    pairwise = task == "pairwise"  # pair metrics; its samples are series (a clip run's: segments)
    table = Table(title=escape(title), caption=cells.task_caption(task), caption_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in cells.clip_rows(m) if task == "clip" else cells.eval_rows(m, pairwise):
        table.add_row(name, value)
    expected = report["samples_expected"]
    of = f" of {expected}" if expected is not None else ""
    samples = {"pairwise": "series", "clip": "segments"}.get(task, "samples")
    table.add_row(samples, f"{m['n']}{of}")
    for name, value in latency_rows(report):  # desktop, and the phone proxy when measured
        table.add_row(name, value)
    console.print(table)
    if report["lost"]:
        print_lost(split, report)
    console.print(escape(f"wrote {cells.written_files(written, pairwise)}"), highlight=False)


def print_export(result: dict) -> None:
    """The parity table of `export` (FP32 vs torch, INT8 vs FP32) and its notes."""
    p, sizes = result["parity"], result["sizes_mb"]
    name = result.get("score_name", AVA.score_name)
    table = Table(title=escape(f"parity on {p['n']} inputs ({p['inputs']}), {name}"))
    for col in ("file", "MB", "max |Δ score|", "SRCC"):
        table.add_column(col, justify="left" if col == "file" else "right")
    for precision, against in (("fp32", "torch"), ("int8", "FP32")):
        if result[precision] is not None:
            table.add_row(
                escape(f"{result[precision]} (vs {against})"),
                f"{sizes[precision]:.1f}",
                f"{p[precision + '_max_abs_diff']:.2e}",
                f"{p[precision + '_srcc']:.6f}",
            )
    console.print(table)
    for note in result["notes"]:
        console.print(escape(f"note: {note}"), highlight=False)


# The usage-error base class of the click that typer runs on (its own vendored copy in typer >= 0.20)
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class ErrorGroup(TyperGroup):
    """Turns AvakitError into one red line on stderr and its exit code (no traceback)."""

    def invoke(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        """Run the command; an AvakitError or a usage error becomes one red line and its exit code."""
        try:
            return super().invoke(ctx)
        except AvakitError as e:  # one line even when a path or value holds a newline
            message = str(e).replace("\r", "\\r").replace("\n", "\\n")
            err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except _UsageError as e:  # a bad option value: one line too, not Typer's box
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            # Typer words an enum's refusal "Value error, 'x' is not one of ...": drop the prefix
            message = escape(e.format_message().replace("\n", " ").replace(": Value error, ", ": "))
            err_console.print(f"[red]error:[/red] {message}{where}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except OSError as e:  # a write outside avakit.fileio (a library's own file): still one line
            from avakit.fileio import is_disk_full

            if not is_disk_full(e):
                raise
            where = f" while writing {e.filename}" if e.filename else ""
            err_console.print(
                f"[red]error:[/red] no space left on device{where}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(1) from None
        except KeyboardInterrupt as e:
            err_console.print(interrupted_line(ctx.invoked_subcommand, e), highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
