"""Reading a labels table (CSV or parquet): one row per image, K-point vote counts or a MOS.

Columns (names are matched after trimming spaces, case-insensitively): `image` (a path relative
to the images folder, kept as written); then either `votes_1..votes_K` (counts of the K points,
2 <= K <= 101, no gaps) or `mos` (with optional `std` and `n`); optional `split` (train, val or
test; empty means none), `group` (a content id: a group never straddles splits) and `weight`
(> 0). Other columns are ignored and listed in `LabelTable.ignored_columns`.

A CSV is UTF-8 (a byte order mark is dropped), comma-separated (no `;` or tab dialects), with a
header row; every value is read as text and validated here (integers in ASCII digits, numbers
finite), so no value is guessed by a CSV library. A bad row is a `LabelSkip` naming its line (the
header is line 1), or with `strict` one AvakitError; a table that cannot be used at all (no
`image` column, neither or both label kinds, a gap in the votes_ columns, a MOS table without a
declared scale, no valid row) is an AvakitError naming the file. No input gives a traceback.
"""

from __future__ import annotations

import codecs
import csv
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from avakit.dataset import label_cells as cells
from avakit.errors import AvakitError
from avakit.scores import MAX_K, MIN_K
from avakit.textlines import show

if TYPE_CHECKING:
    import pandas as pd

REASONS = (
    "malformed row",
    "missing image name",
    "bad image path",
    "duplicate image",
    "bad votes",
    "bad mos",
    "bad std",
    "bad n",
    "bad split",
    "bad group",
    "bad weight",
)
SUFFIXES = (".csv", ".parquet")
MAX_FILE_BYTES = 2 * 1024**3  # a table of 10M rows with a few columns is well below 2 GB
MAX_ROWS = 10_000_000
MAX_LINE_BYTES = 1 << 20  # one CSV line; a row with 101 vote counts and a long path is ~10 KB
_VOTES = re.compile(r"votes_([0-9]+)")
_SHOWN_SKIPS = 3  # reasons quoted in the "no valid rows" message


@dataclass(frozen=True, kw_only=True)
class LabelRow:
    """One valid row of a labels table."""

    line: int  # 1-based line of the source file (CSV: header is line 1); presets: line in the release
    image: str  # path relative to the images folder, as written in the table
    votes: tuple[int, ...] | None = None  # K counts (kind "votes")
    mos: float | None = None  # kind "mos", in the scale's native units
    std: float | None = None
    n: int | None = None  # raters
    split: str | None = None  # train/val/test when the table says so
    group: str | None = None  # content id: a group never straddles splits
    weight: float | None = None


@dataclass(frozen=True, kw_only=True)
class LabelSkip:
    """A row that gave no label, with a short reason code (one of `REASONS`) and detail."""

    line: int
    image: str | None
    reason: str
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class LabelTable:
    """A validated labels table: its kind, scale and direction, rows and skipped rows."""

    kind: str  # "votes" | "mos"
    k: int | None  # number of points (votes)
    scale: tuple[float, float]  # (lo, hi) in native units; votes: (1, K) unless declared
    higher_is_better: bool
    rows: tuple[LabelRow, ...]
    skipped: tuple[LabelSkip, ...]
    rows_read: int
    source: str  # the file as given (or the preset name), for messages and the manifest
    ignored_columns: tuple[str, ...] = ()  # columns present but not used, as named in the table


@dataclass(frozen=True)
class _Columns:
    """Where each used column sits in the frame."""

    kind: str
    image: int
    votes: tuple[int, ...]  # positions of votes_1..votes_K
    optional: dict[str, int]  # mos, std, n, split, group, weight -> position
    ignored: tuple[str, ...]


def parse_scale(text: str) -> tuple[float, float]:
    """`--scale LO:HI` -> (lo, hi), both finite and lo < hi; AvakitError on anything else."""
    parts = text.strip().split(":")
    if len(parts) == 2 and all(cells.NUMBER.fullmatch(p.strip()) for p in parts):
        lo, hi = (float(p) for p in parts)
        if math.isfinite(lo) and math.isfinite(hi) and lo < hi:
            return lo, hi
    raise AvakitError(f"--scale must be LO:HI with finite numbers and LO < HI (e.g. 1:7), got {show(text)}")


def _check_scale(scale: Sequence[float], source: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in scale)
    except (TypeError, ValueError):
        raise AvakitError(f"{source}: the scale must be two numbers (lo, hi), got {scale!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise AvakitError(f"{source}: the scale needs finite lo < hi, got {lo:g}:{hi:g}")
    return lo, hi


def read_label_table(
    path: Path,
    *,
    scale: tuple[float, float] | None = None,
    lower_is_better: bool = False,
    strict: bool = False,
) -> LabelTable:
    """Read and validate a labels table, `.csv` or `.parquet` (see the module docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise AvakitError(
            f"{path}: a labels table must be .csv or .parquet, not {path.suffix or 'no suffix'!r}"
        )
    if not path.is_file():
        raise AvakitError(f"{path}: labels table not found")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise AvakitError(
            f"{path}: {size:,} bytes is over the {MAX_FILE_BYTES:,}-byte limit for a labels table"
        )
    options = {"scale": scale, "lower_is_better": lower_is_better, "strict": strict}
    if suffix == ".parquet":
        return table_from_frame(_read_parquet(path), str(path), first_line=1, **options)
    df, lines, malformed = _read_csv(path)
    return _table(df, str(path), lines, malformed, **options)


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
        n_rows = file.metadata.num_rows
        if n_rows > MAX_ROWS:
            raise AvakitError(
                f"{path}: {n_rows:,} rows is over the {MAX_ROWS:,}-row limit for a labels table"
            )
        return file.read().to_pandas()
    except (OSError, ValueError, TypeError, pa.ArrowException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AvakitError(f"{path}: not a readable parquet file: {first}") from None


def _text_lines(f: Any, path: Path, counter: list[int]) -> Iterator[str]:
    """The file's lines as text, each at most MAX_LINE_BYTES; counter[0] is the line number."""
    while raw := f.readline(MAX_LINE_BYTES + 1):
        counter[0] += 1
        if counter[0] == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise AvakitError(f"{path}:{counter[0]}: line longer than {MAX_LINE_BYTES:,} bytes")
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise AvakitError(
                f"{path}:{counter[0]}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1});"
                " save the table as UTF-8"
            ) from None


def _read_csv(path: Path) -> tuple[pd.DataFrame, list[int], list[LabelSkip]]:
    """(frame of text values, line of each frame row, malformed rows) of a comma-separated file."""
    import pandas as pd

    header: list[str] | None = None
    values: list[list[str]] = []
    lines: list[int] = []
    malformed: list[LabelSkip] = []
    counter = [0]
    try:
        with path.open("rb") as f:
            reader = csv.reader(_text_lines(f, path, counter), strict=True)
            start = 1
            for fields in reader:
                line, start = start, counter[0] + 1
                if not any(v.strip() for v in fields):
                    continue  # a blank line is not a row
                if header is None:
                    header = _header(fields, path)
                elif len(fields) != len(header):
                    detail = f"{len(fields)} fields, the header has {len(header)}"
                    malformed.append(LabelSkip(line=line, image=None, reason="malformed row", detail=detail))
                else:
                    values.append(fields)
                    lines.append(line)
                if len(values) + len(malformed) > MAX_ROWS:
                    raise AvakitError(f"{path}: more than {MAX_ROWS:,} rows, the limit for a labels table")
    except csv.Error as e:
        raise AvakitError(f"{path}:{counter[0]}: not valid CSV: {e}") from None
    except OSError as e:
        raise AvakitError(f"{path}: cannot read: {e.strerror or e}") from None
    if header is None:
        raise AvakitError(f"{path}: the file is empty (a labels table needs a header row)")
    return pd.DataFrame(values, columns=header, dtype=object), lines, malformed


def _header(fields: list[str], path: Path) -> list[str]:
    """Column names of a CSV header; unnamed columns get a placeholder name (and are ignored)."""
    names = [v.strip() or f"(column {i + 1})" for i, v in enumerate(fields)]
    _columns(names, str(path))  # a table that cannot be used fails before its rows are read
    return names


def _columns(names: Sequence[Any], source: str) -> _Columns:
    """Find the used columns; AvakitError for a table without a usable set of them."""
    keys = [str(c).strip().lower() for c in names]
    where: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in where:
            raise AvakitError(f"{source}: column {str(names[i]).strip()!r} appears twice in the header")
        where[key] = i
    if "image" not in where:
        raise AvakitError(f"{source}: no 'image' column (the header has {_listed(names)})")
    votes = {int(m.group(1)): i for k, i in where.items() if (m := _VOTES.fullmatch(k))}
    has_mos = "mos" in where
    if votes and has_mos:
        raise AvakitError(f"{source}: both votes_ columns and 'mos': a labels table holds one kind of label")
    if not votes and not has_mos:
        raise AvakitError(
            f"{source}: no label columns: need votes_1..votes_K or 'mos' (the header has {_listed(names)})"
        )
    if votes:
        k = len(votes)
        found = sorted(votes)
        if found != list(range(1, k + 1)) or any(keys[votes[j]] != f"votes_{j}" for j in found):
            shown = ", ".join(keys[votes[j]] for j in found)
            raise AvakitError(f"{source}: vote columns must be votes_1..votes_K without gaps, found {shown}")
        if not MIN_K <= k <= MAX_K:
            raise AvakitError(f"{source}: {k} vote columns; a scale has {MIN_K} to {MAX_K} points")
    optional = ("mos", "std", "n") if has_mos else ()
    optional += ("split", "group", "weight")
    used = {"image", *optional, *(f"votes_{j}" for j in votes)}
    return _Columns(
        kind="mos" if has_mos else "votes",
        image=where["image"],
        votes=tuple(votes[j] for j in sorted(votes)),
        optional={name: where[name] for name in optional if name in where},
        ignored=tuple(str(names[i]).strip() for i, key in enumerate(keys) if key not in used),
    )


def _listed(names: Sequence[Any], shown: int = 8) -> str:
    quoted = [repr(str(n).strip()) for n in names[:shown]]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return (", ".join(quoted) + more) if quoted else "no columns"


def table_from_frame(
    df: pd.DataFrame,
    source: str,
    *,
    scale: tuple[float, float] | None = None,
    lower_is_better: bool = False,
    strict: bool = False,
    first_line: int = 2,
    lines: Sequence[int] | None = None,
) -> LabelTable:
    """Validate a frame of labels (text or typed values) into a LabelTable.

    Row i is reported as line `first_line + i` unless `lines` gives each row's line.
    """
    if lines is None:
        lines = range(first_line, first_line + len(df))
    elif len(lines) != len(df):
        raise AvakitError(f"{source}: {len(lines)} line numbers for {len(df)} rows")
    return _table(df, source, lines, [], scale=scale, lower_is_better=lower_is_better, strict=strict)


def _table(
    df: pd.DataFrame,
    source: str,
    lines: Sequence[int],
    malformed: list[LabelSkip],
    *,
    scale: tuple[float, float] | None,
    lower_is_better: bool,
    strict: bool,
) -> LabelTable:
    cols = _columns(list(df.columns), source)
    k = len(cols.votes) or None
    if scale is not None:
        scale = _check_scale(scale, source)
    elif k is not None:
        scale = (1.0, float(k))
    else:
        raise AvakitError(f"{source}: mos labels need a scale (--scale LO:HI)")
    rows: list[LabelRow] = []
    skipped = list(malformed)
    seen: dict[str, int] = {}
    for line, values in zip(lines, df.itertuples(index=False, name=None), strict=True):
        try:
            row = _row(values, line, cols, scale)
        except cells.BadCell as e:
            image = values[cols.image].strip() if isinstance(values[cols.image], str) else None
            skipped.append(LabelSkip(line=line, image=image, reason=e.reason, detail=e.detail))
            continue
        key = str(PurePosixPath(row.image))
        if key in seen:
            detail = f"{show(row.image)} already on line {seen[key]}"
            skipped.append(LabelSkip(line=line, image=row.image, reason="duplicate image", detail=detail))
            continue
        seen[key] = line
        rows.append(row)
    skipped.sort(key=lambda s: s.line)
    if strict and skipped:
        first = skipped[0]
        raise AvakitError(f"{source}:{first.line}: {first.reason}: {first.detail}")
    n_read = len(df) + len(malformed)
    if not rows:
        raise AvakitError(_no_valid_rows(source, n_read, skipped))
    return LabelTable(
        kind=cols.kind,
        k=k,
        scale=scale,
        higher_is_better=not lower_is_better,
        rows=tuple(rows),
        skipped=tuple(skipped),
        rows_read=n_read,
        source=source,
        ignored_columns=cols.ignored,
    )


def _no_valid_rows(source: str, n_read: int, skipped: Sequence[LabelSkip]) -> str:
    """The message for a table without one valid row: the first reasons, with line numbers."""
    if n_read == 0:
        return f"{source}: no label rows: the table has a header but no rows"
    reasons = "; ".join(f"line {s.line}: {s.reason}: {s.detail}" for s in skipped[:_SHOWN_SKIPS])
    more = f"; and {len(skipped) - _SHOWN_SKIPS} more" if len(skipped) > _SHOWN_SKIPS else ""
    return f"{source}: no valid label rows among {n_read} read: {reasons}{more}"


def _row(values: tuple, line: int, cols: _Columns, scale: tuple[float, float]) -> LabelRow:
    """One row's LabelRow; BadCell for the first bad value."""
    image = cells.image_path(values[cols.image])
    opt = {name: values[i] for name, i in cols.optional.items()}
    votes = mos = None
    if cols.kind == "votes":
        votes = cells.votes([values[i] for i in cols.votes])
    else:
        mos = cells.mos(opt["mos"], scale)
    return LabelRow(
        line=line,
        image=image,
        votes=votes,
        mos=mos,
        std=cells.optional(opt.get("std"), "std", lambda v: cells.real(v, minimum=0.0)),
        n=cells.optional(opt.get("n"), "n", lambda v: cells.uint(v, cells.MAX_RATERS)),
        split=cells.optional(opt.get("split"), "split", cells.split),
        group=cells.optional(opt.get("group"), "group", cells.text),
        weight=cells.optional(opt.get("weight"), "weight", cells.weight),
    )
