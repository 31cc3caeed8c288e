"""The CLI's choice options as Typer enums, each built from the library's one tuple of choices."""

from __future__ import annotations

from enum import Enum

import typer

from avakit.config import CHECKPOINTS, DEVICES, PREDICT_FORMATS, SHARD_SPLITS, TTA_MODES
from avakit.scores import SPLITS


class _Choice(str, Enum):
    """A choice option's value: a str that prints as itself (Python 3.10 has no StrEnum)."""

    def __str__(self) -> str:
        return str(self.value)


def _choices(name: str, values: tuple[str, ...]) -> type[_Choice]:
    """A Typer choice from the library's tuple of choices (its members are the strings themselves)."""
    return _Choice(name, [(v, v) for v in values])  # type: ignore[return-value]


Device = _choices("Device", DEVICES)


Split = _choices("Split", SPLITS)


ShardSplit = _choices("ShardSplit", SHARD_SPLITS)


Checkpoint = _choices("Checkpoint", CHECKPOINTS)


Tta = _choices("Tta", TTA_MODES)


Format = _choices("Format", PREDICT_FORMATS)


def split_list(value: str) -> tuple[str, ...]:
    """`--splits train,val` as a tuple; a name that is not a split is Typer's usage error."""
    wanted = tuple(s.strip() for s in value.split(",") if s.strip())
    if not wanted or any(s not in SPLITS for s in wanted):
        raise typer.BadParameter(f"must list train, val and/or test, got {value!r}")
    return wanted


def _presets() -> tuple[str, ...]:
    from avakit.dataset.presets import PRESETS

    return tuple(sorted(PRESETS))


Preset = _choices("Preset", _presets())
