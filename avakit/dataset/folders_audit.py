"""`avakit audit`: check a culling set (`<folder>/good/*.jpg`, `<folder>/bad/*.jpg`, splits.json)
before sharding it.

Checks, each problem one `Finding` naming the file (relative to ROOT) or folder:
- splits: splits.json lists every folder on disk exactly once, and every listed folder exists;
- folder: `good/` and `bad/` exist and hold photos; imbalance: more than IMBALANCE:1 either way
  (a warning);
- decode: every photo decodes in full (the reading every avakit stage uses);
- size: the shorter side is at least `min_side` px;
- profile: no ICC profile or an sRGB one; any other (or an unreadable one) is a warning;
- duplicate / near duplicate: see avakit.dataset.folders_dupes (a copy across splits is an error).

`plan_audit` finds the photos (cheap: directory listings); `run_audit` reads them all.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from avakit.dataset.folders_dupes import HASH_BITS, NEAR_DISTANCE, SPLIT_ORDER, Photo, duplicate_findings
from avakit.dataset.folders_dupes import perceptual_hash as _hash
from avakit.dataset.images import FORMATS, IMAGE_SUFFIXES, ImageSkip, load_rgb
from avakit.errors import AvakitError
from avakit.fileio import file_sha256, load_json

GRADES = ("good", "bad")
IMBALANCE = 4  # a folder with more than 4 good per bad photo (or 4 bad per good) is flagged
MIN_SIDE = 224
CHECKS = ("splits", "folder", "imbalance", "decode", "size", "profile", "duplicate", "near duplicate")
TRAINING_FILES = "training_files"


@dataclass(frozen=True)
class Finding:
    """One problem: `file` is a path relative to ROOT, a folder name, or the splits file's name."""

    severity: str  # "error" or "warning"
    check: str  # one of CHECKS
    file: str
    detail: str

    def line(self) -> str:
        """The one screen line: severity, check, file, what is wrong."""
        return f"{self.severity} [{self.check}] {self.file}: {self.detail}"


def _error(check: str, file: str, detail: str) -> Finding:
    return Finding("error", check, file, detail)


def _warning(check: str, file: str, detail: str) -> Finding:
    return Finding("warning", check, file, detail)


@dataclass
class AuditPlan:
    """What `run_audit` reads: the data root, the splits and the photos found on disk."""

    root: Path  # the folder holding <folder>/good and <folder>/bad
    splits_path: Path
    splits: dict[str, list[str]]
    folders: dict[str, str | None]  # folder on disk -> its split (None: unlisted)
    photos: list[tuple[str, str]] = field(default_factory=list)  # (path relative to root, folder)
    findings: list[Finding] = field(default_factory=list)  # from the listings alone
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # folder -> good, bad


@dataclass
class AuditResult:
    """Every finding and per-folder counts; `errors` decides the exit code."""

    plan: AuditPlan
    findings: list[Finding]
    min_side: int
    max_distance: int

    @property
    def errors(self) -> int:
        """The number of error findings."""
        return sum(f.severity == "error" for f in self.findings)

    @property
    def warnings(self) -> int:
        """The number of warning findings."""
        return sum(f.severity == "warning" for f in self.findings)

    def by_check(self) -> dict[str, tuple[int, int]]:
        """check -> (errors, warnings), every check listed."""
        count = Counter((f.check, f.severity) for f in self.findings)
        return {c: (count[(c, "error")], count[(c, "warning")]) for c in CHECKS}

    def report(self) -> dict:
        """The JSON report: settings, totals per check, per-folder counts and every finding."""
        folders = {}
        for name, split in sorted(self.plan.folders.items()):
            mine = [f for f in self.findings if f.file == name or f.file.startswith(name + "/")]
            folders[name] = {
                "split": split,
                **self.plan.counts.get(name, {"good": 0, "bad": 0}),
                "errors": sum(f.severity == "error" for f in mine),
                "warnings": sum(f.severity == "warning" for f in mine),
            }
        return {
            "root": str(self.plan.root),
            "splits": str(self.plan.splits_path),
            "min_side": self.min_side,
            "near_distance": self.max_distance,
            "hash_bits": HASH_BITS,
            "imbalance": IMBALANCE,
            "photos": len(self.plan.photos),
            "errors": self.errors,
            "warnings": self.warnings,
            "checks": {c: {"errors": e, "warnings": w} for c, (e, w) in self.by_check().items()},
            "folders": folders,
            "findings": [vars(f) for f in self.findings],
        }


def resolve_root(root: Path) -> Path:
    """ROOT itself, or ROOT/training_files when ROOT holds one; AvakitError when not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise AvakitError(f"{root}: not a folder (expected <folder>/good and <folder>/bad inside)")
    return root / TRAINING_FILES if (root / TRAINING_FILES).is_dir() else root


def default_splits(root: Path) -> Path:
    """splits.json in ROOT as given, else beside the data root (the parent of training_files/)."""
    for candidate in (Path(root) / "splits.json", resolve_root(root).parent / "splits.json"):
        if candidate.is_file():
            return candidate
    raise AvakitError(f"{root}: no splits.json there or beside it; name one with --splits")


def _folder_name(value: object, where: str) -> str:
    if not isinstance(value, str) or not value or value in (".", "..") or any(c in value for c in "/\\\0"):
        raise AvakitError(f"{where}: not a folder name: {value!r:.60}")
    return value


def load_splits(path: Path) -> dict[str, list[str]]:
    """splits.json as {"train": [...], "val": [...], "test": [...]}; one AvakitError on any flaw."""
    path = Path(path)
    if not path.is_file():
        raise AvakitError(f"{path}: no such file")
    data = load_json(path)
    if not isinstance(data, dict):
        raise AvakitError(f"{path}: expected a JSON object with train, val and test lists of folders")
    for key in data:
        if key not in SPLIT_ORDER:
            raise AvakitError(f"{path}: unknown key {key!r:.40} (expected train, val and test)")
    splits = {}
    for key in SPLIT_ORDER:
        if key not in data:
            raise AvakitError(f"{path}: no {key!r} list (expected train, val and test)")
        if not isinstance(data[key], list):
            raise AvakitError(f"{path}: {key}: expected a list of folder names")
        splits[key] = [_folder_name(v, f"{path}: {key}[{k}]") for k, v in enumerate(data[key])]
    return splits


def _split_findings(splits: dict[str, list[str]], on_disk: set[str], name: str) -> list[Finding]:
    """Folders listed twice, listed but missing, on disk but unlisted; empty splits."""
    found = []
    listed: dict[str, list[str]] = {}
    for split, folders in splits.items():
        if not folders:
            found.append(Finding("warning", "splits", name, f"split {split!r} lists no folder"))
        for folder in folders:
            listed.setdefault(folder, []).append(split)
    for folder, where in sorted(listed.items()):
        if len(where) > 1:
            found.append(_error("splits", folder, f"listed {len(where)} times in {name}: {where}"))
        if folder not in on_disk:
            found.append(_error("splits", folder, f"listed in {name} ({where[0]}) but no such folder"))
    for folder in sorted(on_disk - set(listed)):
        found.append(_error("splits", folder, f"folder on disk but in no split of {name}"))
    return found


def _listing(folder: Path, rel: str, plan: AuditPlan) -> None:
    """Add one folder's photos and its folder / imbalance findings to `plan`."""
    counts = {}
    for grade in GRADES:
        sub = folder / grade
        if not sub.is_dir():
            plan.findings.append(_error("folder", f"{rel}/{grade}", "missing (expected good/ and bad/)"))
            counts[grade] = 0
            continue
        photos = []
        for f in sorted(sub.iterdir()):
            if f.name.startswith("."):
                continue
            if f.suffix.lower() in IMAGE_SUFFIXES and not f.is_dir():
                photos.append(f"{rel}/{grade}/{f.name}")
            else:
                plan.findings.append(_warning("folder", f"{rel}/{grade}/{f.name}", "not a photo, ignored"))
        if not photos:
            plan.findings.append(_error("folder", f"{rel}/{grade}", "holds no photo"))
        plan.photos.extend((p, rel) for p in photos)
        counts[grade] = len(photos)
    plan.counts[rel] = counts
    good, bad = counts["good"], counts["bad"]
    if good and bad and max(good, bad) > IMBALANCE * min(good, bad):
        plan.findings.append(
            Finding("warning", "imbalance", rel, f"{good} good vs {bad} bad photos, beyond {IMBALANCE}:1")
        )


def plan_audit(root: Path, splits_path: Path | None = None) -> AuditPlan:
    """Read splits.json and list the folders and photos; AvakitError for a bad ROOT or splits file."""
    data_root = resolve_root(root)
    splits_path = Path(splits_path) if splits_path is not None else default_splits(root)
    splits = load_splits(splits_path)
    on_disk = {p.name for p in data_root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    split_of = {f: s for s in reversed(SPLIT_ORDER) for f in splits[s]}  # the first listing wins
    plan = AuditPlan(data_root, splits_path, splits, {f: split_of.get(f) for f in sorted(on_disk)})
    plan.findings.extend(_split_findings(splits, on_disk, splits_path.name))
    for name in sorted(on_disk):
        _listing(data_root / name, name, plan)
    return plan


def _profile_problem(path: Path) -> str | None:
    """Why the photo's ICC profile is flagged, or None for no profile or an sRGB one."""
    with warnings.catch_warnings(action="ignore"), Image.open(path, formats=FORMATS) as im:
        icc = im.info.get("icc_profile")
    if not icc:
        return None
    try:
        from PIL import ImageCms

        name = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip()
    except Exception:  # noqa: BLE001 - any failure to parse the profile is the finding itself
        return "unreadable ICC profile (colours may be wrong; convert to sRGB)"
    if "srgb" in name.lower():
        return None
    return f"ICC profile {name[:60]!r}, not sRGB (convert to sRGB)"


def _read_photo(
    root: Path, rel: str, folder: str, split: str | None, min_side: int
) -> tuple[Photo, list[Finding]]:
    """Digest and check one photo: sha256, full decode, shorter side, profile, perceptual hash."""
    path = root / rel
    try:
        digest = file_sha256(path)
    except OSError as e:
        return Photo(rel, folder, split, "", None), [_error("decode", rel, f"cannot read: {e.strerror or e}")]
    try:
        im = load_rgb(path)
    except ImageSkip as e:
        return Photo(rel, folder, split, digest, None), [_error("decode", rel, f"does not decode: {e}")]
    found = []
    if min(im.size) < min_side:
        detail = f"{im.size[0]}x{im.size[1]} px, shorter side below {min_side} px"
        found.append(_error("size", rel, detail))
    try:
        problem = _profile_problem(path)
    except Exception as e:  # noqa: BLE001 - decoded once already; a second open that fails is a note
        problem = f"cannot read the profile: {e}"
    if problem:
        found.append(Finding("warning", "profile", rel, problem))
    return Photo(rel, folder, split, digest, _hash(im)), found


def run_audit(
    plan: AuditPlan,
    min_side: int = MIN_SIDE,
    max_distance: int = NEAR_DISTANCE,
    progress: Callable[[int], None] | None = None,
    workers: int = 2,
) -> AuditResult:
    """Read every photo of `plan` (in `workers` threads) and collect every finding."""
    if not 1 <= min_side <= 100_000:
        raise AvakitError(f"--min-side: must be 1..100000 px, got {min_side}")
    if not -1 <= max_distance <= HASH_BITS:
        raise AvakitError(f"--near-distance: must be -1..{HASH_BITS} bits, got {max_distance}")

    def one(item: tuple[str, str]) -> tuple[Photo, list[Finding]]:
        result = _read_photo(plan.root, item[0], item[1], plan.folders.get(item[1]), min_side)
        if progress is not None:
            progress(1)
        return result

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        read = list(pool.map(one, plan.photos))
    findings = list(plan.findings)
    for _, found in read:
        findings.extend(found)
    photos = [p for p, _ in read if p.sha256]
    for severity, check, rel, detail in duplicate_findings(photos, max_distance):
        findings.append(Finding(severity, check, rel, detail))
    order = {c: k for k, c in enumerate(CHECKS)}
    findings.sort(key=lambda f: (f.severity != "error", order[f.check], f.file))
    return AuditResult(plan, findings, min_side, max_distance)
