"""What makes a shard sample usable, and the accounting of every sample a source promises.

One label validator (`parse_label`) and one image check (`decode_image`, the JPEG decoder
training uses) serve both the loader and `avakit inspect --decode`. A sample that fails either
is a *corrupt* sample with a reason; a shard that cannot be read loses its samples with a
reason. Reasons travel out of DataLoader workers as small integer codes (`Reason`), and
`SampleCounts` adds them up so that expected = seen + lost, reason by reason.

Torch-free at import (the JPEG decoder is imported on first use), so `inspect` stays light.
"""

from __future__ import annotations

import json
import math
import re
import tarfile
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from avakit.dataset.ava import MAX_ID, MAX_VOTES  # the bounds AVA.txt's columns are read with
from avakit.scores import AVA, Scale

# torchvision 0.29 deprecates its JPEG decoder in favour of TorchCodec; it is still the fastest
# decoder that ships with torchvision, so keep using it without a warning per image.
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)

MAX_MEMBER = 256 << 20  # a tar member larger than this is not a shard sample: the shard is unreadable
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members, skipped as webdataset does


class Reason(IntEnum):
    """Why a sample was not used. 1..19: the sample is corrupt; 20..99: its shard lost it."""

    OK = 0
    IMAGE = 1
    JSON = 2
    NOT_OBJECT = 3
    VOTES = 4
    IMAGE_ID = 5
    TAGS = 6
    CHALLENGE = 7
    MEMBERS = 8
    MOS = 9
    KIND = 10
    KEY = 11
    PAIRS = 12
    CLIP = 13
    SHARD_MISSING = 20
    SHARD_SIZE = 21
    SHARD_UNREADABLE = 22
    URL_UNREADABLE = 23
    SHA256_MISMATCH = 100  # not a loss: the shard is not the manifest's, reading stops with an error

    @property
    def text(self) -> str:
        """The reason in words, the key under which lost samples are counted."""
        return REASON_TEXT[self]

    @property
    def shard_level(self) -> bool:
        """True for reasons that lose a whole shard or URL (codes 20..99), not a single sample."""
        return 20 <= self < 100


REASON_TEXT = {
    Reason.OK: "ok",
    Reason.IMAGE: "image does not decode as JPEG",
    Reason.JSON: "label is not valid JSON",
    Reason.NOT_OBJECT: "label is not a JSON object",
    Reason.VOTES: "votes are not K integers (K of the manifest's scale) in 0..10^9 with a positive sum",
    Reason.IMAGE_ID: "image_id is not an integer below 2^63 (AVA: the sample key)",
    Reason.TAGS: "tags are not 2 integers",
    Reason.CHALLENGE: "challenge is not an integer",
    Reason.MEMBERS: "sample lacks its jpg or json member",
    Reason.MOS: "mos is not a finite number on the manifest's scale",
    Reason.KIND: "label kind differs from the manifest's (votes or mos)",
    Reason.KEY: "key is not the sample key",
    Reason.PAIRS: "group label's members or pairs are malformed (pairs: [i, j, p in 0..1, rank_i, rank_j])",
    Reason.CLIP: "clip label's frames or verb/noun classes are malformed",
    Reason.SHARD_MISSING: "shard file missing",
    Reason.SHARD_SIZE: "shard size differs from the manifest",
    Reason.SHARD_UNREADABLE: "shard unreadable (truncated or not a tar)",
    Reason.URL_UNREADABLE: "unreadable shard data (URL source: events, not samples)",
    Reason.SHA256_MISMATCH: "sha256 differs from the manifest",
}


def _ints(values: Any, n: int, low: int, high: int) -> bool:
    """`values` is a list of `n` ints (not bools) in low..high. On the loader's per-sample path."""
    return (
        isinstance(values, list)
        and len(values) == n
        and all(type(v) is int for v in values)
        and low <= min(values)
        and max(values) <= high
    )


def check_label(key: str, label: Any, scale: Scale = AVA) -> Reason:
    """Reason.OK if a decoded json member is a valid label of sample `key` on `scale`, else why not.

    Two layouts: a labels table's (`kind`, `key`, `image_id` and `votes` or `mos`) and AVA.txt's
    (`image_id` = the key, 10 `votes`, `tags`, `challenge`: written as before scales existed).
    """
    if not isinstance(label, dict):
        return Reason.NOT_OBJECT
    if "kind" in label:
        return _check_table_label(key, label, scale)
    if scale.kind != "votes":
        return Reason.KIND
    votes = label.get("votes")
    if not (_ints(votes, scale.width, 0, MAX_VOTES) and sum(votes) > 0):
        return Reason.VOTES
    image_id = label.get("image_id")
    if not (type(image_id) is int and 0 <= image_id <= MAX_ID and str(image_id) == key and key.isascii()):
        return Reason.IMAGE_ID  # str(int) == key: the key is ASCII digits without leading zeros
    if not _ints(label.get("tags"), 2, -MAX_ID, MAX_ID):
        return Reason.TAGS
    if not _ints([label.get("challenge")], 1, -MAX_ID, MAX_ID):
        return Reason.CHALLENGE
    return Reason.OK


def _check_table_label(key: str, label: dict, scale: Scale) -> Reason:
    """A labels table's sample: its kind, label value, key and integer id (the table's line)."""
    if label["kind"] != scale.kind:
        return Reason.KIND
    if scale.kind == "pairs":
        return check_group_label(key, label)
    if scale.kind == "clips":
        return check_clip_label(key, label)
    if scale.kind == "votes":
        votes = label.get("votes")
        if not (_ints(votes, scale.width, 0, MAX_VOTES) and sum(votes) > 0):
            return Reason.VOTES
    else:
        mos = label.get("mos")
        if not (type(mos) in (int, float) and math.isfinite(mos) and scale.lo <= mos <= scale.hi):
            return Reason.MOS
    if label.get("key") != key:
        return Reason.KEY
    image_id = label.get("image_id")
    if not (type(image_id) is int and 0 <= image_id <= MAX_ID):
        return Reason.IMAGE_ID
    return Reason.OK


MAX_MEMBERS = 64  # photos in one group sample (a PhotoTriage series holds 2-8)
MAX_RANK = 10**6


def member_name(k: int) -> str:
    """The tar member (extension) of a group sample's k-th photo, 0-based: "000.jpg", "001.jpg", ..."""
    return f"{k:03d}.jpg"


def check_group_label(key: str, label: dict) -> Reason:
    """A group sample's label: `key`, `image_id` (an integer id of the group), `members` (2..64
    original file names, in member order) and `pairs` ([i, j, p_ij, rank_i, rank_j] rows: i != j
    0-based member indices, p_ij the preference ratio of i over j in 0..1, ranks >= 0, 1 = best,
    0 = unknown)."""
    if label.get("key") != key:
        return Reason.KEY
    image_id = label.get("image_id")
    if not (type(image_id) is int and 0 <= image_id <= MAX_ID):
        return Reason.IMAGE_ID
    members, pairs = label.get("members"), label.get("pairs")
    if not (
        isinstance(members, list)
        and 2 <= len(members) <= MAX_MEMBERS
        and all(isinstance(m, str) for m in members)
        and isinstance(pairs, list)
        and all(_pair(row, len(members)) for row in pairs)
        and _folder_fields(label, len(members))
    ):
        return Reason.PAIRS
    return Reason.OK


MAX_CLASSES = 100_000  # verb or noun classes of a clip label (EPIC-KITCHENS-100: 97 and 300)
MAX_FRAME = 10**9


def check_clip_label(key: str, label: dict) -> Reason:
    """A clip sample's label (one video segment; its frames are members 000.jpg ...): `key`,
    `image_id` (an integer id), `frames` (1..64 source frame numbers, one per stored member, in
    order), `verb_class` / `noun_class` (ints >= 0, below the manifest's class counts: checked by
    the task), and optional `unseen` / `tail_verb` / `tail_noun` booleans (or null)."""
    if label.get("key") != key:
        return Reason.KEY
    image_id = label.get("image_id")
    if not (type(image_id) is int and 0 <= image_id <= MAX_ID):
        return Reason.IMAGE_ID
    frames = label.get("frames")
    if not (
        isinstance(frames, list)
        and 1 <= len(frames) <= MAX_MEMBERS
        and _ints(frames, len(frames), 0, MAX_FRAME)
        and _ints([label.get("verb_class"), label.get("noun_class")], 2, 0, MAX_CLASSES - 1)
        and all(label.get(flag) is None or type(label[flag]) is bool for flag in CLIP_FLAGS)
    ):
        return Reason.CLIP
    return Reason.OK


CLIP_FLAGS = ("unseen", "tail_verb", "tail_noun")  # a clip's optional subset memberships


def _folder_fields(label: dict, n: int) -> bool:
    """A culling folder's optional fields: `grades` (good/bad per member), `mos` (a number or null
    per member) with its `mos_scale` [lo, hi], `chunk` [k, n_chunks], `group` a string."""
    grades, mos, scale, chunk = (label.get(k) for k in ("grades", "mos", "mos_scale", "chunk"))
    if grades is not None and not (
        isinstance(grades, list) and len(grades) == n and all(g in ("good", "bad") for g in grades)
    ):
        return False
    if "group" in label and not isinstance(label["group"], str):
        return False
    if chunk is not None and not (_ints(chunk, 2, 0, MAX_ID) and chunk[0] < chunk[1]):
        return False
    if mos is None:
        return scale is None
    finite = lambda v: type(v) in (int, float) and math.isfinite(v)  # noqa: E731
    return (
        isinstance(scale, list)
        and len(scale) == 2
        and all(map(finite, scale))
        and scale[0] < scale[1]
        and isinstance(mos, list)
        and len(mos) == n
        and all(v is None or (finite(v) and scale[0] <= v <= scale[1]) for v in mos)
    )


def _pair(row: Any, n: int) -> bool:
    if not (isinstance(row, list) and len(row) == 5):
        return False
    i, j, p, ri, rj = row
    return (
        _ints([i, j], 2, 0, n - 1)
        and i != j
        and type(p) in (int, float)
        and 0.0 <= p <= 1.0
        and _ints([ri, rj], 2, 0, MAX_RANK)
    )


def label_values(label: dict) -> list[float]:
    """The numbers a valid label gives the loader: its K vote counts, or [mos]."""
    return label["votes"] if "votes" in label else [label["mos"]]


def parse_label(key: str, raw: bytes, scale: Scale = AVA) -> tuple[Reason, dict | None]:
    """(Reason.OK, label) for a valid json member on `scale`, else (reason, None)."""
    try:
        label = json.loads(raw)
    except (ValueError, RecursionError):  # bad JSON or UTF-8, a 5000-digit number, deep nesting
        return Reason.JSON, None
    reason = check_label(key, label, scale)
    return reason, (label if reason == Reason.OK else None)


def tar_samples(stream: Any, name: str) -> Iterator[dict]:
    """The samples of an uncompressed shard tar read from `stream` (streaming, no seek).

    The one reader of shard files, for the loader and `inspect`: regular members only (webdataset
    metadata skipped), grouped into samples by webdataset's `group_by_keys` (consecutive members
    with the same key). Raises tarfile.TarError or EOFError for a damaged tar, ValueError for a
    member over MAX_MEMBER bytes (never read) or a key repeating a member.
    """
    from webdataset.tariterators import group_by_keys  # imports torch: only when a shard is read

    return group_by_keys(_tar_files(stream, name))


def read_shard(path: Path) -> Iterator[dict]:
    """The samples of one local shard file: `tar_samples` over the opened file, named by its file name.

    The reader of `inspect` (manifest.verify_shards), `report` and the tests; the loader streams
    through `tar_samples` itself to hash the bytes on the way. Raises OSError when the file cannot
    be opened or read, and what `tar_samples` raises for a damaged tar.
    """
    path = Path(path)
    with path.open("rb") as f:
        yield from tar_samples(f, path.name)


def _tar_files(stream: Any, name: str) -> Iterator[dict]:
    """An uncompressed tar's regular members as webdataset file dicts, streaming (no seek)."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:  # its 10 KiB reads: larger ones cost copies
        for info in tar:
            if not info.isreg() or _META.match(info.name):
                continue
            if info.size > MAX_MEMBER:
                raise ValueError(f"member {info.name} is {info.size} bytes")
            yield {"fname": info.name, "data": tar.extractfile(info).read(), "__url__": name}
            tar.members = []  # streaming: do not keep every member's header


def decode_image(data: bytes) -> Any:
    """The RGB uint8 tensor [3, H, W] of a jpg member, decoded as training decodes it.

    Raises RuntimeError or ValueError when the bytes are not a decodable JPEG (a PNG stored as
    `.jpg` included), like torchvision.io.decode_jpeg itself.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    if not data:
        raise ValueError("empty image member")
    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


@dataclass
class SampleCounts:
    """What a pass over a source saw: expected (None = unknown) = seen + lost, by reason."""

    expected: int | None = None
    seen: int = 0
    lost: Counter = field(default_factory=Counter)  # reason text -> samples
    shards_lost: dict[str, str] = field(default_factory=dict)  # shard name -> reason text

    def add(self, reason: Reason, n: int = 1, shard: str | None = None) -> None:
        """Count `n` samples lost for `reason`; a shard-level loss also keeps the shard's first reason."""
        self.lost[reason.text] += n
        if shard is not None and reason.shard_level:
            self.shards_lost.setdefault(shard, reason.text)

    @property
    def n_lost(self) -> int:
        """All samples lost, whatever the reason."""
        return sum(self.lost.values())

    @property
    def corrupt(self) -> int:
        """Samples read but unusable (bad image or label), as opposed to lost with their shard."""
        shard_texts = {r.text for r in Reason if r.shard_level}
        return sum(n for text, n in self.lost.items() if text not in shard_texts)

    def finish(self) -> None:
        """After a complete pass: a shortfall no reason explains is reported, never hidden."""
        if self.expected is not None and self.seen + self.n_lost < self.expected:
            self.lost["unaccounted for"] += self.expected - self.seen - self.n_lost

    def merged(self, *others: SampleCounts) -> SampleCounts:
        """The sum of these counts (e.g. over DDP ranks); expected is None if any is unknown."""
        parts = (self, *others)
        expected = None if any(p.expected is None for p in parts) else sum(p.expected for p in parts)
        out = SampleCounts(expected, sum(p.seen for p in parts))
        for p in parts:
            out.lost.update(p.lost)
            out.shards_lost.update(p.shards_lost)
        return out

    def as_dict(self) -> dict:
        """The JSON form used by results.json, eval json, training_history.json and meta.json."""
        return {
            "samples_expected": self.expected,
            "samples_seen": self.seen,
            "lost": dict(sorted(self.lost.items())),
        }

    def summary(self) -> str:
        """One line: '58 of 60 samples seen; lost 2: image does not decode as JPEG 2'."""
        of = f" of {self.expected}" if self.expected is not None else ""
        text = f"{self.seen}{of} samples seen"
        if self.lost:
            text += f"; lost {self.n_lost}: " + ", ".join(f"{k} {v}" for k, v in sorted(self.lost.items()))
        if self.shards_lost:
            shards = sorted(self.shards_lost)
            text += f" (shards {', '.join(shards[:5])}{' ...' if len(shards) > 5 else ''})"
        return text
