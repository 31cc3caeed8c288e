"""What `avakit shard --folders ROOT --splits splits.json` will write: one group sample per folder chunk.

A culling set is ROOT/<folder>/good/*.jpg and ROOT/<folder>/bad/*.jpg (`avakit.dataset.
folders_inputs` reads it, its splits.json and optional mos.csv). Each folder becomes one group
sample, or, with more than `group_size` photos, n = ceil(photos / group_size) chunks: the folder's
good then bad photos are dealt round-robin over the chunks, so each chunk holds at most
`group_size` photos and both grades whenever the folder has at least n of each. A chunk's pairs
are every good x bad pair, good first (p = 1, ranks 1 and 2); pairs never cross folders, and
all chunks of a folder share its split (splits come from splits.json only).

"Rows" are photos: rows read = every photo listed under the root; a photo is written, or skipped
with its file and reason (its folder in no split, an unreadable file, a chunk left with fewer
than 2 photos). A photo's `line` in the manifest is its number in the sorted listing; its
`image_id` is its chunk's. The writer (`avakit.dataset.shards`) drops an unreadable photo and
re-derives the chunk's pairs without it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from avakit.dataset.ava import Skipped
from avakit.dataset.folders_inputs import (
    FolderListing,
    image_extensions,
    list_folder,
    photos_root,
    read_mos_csv,
    read_splits_json,
    shoot_folders,
)
from avakit.dataset.keys import unique_keys
from avakit.dataset.plan import ShardOptions, ShardPlan, build_plan, validate_options
from avakit.dataset.samples import MAX_MEMBERS
from avakit.errors import AvakitError
from avakit.fileio import file_sha256
from avakit.scores import PAIRS, SPLITS

GROUP_SIZE = 32  # photos per group sample by default
SHARD_SIZE = 100  # chunks per shard by default
SPLIT_METHOD = "splits.json"
ROWS = "photos: every photo in a folder's good/ and bad/ (photos_written + rows_skipped)"
NO_SPLIT = "folder in no split"
TOO_FEW = "fewer than 2 photos in its chunk"


@dataclass(frozen=True)
class Photo:
    """One photo of a chunk: its file (relative to the root), grade, listing number and MOS."""

    file: str
    grade: str  # "good" | "bad"
    number: int  # 1-based position in the sorted listing of every folder: the manifest's `line`
    mos: float | None = None


@dataclass(frozen=True)
class FolderChunk:
    """One chunk of one folder on its way into a shard: a group sample of its photos."""

    folder: str
    folder_key: str  # webdataset-safe form of the folder name (no dots)
    chunk: int
    n_chunks: int
    image_id: int  # a running id over (folder, chunk)
    photos: tuple[Photo, ...]  # good photos first, then bad
    mos_scale: tuple[float, float] | None = None  # set with --mos: labels carry mos

    @property
    def line(self) -> int:
        """Its first photo's listing number."""
        return self.photos[0].number

    @property
    def key(self) -> str:
        """The webdataset key: `{folder}-{chunk:03d}`."""
        return f"{self.folder_key}-{self.chunk:03d}"

    @property
    def files(self) -> tuple[str, ...]:
        """Its photos relative to the root, in member order."""
        return tuple(p.file for p in self.photos)

    @property
    def file(self) -> str:
        """Its first photo."""
        return self.photos[0].file

    @property
    def photo_lines(self) -> tuple[int, ...]:
        """Its photos' listing numbers: each is written in this chunk or skipped with that line."""
        return tuple(p.number for p in self.photos)

    @property
    def pairs(self) -> list[list]:
        """Every good x bad pair of its members: [good, bad, 1.0, 1, 2]."""
        good = [k for k, p in enumerate(self.photos) if p.grade == "good"]
        bad = [k for k, p in enumerate(self.photos) if p.grade == "bad"]
        return [[g, b, 1.0, 1, 2] for g in good for b in bad]

    @property
    def values(self) -> tuple[float, ...]:
        """The preference ratios of its pairs (all 1)."""
        return tuple(1.0 for _ in self.pairs)

    def skip_detail(self, detail: str) -> str:
        """A skipped photo's detail (the writer's detail names the photo's file)."""
        return f"{detail} (folder {self.folder}, chunk {self.chunk + 1} of {self.n_chunks})"

    def without(self, lines: set[int]) -> FolderChunk:
        """This chunk less the photos with these listing numbers (photos the writer could not read)."""
        return replace(self, photos=tuple(p for p in self.photos if p.number not in lines))

    def label(self) -> dict:
        """The sample's `json` member (the layout of README "Culling your own shoots")."""
        label: dict = {
            "key": self.key,
            "kind": PAIRS.kind,
            "image_id": self.image_id,
            "group": self.folder,
            "members": list(self.files),
            "grades": [p.grade for p in self.photos],
        }
        if self.mos_scale is not None:
            label["mos"] = [p.mos for p in self.photos]
            label["mos_scale"] = list(self.mos_scale)
        label.update(chunk=[self.chunk, self.n_chunks], pairs=self.pairs, source="folders")
        return label


def folder_stats(rows: list[FolderChunk]) -> dict:
    """A split's label_stats: chunks (n), pairs, photos, decided pairs, the human ceiling (1.0:
    the grades are the photographer's), folders, good, bad, photos with a MOS, chunks without pairs."""
    photos = [p for r in rows for p in r.photos]
    pairs = sum(len(r.pairs) for r in rows)
    good = sum(p.grade == "good" for p in photos)
    return {
        "n": len(rows),
        "pairs": pairs,
        "photos": len(photos),
        "decided_pairs": pairs,
        "human_ceiling": 1.0 if pairs else None,
        "folders": len({r.folder for r in rows}),
        "good": good,
        "bad": len(photos) - good,
        "mos": sum(p.mos is not None for p in photos),
        "chunks_without_pairs": sum(not r.pairs for r in rows),
    }


def deal(listing: FolderListing, group_size: int) -> list[list[tuple[str, str]]]:
    """The folder's (file, grade) photos dealt round-robin over ceil(n / group_size) chunks, good
    photos first, each chunk's members good first; every chunk gets at most `group_size`."""
    photos = [(f, "good") for f in listing.good] + [(f, "bad") for f in listing.bad]
    n = max(1, -(-len(photos) // group_size))
    chunks: list[list[tuple[str, str]]] = [[] for _ in range(n)]
    for i, photo in enumerate(photos):
        chunks[i % n].append(photo)
    return [sorted(c, key=lambda p: p[1] != "good") for c in chunks]


@dataclass(frozen=True, kw_only=True)
class FoldersInput:
    """A culling set: its root, splits.json, optional mos.csv and scale, photos per chunk."""

    root: Path
    splits: Path
    mos: Path | None = None
    mos_scale: tuple[float, float] | None = None
    group_size: int = GROUP_SIZE


def check_input(
    given: FoldersInput, images: Path | None, options: ShardOptions, test_list: Path | None
) -> None:
    """One-line AvakitError for an option that does not fit a folders set."""
    if images is not None:
        raise AvakitError("--images does not apply to --folders: the photos are ROOT/<folder>/good|bad")
    if test_list is not None or options.split == "official":
        raise AvakitError(
            "--test-list and --split official are AVA's; --folders takes its splits from --splits"
        )
    if options.limit is not None:
        raise AvakitError("--limit does not apply to --folders: list fewer folders in splits.json")
    if given.mos is None and given.mos_scale is not None:
        raise AvakitError("--mos-scale describes a --mos file: give --mos FILE")
    if not 2 <= given.group_size <= MAX_MEMBERS:
        raise AvakitError(f"--group-size must be in 2..{MAX_MEMBERS}, got {given.group_size}")


def _listings(
    root: Path, splits: dict[str, list[str]], path: Path
) -> tuple[dict[str, FolderListing], list[str]]:
    """Every folder's listing (listed or not, sorted by name) and the unlisted ones' names."""
    listed = {f: s for s, folders in splits.items() for f in folders}
    on_disk = shoot_folders(root)
    for split, folders in splits.items():
        for f in folders:
            if not (root / f).is_dir():
                raise AvakitError(f"{path}: {split}: folder {f!r} not found in {root}")
    extensions = image_extensions()
    names = sorted(set(on_disk) | set(listed))
    return {n: list_folder(root, n, extensions) for n in names}, [n for n in names if n not in listed]


def folder_rows(
    given: FoldersInput,
    listings: dict[str, FolderListing],
    split_of: dict[str, str],
    mos: dict[str, float] | None,
    mos_scale: tuple[float, float] | None,
) -> tuple[dict[str, list[FolderChunk]], list[Skipped]]:
    """Each split's chunks (folders in name order) and the photos skipped before writing."""
    out: dict[str, list[FolderChunk]] = {s: [] for s in SPLITS}
    skipped: list[Skipped] = []
    keys = dict(
        zip(listings, unique_keys([f"{n}.dir" for n in listings]), strict=True)
    )  # .dir: a suffix to cut
    number, image_id = 0, 0
    for name, listing in listings.items():
        split = split_of.get(name)
        chunks = deal(listing, given.group_size)
        for k, chunk in enumerate(chunks):
            photos = []
            for file, grade in chunk:
                number += 1
                photos.append(Photo(file, grade, number, None if mos is None else mos.get(file)))
            row = FolderChunk(name, keys[name], k, len(chunks), image_id, tuple(photos), mos_scale)
            image_id += 1
            if split is not None and len(photos) >= 2:
                out[split].append(row)
                continue
            reason, why = (NO_SPLIT, "not in splits.json") if split is None else (TOO_FEW, TOO_FEW)
            skipped += [Skipped(p.number, None, reason, row.skip_detail(f"{p.file}: {why}")) for p in photos]
    return out, skipped


def plan_folders(
    given: FoldersInput,
    images: Path | None,
    out: Path,
    options: ShardOptions,
    test_list: Path | None = None,
    strict: bool = False,
) -> ShardPlan:
    """Read splits.json, list the folders, read mos.csv, cut the chunks, find the shards to write.

    The split ratios and seed of `options` are not used (splits.json decides) and are stored as 0.
    """
    check_input(given, images, options, test_list)
    if strict:
        raise AvakitError("--strict does not apply to --folders (an unreadable photo is skipped and listed)")
    options = replace(options, val_ratio=0.0, test_ratio=0.0, seed=0)
    validate_options(options, None)
    root = photos_root(given.root)
    splits = read_splits_json(given.splits)
    listings, unlisted = _listings(root, splits, Path(given.splits))
    sources: dict = {
        "splits_json": {"name": Path(given.splits).name, "sha256": file_sha256(given.splits)},
    }
    mos = scale = None
    if given.mos is not None:
        table = read_mos_csv(
            given.mos, {f for ls in listings.values() for f in ls.good + ls.bad}, given.mos_scale
        )
        mos, scale = table.mos, table.scale
        sources["mos_csv"] = {
            "name": Path(given.mos).name,
            "sha256": file_sha256(given.mos),
            "rows": table.rows,
            "unknown_images": len(table.unknown),
            "unknown_first": table.unknown[:10],
            "scale": list(scale),
        }
    split_of = {f: s for s, folders in splits.items() for f in folders}
    rows, skipped = folder_rows(given, listings, split_of, mos, scale)
    sources["folders"] = {
        "group_size": given.group_size,
        "listed": len(split_of),
        "unlisted": unlisted,
        "without_photos": [n for n, ls in listings.items() if not ls.n],
        "other_files_ignored": sum(ls.other_files for ls in listings.values()),
    }
    sources.update(split_by="splits.json", rows=ROWS)
    rows_read = sum(ls.n for ls in listings.values())
    if not any(rows.values()):
        raise AvakitError(f"{given.root}: no folder of splits.json holds 2 or more photos")
    return build_plan(root, Path(out), options, sources, rows_read, rows, skipped, PAIRS, SPLIT_METHOD)
