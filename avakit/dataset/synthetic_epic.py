"""A synthetic EPIC-KITCHENS-100 layout whose verb and noun are learnable from every single frame.

`make_synthetic_epic` writes the release's files: `annotations/EPIC_100_train.csv`,
`EPIC_100_validation.csv` (the real 15 columns, optionally a leading `uid`), both class tables
(a one-element `instances` list unquoted, as in the real files), the unseen-participants and
tail-class lists, and `frames/{participant}/rgb_frames/{video}/frame_%010d.jpg` (1-based; a few
background-only frames between segments). A segment's noun is an object of its class's colour
and shape (ellipse or square) near the centre, drifting over the segment; its verb is the
background texture (horizontal stripes, vertical stripes or a checkerboard, at a period per
class). Both survive a random-resized crop of scale 0.85-1 and a horizontal flip, and are visible
in every frame, so a per-frame CNN with temporal average pooling can learn them. Classes are
imbalanced (weights 1/(k+1)); the tail lists name the rarest third. The last participant
appears in validation only (the unseen list names it), as do the last videos of the first one.

`faults` plants what the importer must survive: "missing_frame" (one frame inside a train
segment deleted), "missing_video" (a train video's folder absent), "bad_row" (a train row with
stop_frame < start_frame) and "corrupt_frame" (a frame that is not a JPEG).
"""

from __future__ import annotations

import colorsys
import csv
import functools
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from avakit.dataset.epic import (
    COLUMNS,
    NOUN_CSV,
    TAIL_NOUNS_CSV,
    TAIL_VERBS_CSV,
    TRAIN_CSV,
    UNSEEN_CSV,
    VAL_CSV,
    VERB_CSV,
)
from avakit.dataset.epic_plan import frame_path
from avakit.fileio import write_bytes_atomic, write_text_atomic

FAULTS = ("missing_frame", "missing_video", "bad_row", "corrupt_frame")
VERBS = ("take", "put", "wash", "open", "close", "cut", "mix", "pour", "turn-on", "turn-off")
NOUNS = ("tap", "plate", "cupboard", "knife", "pan", "lid", "bowl", "drawer", "sponge", "glass")
FPS = 50.0  # frames per second of the timestamps written


@dataclass(frozen=True)
class SynthSegment:
    """One generated segment, as its CSV row says."""

    narration_id: str
    participant: str
    video: str
    start: int
    stop: int
    verb_class: int
    noun_class: int
    split: str  # "train" (EPIC_100_train.csv) or "val" (EPIC_100_validation.csv)


@dataclass(frozen=True)
class SyntheticEpic:
    """Paths of a generated layout and what it holds."""

    root: Path
    annotations: Path  # root / annotations: the CSVs
    frames: Path  # root / frames: {participant}/rgb_frames/{video}/frame_%010d.jpg
    verbs: tuple[str, ...]  # class keys, id order
    nouns: tuple[str, ...]
    segments: tuple[SynthSegment, ...]  # CSV order: train rows, then validation rows
    unseen: tuple[str, ...]  # participants in validation only
    tail_verbs: tuple[int, ...]
    tail_nouns: tuple[int, ...]
    faults: dict[str, str]  # fault -> narration id (missing_video: the video id)


def _names(base: tuple[str, ...], n: int, prefix: str) -> tuple[str, ...]:
    return tuple(base[k] if k < len(base) else f"{prefix}{k}" for k in range(n))


def _colour(k: int, n: int) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(k / n, 0.9, 0.95), dtype=np.float32) * 255.0


@functools.lru_cache(maxsize=8)
def _grid(h: int, w: int) -> np.ndarray:
    return np.mgrid[0:h, 0:w]


@functools.lru_cache(maxsize=64)
def _texture(verb: int, h: int, w: int) -> np.ndarray:
    """The verb's background cue [h, w] in -1..1: stripes (horizontal, vertical) or a checkerboard."""
    period = 6 * (1 + verb // 3)
    yy, xx = _grid(h, w)
    ys, xs = (yy // (period // 2)) % 2, (xx // (period // 2)) % 2
    pattern = (ys, xs, ys ^ xs)[verb % 3]
    return pattern.astype(np.float32) * 2.0 - 1.0


def _frame(
    seg: SynthSegment | None,
    t: float,
    size: tuple[int, int],
    base: float,
    n_nouns: int,
    rng: np.random.Generator,
) -> bytes:
    """One JPEG frame at time t (0..1) of `seg` (None: a background-only frame between segments)."""
    w, h = size
    img = np.full((h, w, 3), base, dtype=np.float32)
    if seg is not None:
        img += 40.0 * _texture(seg.verb_class, h, w)[..., None]
        cx = w * (0.35 + 0.3 * t)
        cy = h * (0.4 + 0.2 * ((seg.start * 7919) % 100) / 100)
        r = 0.24 * h
        yy, xx = _grid(h, w)
        if seg.noun_class % 2:
            mask = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
        else:
            mask = ((xx - cx) / (1.2 * r)) ** 2 + ((yy - cy) / r) ** 2 <= 1.0
        img[mask] = _colour(seg.noun_class, n_nouns)
    img += rng.normal(0.0, 5.0, size=img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _draw(weights: np.ndarray, rng: np.random.Generator) -> int:
    return int(rng.choice(len(weights), p=weights))


def _videos(n_participants: int, per: int) -> list[tuple[str, str, str]]:
    """(participant, video, split) of every video: the last participant and the first one's last
    video go to validation."""
    out = []
    for p in range(n_participants):
        pid = f"P{p + 1:02d}"
        for v in range(per):
            val = (p == n_participants - 1 and n_participants > 1) or (p == 0 and v == per - 1 and per > 1)
            out.append((pid, f"{pid}_{v + 1:02d}", "val" if val else "train"))
    return out


def _timestamp(frame: int) -> str:
    s = frame / FPS
    return f"{int(s // 3600):02d}:{int(s % 3600 // 60):02d}:{s % 60:05.2f}"


def _row(seg: SynthSegment, verbs: tuple[str, ...], nouns: tuple[str, ...]) -> list[str]:
    verb, noun = verbs[seg.verb_class], nouns[seg.noun_class]
    stamps = [_timestamp(seg.start), _timestamp(seg.start), _timestamp(seg.stop)]
    return [
        seg.narration_id, seg.participant, seg.video, *stamps, str(seg.start), str(seg.stop),
        f"{verb} {noun}", verb, str(seg.verb_class), noun, str(seg.noun_class), f"['{noun}']",
        f"[{seg.noun_class}]",
    ]  # fmt: skip


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _class_table(keys: tuple[str, ...], category: str) -> list[list[str]]:
    """Rows id, key, instances, category; odd classes list two instances (quoted by the writer)."""
    return [[str(k), key, str([key, f"{key}-x"] if k % 2 else [key]), category] for k, key in enumerate(keys)]


def make_synthetic_epic(
    root: Path,
    n_participants: int = 4,
    videos_per_participant: int = 2,
    segments_per_video: int = 10,
    n_verbs: int = 5,
    n_nouns: int = 6,
    frame_size: tuple[int, int] = (64, 48),
    frames_per_segment: tuple[int, int] = (6, 20),
    seed: int = 0,
    faults: tuple[str, ...] = (),
    *,
    uid: bool = False,
    lists: bool = True,
) -> SyntheticEpic:
    """Write the layout under `root`; the same arguments write the same files. `uid` adds the
    leading uid column of some releases; `lists=False` leaves out the unseen and tail lists."""
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
    root = Path(root)
    annotations, frames = root / "annotations", root / "frames"
    annotations.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    verbs, nouns = _names(VERBS, n_verbs, "verb"), _names(NOUNS, n_nouns, "noun")
    wv, wn = 1.0 / np.arange(1, n_verbs + 1), 1.0 / np.arange(1, n_nouns + 1)
    wv, wn = wv / wv.sum(), wn / wn.sum()
    segments: list[SynthSegment] = []
    for participant, video, split in _videos(n_participants, videos_per_participant):
        folder = frames / participant / "rgb_frames" / video
        folder.mkdir(parents=True, exist_ok=True)
        base, frame = float(rng.uniform(90, 160)), 1
        for k in range(segments_per_video):
            for _ in range(int(rng.integers(1, 3))):  # background frames before the segment
                write_bytes_atomic(
                    folder / f"frame_{frame:010d}.jpg", _frame(None, 0, frame_size, base, n_nouns, rng)
                )
                frame += 1
            n = int(rng.integers(frames_per_segment[0], frames_per_segment[1] + 1))
            seg = SynthSegment(
                f"{video}_{k}",
                participant,
                video,
                frame,
                frame + n - 1,
                _draw(wv, rng),
                _draw(wn, rng),
                split,
            )
            for i in range(n):
                data = _frame(seg, i / max(1, n - 1), frame_size, base, n_nouns, rng)
                write_bytes_atomic(folder / f"frame_{frame + i:010d}.jpg", data)
            frame += n
            segments.append(seg)
    segments.sort(key=lambda s: s.split != "train")  # train rows first, each in video order
    planted = _plant(faults, segments, frames)
    rows = {
        split: [_row(s, verbs, nouns) for s in segments if s.split == split] for split in ("train", "val")
    }
    if "bad_row" in faults:
        s = next(s for s in segments if s.split == "train")
        bad = SynthSegment(f"{s.video}_999", s.participant, s.video, s.stop, s.start, 0, 0, "train")
        rows["train"].append(_row(bad, verbs, nouns))
        planted["bad_row"] = bad.narration_id
    header = (["uid"] if uid else []) + list(COLUMNS)
    for split, name in (("train", TRAIN_CSV), ("val", VAL_CSV)):
        _csv(annotations / name, header, [([str(i)] if uid else []) + r for i, r in enumerate(rows[split])])
    unseen, tail_v, tail_n = _write_tables(annotations, verbs, nouns, segments, lists)
    return SyntheticEpic(
        root, annotations, frames, verbs, nouns, tuple(segments), unseen, tail_v, tail_n, planted
    )


def _write_tables(
    annotations: Path,
    verbs: tuple[str, ...],
    nouns: tuple[str, ...],
    segments: list[SynthSegment],
    lists: bool,
) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    """Write both class tables and (with `lists`) the unseen and tail lists; return what they list:
    the participants in validation only, the rarest third of the verbs and of the nouns."""
    _csv(annotations / VERB_CSV, ["id", "key", "instances", "category"], _class_table(verbs, "action"))
    _csv(annotations / NOUN_CSV, ["id", "key", "instances", "category"], _class_table(nouns, "utensils"))
    train_people = {s.participant for s in segments if s.split == "train"}
    unseen = tuple(sorted({s.participant for s in segments} - train_people))
    tail_v = tuple(range(len(verbs) - max(1, len(verbs) // 3), len(verbs)))
    tail_n = tuple(range(len(nouns) - max(1, len(nouns) // 3), len(nouns)))
    if lists:
        _csv(annotations / UNSEEN_CSV, ["participant_id"], [[p] for p in unseen])
        _csv(annotations / TAIL_VERBS_CSV, ["verb"], [[str(k)] for k in tail_v])
        _csv(annotations / TAIL_NOUNS_CSV, ["noun"], [[str(k)] for k in tail_n])
    return unseen, tail_v, tail_n


def _plant(faults: tuple[str, ...], segments: list[SynthSegment], frames: Path) -> dict[str, str]:
    """Delete or damage frames for the file faults; which segment (or video) each one hit."""
    train = [s for s in segments if s.split == "train"]
    planted: dict[str, str] = {}
    if "missing_frame" in faults:
        s = train[1]
        (frames / frame_path(s.participant, s.video, (s.start + s.stop) // 2)).unlink()
        planted["missing_frame"] = s.narration_id
    if "corrupt_frame" in faults:
        s = train[3]
        write_bytes_atomic(frames / frame_path(s.participant, s.video, s.start), b"not a jpeg at all")
        planted["corrupt_frame"] = s.narration_id
    if "missing_video" in faults:
        s = train[-1]
        shutil.rmtree(frames / s.participant / "rgb_frames" / s.video)
        planted["missing_video"] = s.video
    return planted
