"""The class names of clip shards: a manifest's top-level "classes" block (torch-free).

EPIC-KITCHENS shards record {"verb": [keys in class-id order], "noun": [...]} beside their
`labels`; a clip run checks its `clip.verb_classes` / `clip.noun_classes` against them at train
start and copies them into results.json, so the report names classes without the shards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avakit.errors import AvakitError
from avakit.fileio import load_json

CLASS_AXES = ("verb", "noun")
MAX_CLASS_NAMES = 100_000  # = avakit.dataset.samples.MAX_CLASSES
MAX_NAME_LENGTH = 200  # characters of one class key (EPIC's longest are ~30)


def check_classes(doc: Any, where: str) -> dict[str, list[str]]:
    """The validated "classes" block of manifest document `doc`; AvakitError naming `where`."""
    if not isinstance(doc, dict):
        raise AvakitError(f"{where}: expected a JSON object")
    block = doc.get("classes")
    if not isinstance(block, dict):
        raise AvakitError(
            f"{where}: classes: missing or not a mapping (clip shards list their verb and noun names)"
        )
    out: dict[str, list[str]] = {}
    for axis in CLASS_AXES:
        names = block.get(axis)
        if not (isinstance(names, list) and 1 <= len(names) <= MAX_CLASS_NAMES):
            raise AvakitError(f"{where}: classes.{axis}: expected a list of 1..{MAX_CLASS_NAMES} names")
        for i, name in enumerate(names):
            if not (isinstance(name, str) and 0 < len(name) <= MAX_NAME_LENGTH):
                raise AvakitError(
                    f"{where}: classes.{axis}[{i}]: expected a non-empty string of at most "
                    f"{MAX_NAME_LENGTH} characters, got {str(name)[:40]!r}"
                )
        out[axis] = list(names)
    return out


def read_classes(manifest: Path) -> dict[str, list[str]]:
    """The classes block of the manifest file `manifest`, validated."""
    return check_classes(load_json(manifest), str(manifest))


def check_class_counts(classes: dict[str, list[str]], verb: int, noun: int, where: str) -> None:
    """AvakitError when the config's class counts differ from the manifest's (one line, both named)."""
    got = (len(classes["verb"]), len(classes["noun"]))
    if got != (verb, noun):
        raise AvakitError(
            f"{where}: the shards have {got[0]} verb and {got[1]} noun classes; the config says "
            f"clip.verb_classes {verb}, clip.noun_classes {noun} (--set clip.verb_classes={got[0]} "
            f"--set clip.noun_classes={got[1]})"
        )


def run_classes(manifests: list[str], verb: int, noun: int) -> dict[str, list[str]]:
    """The class names a clip run trains on: the same block in every split's manifest (paths
    `manifests`), `verb` x `noun` classes as the config says; AvakitError otherwise."""
    if not manifests:
        raise AvakitError(
            "data.shards: a clip run needs shard folders with manifest.json (its classes block names "
            "the verb and noun classes)"
        )
    first = read_classes(Path(manifests[0]))
    for other in manifests[1:]:
        if read_classes(Path(other)) != first:
            raise AvakitError(
                f"{other}: classes differ from {manifests[0]}'s (shards of different data sets)"
            )
    check_class_counts(first, verb, noun, manifests[0])
    return first
