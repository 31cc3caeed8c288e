"""Dataset presets: a rating dataset's own release files read into the labels table.

`preset_frame(name, root)` reads the release files of a known dataset under `root` and returns
a `PresetFrame`: a table with the columns of `avakit.dataset.labels` (`image`, `votes_1..K`
or `mos` with optional `std`, `n`; optional `group`), the scale, the direction, the line of
the release file each row came from, the files read and the images folder. `read_preset`
turns it into a `LabelTable`. `PRESETS` maps each name to its reader (register more with
`@register("name")`).

Validation: a missing file, a wrong header, a missing variable, a line that cannot be read
(not UTF-8, too long) or that has the wrong number of fields is one AvakitError naming the
file and line; a value that is bad (an empty or non-numeric count or MOS) is passed through as
written, so that the labels table records that row as a skip with its line number.
Cells read from text files stay strings, as in a labels CSV; values from .mat files are floats.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from avakit.errors import AvakitError
from avakit.textlines import Line, read_lines, show, split_fields

if TYPE_CHECKING:
    from avakit.dataset.labels import LabelTable

LIVEC_TRAINING_EXAMPLES = 7  # the release's first 7 entries are its training examples


@dataclass(kw_only=True)
class PresetFrame:
    """A preset's release files as a labels table, with what a shard manifest needs to know."""

    frame: pd.DataFrame
    scale: tuple[float, float]
    lower_is_better: bool
    lines: list[int]
    files: list[Path]
    images: Path


Reader = Callable[[Path], PresetFrame]
PRESETS: dict[str, Reader] = {}


def register(name: str) -> Callable[[Reader], Reader]:
    """Add a reader to `PRESETS` under `name`."""

    def add(reader: Reader) -> Reader:
        PRESETS[name] = reader
        return reader

    return add


def preset_frame(name: str, root: Path) -> PresetFrame:
    """Read preset `name`'s release files under `root`."""
    if name not in PRESETS:
        raise AvakitError(f"unknown preset {name!r}: choose one of {', '.join(sorted(PRESETS))}")
    root = Path(root)
    if not root.is_dir():
        raise AvakitError(f"preset {name}: {root}: not a folder")
    return PRESETS[name](root)


def read_preset(name: str, root: Path, strict: bool = False) -> LabelTable:
    """Preset `name` under `root` as a labels table (bad rows skipped, or with `strict` an error)."""
    return preset_table(preset_frame(name, root), name, strict)


def preset_table(pf: PresetFrame, name: str, strict: bool = False) -> LabelTable:
    """A preset's frame validated as a labels table (bad rows skipped, or with `strict` an error)."""
    from avakit.dataset.labels import table_from_frame

    return table_from_frame(
        pf.frame, name, scale=pf.scale, lower_is_better=pf.lower_is_better, strict=strict, lines=pf.lines
    )


# ---------------------------------------------------------------- text and CSV files


def _require(path: Path) -> Path:
    if not path.is_file():
        raise AvakitError(f"{path}: missing file (expected in the preset's release layout)")
    return path


def _readable(path: Path, line: Line) -> str:
    if line.problem:
        raise AvakitError(f"{path}: line {line.number}: {line.problem}")
    return line.text


def _csv_cells(path: Path, line: Line) -> list[str]:
    text = _readable(path, line)
    try:
        return [cell.strip() for cell in next(csv.reader([text]))]
    except (csv.Error, StopIteration) as e:
        raise AvakitError(f"{path}: line {line.number}: not a CSV line: {e}") from None


def _csv_header(path: Path) -> list[str] | None:
    """The header cells of a CSV file, or None when it has no non-blank line."""
    for line in read_lines(path):
        if not line.blank:
            return _csv_cells(path, line)
    return None


def _pick(header: Sequence[str], names: Sequence[str]) -> str | None:
    return next((n for n in names if n in header), None)


def _read_csv(path: Path, columns: dict[str, Sequence[str]]) -> tuple[dict[str, list[str]], list[int]]:
    """The cells of `path` under `columns` (output name -> accepted header names), and line numbers.

    The first non-blank line is the header; every other non-blank line must have as many fields.
    """
    _require(path)
    lines = iter(read_lines(path))
    header: list[str] | None = None
    for line in lines:
        if not line.blank:
            header, header_line = _csv_cells(path, line), line.number
            break
    if header is None:
        raise AvakitError(f"{path}: empty file: expected a header line")
    where: dict[str, int] = {}
    for out, names in columns.items():
        found = _pick(header, names)
        if found is None:
            wanted = " or ".join(repr(n) for n in names)
            raise AvakitError(
                f"{path}: line {header_line}: no column {wanted} in the header "
                f"({', '.join(show(h) for h in header)})"
            )
        where[out] = header.index(found)
    cells: dict[str, list[str]] = {out: [] for out in columns}
    numbers: list[int] = []
    for line in lines:
        if line.blank:
            continue
        row = _csv_cells(path, line)
        if len(row) != len(header):
            raise AvakitError(
                f"{path}: line {line.number}: {len(row)} fields, expected {len(header)} as in the header"
            )
        for out, i in where.items():
            cells[out].append(row[i])
        numbers.append(line.number)
    return cells, numbers


# ---------------------------------------------------------------- the presets


@register("koniq10k")
def koniq10k(root: Path) -> PresetFrame:
    """KonIQ-10k: 5-point vote counts, higher is better.

    ROOT/koniq10k_scores_and_distributions.csv  (header "image_name","c1",...,"c5","c_total",
                                                 "MOS","SD","MOS_zscore")
    ROOT/1024x768/*.jpg                          (or ROOT/512x384/ when only that one is there)
    """
    path = root / "koniq10k_scores_and_distributions.csv"
    columns = {"image": ["image_name"]} | {f"votes_{i}": [f"c{i}"] for i in range(1, 6)}
    cells, lines = _read_csv(path, columns)
    images = root / "1024x768"
    if not images.is_dir() and (root / "512x384").is_dir():
        images = root / "512x384"
    return PresetFrame(
        frame=pd.DataFrame(cells, dtype=object),
        scale=(1.0, 5.0),
        lower_is_better=False,
        lines=lines,
        files=[path],
        images=images,
    )


def _spaq_table(root: Path) -> Path:
    columns = {"image": ["Image name", "image_name"], "mos": ["MOS"]}
    if (root / "mos.csv").is_file():
        return root / "mos.csv"
    candidates = sorted(root.glob("*.csv"))
    for path in candidates:
        try:
            header = _csv_header(path) or []
        except AvakitError:
            continue  # an unreadable .csv that is not the MOS table
        if all(_pick(header, names) for names in columns.values()):
            return path
    found = ", ".join(p.name for p in candidates) or "no .csv file"
    raise AvakitError(
        f"{root}: no SPAQ MOS table: expected mos.csv or a .csv with columns 'Image name' (or "
        f"'image_name') and 'MOS' (found {found})"
    )


@register("spaq")
def spaq(root: Path) -> PresetFrame:
    """SPAQ: MOS on 0..100, higher is better.

    ROOT/mos.csv          (or the first ROOT/*.csv with columns "Image name" (or "image_name")
                           and "MOS": the release's MOS spreadsheet saved as CSV)
    ROOT/TestImage/*.jpg
    """
    path = _spaq_table(root)
    cells, lines = _read_csv(path, {"image": ["Image name", "image_name"], "mos": ["MOS"]})
    return PresetFrame(
        frame=pd.DataFrame(cells, dtype=object),
        scale=(0.0, 100.0),
        lower_is_better=False,
        lines=lines,
        files=[path],
        images=root / "TestImage",
    )


def _sqrt_or_raw(var: str) -> Any:
    """The standard deviation from a variance cell; a bad cell is kept as written (a row skip)."""
    try:
        value = float(var)
    except ValueError:
        return var
    return math.sqrt(value) if math.isfinite(value) and value >= 0 else var


@register("kadid10k")
def kadid10k(root: Path) -> PresetFrame:
    """KADID-10k: MOS on 1..5 from the "dmos" column; higher is better despite the name.

    ROOT/dmos.csv        (header dist_img,ref_img,dmos,var; std = sqrt(var), group = ref_img)
    ROOT/images/*.png
    """
    path = root / "dmos.csv"
    columns = {"image": ["dist_img"], "group": ["ref_img"], "mos": ["dmos"], "var": ["var"]}
    cells, lines = _read_csv(path, columns)
    frame = pd.DataFrame(
        {
            "image": cells["image"],
            "mos": cells["mos"],
            "std": [_sqrt_or_raw(v) for v in cells["var"]],
            "group": cells["group"],
        },
        dtype=object,
    )
    return PresetFrame(
        frame=frame,
        scale=(1.0, 5.0),
        lower_is_better=False,
        lines=lines,
        files=[path],
        images=root / "images",
    )


def tid_reference(name: str) -> str:
    """TID2013's reference image of a distorted image name: `i01` from `I01_01_1.bmp`."""
    return Path(name).stem.split("_", 1)[0].lower()


@register("tid2013")
def tid2013(root: Path) -> PresetFrame:
    """TID2013: MOS on 0..9, higher is better; group = the reference image.

    ROOT/mos_with_names.txt      (lines "MOS name", e.g. "5.51429 i01_01_1.bmp")
    ROOT/distorted_images/*.bmp
    """
    path = _require(root / "mos_with_names.txt")
    cells: dict[str, list[str]] = {"image": [], "mos": [], "group": []}
    lines: list[int] = []
    for line in read_lines(path):
        if line.blank:
            continue
        fields = split_fields(_readable(path, line))
        if len(fields) != 2:
            raise AvakitError(f"{path}: line {line.number}: {len(fields)} fields, expected 2 (MOS name)")
        cells["mos"].append(fields[0])
        cells["image"].append(fields[1])
        cells["group"].append(tid_reference(fields[1]))
        lines.append(line.number)
    frame = pd.DataFrame({k: cells[k] for k in ("image", "mos", "group")}, dtype=object)
    return PresetFrame(
        frame=frame,
        scale=(0.0, 9.0),
        lower_is_better=False,
        lines=lines,
        files=[path],
        images=root / "distorted_images",
    )


# ---------------------------------------------------------------- LIVE Challenge (.mat files)


def _mat_variable(path: Path, variable: str) -> Any:
    """One variable of a MATLAB file, flattened to one dimension."""
    import numpy as np
    from scipy.io import loadmat

    _require(path)
    try:
        data = loadmat(str(path))
    except Exception as e:  # noqa: BLE001 - scipy raises many types for a file that is not a .mat
        raise AvakitError(f"{path}: not a readable MATLAB file: {type(e).__name__}: {e}") from None
    if variable not in data:
        found = ", ".join(k for k in data if not k.startswith("__")) or "none"
        raise AvakitError(f"{path}: no variable {variable!r} (found: {found})")
    return np.asarray(data[variable]).ravel()


def _mat_name(cell: Any) -> str:
    """The file name in one cell of a MATLAB cell array of strings ("" when it holds none)."""
    import numpy as np

    values = np.asarray(cell).ravel()
    if values.size == 1 and isinstance(values[0], str):
        return values[0].strip()
    return ""


def _mat_numbers(path: Path, variable: str, n: int) -> list[Any]:
    values = _mat_variable(path, variable)
    if len(values) != n:
        raise AvakitError(f"{path}: {variable} has {len(values)} entries, the image list has {n}")
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise AvakitError(f"{path}: {variable} is not a numeric array") from None


@register("livec")
def livec(root: Path) -> PresetFrame:
    """LIVE In the Wild Image Quality Challenge: MOS on 0..100, higher is better.

    ROOT/ChallengeDB_release/Data/AllImages_release.mat   (cell array AllImages_release: names)
    ROOT/ChallengeDB_release/Data/AllMOS_release.mat      (AllMOS_release, 1xN)
    ROOT/ChallengeDB_release/Data/AllStdDev_release.mat   (AllStdDev_release, 1xN)
    ROOT/ChallengeDB_release/Images/*.JPG / *.bmp
    The first 7 entries are the release's training examples and are left out; a row's "line"
    is its 1-based entry number in the .mat arrays (so the first row kept is entry 8).
    """
    data = root / "ChallengeDB_release" / "Data"
    files = [data / f"All{v}_release.mat" for v in ("Images", "MOS", "StdDev")]
    names = [_mat_name(c) for c in _mat_variable(files[0], "AllImages_release")]
    mos = _mat_numbers(files[1], "AllMOS_release", len(names))
    std = _mat_numbers(files[2], "AllStdDev_release", len(names))
    keep = slice(LIVEC_TRAINING_EXAMPLES, None)
    frame = pd.DataFrame({"image": names[keep], "mos": mos[keep], "std": std[keep]}, dtype=object)
    return PresetFrame(
        frame=frame,
        scale=(0.0, 100.0),
        lower_is_better=False,
        lines=list(range(LIVEC_TRAINING_EXAMPLES + 1, len(names) + 1)),
        files=files,
        images=root / "ChallengeDB_release" / "Images",
    )
