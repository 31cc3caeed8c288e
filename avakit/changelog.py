"""The model changelog: one Markdown table row per `avakit evaluate --changelog FILE` (no torch).

A row says when (UTC), which run, on which data (the manifest sha256 the checkpoint records,
12 hex), with which config (sha256 of the checkpoint's config as canonical JSON, 12 hex), on
which split and checkpoint, and the main metrics: pair accuracy (and its per-folder mean, the
good-vs-bad AUC and Kendall tau against MOS where present) for a pairwise run, SRCC, PLCC and
accuracy for a score run. The file may start with prose (a title); after the table's header only
its rows may follow. A file that is not such a table is refused with one line naming it; the
whole file is rewritten atomically with the new row appended.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path

from avakit.errors import AvakitError
from avakit.fileio import write_text_atomic

COLUMNS = ("date (UTC)", "run", "dataset", "config", "split", "checkpoint", "metrics")
TITLE = (
    "# Model changelog",
    "",
    "One row per `avakit evaluate --changelog`; dataset and config are the first 12 hex of sha256.",
    "",
)
PAIR_KEYS = ("pair_accuracy", "pair_accuracy_macro", "auc_mean", "kendall_tau_mos")
SCORE_KEYS = ("srcc", "plcc", "accuracy")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_RULE = re.compile(r":?-{3,}:?")
SHORT = 12


def short_hash(sha: str | None) -> str:
    """The first 12 hex of a sha256, "unknown" when there is none."""
    return sha[:SHORT] if isinstance(sha, str) and sha else "unknown"


def config_hash(config: dict) -> str:
    """sha256 of `config` as canonical JSON (sorted keys, no spaces, ASCII), first 12 hex."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:SHORT]


def cells(line: str) -> list[str] | None:
    """The cells of a Markdown table row `| a | b |` (escaped `\\|` kept), None for any other line."""
    text = line.strip()
    if len(text) < 2 or not (text.startswith("|") and text.endswith("|")) or text.endswith("\\|"):
        return None
    return [c.strip() for c in _CELL_SPLIT.split(text[1:-1])]


def _escape(text: str) -> str:
    """A value as one table cell: no newline, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def table_lines(path: Path) -> list[str]:
    """The changelog's lines (none when the file is missing), checked to be the changelog table.

    AvakitError (exit 2) naming the file and line when it is not: no header, a header without its
    rule, or a line after the header that is not a row of len(COLUMNS) cells.
    """
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise AvakitError(f"{path}: cannot read the changelog ({e.__class__.__name__})") from None
    if not any(line.strip() for line in lines):  # an empty file: started afresh
        return []
    header = next((i for i, line in enumerate(lines) if cells(line) == list(COLUMNS)), None)
    if header is None:
        want = "| " + " | ".join(COLUMNS) + " |"
        raise AvakitError(f"{path}: not a model changelog (no table header {want!r}); give another file")
    rule = cells(lines[header + 1]) if header + 1 < len(lines) else None
    if rule is None or len(rule) != len(COLUMNS) or not all(_RULE.fullmatch(c) for c in rule):
        raise AvakitError(f"{path}:{header + 2}: the changelog header is not followed by its |---| rule")
    body = lines[header + 2 :]
    while body and not body[-1].strip():
        body.pop()
    for n, line in enumerate(body, start=header + 3):
        row = cells(line)
        if row is None or len(row) != len(COLUMNS):
            raise AvakitError(
                f"{path}:{n}: not a row of the model changelog table ({len(COLUMNS)} cells expected)"
            )
    return lines[: header + 2] + body


def _number(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    return f"{value:.4f}" if math.isfinite(value) else "n/a"


def metric_cell(metrics: dict) -> str:
    """`name value, ...` of the main metrics: the pairwise ones when pair_accuracy is there, else
    SRCC, PLCC and accuracy; each only where present."""
    keys = PAIR_KEYS if "pair_accuracy" in metrics else SCORE_KEYS
    return ", ".join(f"{key} {_number(metrics[key])}" for key in keys if key in metrics) or "none"


def changelog_row(
    report: dict, run_name: str, manifest_sha256: str | None, config: dict, now: datetime | None = None
) -> list[str]:
    """The cells of one row for `avakit evaluate`'s `report` (its eval json) of run `run_name`."""
    when = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")
    model = f"{report.get('checkpoint')} (epoch {report.get('epoch')})"
    if report.get("tta", "none") != "none":
        model += f", tta {report['tta']}"
    return [
        when,
        run_name,
        short_hash(manifest_sha256),
        config_hash(config),
        str(report.get("split")),
        model,
        metric_cell(report.get("metrics") or {}),
    ]


def append_row(path: Path, row: list[str]) -> int:
    """Append `row` to the changelog at `path` (created with a title and header when missing);
    the whole file is rewritten atomically. Returns the number of rows the table now holds."""
    if len(row) != len(COLUMNS):
        raise ValueError(f"a changelog row has {len(COLUMNS)} cells, got {len(row)}")
    lines = table_lines(path)
    if not lines:
        lines = [*TITLE, _line(COLUMNS), _line(["---"] * len(COLUMNS))]
    lines.append(_line([_escape(c) for c in row]))
    write_text_atomic(path, "\n".join(lines) + "\n")
    header = next(i for i, line in enumerate(lines) if cells(line) == list(COLUMNS))
    return len(lines) - header - 2


def _line(values: list[str] | tuple[str, ...]) -> str:
    return "| " + " | ".join(values) + " |"
