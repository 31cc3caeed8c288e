"""What `avakit shard --epic-kitchens DIR --frames ROOT` will write: one group sample per segment.

The annotation CSVs (read by `avakit.dataset.epic`) become `SegmentRow`s. A segment's stored
frames are F = `--frames-per-segment` frame numbers uniformly spaced over start_frame..stop_frame
inclusive (linspace rounded half up; a segment shorter than F frames repeats frames), written
as members `000.jpg, 001.jpg, ...` with the json label `SegmentRow.label` (the contract the clip
task reads, checked by `avakit.dataset.samples.check_clip_label`). Frames live at
ROOT/{participant}/rgb_frames/{video}/frame_%010d.jpg; each video folder is listed once, and a
segment with any frame of start..stop missing (or its whole video folder) is skipped and counted.

Splits: EPIC_100_validation.csv -> val; EPIC_100_train.csv -> train, less the participants a
seeded hash of participant_id sends to test (`--test-share`; at least one, never all), since the
test labels are withheld. `image_id` is the segment's running number within its split, CSV order.
"Rows" are the data rows of both CSVs: rows read = samples written + rows skipped.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from avakit.dataset.ava import Skipped
from avakit.dataset.epic import (
    TRAIN_CSV,
    VAL_CSV,
    AnnotationFile,
    Segment,
    Tables,
    read_annotations,
    read_tables,
)
from avakit.dataset.plan import ShardOptions, ShardPlan, build_plan, validate_options
from avakit.dataset.samples import MAX_MEMBERS
from avakit.errors import AvakitError
from avakit.scores import CLIPS

SHARD_SIZE = 100  # segments per shard by default (16 frames of 456x256: ~40 MB a shard)
FRAMES_PER_SEGMENT = 16
SPLIT_METHOD = "participant"
SPLIT_BY = (
    "EPIC_100_validation.csv -> val; EPIC_100_train.csv -> train, and test for the participants "
    "a seeded hash of participant_id picks (--test-share)"
)
ROWS = "data rows of EPIC_100_train.csv and EPIC_100_validation.csv"
FRAMES_MISSING, VIDEO_MISSING = "frames missing", "video folder missing"
FIRST_MISSING = 20  # missing frame paths listed per split in the manifest
FRAME_NAME = re.compile(r"frame_([0-9]{10})\.jpg")


def frame_path(participant: str, video: str, number: int) -> str:
    """A frame's path relative to the frames root."""
    return f"{participant}/rgb_frames/{video}/frame_{number:010d}.jpg"


def sample_frames(start: int, stop: int, n: int) -> tuple[int, ...]:
    """`n` frame numbers uniformly spaced over start..stop inclusive (linspace, rounded half up)."""
    return tuple(int(v) for v in np.floor(np.linspace(start, stop, n) + 0.5))


@dataclass(frozen=True, kw_only=True)
class EpicInput:
    """The annotations folder, the frames root, frames stored per segment, the test share."""

    annotations: Path
    frames: Path | None = None
    frames_per_segment: int = FRAMES_PER_SEGMENT
    test_share: float = 0.0  # share of train participants carved out as the test split


@dataclass(frozen=True)
class SegmentRow:
    """One segment on its way into a shard: a group sample of its sampled frames."""

    segment: Segment
    source: str  # its CSV's file name
    image_id: int  # running number within its split, CSV order
    frames: tuple[int, ...]
    unseen: bool | None = None  # None: no list given
    tail_verb: bool | None = None
    tail_noun: bool | None = None

    @property
    def line(self) -> int:
        """Its line in its CSV."""
        return self.segment.line

    @property
    def key(self) -> str:
        """The webdataset key: the narration id."""
        return self.segment.narration_id

    @property
    def files(self) -> tuple[str, ...]:
        """Its stored frames relative to the frames root, in member order."""
        s = self.segment
        return tuple(frame_path(s.participant, s.video, n) for n in self.frames)

    @property
    def file(self) -> str:
        """Its first stored frame."""
        return self.files[0]

    @property
    def values(self) -> tuple[int, int]:
        """Its verb and noun classes."""
        return (self.segment.verb_class, self.segment.noun_class)

    def skip_detail(self, detail: str) -> str:
        """A skipped segment's detail (the writer's detail names the frame)."""
        return f"{detail} (segment {self.key}, {self.source} line {self.line})"

    def label(self) -> dict:
        """The sample's `json` member: the clip contract (see the module docstring)."""
        s = self.segment
        return {
            "key": s.narration_id,
            "kind": CLIPS.kind,
            "image_id": self.image_id,
            "narration_id": s.narration_id,
            "participant": s.participant,
            "video": s.video,
            "start_frame": s.start,
            "stop_frame": s.stop,
            "frames": list(self.frames),
            "verb_class": s.verb_class,
            "noun_class": s.noun_class,
            "verb": s.verb,
            "noun": s.noun,
            "narration": s.narration,
            "unseen": self.unseen,
            "tail_verb": self.tail_verb,
            "tail_noun": self.tail_noun,
            "source": "epic-kitchens",
        }


def pick_test_participants(participants: list[str], share: float, seed: int) -> list[str]:
    """The participants whose seeded hash falls below `share` (at least one, never all)."""
    if share <= 0:
        return []
    if len(participants) < 2:
        raise AvakitError(
            f"--test-share needs 2 or more participants in {TRAIN_CSV}, found {len(participants)}"
        )
    u = {
        p: int.from_bytes(hashlib.sha256(f"{seed}:{p}".encode()).digest()[:8], "big") / 2**64
        for p in participants
    }
    chosen = [p for p in participants if u[p] < share] or [min(participants, key=u.__getitem__)]
    if len(chosen) == len(participants):
        chosen.remove(max(chosen, key=u.__getitem__))
    return sorted(chosen)


def list_frames(root: Path, participant: str, video: str) -> np.ndarray | None:
    """The sorted frame numbers in a video's folder (one listing), or None when it is absent."""
    folder = root / participant / "rgb_frames" / video
    try:
        with os.scandir(folder) as entries:
            numbers = [int(m.group(1)) for e in entries if (m := FRAME_NAME.fullmatch(e.name))]
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise AvakitError(f"{folder}: cannot list the frames folder: {e.strerror or e}") from None
    return np.unique(np.array(numbers, dtype=np.int64))


def missing_frames(present: np.ndarray, start: int, stop: int, first: int) -> tuple[int, list[int]]:
    """How many of start..stop are not in `present` (sorted), and the first `first` of them."""
    lo, hi = np.searchsorted(present, start, "left"), np.searchsorted(present, stop, "right")
    n = (stop - start + 1) - int(hi - lo)
    found: list[int] = []
    if n and first:
        prev = start - 1
        for v in (*present[lo:hi].tolist(), stop + 1):
            found += range(prev + 1, min(v, prev + 1 + first - len(found)))
            if len(found) >= first:
                break
            prev = v
    return n, found


@dataclass
class Missing:
    """A split's segments skipped for missing frames: counts and the first missing frame paths."""

    segments: int = 0
    frames: int = 0
    videos: list[str] = field(default_factory=list)
    first: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """The manifest's entry."""
        return {
            "segments_skipped": self.segments,
            "frames_missing": self.frames,
            "videos_missing": self.videos,
            "first_missing_frames": self.first,
        }


def _segment_missing(present: np.ndarray | None, s: Segment) -> tuple[str, int, list[int], str]:
    """(reason, frames missing, the first of them, detail) of one segment; 0 missing when whole."""
    if present is None:
        first = list(range(s.start, min(s.stop, s.start + FIRST_MISSING - 1) + 1))
        where = f"{s.participant}/rgb_frames/{s.video}/"
        return VIDEO_MISSING, s.stop - s.start + 1, first, f"{where}: folder not found"
    n, first = missing_frames(present, s.start, s.stop, FIRST_MISSING)
    shown = frame_path(s.participant, s.video, first[0]) if n else ""
    return FRAMES_MISSING, n, first, f"{n} of frames {s.start}..{s.stop} missing, first {shown}"


def check_frames(
    root: Path, split_rows: dict[str, list[SegmentRow]]
) -> tuple[dict[str, list[SegmentRow]], list[Skipped], dict[str, Missing]]:
    """Each split's rows whose frames all exist, the skipped ones, and what was missing per split.

    Each video folder is listed once (videos in name order); rows keep their order."""
    by_video: dict[tuple[str, str], list[tuple[str, SegmentRow]]] = defaultdict(list)
    for split, rows in split_rows.items():
        for r in rows:
            by_video[(r.segment.participant, r.segment.video)].append((split, r))
    missing = {split: Missing() for split in split_rows}
    bad: dict[tuple[str, int], Skipped] = {}
    for (participant, video), members in sorted(by_video.items()):
        present = list_frames(root, participant, video)
        for split, r in members:
            reason, n, first, detail = _segment_missing(present, r.segment)
            if not n:
                continue
            m = missing[split]
            m.segments, m.frames = m.segments + 1, m.frames + n
            m.first += [frame_path(participant, video, f) for f in first[: FIRST_MISSING - len(m.first)]]
            if present is None and f"{participant}/{video}" not in m.videos:
                m.videos.append(f"{participant}/{video}")
            bad[(split, r.image_id)] = Skipped(r.line, r.image_id, reason, r.skip_detail(detail))
    kept = {split: [r for r in rows if (split, r.image_id) not in bad] for split, rows in split_rows.items()}
    return kept, sorted(bad.values(), key=lambda b: b.line), missing


def clip_stats(
    split: str,
    rows: list[SegmentRow],
    *,
    tables: Tables,
    frames_per_segment: int,
    missing: dict[str, Missing],
) -> dict:
    """A split's label_stats: segments, frames per segment, counts per verb and noun class, its
    participants, the unseen / tail segments (None without their list), segments skipped for
    missing frames."""
    verbs, nouns = [0] * len(tables.verbs), [0] * len(tables.nouns)
    for r in rows:
        verbs[r.segment.verb_class] += 1
        nouns[r.segment.noun_class] += 1

    def flagged(name: str, given: object) -> int | None:
        return None if given is None else sum(bool(getattr(r, name)) for r in rows)

    return {
        "n": len(rows),
        "segments": len(rows),
        "frames_per_segment": frames_per_segment,
        "verb_counts": verbs,
        "noun_counts": nouns,
        "participants": sorted({r.segment.participant for r in rows}),
        "unseen": flagged("unseen", tables.unseen),
        "tail_verb": flagged("tail_verb", tables.tail_verbs),
        "tail_noun": flagged("tail_noun", tables.tail_nouns),
        "skipped_missing_frames": missing[split].segments if split in missing else 0,
    }


def check_input(given: EpicInput, images: Path | None, options: ShardOptions, test_list: Path | None) -> None:
    """One-line AvakitError for an option that does not fit EPIC-KITCHENS."""
    if images is not None:
        raise AvakitError("--images does not apply to --epic-kitchens: give the frames folder with --frames")
    if given.frames is None:
        raise AvakitError(
            "--epic-kitchens needs --frames FRAMES_ROOT "
            "(FRAMES_ROOT/P01/rgb_frames/P01_01/frame_0000000001.jpg)"
        )
    if test_list is not None or options.split == "official":
        raise AvakitError(
            "--test-list and --split official are AVA's; --epic-kitchens carves its test split from "
            "EPIC_100_train.csv by participant (--test-share)"
        )
    if not 1 <= given.frames_per_segment <= MAX_MEMBERS:
        raise AvakitError(f"--frames-per-segment must be in 1..{MAX_MEMBERS}, got {given.frames_per_segment}")
    if not 0.0 <= given.test_share < 1.0:
        raise AvakitError(f"--test-share must be in [0, 1), got {given.test_share}")


def _rows(
    files: dict[str, AnnotationFile], tables: Tables, test: set[str], fps: int
) -> dict[str, list[SegmentRow]]:
    """Each split's rows, CSV order, numbered within the split."""
    out: dict[str, list[SegmentRow]] = {"train": [], "val": [], "test": []}
    for name, read in files.items():
        for s in read.segments:
            split = "val" if name == VAL_CSV else "test" if s.participant in test else "train"
            row = SegmentRow(
                s,
                name,
                len(out[split]),
                sample_frames(s.start, s.stop, fps),
                None if tables.unseen is None else s.participant in tables.unseen,
                None if tables.tail_verbs is None else s.verb_class in tables.tail_verbs,
                None if tables.tail_nouns is None else s.noun_class in tables.tail_nouns,
            )
            out[split].append(row)
    return out


def plan_epic(
    given: EpicInput,
    images: Path | None,
    out: Path,
    options: ShardOptions,
    test_list: Path | None = None,
    strict: bool = False,
) -> ShardPlan:
    """Read the annotations, split by participant, check every frame, find the shards to write."""
    check_input(given, images, options, test_list)
    options = replace(options, val_ratio=0.0, test_ratio=given.test_share)
    validate_options(options, None)
    folder, root = Path(given.annotations), Path(given.frames)  # type: ignore[arg-type]
    if not folder.is_dir():
        raise AvakitError(f"{folder}: annotations folder not found (it holds {TRAIN_CSV}, {VAL_CSV}, ...)")
    if not root.is_dir():
        raise AvakitError(f"--frames {root}: folder not found")
    tables = read_tables(folder)
    seen: set[str] = set()
    files = {
        name: read_annotations(
            folder / name, len(tables.verbs), len(tables.nouns), seen, options.limit, strict
        )
        for name in (TRAIN_CSV, VAL_CSV)
    }
    test = pick_test_participants(
        sorted({s.participant for s in files[TRAIN_CSV].segments}), given.test_share, options.seed
    )
    split_rows, skipped, missing = check_frames(
        root, _rows(files, tables, set(test), given.frames_per_segment)
    )
    if strict and skipped:
        raise AvakitError(f"{skipped[0].reason}: {skipped[0].detail} (--strict)")
    sources = {
        "epic_kitchens": {
            "annotations": [f.source for f in files.values()],
            **tables.sources,
            "frames_per_segment": given.frames_per_segment,
        },
        "split_by": SPLIT_BY,
        "rows": ROWS,
    }
    skipped = sorted([s for f in files.values() for s in f.skipped] + skipped, key=lambda s: s.line)
    rows_read = sum(f.rows_read for f in files.values())
    plan = build_plan(root, Path(out), options, sources, rows_read, split_rows, skipped, CLIPS, SPLIT_METHOD)
    plan.extra = {
        "classes": {"verb": tables.verbs, "noun": tables.nouns},
        "epic_kitchens": {
            "test_participants": test,
            "frames_missing": {split: m.as_dict() for split, m in missing.items()},
        },
    }
    plan.stats = partial(
        clip_stats, tables=tables, frames_per_segment=given.frames_per_segment, missing=missing
    )
    return plan
