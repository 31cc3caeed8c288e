"""Reading a culling set: the root of `<folder>/good|bad/*.jpg`, its splits.json and its mos.csv.

Every problem in splits.json or mos.csv is one AvakitError line naming the file and the key or
line. The photo listing is sorted and case-insensitive about extensions (any extension Pillow
registers: .jpg, .jpeg, .png, .webp, .tif, ...); other files are counted, never read.
Torch-free (`avakit shard --folders` and `avakit audit` plan with it).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from avakit.errors import AvakitError
from avakit.fileio import load_json
from avakit.scores import SPLITS
from avakit.textlines import read_lines, show

FILES_DIR = "training_files"  # the layout: ROOT/training_files/<folder>/good|bad
GRADES = ("good", "bad")
MAX_SPLITS_BYTES = 16 << 20  # a splits.json of 100,000 folders is ~3 MB
MAX_MOS_LINE = 4096


def photos_root(root: Path) -> Path:
    """The folder holding `<folder>/good|bad`: ROOT itself, or ROOT/training_files when present."""
    root = Path(root)
    if not root.is_dir():
        raise AvakitError(f"{root}: folders root not found (it holds <folder>/good/ and <folder>/bad/)")
    inner = root / FILES_DIR
    return inner if inner.is_dir() else root


def _folder_name(value: object, where: str) -> str:
    """A folder name from splits.json: a non-empty string naming one folder (no path separators)."""
    if not isinstance(value, str) or not value.strip():
        raise AvakitError(f"{where}: expected a folder name, got {show(repr(value))}")
    if "/" in value or "\\" in value or value in (".", "..") or not value.isprintable():
        raise AvakitError(f"{where}: {show(value)} is not a folder name (one folder under the root)")
    return value


def _load_json(path: Path) -> object:
    """A JSON file's value; one AvakitError line when it is missing, too large or not JSON."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise AvakitError(f"{path}: splits file not found") from None
    except OSError as e:
        raise AvakitError(f"{path}: cannot read: {e.strerror or e}") from None
    if size > MAX_SPLITS_BYTES:
        raise AvakitError(f"{path}: larger than {MAX_SPLITS_BYTES >> 20} MB; is it a splits.json?")
    return load_json(path)


def read_splits_json(path: Path) -> dict[str, list[str]]:
    """splits.json -> {"train": [...], "val": [...], "test": [...]} (a missing split is empty).

    Refused, one line each: not a JSON object, an unknown split, a split that is not a list of
    folder names, a folder listed twice in one split or in two splits, no folder at all.
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise AvakitError(
            f'{path}: expected a JSON object {{"train": [folders], ...}}, got {type(data).__name__}'
        )
    unknown = [k for k in data if k not in SPLITS]
    if unknown:
        raise AvakitError(f"{path}: {show(unknown[0])}: unknown split (expected train, val and test)")
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    seen: dict[str, str] = {}
    for split in SPLITS:
        folders = data.get(split, [])
        if not isinstance(folders, list):
            raise AvakitError(
                f"{path}: {split}: expected a list of folder names, got {type(folders).__name__}"
            )
        for i, value in enumerate(folders):
            name = _folder_name(value, f"{path}: {split}[{i}]")
            if name in seen:
                where = "twice" if seen[name] == split else f"in both {seen[name]} and {split}"
                raise AvakitError(f"{path}: {split}[{i}]: folder {show(name)} is listed {where}")
            seen[name] = split
            splits[split].append(name)
    if not seen:
        raise AvakitError(f"{path}: lists no folder")
    return splits


def image_extensions() -> frozenset[str]:
    """The lower-case file extensions Pillow can open (`.jpg`, `.jpeg`, `.png`, ...)."""
    from PIL import Image

    Image.init()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


@dataclass
class FolderListing:
    """One folder's photos (relative to the root, sorted) by grade, and its files not read."""

    name: str
    good: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    other_files: int = 0  # files in good/ or bad/ whose extension is not an image's

    @property
    def n(self) -> int:
        """Its number of photos."""
        return len(self.good) + len(self.bad)


def list_folder(root: Path, name: str, extensions: frozenset[str]) -> FolderListing:
    """The photos of `root/name/good` and `root/name/bad` (either may be absent), sorted by name."""
    listing = FolderListing(name)
    for grade in GRADES:
        folder = root / name / grade
        if not folder.is_dir():
            continue
        try:
            with os.scandir(folder) as entries:
                files = sorted(e.name for e in entries if e.is_file() and not e.name.startswith("."))
        except OSError as e:
            raise AvakitError(f"{folder}: cannot list: {e.strerror or e}") from None
        photos = [f for f in files if os.path.splitext(f)[1].lower() in extensions]
        listing.other_files += len(files) - len(photos)
        getattr(listing, grade).extend(f"{name}/{grade}/{f}" for f in photos)
    return listing


def shoot_folders(root: Path) -> list[str]:
    """The root's sub-folders holding a good/ or bad/ folder, sorted."""
    try:
        with os.scandir(root) as entries:
            names = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    except OSError as e:
        raise AvakitError(f"{root}: cannot list: {e.strerror or e}") from None
    return sorted(n for n in names if any((root / n / g).is_dir() for g in GRADES))


@dataclass
class MosTable:
    """mos.csv read: image (relative to the root) -> MOS, its scale, and the rows naming no photo."""

    mos: dict[str, float]
    scale: tuple[float, float]
    rows: int
    unknown: list[str] = field(default_factory=list)  # images not among the listed photos


def _mos_value(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AvakitError(f"{where}: mos {show(text)} is not a number") from None
    if not math.isfinite(value):
        raise AvakitError(f"{where}: mos {show(text)} is not a finite number")
    return value


def _header(text: str, path: Path) -> tuple[int, int]:
    names = [c.strip().lower() for c in next(csv.reader([text]), [])]
    if "image" not in names or "mos" not in names:
        raise AvakitError(f"{path}:1: expected a header with columns image and mos, got {show(text)}")
    return names.index("image"), names.index("mos")


def _image_path(text: str, where: str) -> str:
    """A mos.csv image path relative to the root, `/`-separated; a `training_files/` prefix is dropped."""
    rel = text.strip().replace("\\", "/")
    if not rel or rel.startswith("/") or ".." in rel.split("/"):
        raise AvakitError(f"{where}: image {show(text)} is not a path relative to the root")
    return rel[len(FILES_DIR) + 1 :] if rel.startswith(FILES_DIR + "/") else rel


def read_mos_csv(path: Path, photos: set[str], scale: tuple[float, float] | None) -> MosTable:
    """mos.csv (`image`, `mos`) -> MosTable. A mos that is not a finite number, outside `scale`,
    or a photo given twice is refused (one line naming the file and line); rows naming no listed
    photo are counted in `unknown`. Without `scale` it is the min and max of the file."""
    path = Path(path)
    if not path.is_file():
        raise AvakitError(f"{path}: mos file not found")
    mos: dict[str, float] = {}
    unknown: list[str] = []
    columns: tuple[int, int] | None = None
    rows = 0
    for line in read_lines(path, MAX_MOS_LINE):
        where = f"{path}:{line.number}"
        if line.problem:
            raise AvakitError(f"{where}: {line.problem}")
        if line.blank:
            continue
        if columns is None:
            columns = _header(line.text, path)
            continue
        cells = next(csv.reader([line.text]), [])
        if len(cells) <= max(columns):
            raise AvakitError(f"{where}: expected image and mos, got {show(line.text)}")
        image, value = _image_path(cells[columns[0]], where), _mos_value(cells[columns[1]].strip(), where)
        if scale is not None and not scale[0] <= value <= scale[1]:
            raise AvakitError(f"{where}: mos {value:g} is outside --mos-scale {scale[0]:g}:{scale[1]:g}")
        rows += 1
        if image not in photos:
            unknown.append(image)
        elif image in mos:
            raise AvakitError(f"{where}: {show(image)} is given a mos twice")
        else:
            mos[image] = value
    if not rows:
        raise AvakitError(f"{path}: no mos row")
    if scale is None:
        values = list(mos.values())
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        scale = (lo, hi) if lo < hi else (lo - 0.5, hi + 0.5)
    return MosTable(mos, scale, rows, unknown)
