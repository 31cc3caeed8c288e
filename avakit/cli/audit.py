"""`avakit audit`: check a culling set (good/ and bad/ folders, splits.json) before sharding it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from avakit.cli.console import console, cpu_count, progress_bar, say
from avakit.errors import AvakitError

MAX_LINES = 50  # finding lines shown on screen; the JSON report has all of them
_STYLE = {"error": "red", "warning": "yellow"}


def audit(
    root: Annotated[
        Path,
        typer.Argument(
            help="The folder holding <folder>/good/*.jpg and <folder>/bad/*.jpg, or its parent "
            "holding training_files/."
        ),
    ],
    splits: Annotated[
        Path | None,
        typer.Option(
            help='splits.json: {"train": [...], "val": [...], "test": [...]}, lists of folder names.',
            show_default="ROOT/splits.json, else beside training_files/",
        ),
    ] = None,
    min_side: Annotated[int, typer.Option(min=1, max=100_000, help="Shortest allowed side, px.")] = 224,
    near_distance: Annotated[
        int,
        typer.Option(
            min=-1,
            max=512,
            help="Near duplicates: photos whose 512-bit perceptual hashes differ in at most this "
            "many bits (-1: exact duplicates only).",
        ),
    ] = 56,
    report: Annotated[
        Path, typer.Option(help="The JSON report to write (every finding, per-folder counts).")
    ] = Path("audit.json"),
) -> None:
    """Check a culling set before `avakit shard --folders`; exit 1 on any error, 0 with warnings only.

    Errors: a folder in no split or in two, a listed folder missing, good/ or bad/ missing or
    empty, a photo that does not decode or is smaller than --min-side, and any exact (sha256) or
    near (perceptual hash) copy of a photo in another split (a leak). Warnings: a folder with more
    than 4 good per bad photo or 4 bad per good, an ICC profile other than sRGB, and copies across
    folders of one split or exact copies within a folder (near copies within a folder are bursts,
    not reported). One line per finding names the file, relative to ROOT.

    Example: avakit audit data/training_files --splits data/splits.json
    """
    from avakit.dataset.folders_audit import plan_audit, run_audit
    from avakit.fileio import write_json_atomic

    plan = plan_audit(root, splits)
    say(f"auditing {plan.root}: {len(plan.folders)} folders, {len(plan.photos)} photos ({plan.splits_path})")
    with progress_bar("auditing", len(plan.photos)) as advance:
        result = run_audit(plan, min_side, near_distance, advance, workers=min(8, cpu_count()))
    write_json_atomic(report, result.report())
    print_audit(result.by_check(), [(f.severity, f.line()) for f in result.findings])
    say(f"report: {report}")
    if result.errors:
        raise AvakitError(f"{plan.root}: {result.errors} error(s), {result.warnings} warning(s)", exit_code=1)
    tail = f" ({result.warnings} warning(s))" if result.warnings else ""
    console.print(f"[green]ok[/green]: no errors{escape(tail)}", highlight=False)


def print_audit(by_check: dict[str, tuple[int, int]], lines: list[tuple[str, str]]) -> None:
    """The per-check table, then up to MAX_LINES finding lines (errors first)."""
    table = Table(title="audit")
    table.add_column("check")
    table.add_column("errors", justify="right")
    table.add_column("warnings", justify="right")
    for check, (errors, warnings) in by_check.items():
        table.add_row(
            check,
            f"[red]{errors}[/red]" if errors else "0",
            f"[yellow]{warnings}[/yellow]" if warnings else "0",
        )
    console.print(table)
    for severity, line in lines[:MAX_LINES]:
        console.print(f"[{_STYLE[severity]}]{escape(line)}[/]", highlight=False, soft_wrap=True)
    if len(lines) > MAX_LINES:
        console.print(f"... {len(lines) - MAX_LINES} more in the report", highlight=False)
