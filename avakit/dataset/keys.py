"""String sample keys and hash-stable, group-aware splits for rating tables (torch-free).

A key names a sample inside the shards. webdataset splits a tar member name at the first dot of
its basename, so a key holds no `.`; it also holds no `/`, `\\`, whitespace, control or non-ASCII
characters, so it survives every tar reader and file system. Splits come from a hash of the key
(or its group), so adding or removing rows never moves another image between splits.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Mapping, Sequence

from avakit.dataset.ava import _check_ratio
from avakit.errors import AvakitError
from avakit.scores import SPLITS

MAX_KEY_LENGTH = 200
FALLBACK_KEY = "img"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _without_extension(image: str) -> str:
    """The relative path with `\\` read as `/`, empty and `.` parts dropped, the last suffix cut."""
    parts = [p for p in image.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        return ""
    name = parts[-1]
    dot = name.rfind(".")
    if dot > 0:  # "a.jpg" -> "a"; a dot-file such as ".jpg" keeps its name
        name = name[:dot]
    return "/".join([*parts[:-1], name])


def sample_key(image: str) -> str:
    """A webdataset-safe key for an image path: `sub/Photo 1.JPG` -> `sub_Photo_1`.

    Accents are folded to ASCII (`é` -> `e`), every run of other characters outside
    `[A-Za-z0-9_-]` becomes one `_`; an empty result is `img`; a key longer than 200 characters is
    cut and ends in `_` + 8 hex characters of the path's sha256. Distinct paths may share a key:
    `unique_keys` resolves that.
    """
    folded = unicodedata.normalize("NFKD", _without_extension(image))
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    key = _UNSAFE.sub("_", folded)
    if not key.strip("_"):
        return FALLBACK_KEY
    if len(key) > MAX_KEY_LENGTH:
        key = f"{key[: MAX_KEY_LENGTH - 9]}_{_digest(image)[:8]}"
    return key


def _suffixed(key: str, image: str, width: int) -> str:
    tail = f"_{_digest(image)[:width]}"
    return key[: MAX_KEY_LENGTH - len(tail)] + tail


def unique_keys(images: Sequence[str]) -> list[str]:
    """One distinct key per image path, in the order given.

    Paths whose keys collide (`a.jpg` and `a.png`, `a b.jpg` and `a_b.jpg`) all get `_` + 8 hex
    characters of the sha256 of their path; the others keep their plain key. The result depends
    only on the set of paths, never on their order. A path given twice is an AvakitError.
    """
    seen: set[str] = set()
    for image in images:
        if image in seen:
            raise AvakitError(f"image {image!r} is listed twice: every image needs its own key")
        seen.add(image)
    plain = {image: sample_key(image) for image in images}
    by_key: dict[str, list[str]] = defaultdict(list)
    for image in sorted(plain):
        by_key[plain[image]].append(image)
    keys = {image: key for key, group in by_key.items() if len(group) == 1 for image in group}
    taken = set(keys.values())
    colliding = sorted(image for group in by_key.values() if len(group) > 1 for image in group)
    for width in (8, 16, 64):
        candidates = {image: _suffixed(plain[image], image, width) for image in colliding}
        counts: dict[str, int] = defaultdict(int)
        for key in candidates.values():
            counts[key] += 1
        for image in list(colliding):
            key = candidates[image]
            if counts[key] == 1 and key not in taken:
                keys[image] = key
                taken.add(key)
                colliding.remove(image)
        if not colliding:
            break
    if colliding:  # a full sha256 collision or a plain key equal to a hashed one: never in practice
        raise AvakitError(f"cannot give image {colliding[0]!r} a key of its own")
    return [keys[image] for image in images]


def _unit(seed: int, name: str) -> float:
    """A number in [0, 1) from the first 8 bytes of sha256(f"{seed}\\0{name}")."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _fixed_by_group(
    keys: Sequence[str], groups: Mapping[str, str | None], fixed: Mapping[str, str]
) -> dict[str, str]:
    """The split each group's fixed members set, so its other members follow them."""
    found: dict[str, tuple[str, str]] = {}
    for key in keys:
        group = groups.get(key)
        if not group or key not in fixed:
            continue
        split = fixed[key]
        if group in found and found[group][1] != split:
            other, other_split = found[group]
            raise AvakitError(
                f"group {group!r} straddles splits: {other!r} is in {other_split}, {key!r} in {split}"
            )
        found.setdefault(group, (key, split))
    return {group: split for group, (_, split) in found.items()}


def hash_split(
    keys: Sequence[str],
    val_ratio: float,
    test_ratio: float,
    seed: int,
    groups: Mapping[str, str | None] | None = None,
    fixed: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Each key's split ("train", "val" or "test"), from a hash of (seed, group or key).

    u = first 8 bytes of sha256(f"{seed}\\0{group or key}") / 2**64: test if u < test_ratio, val
    if u < test_ratio + val_ratio, else train. A key's split depends only on itself, its group
    and the seed, so adding or removing rows never moves another image, and a group never
    straddles splits. `fixed` (key -> split, from a `split` column or an official list) wins over
    the hash; a group's other members follow its fixed members, and fixed members of one group
    in different splits are an AvakitError. Keys in `fixed` or `groups` that are not in `keys` are
    ignored.
    """
    _check_ratio("val_ratio", val_ratio)
    _check_ratio("test_ratio", test_ratio)
    if val_ratio + test_ratio >= 1.0:
        raise AvakitError("val_ratio plus test_ratio must be below 1")
    groups = groups or {}
    fixed = fixed or {}
    seen: set[str] = set()
    for key in keys:  # linear: a repeated key among 255k must not take minutes to report
        if key in seen:
            raise AvakitError(f"key {key!r} is listed twice")
        seen.add(key)
    for key in keys:
        if key in fixed and fixed[key] not in SPLITS:
            raise AvakitError(f"key {key!r}: split {fixed[key]!r} is not one of train, val, test")
    group_split = _fixed_by_group(keys, groups, fixed)
    out: dict[str, str] = {}
    for key in keys:
        group = groups.get(key) or None
        if key in fixed:
            out[key] = fixed[key]
        elif group is not None and group in group_split:
            out[key] = group_split[group]
        else:
            u = _unit(seed, group if group is not None else key)
            out[key] = "test" if u < test_ratio else "val" if u < test_ratio + val_ratio else "train"
    return out
