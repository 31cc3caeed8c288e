"""What `avakit shard --phototriage ROOT` will write: one group sample per photo series, its split.

The release's `train_pairlist.txt` and `val_pairlist.txt` (read by `avakit.dataset.phototriage`)
become `SeriesRow`s: one row per series, written as one WebDataset sample whose members are its
photos `000.jpg, 001.jpg, ...` (`avakit.dataset.samples.member_name`) and whose json holds the
key, the members' file names and the pairs `[i, j, p_ij, rank_i, rank_j]`. The train list is
split into train/val by a hash of the series id (a series is never split, adding or removing one
moves no other); the official val list is the test split.

"Rows" in the manifest's counts are series, plus each pair-list line that could not be read (a
bad line is a skipped row of its own): rows read = series written + rows skipped. Optional raw
reviews (`--reviews`) are checked against the pair list (contradictory reviews are refused) and
filter pairs by agreement and reviewer count; what the filter drops is counted in `sources`.
The shard tasks, resume records and manifest are AVA's (`avakit.dataset.plan`, `.shards`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from avakit.dataset.ava import Skipped
from avakit.dataset.phototriage import (
    MAX_LINE_BYTES,
    PairList,
    PairRow,
    Series,
    _parse_pair_line,
    phototriage_splits,
    read_pair_list,
)
from avakit.dataset.plan import ShardOptions, ShardPlan, build_plan, check_images_folder, validate_options
from avakit.errors import AvakitError
from avakit.fileio import file_sha256
from avakit.scores import PAIRS
from avakit.textlines import read_lines

TRAIN_LIST, TEST_LIST, IMAGES = "train_pairlist.txt", "val_pairlist.txt", "train_val_imgs"
SHARD_SIZE = 100  # series per shard by default: the release's train list gives ~46 shards
SPLIT_METHOD = "phototriage"
SPLIT_BY = "train_pairlist.txt: hash of the series id -> train/val; val_pairlist.txt -> test"
ROWS = "series, plus each pair-list line that could not be read"


@dataclass(frozen=True)
class SeriesRow:
    """One photo series on its way into a shard: a group sample of its photos and pairs."""

    series: Series
    line: int  # its first line in its pair list
    source: str  # the pair list's file name

    @property
    def image_id(self) -> int:
        """The sample's integer id: the series id."""
        return self.series.id

    @property
    def key(self) -> str:
        """The webdataset key: the zero-padded series id."""
        return self.series.key

    @property
    def files(self) -> tuple[str, ...]:
        """Its photos relative to the images folder, in member order (`000012-01.JPG`, ...)."""
        return self.series.files

    @property
    def file(self) -> str:
        """Its first photo (a group sample's writer reads `files`)."""
        return self.files[0]

    @property
    def values(self) -> tuple[float, ...]:
        """The preference ratios of its pairs."""
        return tuple(p[2] for p in self.series.pairs)

    def skip_detail(self, detail: str) -> str:
        """A skipped series' detail (the writer's detail already names the photo)."""
        return f"{detail} (series {self.series.id}, {self.source} line {self.line})"

    def label(self) -> dict:
        """The sample's `json` member: key, kind, id, group, members, pairs, source."""
        return {
            "key": self.key,
            "kind": PAIRS.kind,
            "image_id": self.series.id,
            "group": self.key,
            "members": list(self.files),
            "pairs": [list(p) for p in self.series.pairs],
            "source": "phototriage",
        }


@dataclass(frozen=True, kw_only=True)
class PhotoTriageInput:
    """The release's root folder, and the optional reviews with their filter."""

    root: Path
    reviews: Path | None = None
    min_agreement: float | None = None  # keep pairs whose reviews' majority share is >= this
    min_reviewers: int | None = None  # keep pairs with at least this many reviews


@dataclass
class ListRead:
    """One pair list read, cut to its first `limit` series: rows, skips, rows read, entry for sources."""

    rows: list[SeriesRow]
    skipped: list[Skipped]
    rows_read: int
    source: dict


def first_lines(path: Path) -> dict[int, int]:
    """Each series' first valid line in a pair list (the line a skipped series is recorded with)."""
    first: dict[int, int] = {}
    for line in read_lines(path, MAX_LINE_BYTES):
        if not line.blank and isinstance(row := _parse_pair_line(line), PairRow):
            first.setdefault(row.series, row.line)
    return first


def read_list(path: Path, limit: int | None, strict: bool) -> ListRead:
    """Read a pair list into series rows; its bad lines and inconsistent series as recorded skips.

    With `limit`, only the first `limit` series in file order (and the bad lines before the next
    one) are kept. With `strict`, the first bad line or series is an AvakitError.
    """
    pl: PairList = read_pair_list(path)
    first = first_lines(path)
    name = path.name
    entries: list[SeriesRow | Skipped] = [SeriesRow(s, first[s.id], name) for s in pl.series]
    entries += [
        Skipped(first[d.series], d.series, d.reason, f"{name}: {d.detail}") for d in pl.skipped_series
    ]
    entries.sort(key=lambda e: e.line)
    cutoff = float("inf")
    if limit is not None and len(entries) > limit:
        cutoff, entries = entries[limit].line, entries[:limit]
    bad = [replace(s, detail=f"{name}: {s.detail}") for s in pl.skipped_lines if s.line < cutoff]
    skipped = sorted([e for e in entries if isinstance(e, Skipped)] + bad, key=lambda s: s.line)
    if strict and skipped:
        s = skipped[0]
        raise AvakitError(f"{path}:{s.line}: {s.reason}: {s.detail} (--strict)")
    rows = [e for e in entries if isinstance(e, SeriesRow)]
    if not rows:
        raise AvakitError(f"{path}: no consistent series among the first {limit} series")
    source = {"name": name, "sha256": file_sha256(path), "lines_read": pl.n_read}
    return ListRead(rows, skipped, len(entries) + len(bad), source)


def check_input(given: PhotoTriageInput, options: ShardOptions, test_list: Path | None) -> None:
    """One-line AvakitError for a flag that does not fit PhotoTriage."""
    if test_list is not None:
        raise AvakitError(
            "--test-list is AVA's; for --phototriage the official val_pairlist.txt is the test split"
        )
    if options.split == "official":
        raise AvakitError(
            "--split official is AVA's; --phototriage always tests on val_pairlist.txt and splits "
            "train_pairlist.txt into train/val by series"
        )
    if options.test_ratio:
        raise AvakitError("--test-ratio does not apply to --phototriage: val_pairlist.txt is the test split")
    if given.reviews is None and (given.min_agreement is not None or given.min_reviewers is not None):
        raise AvakitError(
            "--min-agreement and --min-reviewers filter pairs by their reviews: give --reviews DIR"
        )


def review_filter(lists: dict[str, ListRead], given: PhotoTriageInput) -> tuple[dict, list[Skipped]]:
    """Check the reviews against the pair lists (refused when contradictory), then filter the pairs.

    Each list's rows are replaced by the filtered ones; a series left without pairs becomes a
    skipped row. Returns the `sources` entry (reviews read, agreement, filter, pairs dropped per
    list) and the skipped series.
    """
    from avakit.dataset.phototriage_reviews import (
        check_agreement,
        filter_pairs,
        read_reviews,
        refuse_if_contradictory,
    )

    folder = Path(given.reviews)  # type: ignore[arg-type]
    series = [r.series for lr in lists.values() for r in lr.rows]
    reviews = read_reviews(folder, [s.id for s in series], {s.id: s.n for s in series})
    agreement = check_agreement(series, reviews)
    refuse_if_contradictory(agreement, str(folder))
    min_agreement, min_reviewers = given.min_agreement or 0.0, given.min_reviewers or 0
    dropped: dict[str, dict] = {}
    skipped: list[Skipped] = []
    for name, lr in lists.items():
        kept = filter_pairs([r.series for r in lr.rows], reviews, min_agreement, min_reviewers)
        by_id = {s.id: s for s in kept.series}
        counts = Counter(kept.dropped)
        empty = counts.pop("series without pairs", 0)
        dropped[name] = {"pairs": sum(counts.values()), **dict(sorted(counts.items())), "series": empty}
        for r in lr.rows:
            if r.series.id not in by_id:
                detail = f"{name}: every pair dropped by the reviews filter"
                skipped.append(Skipped(r.line, r.series.id, "no pair left by the reviews filter", detail))
        lr.rows = [replace(r, series=by_id[r.series.id]) for r in lr.rows if r.series.id in by_id]
    source = {
        "folder": folder.name,
        "sha256": _reviews_digest(folder, [s.id for s in series]),
        "reviews_read": reviews.n_reviews,
        "reviews_skipped": dict(sorted(reviews.skipped.items())),
        "series_without_reviews": len(reviews.missing),
        "agreement": {
            "decided_pairs": agreement.n_decided,
            "agreeing": agreement.n_agree,
            "fraction": round(agreement.fraction, 4),
            "p_value": agreement.p_value,
        },
        "min_agreement": min_agreement,
        "min_reviewers": min_reviewers,
        "pairs_dropped": dropped,
    }
    return source, skipped


def _reviews_digest(folder: Path, ids: list[int]) -> str:
    """One sha256 over the review files read (name and sha256 of each), so a rerun sees edits."""
    h = hashlib.sha256()
    for sid in sorted(ids):
        path = folder / f"{sid:06d}.json"
        if path.is_file():
            h.update(f"{path.name} {file_sha256(path)}\n".encode())
    return h.hexdigest()


def plan_phototriage(
    given: PhotoTriageInput,
    images: Path | None,
    out: Path,
    options: ShardOptions,
    test_list: Path | None = None,
    strict: bool = False,
) -> ShardPlan:
    """Read both pair lists (and the reviews), split by series, find the shard tasks still to write."""
    check_input(given, options, test_list)
    validate_options(options, None)
    root = Path(given.root)
    if not root.is_dir():
        raise AvakitError(
            f"{root}: PhotoTriage folder not found (it holds {TRAIN_LIST}, {TEST_LIST}, {IMAGES}/)"
        )
    images = Path(images) if images is not None else root / IMAGES
    check_images_folder(images)
    lists = {name: read_list(root / name, options.limit, strict) for name in (TRAIN_LIST, TEST_LIST)}
    sources: dict = {
        "phototriage": {"train_list": lists[TRAIN_LIST].source, "test_list": lists[TEST_LIST].source}
    }
    skipped = [s for lr in lists.values() for s in lr.skipped]
    if given.reviews is not None:
        sources["reviews"], dropped = review_filter(lists, given)
        skipped += dropped
    sources.update(split_by=SPLIT_BY, rows=ROWS)
    train, test = lists[TRAIN_LIST].rows, lists[TEST_LIST].rows
    split = phototriage_splits(
        [r.image_id for r in train], [r.image_id for r in test], options.val_ratio, options.seed
    )
    split_rows: dict[str, list] = {"train": [], "val": [], "test": []}
    for row in sorted(train + test, key=lambda r: r.image_id):
        split_rows[split[row.image_id]].append(row)
    rows_read = sum(lr.rows_read for lr in lists.values())
    plan = build_plan(
        images, Path(out), options, sources, rows_read, split_rows, skipped, PAIRS, SPLIT_METHOD
    )
    return plan
