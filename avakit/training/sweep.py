"""Sweep files: one training run per line of `--set` style overrides, for a slurm job array.

A line such as `training.learning_rate=1e-4 model.dropout=0.3` is split like a shell line
(shlex; a `#` starts a comment; a `--set` before a token is allowed). Blank and comment lines
are skipped; run i is the i-th remaining line (1-based, = SLURM_ARRAY_TASK_ID). Each run is
named `{cfg.name}-{slug}`, the slug spelling its overrides by their last key part
(`learning_rate=1e-4_dropout=0.3`); distinct lines always get distinct names. No torch here.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from avakit.config import Config, check_value, load_config
from avakit.errors import AvakitError
from avakit.textlines import read_lines

MAX_RUNS = 10_000  # slurm's default MaxArraySize is 1001; a longer file is a mistake
MAX_NAME = 100  # the config's name rule: a run folder name of at most 100 characters
MAX_SLUG = 48  # characters of the name that spell the overrides
_HASH = 8  # hex characters of the hash that keeps a cut or clashing slug distinct
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_DROPPED = re.compile(r"[\[\](){}'\"\s]+")  # list brackets, quotes, spaces: left out of a name
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]+")  # anything else not plain: one '-'


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its index (1-based), file line, overrides and name slug."""

    index: int
    line: int
    overrides: tuple[str, ...]
    slug: str

    def run_name(self, base: str) -> str:
        """`{base}-{slug}`, cutting `base` so the whole stays a valid run folder name."""
        return f"{base[: MAX_NAME - len(self.slug) - 1]}-{self.slug}"


def _tokens(path: Path, number: int, text: str) -> tuple[str, ...]:
    """The `key=value` overrides of one line (`--set` tolerated), each checked for its shape."""
    try:
        words = shlex.split(text, comments=True)
    except ValueError as exc:
        raise AvakitError(f"{path}:{number}: cannot split the line ({exc})") from None
    out: list[str] = []
    expect = False
    for word in words:
        if word == "--set":
            expect = True
            continue
        token = word.removeprefix("--set=")
        key, sep, _ = token.partition("=")
        if not sep or not _KEY.fullmatch(key):
            raise AvakitError(
                f"{path}:{number}: '{token}' is not an override (key.sub=value, e.g. training.batch_size=32)"
            )
        out.append(token)
        expect = False
    if expect:
        raise AvakitError(f"{path}:{number}: --set at the end of the line has no override after it")
    return tuple(out)


def _short_hash(overrides: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:_HASH]


def slug_of(overrides: Sequence[str]) -> str:
    """The overrides as a folder-safe name part: `learning_rate=1e-4_dropout=0.3`, at most
    MAX_SLUG characters (a longer one is cut and ends with a short hash of the overrides)."""
    parts = []
    for token in overrides:
        key, _, value = token.partition("=")
        parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
    slug = _UNSAFE.sub("-", _DROPPED.sub("", "_".join(parts))).strip("-") or "defaults"
    if len(slug) > MAX_SLUG:
        slug = f"{slug[: MAX_SLUG - _HASH - 1].rstrip('-_')}-{_short_hash(overrides)}"
    return slug


def _distinct(runs: list[SweepRun], path: Path) -> list[SweepRun]:
    """Runs whose slugs clash (e.g. model.dropout=0.3 and head.dropout=0.3) get a hash each;
    two lines with the same overrides are an error (both would write one run folder)."""
    seen: dict[frozenset[str], int] = {}
    for run in runs:
        same = seen.setdefault(frozenset(run.overrides), run.line)
        if same != run.line:
            raise AvakitError(
                f"{path}:{run.line}: the same overrides as line {same} (one run folder for both)"
            )
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.slug] = counts.get(run.slug, 0) + 1
    out = []
    for run in runs:
        if counts[run.slug] > 1:
            base = run.slug[: MAX_SLUG - _HASH - 1].rstrip("-_")
            run = dataclasses.replace(run, slug=f"{base}-{_short_hash(run.overrides)}")
        out.append(run)
    return out


def read_sweep(path: Path) -> list[SweepRun]:
    """Every run of a sweep file, in order; errors name FILE:LINE."""
    path = Path(path)
    runs: list[SweepRun] = []
    for line in read_lines(path):
        if line.problem:
            raise AvakitError(f"{path}:{line.number}: {line.problem}")
        overrides = _tokens(path, line.number, line.text)
        if not overrides:
            continue
        if len(runs) == MAX_RUNS:
            raise AvakitError(f"{path}:{line.number}: more than {MAX_RUNS} runs in one sweep")
        runs.append(SweepRun(len(runs) + 1, line.number, overrides, slug_of(overrides)))
    if not runs:
        raise AvakitError(f"{path}: no run lines (one line of key=value overrides per run)")
    return _distinct(runs, path)


def pick_run(runs: Sequence[SweepRun], index: int, path: Path) -> SweepRun:
    """Run `index` (1-based, as SLURM_ARRAY_TASK_ID counts) of a sweep."""
    if not 1 <= index <= len(runs):
        raise AvakitError(f"{path}: --sweep-line {index} is out of range: the file has runs 1-{len(runs)}")
    return runs[index - 1]


def config_of_run(config: Path | None, sets: Sequence[str], run: SweepRun, path: Path) -> Config:
    """The config of one sweep run: the file, then `sets`, then the run's overrides, named
    `{name}-{slug}`. A problem with the run's overrides names FILE:LINE."""
    load_config(config, sets)  # first, so a problem of the config or --set is not blamed on the line
    try:
        cfg = load_config(config, [*sets, *run.overrides])
    except AvakitError as exc:
        raise AvakitError(f"{path}:{run.line}: {exc}") from None
    name = check_value(Config, "name", run.run_name(cfg.name), f"{path}:{run.line}: name")
    return dataclasses.replace(cfg, name=name)


def sweep_loader(
    path: Path | None, index: int | None, resume: str | None = None
) -> Callable[[Path | None, Sequence[str]], Config]:
    """`avakit train --sweep FILE --sweep-line I [--resume auto]`: loads (config, --set) as run I.

    The file is read and checked now, before any training work."""
    if path is None or index is None:
        raise AvakitError("--sweep FILE and --sweep-line I go together: run I of the sweep file")
    if resume is not None and resume != "auto":
        raise AvakitError("--sweep names a new run; continue one with --resume auto, not a run folder")
    path = Path(path)
    return functools.partial(config_of_run, run=pick_run(read_sweep(path), index, path), path=path)


def sweep_config(
    config: Path | None, sets: Sequence[str], path: Path, index: int, resume: str | None = None
) -> Config:
    """Run `index`'s config of the sweep file `path`."""
    return sweep_loader(path, index, resume)(config, sets)


def submit_command(config: Path, path: Path, n_runs: int, sets: Sequence[str] = ()) -> str:
    """The sbatch line that submits a sweep as a job array (with the --set every run shares)."""
    args = " ".join(shlex.quote(str(p)) for p in (config, path))
    args += "".join(f" --set {shlex.quote(s)}" for s in sets)
    return f"sbatch --array=1-{n_runs} scripts/slurm/sweep.sbatch {args}"
