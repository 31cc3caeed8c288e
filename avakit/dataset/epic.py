"""EPIC-KITCHENS-100's annotation files, read and validated (`avakit shard --epic-kitchens DIR`).

- `EPIC_100_train.csv` / `EPIC_100_validation.csv`: one row per action segment; the columns are
  found by name in the header (a leading `uid` column and unknown extra columns are ignored, a
  missing required one is one error line). Each row is validated: ids `[A-Za-z0-9_-]{1,64}`
  (the narration id becomes the sample key), `0 <= start_frame <= stop_frame`, verb and noun
  classes within the class tables, a narration id seen once. A bad row is a recorded skip with
  its line and reason, never a traceback. `all_nouns` / `all_noun_classes` are not read.
- `EPIC_100_verb_classes.csv` (97) / `EPIC_100_noun_classes.csv` (300): id, key, instances,
  category; the ids must be exactly 0..n-1. A bad class table is an error (it defines the heads).
- Optional lists: `EPIC_100_unseen_participant_ids_validation.csv` (header participant_id),
  `EPIC_100_tail_verbs.csv` (header verb) and `EPIC_100_tail_nouns.csv` (header noun).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from avakit.dataset.ava import Skipped
from avakit.dataset.samples import MAX_FRAME
from avakit.errors import AvakitError
from avakit.fileio import file_sha256
from avakit.textlines import FieldError, parse_uint, show

TRAIN_CSV, VAL_CSV = "EPIC_100_train.csv", "EPIC_100_validation.csv"
VERB_CSV, NOUN_CSV = "EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"
UNSEEN_CSV = "EPIC_100_unseen_participant_ids_validation.csv"
TAIL_VERBS_CSV, TAIL_NOUNS_CSV = "EPIC_100_tail_verbs.csv", "EPIC_100_tail_nouns.csv"
COLUMNS = (
    "narration_id",
    "participant_id",
    "video_id",
    "narration_timestamp",
    "start_timestamp",
    "stop_timestamp",
    "start_frame",
    "stop_frame",
    "narration",
    "verb",
    "verb_class",
    "noun",
    "noun_class",
    "all_nouns",
    "all_noun_classes",
)
CLASS_COLUMNS = ("id", "key", "instances", "category")
ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_TEXT = 1000  # characters of a narration, verb or noun (the real ones are below 200)
MAX_CLASSES = 100_000  # rows of a class table (samples.MAX_CLASSES)
MAX_FILE_BYTES = 1 << 30  # an annotation CSV (the real train CSV is ~10 MB)

MALFORMED, BAD_ID, BAD_RANGE, BAD_CLASS, DUPLICATE = (
    "malformed row",
    "bad id",
    "bad frame range",
    "unknown class",
    "duplicate narration_id",
)


@dataclass(frozen=True)
class Segment:
    """One validated annotation row: an action segment of one video."""

    line: int  # its first line in its CSV
    narration_id: str
    participant: str
    video: str
    start: int  # start_frame (1-based frame numbers, inclusive)
    stop: int  # stop_frame, inclusive
    verb: str
    verb_class: int
    noun: str
    noun_class: int
    narration: str


@dataclass
class AnnotationFile:
    """One annotation CSV read: its valid segments (file order), bad rows, rows read, sources entry."""

    segments: list[Segment]
    skipped: list[Skipped]
    rows_read: int
    source: dict


def _text(path: Path) -> str:
    """The file's text (a UTF-8 BOM dropped); bytes that are not UTF-8 stay as surrogates."""
    if not path.is_file():
        raise AvakitError(f"{path}: not found")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise AvakitError(f"{path}: larger than {MAX_FILE_BYTES} bytes: not an annotation file")
        return path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    except OSError as e:
        raise AvakitError(f"{path}: cannot read: {e.strerror or e}") from None


def csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str] | str]]:
    """(first line, {column: value}) per non-blank data row of a CSV, or (line, problem) for a row
    that cannot be read (wrong field count, not UTF-8). The header must name every `required`
    column; others are ignored. One AvakitError line for a missing column or unparsable CSV."""
    reader = csv.reader(io.StringIO(_text(path), newline=""))
    try:
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise AvakitError(
                f"{path}: line 1: column {missing[0]!r} missing (header: {show(','.join(header))})"
            )
        index = {c: header.index(c) for c in required}
        last = reader.line_num
        for fields in reader:
            first, last = last + 1, reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if len(fields) != len(header):
                yield first, f"{len(fields)} fields, the header has {len(header)}"
            elif any("\udc80" <= ch <= "\udcff" for f in fields for ch in f):
                yield first, "not UTF-8 text"
            else:
                yield first, {c: fields[i].strip() for c, i in index.items()}
    except csv.Error as e:
        raise AvakitError(f"{path}: line {reader.line_num}: not a readable CSV: {e}") from None


def _int(row: dict[str, str], column: str, maximum: int) -> int:
    try:
        return parse_uint(row[column], maximum)
    except FieldError as e:
        raise FieldError(f"{column}: {e}") from None


def _segment(line: int, row: dict[str, str], n_verbs: int, n_nouns: int) -> Segment | Skipped:
    """The row as a Segment, or the reason it is skipped (a Skipped without its file name yet)."""
    for column in ("narration_id", "participant_id", "video_id"):
        if not ID.fullmatch(row[column]):
            return Skipped(line, None, BAD_ID, f"{column} {show(row[column])} is not [A-Za-z0-9_-]{{1,64}}")
    texts = [c for c in ("narration", "verb", "noun") if len(row[c]) > MAX_TEXT or not row[c].isprintable()]
    if texts:
        return Skipped(
            line, None, MALFORMED, f"{texts[0]} is not printable text of at most {MAX_TEXT} characters"
        )
    try:
        start, stop = _int(row, "start_frame", MAX_FRAME), _int(row, "stop_frame", MAX_FRAME)
        verb_class, noun_class = _int(row, "verb_class", MAX_CLASSES), _int(row, "noun_class", MAX_CLASSES)
    except FieldError as e:
        return Skipped(line, None, MALFORMED, str(e))
    if stop < start:
        return Skipped(line, None, BAD_RANGE, f"stop_frame {stop} < start_frame {start}")
    for name, value, n in (("verb_class", verb_class, n_verbs), ("noun_class", noun_class, n_nouns)):
        if value >= n:
            return Skipped(line, None, BAD_CLASS, f"{name} {value} is not in the class table (0..{n - 1})")
    return Segment(
        line,
        row["narration_id"],
        row["participant_id"],
        row["video_id"],
        start,
        stop,
        row["verb"],
        verb_class,
        row["noun"],
        noun_class,
        row["narration"],
    )


def read_annotations(
    path: Path, n_verbs: int, n_nouns: int, seen: set[str], limit: int | None = None, strict: bool = False
) -> AnnotationFile:
    """Read one annotation CSV (its first `limit` data rows): valid segments and recorded bad rows.

    `seen` holds the narration ids already read (from the other CSV); a repeat is skipped. With
    `strict`, the first bad row is an AvakitError naming the file and line.
    """
    segments: list[Segment] = []
    skipped: list[Skipped] = []
    n = 0
    for line, row in csv_rows(path, COLUMNS):
        if limit is not None and n >= limit:
            break
        n += 1
        if isinstance(row, str):
            entry: Segment | Skipped = Skipped(line, None, MALFORMED, row)
        else:
            entry = _segment(line, row, n_verbs, n_nouns)
        if isinstance(entry, Segment) and entry.narration_id in seen:
            entry = Skipped(line, None, DUPLICATE, f"narration_id {entry.narration_id} read before")
        if isinstance(entry, Skipped):
            entry = Skipped(entry.line, None, entry.reason, f"{path.name}: {entry.detail}")
            if strict:
                raise AvakitError(f"{path}:{line}: {entry.reason}: {entry.detail} (--strict)")
            skipped.append(entry)
        else:
            seen.add(entry.narration_id)
            segments.append(entry)
    source = {"name": path.name, "sha256": file_sha256(path), "rows_read": n}
    return AnnotationFile(segments, skipped, n, source)


def read_classes(path: Path) -> list[str]:
    """A class table's keys in id order; AvakitError naming the file and line for a bad row, a
    repeated id, or ids that are not exactly 0..n-1."""
    keys: dict[int, str] = {}
    for line, row in csv_rows(path, CLASS_COLUMNS[:2]):
        if isinstance(row, str):
            raise AvakitError(f"{path}: line {line}: {row}")
        try:
            cid = parse_uint(row["id"], MAX_CLASSES - 1)
        except FieldError as e:
            raise AvakitError(f"{path}: line {line}: id: {e}") from None
        if cid in keys:
            raise AvakitError(f"{path}: line {line}: id {cid} listed twice")
        if not row["key"] or len(row["key"]) > MAX_TEXT or not row["key"].isprintable():
            raise AvakitError(f"{path}: line {line}: key {show(row['key'])} is not a class name")
        keys[cid] = row["key"]
    if not keys:
        raise AvakitError(f"{path}: no class listed")
    gap = next((i for i in range(len(keys)) if i not in keys), None)
    if gap is not None:
        raise AvakitError(f"{path}: ids must be exactly 0..{len(keys) - 1}; id {gap} is missing")
    return [keys[i] for i in range(len(keys))]


def read_participants(path: Path) -> set[str]:
    """The unseen-participants list (header participant_id); AvakitError for a bad id."""
    found = set()
    for line, row in csv_rows(path, ("participant_id",)):
        if isinstance(row, str):
            raise AvakitError(f"{path}: line {line}: {row}")
        if not ID.fullmatch(row["participant_id"]):
            raise AvakitError(f"{path}: line {line}: {show(row['participant_id'])} is not a participant id")
        found.add(row["participant_id"])
    return found


def read_tail(path: Path, column: str, n_classes: int) -> set[int]:
    """A tail-classes list (header `verb` or `noun`, one class id per row); AvakitError for an id
    that is not an integer in 0..n_classes-1."""
    found = set()
    for line, row in csv_rows(path, (column,)):
        if isinstance(row, str):
            raise AvakitError(f"{path}: line {line}: {row}")
        try:
            found.add(parse_uint(row[column], n_classes - 1))
        except FieldError as e:
            raise AvakitError(f"{path}: line {line}: {column}: {e} (classes 0..{n_classes - 1})") from None
    return found


@dataclass
class Tables:
    """The class tables and the optional lists (None when the file is absent), with sources."""

    verbs: list[str]
    nouns: list[str]
    unseen: set[str] | None
    tail_verbs: set[int] | None
    tail_nouns: set[int] | None
    sources: dict = field(default_factory=dict)


def read_tables(folder: Path) -> Tables:
    """Read both class tables (required) and the unseen / tail lists (optional) of `folder`."""

    def entry(path: Path, **more: object) -> dict:
        return {"name": path.name, "sha256": file_sha256(path), **more}

    verbs, nouns = read_classes(folder / VERB_CSV), read_classes(folder / NOUN_CSV)
    tables = Tables(verbs, nouns, None, None, None)
    tables.sources = {
        "verb_classes": entry(folder / VERB_CSV, classes=len(verbs)),
        "noun_classes": entry(folder / NOUN_CSV, classes=len(nouns)),
    }
    optional = (
        ("unseen", UNSEEN_CSV, lambda p: read_participants(p)),
        ("tail_verbs", TAIL_VERBS_CSV, lambda p: read_tail(p, "verb", len(verbs))),
        ("tail_nouns", TAIL_NOUNS_CSV, lambda p: read_tail(p, "noun", len(nouns))),
    )
    for name, file, read in optional:
        path = folder / file
        if path.is_file():
            setattr(tables, name, read(path))
            tables.sources[name] = entry(path, listed=len(getattr(tables, name)))
        else:
            tables.sources[name] = None
    return tables
