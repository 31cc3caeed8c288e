"""What `avakit shard --labels TABLE` / `--preset NAME ROOT` will write: keyed rows, their split.

A labels table (dataset.labels) or a preset's release files (dataset.presets) become
`TableSample`s: a webdataset-safe string key per image (dataset.keys), the label as its json
member, and a split from the table's `split` column or else a hash of the key (or its group), so
editing the table never moves another image between splits. The shard tasks, resume records
and manifest are those of AVA.txt (dataset.plan, dataset.shards).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from avakit.dataset.ava import Skipped
from avakit.dataset.keys import hash_split, unique_keys
from avakit.dataset.labels import LabelRow, LabelTable
from avakit.dataset.plan import ShardOptions, ShardPlan, build_plan, check_images_folder, validate_options
from avakit.errors import AvakitError
from avakit.fileio import file_sha256
from avakit.scores import Scale

if TYPE_CHECKING:
    from avakit.dataset.epic_plan import EpicInput
    from avakit.dataset.folders_plan import FoldersInput
    from avakit.dataset.phototriage_plan import PhotoTriageInput


@dataclass(frozen=True)
class TableSample:
    """One labels-table row on its way into a shard: the row, its key and what its label means."""

    row: LabelRow
    key: str  # webdataset-safe: no dots (dataset.keys.sample_key)
    scale: Scale
    found: str | None = None  # the file on disk, when it differs from the table's name in letter case only

    @property
    def line(self) -> int:
        """The row's line in the table (presets: in the release file)."""
        return self.row.line

    @property
    def image_id(self) -> int:
        """The sample's integer id in batches and prediction tables: the row's line number."""
        return self.row.line

    @property
    def file(self) -> str:
        """The image path relative to the images folder: the table's, or the file found for it."""
        return self.found or self.row.image

    @property
    def values(self) -> tuple[float, ...]:
        """The label's numbers: K vote counts, or (mos,)."""
        return self.row.votes if self.row.votes is not None else (self.row.mos,)  # type: ignore[return-value]

    def skip_detail(self, detail: str) -> str:
        """A skipped image's detail, naming its file (the id alone is only a line number)."""
        return f"{self.file}: {detail}"

    def label(self) -> dict:
        """The sample's `json` member: key, file name, id, kind, value, scale, direction, group."""
        row = self.row
        label: dict = {"key": self.key, "image": row.image, "image_id": row.line, "kind": self.scale.kind}
        label.update({"votes": list(row.votes)} if row.votes is not None else {"mos": row.mos})
        label.update(scale=[self.scale.lo, self.scale.hi], higher_is_better=self.scale.higher_is_better)
        label["group"] = row.group
        for name in ("std", "n", "weight"):
            if getattr(row, name) is not None:
                label[name] = getattr(row, name)
        return label


def table_scale(table: LabelTable) -> Scale:
    """The Scale a table declares: its kind, K, range and direction; no default threshold."""
    lo, hi = table.scale
    return Scale(table.kind, lo, hi, table.k, table.higher_is_better, None)


def _limited(table: LabelTable, limit: int | None) -> tuple[list[LabelRow], list[Skipped], int]:
    """The rows and skips among the first `limit` rows read (all without a limit), and their count."""
    entries = sorted(
        [(r.line, r) for r in table.rows] + [(s.line, s) for s in table.skipped], key=lambda e: e[0]
    )
    if limit is not None:
        entries = entries[:limit]
    rows = [e for _, e in entries if isinstance(e, LabelRow)]
    skips = [
        Skipped(e.line, None, e.reason, f"{e.image}: {e.detail}" if e.image else e.detail)
        for _, e in entries
        if not isinstance(e, LabelRow)
    ]
    read = table.rows_read if limit is None else len(entries)
    return rows, skips, read


def split_table(rows: list[LabelRow], scale: Scale, options: ShardOptions) -> dict[str, list[TableSample]]:
    """Each split's samples, sorted by key: a `split` column wins, the rest by hash of group or key."""
    keys = unique_keys([r.image for r in rows])
    samples = {key: TableSample(r, key, scale) for key, r in zip(keys, rows, strict=True)}
    fixed = {key: r.split for key, r in zip(keys, rows, strict=True) if r.split}
    groups = {key: r.group for key, r in zip(keys, rows, strict=True) if r.group}
    assigned = hash_split(keys, options.val_ratio, options.test_ratio, options.seed, groups, fixed)
    out: dict[str, list[TableSample]] = {"train": [], "val": [], "test": []}
    for key in sorted(keys):
        out[assigned[key]].append(samples[key])
    return out


def match_case(images: Path, split: dict[str, list[TableSample]]) -> dict[str, list[TableSample]]:
    """Samples whose file is missing but exists under a name differing only in letter case (a table
    written on Windows or macOS: `IMG_1.JPG` for `img_1.jpg`) read that file; an ambiguous or
    absent match stays missing, and is then skipped as such. Each folder is listed once."""
    listings: dict[Path, dict[str, list[str]]] = {}

    def listing(folder: Path) -> dict[str, list[str]]:
        """casefold(name) -> the folder's file names with it (empty when it cannot be read)."""
        if folder not in listings:
            index: dict[str, list[str]] = {}
            try:
                for entry in os.scandir(folder):
                    if entry.is_file():
                        index.setdefault(entry.name.casefold(), []).append(entry.name)
            except OSError:
                pass  # the writer reports each of its images as missing or unreadable
            listings[folder] = index
        return listings[folder]

    def found(sample: TableSample) -> str | None:
        path = images / sample.file
        matches = listing(path.parent).get(path.name.casefold(), [])
        if path.name in matches or len(matches) != 1:
            return None
        return str(path.parent.relative_to(images) / matches[0])

    return {
        name: [replace(s, found=f) if (f := found(s)) else s for s in samples]
        for name, samples in split.items()
    }


def plan_table_sharding(
    table: LabelTable,
    images: Path,
    out: Path,
    options: ShardOptions,
    sources: dict,
) -> ShardPlan:
    """Split a validated labels table and find which shards under `out` are still to be written.

    `sources` names the files the table came from (with checksums) for the manifest and for
    resume's check that a rerun reads the same inputs.
    """
    if options.split == "official":
        raise AvakitError(
            "--split official is AVA's test list; for a labels table put the official test images in "
            "its `split` column (it wins over the hashed split)"
        )
    validate_options(options, None)
    images, out = Path(images), Path(out)
    check_images_folder(images)
    rows, skips, rows_read = _limited(table, options.limit)
    if not rows:
        raise AvakitError(f"{table.source}: no valid label row among the first {options.limit} rows")
    scale = table_scale(table)
    split = match_case(images, split_table(rows, scale, options))
    sources = {**sources, "split_by": "split column, then hash of group or key"}
    return build_plan(images, out, options, sources, rows_read, split, skips, scale)


def table_sources(path: Path) -> dict:
    """The manifest's `sources` entry for a labels table file."""
    return {"labels_table": {"name": Path(path).name, "sha256": file_sha256(path)}}


def preset_sources(name: str, files: list[Path]) -> dict:
    """The manifest's `sources` entry for a preset's release files."""
    return {"preset": name, "files": [{"name": f.name, "sha256": file_sha256(f)} for f in files]}


@dataclass(frozen=True, kw_only=True)
class LabelInput:
    """Which labels `shard` reads: exactly one of AVA.txt, a labels table or a preset."""

    ava_txt: Path | None = None
    labels: Path | None = None
    preset: tuple[str, Path] | None = None  # (name, the release's root folder)
    scale: str | None = None  # "LO:HI" (labels tables; presets know theirs)
    lower_is_better: bool = False
    phototriage: PhotoTriageInput | None = None  # a PhotoTriage release (and its reviews)
    folders: FoldersInput | None = None  # good/bad culling folders with their splits.json
    epic: EpicInput | None = None  # EPIC-KITCHENS-100 annotations and frames


def _one_input(labels: LabelInput) -> None:
    """AvakitError unless exactly one input is given, or for a table's flags without a table."""
    given = [
        name
        for name, v in (
            ("--ava-txt", labels.ava_txt),
            ("--labels", labels.labels),
            ("--preset", labels.preset),
            ("--phototriage", labels.phototriage),
            ("--folders", labels.folders),
            ("--epic-kitchens", labels.epic),
        )
        if v
    ]
    if len(given) > 1 and labels.epic is not None:
        raise AvakitError(f"--epic-kitchens is an input of its own (got {', '.join(given)})")
    if len(given) > 1 and labels.folders is not None:
        raise AvakitError(
            "give exactly one of --ava-txt, --labels, --preset, --phototriage or --folders "
            f"(got {', '.join(given)})"
        )
    if len(given) != 1:
        raise AvakitError(
            "give exactly one of --ava-txt, --labels, --preset or --phototriage"
            + (f" (got {', '.join(given)})" if given else ", or --folders ROOT with --splits FILE")
        )
    if labels.labels is None and (labels.scale is not None or labels.lower_is_better):
        raise AvakitError(
            "--scale and --lower-is-better describe a --labels table (AVA.txt and presets know their scale)"
        )


def plan_inputs(
    labels: LabelInput,
    images: Path | None,
    out: Path,
    options: ShardOptions,
    test_list: Path | None = None,
    strict: bool = False,
) -> ShardPlan:
    """The shard plan of whichever input `labels` names; AvakitError for none, two, or a misfit flag."""
    from avakit.dataset.labels import parse_scale, read_label_table
    from avakit.dataset.plan import plan_sharding
    from avakit.dataset.presets import preset_frame, preset_table

    _one_input(labels)
    if labels.epic is not None:
        from avakit.dataset.epic_plan import plan_epic

        return plan_epic(labels.epic, images, out, options, test_list, strict)
    if labels.folders is not None:
        from avakit.dataset.folders_plan import plan_folders

        return plan_folders(labels.folders, images, out, options, test_list, strict)
    if labels.phototriage is not None:
        from avakit.dataset.phototriage_plan import plan_phototriage

        return plan_phototriage(labels.phototriage, images, out, options, test_list, strict)
    if labels.ava_txt is None and test_list is not None:
        raise AvakitError(
            "--test-list is AVA's official test list; a labels table marks its test images in a "
            "`split` column"
        )
    if labels.ava_txt is not None:
        if images is None:
            raise AvakitError("--ava-txt needs --images, the folder of {image id}.jpg files")
        return plan_sharding(labels.ava_txt, images, out, options, test_list, strict)
    if labels.labels is not None:
        if images is None:
            raise AvakitError("--labels needs --images, the folder the table's `image` paths are relative to")
        scale = parse_scale(labels.scale) if labels.scale is not None else None
        table = read_label_table(
            labels.labels, scale=scale, lower_is_better=labels.lower_is_better, strict=strict
        )
        return plan_table_sharding(table, images, out, options, table_sources(labels.labels))
    name, root = labels.preset  # type: ignore[misc]
    frame = preset_frame(name, root)
    table = preset_table(frame, name, strict)
    return plan_table_sharding(table, images or frame.images, out, options, preset_sources(name, frame.files))
