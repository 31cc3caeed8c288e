"""`avakit sweep`: check a sweep file (every line's config) and print the sbatch line that runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from avakit.cli.console import console


def sweep(
    sweep_file: Annotated[
        Path, typer.Argument(help="One run per line: key=value overrides, as --set takes them; # comments.")
    ],
    config: Annotated[Path, typer.Option(help="YAML config every run starts from.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key for every run (before the line's).")
    ] = None,
) -> None:
    """Check every run of a sweep file (loads its config) and print the runs and the sbatch command.

    Run i is the i-th non-blank, non-comment line; `avakit train --config C --sweep FILE
    --sweep-line i --resume auto` trains it in a run folder named {name}-{overrides}, e.g.
    ava-learning_rate=1e-4_dropout=0.3. scripts/slurm/sweep.sbatch runs one per array task.

    Example: avakit sweep sweeps/lr.txt --config configs/cluster.yaml
    """
    from avakit.training.sweep import config_of_run, read_sweep, submit_command

    runs = read_sweep(sweep_file)
    table = Table(title=f"sweep {escape(str(sweep_file))}: {len(runs)} run(s)")
    table.add_column("run", justify="right")
    table.add_column("line", justify="right")
    table.add_column("run name", overflow="fold")  # whole: it is the run folder's name
    table.add_column("overrides")
    for run in runs:
        cfg = config_of_run(config, set_ or (), run, sweep_file)
        table.add_row(str(run.index), str(run.line), escape(cfg.name), escape(" ".join(run.overrides)))
    console.print(table)
    console.print("submit with:", highlight=False)
    console.print(
        escape(submit_command(config, sweep_file, len(runs), set_ or ())), highlight=False, soft_wrap=True
    )
