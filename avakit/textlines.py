"""Reading line-based release files (AVA.txt, image lists, tags.txt, challenges.txt) safely.

One line reader and one integer parser serve every reader in `avakit.dataset.ava`:

- lines are read with a length cap (`MAX_LINE_BYTES`): a longer line is reported, and the rest
  of it is skipped without being held in memory (a 50 MB line costs 64 KB, not 800 MB);
- a UTF-8 byte order mark before line 1 is dropped; a line that is not UTF-8 is reported with
  the offending byte, never decoded into replacement characters;
- fields are separated by ASCII whitespace only, and an integer field is ASCII digits only:
  Python's `int()` and `str.isdigit()` also accept `٣` (3), `1_0` (10), `+3` and ` 3`, and
  `int("²")` raises; none of these are numbers in a release file.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from avakit.errors import AvakitError

MAX_LINE_BYTES = 4096  # the longest AVA.txt line is ~60 bytes, a tag or challenge name ~40
ASCII_SPACE = " \t\r\n\v\f"
_SPACE = re.compile(r"[ \t\r\n\v\f]+")
_DIGITS = re.compile(r"[0-9]+")
_DIGIT_FIELDS = re.compile(r"[0-9]+(?: [0-9]+)*")
_SHOWN = 24  # characters of a bad field quoted in a message


class FieldError(ValueError):
    """A field that is not a valid integer; the message says why, `index` which field it was."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Line:
    """One line of a text file: its 1-based number and text, or the problem that kept it unread."""

    number: int
    text: str = ""
    problem: str = ""  # set when the line is too long or not UTF-8 (text is then "")

    @property
    def blank(self) -> bool:
        """True when the line was read and holds nothing but ASCII whitespace."""
        return not self.problem and not self.text.strip(ASCII_SPACE)


def read_lines(path: Path, max_bytes: int = MAX_LINE_BYTES) -> Iterator[Line]:
    """Yield the lines of `path` (without the line break), each at most `max_bytes` long."""
    try:
        f = Path(path).open("rb")  # noqa: SIM115 - closed by the with below
    except OSError as e:
        raise AvakitError(f"{path}: cannot read: {e.strerror or e}") from None
    with f:
        number = 0
        while raw := f.readline(max_bytes + 1):
            number += 1
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                while (rest := f.readline(1 << 16)) and not rest.endswith(b"\n"):
                    pass  # the rest of the long line, read and dropped in 64 KB pieces
                yield Line(number, problem=f"line longer than {max_bytes} bytes")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = f"byte 0x{raw[e.start]:02x} at column {e.start + 1}"
                yield Line(number, problem=f"not UTF-8 text: {bad}")
                continue
            yield Line(number, text.rstrip("\r\n"))


def split_fields(text: str, maxsplit: int = 0) -> list[str]:
    """Fields separated by ASCII whitespace (a non-ASCII space stays inside a field)."""
    text = text.strip(ASCII_SPACE)
    return _SPACE.split(text, maxsplit=maxsplit) if text else []


def show(text: str) -> str:
    """A field quoted for a message, shortened when long."""
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def parse_uint(text: str, maximum: int) -> int:
    """A non-negative integer written in ASCII digits, at most `maximum`; else FieldError."""
    if not _DIGITS.fullmatch(text):
        if text.startswith("-") and _DIGITS.fullmatch(text[1:]):
            raise FieldError(f"negative value {show(text)}")
        raise FieldError(f"not an integer: {show(text)}")
    if len(text.lstrip("0")) > len(str(maximum)) or int(text) > maximum:
        raise FieldError(f"{show(text)} is above the limit {maximum}")
    return int(text)


def parse_uints(fields: Sequence[str], maxima: Sequence[int]) -> list[int]:
    """`parse_uint` of each field with its maximum; FieldError.index says which field failed.

    A valid line (the common case) is checked with one regular expression for all its fields.
    """
    short = len(str(min(maxima))) - 1  # fields this short are below every maximum
    if max(map(len, fields), default=0) <= short and _DIGIT_FIELDS.fullmatch(" ".join(fields)):
        return list(map(int, fields))
    values = []
    for index, (text, maximum) in enumerate(zip(fields, maxima, strict=True)):
        try:
            values.append(parse_uint(text, maximum))
        except FieldError as e:
            raise FieldError(str(e), index) from None
    return values
