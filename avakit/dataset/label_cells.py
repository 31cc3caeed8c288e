"""Parsing one cell of a labels table (`avakit.dataset.labels`): text from a CSV or a typed value.

A CSV cell is text and is read strictly (integers in ASCII digits, decimals without `nan`, `inf`
or `1_0`); a parquet cell may be a number, and an integral float counts as an integer there.
Each parser raises ValueError (or `BadCell` with the row's reason code) saying what was wrong.
"""

from __future__ import annotations

import math
import re
from typing import Any

from avakit.scores import SPLITS
from avakit.textlines import parse_uint, show

MAX_VOTES = 10**9  # per cell, as for AVA.txt: sums stay exact in float64
MAX_RATERS = 10**12
NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DRIVE = re.compile(r"[A-Za-z]:")


class BadCell(ValueError):
    """A bad value: the reason code and what was wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def missing(value: Any) -> bool:
    """None, NaN or pandas' NA/NaT: a cell without a value."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return True
    return isinstance(value, float) and math.isnan(value)


def optional(value: Any, name: str, parse: Any) -> Any:
    """An optional column's value: None when absent or empty, else parsed (BadCell "bad NAME")."""
    if missing(value) or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return parse(value)
    except ValueError as e:
        raise BadCell(f"bad {name}", str(e)) from None


def text(value: Any) -> str:
    """A text cell (an integer is taken as its digits), trimmed."""
    if isinstance(value, str):
        return value.strip()
    if is_int(value):
        return str(int(value))
    raise ValueError(f"not text: {show(repr(value))}")


def is_int(value: Any) -> bool:
    """True for a Python or numpy integer (not a bool)."""
    exact = isinstance(value, int) and not isinstance(value, bool)
    return exact or type(value).__name__.startswith(("int", "uint"))


def image_path(value: Any) -> str:
    """The image path as written; BadCell when missing, absolute or climbing out of the folder."""
    if missing(value) or (isinstance(value, str) and not value.strip()):
        raise BadCell("missing image name", "the image cell is empty")
    try:
        image = text(value)
    except ValueError as e:
        raise BadCell("bad image path", str(e)) from None
    if image.startswith("/") or _DRIVE.match(image) or "\\" in image:
        raise BadCell("bad image path", f"{show(image)}: give a path relative to the images folder, with /")
    if ".." in image.split("/"):
        raise BadCell("bad image path", f"{show(image)}: '..' leaves the images folder")
    if any(ord(c) < 32 or ord(c) == 127 for c in image):
        raise BadCell("bad image path", f"{show(image)}: a control character in the name")
    return image


def uint(value: Any, maximum: int) -> int:
    """A non-negative integer (ASCII digits, or an integral number in a typed column)."""
    if isinstance(value, str):
        return parse_uint(value.strip(), maximum)
    if is_int(value) or (isinstance(value, float) and value.is_integer()):
        if not 0 <= value <= maximum:
            raise ValueError(f"{value} is outside 0..{maximum}")
        return int(value)
    raise ValueError(f"not an integer: {show(repr(value))}")


def real(value: Any, minimum: float | None = None) -> float:
    """A finite number (ASCII decimal text, or a number in a typed column), at least `minimum`."""
    if isinstance(value, str):
        if not NUMBER.fullmatch(value.strip()):
            raise ValueError(f"not a finite number: {show(value)}")
        number = float(value)
    elif is_int(value) or isinstance(value, float) or type(value).__name__.startswith("float"):
        number = float(value)
    else:
        raise ValueError(f"not a number: {show(repr(value))}")
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {show(str(value))}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{number:g} is below {minimum:g}")
    return number


def votes(cells: list[Any]) -> tuple[int, ...]:
    """The K vote counts of a row; BadCell "bad votes" for a bad count or no votes at all."""
    counts = []
    for j, cell in enumerate(cells, start=1):
        if missing(cell):
            raise BadCell("bad votes", f"votes_{j} is empty")
        try:
            counts.append(uint(cell, MAX_VOTES))
        except ValueError as e:
            raise BadCell("bad votes", f"votes_{j}: {e}") from None
    if sum(counts) == 0:
        raise BadCell("bad votes", "no votes (every count is 0)")
    return tuple(counts)


def mos(value: Any, scale: tuple[float, float]) -> float:
    """A finite MOS inside the scale (lo, hi), ends included; BadCell "bad mos" otherwise."""
    if missing(value) or (isinstance(value, str) and not value.strip()):
        raise BadCell("bad mos", "the mos cell is empty")
    try:
        number = real(value)
    except ValueError as e:
        raise BadCell("bad mos", str(e)) from None
    lo, hi = scale
    if not lo <= number <= hi:
        raise BadCell("bad mos", f"{number:g} is outside the scale {lo:g}:{hi:g}")
    return number


def split(value: Any) -> str:
    """A split name (train, val, test; any case), lowercased."""
    name = text(value).lower()
    if name not in SPLITS:
        raise ValueError(f"{show(text(value))} is not one of {', '.join(SPLITS)}")
    return name


def weight(value: Any) -> float:
    """A finite sample weight above 0."""
    number = real(value)
    if number <= 0:
        raise ValueError(f"{number:g} is not above 0")
    return number
