"""Where a split's samples come from, and which strings may be opened as URLs.

Two kinds of shard source:
  - `urls`: URL patterns the user wrote in this command's config file or `--set` (webdataset
    opens them: `pipe:`, `http://` ... are allowed, that is the user's own command);
  - `files`: plain local shard files (a shard folder's manifest entries, or plain paths read
    back from a checkpoint or a run folder's config.yaml), opened by avakit itself with
    `open(path, "rb")`, so no string from a file is ever run as a command.

A value read back from a file (`origin`) must be a plain path: one with a scheme (`pipe:`,
`http://`, `file:` ...) is refused with one line naming the file. A manifest's shards are
checked when the source is resolved (every file present with the manifest's size); an
incomplete split is an error unless the caller allows missing shards, whose samples are then
counted as lost.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import braceexpand

from avakit.dataset.manifest import MANIFEST, load_manifest, manifest_scale
from avakit.dataset.samples import Reason
from avakit.errors import AvakitError
from avakit.fileio import file_sha256
from avakit.scores import AVA, Scale

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # what urllib (and so webdataset's gopen) call a scheme


def has_scheme(value: str) -> bool:
    """True if `value` would be read as a URL (`pipe:cmd`, `http://`, `file:`, `s3://`, `c:`)."""
    if os.name == "nt" and re.match(r"[A-Za-z]:[\\/]", value):
        return False  # a drive letter, not a scheme
    return value == "-" or _SCHEME.match(value) is not None


def require_plain(value: str, key: str, origin: str) -> None:
    """Refuse a path read from `origin` (a checkpoint, config.yaml) that would be opened as a URL."""
    if has_scheme(value):
        raise AvakitError(
            f"{key} {value[:200]!r} read from {origin} is not a plain path: a URL or `pipe:` "
            f"source runs only when given in this command (pass --shards DIR; with "
            f"train --resume, --set {key}=...)"
        )


def require_plain_shards(shards: str | Path | dict, origin: str, split: str | None = None) -> None:
    """`require_plain` on a data.shards value: a folder, or the URL patterns of `split` (None: all)."""
    if isinstance(shards, dict):
        for name, patterns in shards.items():
            for p in [patterns] if isinstance(patterns, str) else patterns:
                if split is None or name == split:
                    require_plain(p, f"data.shards.{name}", origin)
    else:
        require_plain(str(shards), "data.shards", origin)


@dataclass(frozen=True)
class ShardFile:
    """A local shard file avakit opens itself; counts and checksum when a manifest lists it."""

    path: Path
    samples: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    lost: Reason = Reason.OK  # not read: its samples are counted as lost for this reason

    @property
    def name(self) -> str:
        """The shard's file name, without its folder."""
        return self.path.name


@dataclass(frozen=True)
class SplitSource:
    """A split's shards: user-written `urls` or local `files`, and the samples promised."""

    split: str
    urls: tuple[str, ...] = ()
    files: tuple[ShardFile, ...] = ()
    samples: int | None = None  # promised by the manifest (None: no manifest)
    manifest_sha256: str | None = None
    preprocessing: dict | None = None  # the manifest's short_side / quality, when known
    where: str = ""  # the manifest path or the data.shards key, for messages
    scale: Scale = AVA  # what the labels mean: the manifest's, AVA's without one

    @property
    def entries(self) -> tuple[str | ShardFile, ...]:
        """What the pipeline reads, in order: URLs (webdataset) and files (avakit)."""
        return (*self.urls, *self.files)

    @property
    def has_data(self) -> bool:
        """True when the split has any URL or file to read."""
        return bool(self.entries)

    @property
    def missing(self) -> tuple[ShardFile, ...]:
        """Files that will not be read (allowed missing); their samples count as lost."""
        return tuple(f for f in self.files if f.lost)


def resolve_split(
    shards: str | Path | dict,
    split: str,
    *,
    origin: str | None = None,
    allow_missing: bool = False,
    incomplete_hint: str = "check the folder with `avakit inspect`",
) -> SplitSource:
    """A split's source: a folder with manifest.json, or URL patterns (brace-expanded).

    `origin` names the file the value was read from (a checkpoint, a run's config.yaml): its
    values must then be plain paths, opened by avakit, never as URLs. A manifest split whose
    shard files are missing or of the wrong size raises AvakitError (exit 1, with
    `incomplete_hint`) unless `allow_missing`, which marks them lost instead.
    """
    if origin is not None:
        require_plain_shards(shards, origin, split)
    if isinstance(shards, dict):
        return _from_patterns(shards, split, origin)
    folder = Path(shards)
    manifest = load_manifest(folder)
    info = manifest["splits"].get(split)
    if info is None:
        raise AvakitError(f"{folder / MANIFEST}: no split {split!r}")
    files = tuple(
        ShardFile(folder / s["name"], s["samples"], s["bytes"], s["sha256"])
        for s in info["shards"]
        if s["samples"] > 0
    )
    source = SplitSource(
        split,
        (),
        files,
        info["samples"],
        file_sha256(folder / MANIFEST),
        manifest.get("preprocessing"),
        str(folder / MANIFEST),
        manifest_scale(manifest),
    )
    return _check_files(source, allow_missing, incomplete_hint)


def _from_patterns(shards: dict, split: str, origin: str | None) -> SplitSource:
    patterns = shards.get(split)
    if patterns is None:
        raise AvakitError(f"data.shards: no URLs given for split {split!r}")
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if origin is None:  # written by the user in this command: webdataset opens them as written
        urls = tuple(u for p in patterns for u in braceexpand.braceexpand(p))
        return SplitSource(split, urls, where=f"data.shards.{split}")
    files = tuple(ShardFile(Path(u)) for p in patterns for u in braceexpand.braceexpand(p))
    return SplitSource(split, (), files, where=f"data.shards.{split}")


def _file_problem(shard: ShardFile) -> Reason:
    try:
        size = shard.path.stat().st_size
    except FileNotFoundError:
        return Reason.SHARD_MISSING
    except OSError:
        return Reason.SHARD_UNREADABLE
    if not shard.path.is_file():
        return Reason.SHARD_UNREADABLE
    return Reason.SHARD_SIZE if shard.bytes is not None and size != shard.bytes else Reason.OK


def _check_files(source: SplitSource, allow_missing: bool, hint: str) -> SplitSource:
    """Every manifest shard present with its size; else an error, or (allowed) marked lost."""
    problems = [(f, _file_problem(f)) for f in source.files]
    problems = [(f, reason) for f, reason in problems if reason]
    if not problems:
        return source
    if not allow_missing:
        lost = sum(f.samples or 0 for f, _ in problems)
        shown = "; ".join(f"{f.name}: {reason.text}" for f, reason in problems[:3])
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise AvakitError(
            f"{source.where}: split {source.split!r} is incomplete, {lost} of its "
            f"{source.samples} samples are in shards that cannot be read ({shown}{more}); "
            f"{hint}",
            exit_code=1,
        )
    marked = dict(problems)
    files = tuple(replace(f, lost=marked[f]) if f in marked else f for f in source.files)
    return replace(source, files=files)


@runtime_checkable
class DataSource(Protocol):
    """What training reads of a split's source: shards (`SplitSource`) or a feature cache (`FeatureSource`).

    `CountingLoader` names shards through `entries` and `where` when a shard is lost; the trainer
    sizes epochs with `samples`; last.pt's data definition (training.resume) stores
    `manifest_sha256`, `samples` and, without a manifest, `urls`.
    """

    @property
    def split(self) -> str:
        """The split's name."""

    @property
    def samples(self) -> int | None:
        """The number of samples the source holds, or None when unknown."""

    @property
    def has_data(self) -> bool:
        """True when there is anything to read."""

    @property
    def entries(self) -> tuple[str | ShardFile, ...]:
        """The shards to read, in order: URLs and local files (none for a feature cache)."""

    @property
    def urls(self) -> tuple[str, ...]:
        """The user-written shard URLs (stored in last.pt when there is no manifest)."""

    @property
    def manifest_sha256(self) -> str | None:
        """The sha256 of the split's manifest, or None without one."""

    @property
    def preprocessing(self) -> dict | None:
        """The manifest's short_side and quality, when known."""

    @property
    def where(self) -> str:
        """The manifest path or data.shards key that messages name."""

    @property
    def scale(self) -> Scale:
        """What the labels mean (votes over K points or a MOS, range, direction)."""


def common_scale(sources: dict[str, SplitSource]) -> Scale:
    """The one label scale of every split's manifest; AvakitError when the splits disagree."""
    scales = {split: src.scale for split, src in sources.items()}
    first = next(iter(scales.values()), AVA)
    for split, scale in scales.items():
        if scale != first:
            raise AvakitError(
                f"{sources[split].where}: the {split} split's labels ({scale.score_name}) differ from "
                f"the other splits' ({first.score_name}); use shards of one dataset"
            )
    return first
