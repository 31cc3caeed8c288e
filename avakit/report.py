"""`avakit report`: PNG plots and one self-contained report.html from a run folder.

Reads only the run folder (training_history.json, results.json, predictions/*.parquet,
telemetry/*.csv, config.yaml) and, when readable, the val/test shards for each image's tags and
challenge and for gallery thumbnails (only the selected images are decoded). Retrains nothing.
Writes `run_dir/report/`: the PNGs, `thumbs/*.jpg` and `report.html`, which references them by
relative path and so opens from disk. Missing optional inputs become notes in the report.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from avakit import metrics
from avakit import report_html as H
from avakit.ava import parse_id_names
from avakit.config import load_config
from avakit.errors import AvakitError
from avakit.fileio import clear_stale_tmp, write_bytes_atomic, write_text_atomic
from avakit.manifest import MANIFEST, shard_files
from avakit.plots import gradient_warnings
from avakit.predictions import frame_metrics
from avakit.telemetry import read_telemetry

REPORT_DIR, THUMB_DIR, REPORT_FILE = "report", "thumbs", "report.html"
GALLERY_SIZE, THUMB_PX = 8, 160
# (key in the shard json, what one group is called, file-name part)
GROUP_KINDS = (("tags", "semantic tag", "tags"), ("challenge", "challenge", "challenges"))


@dataclass
class SplitData:
    """The predictions of one split, their metrics and what the shards tell about the images."""

    key: str  # "val" or "test": file-name prefix and shard split
    label: str  # for titles, e.g. "val, best epoch 4"
    df: pd.DataFrame
    metrics: dict
    labels: dict[int, dict] = field(default_factory=dict)  # image id -> the shard's json member
    thumbs: dict[int, str] = field(default_factory=dict)  # image id -> path relative to report/


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AvakitError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    except OSError as e:
        raise AvakitError(f"{path}: cannot read: {e.strerror or e}") from None


def _load_history(run_dir: Path) -> list[dict]:
    path = run_dir / "training_history.json"
    if not path.is_file():
        raise AvakitError(f"{path}: not found (is {run_dir} a run folder written by `avakit train`?)")
    history = _read_json(path)
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise AvakitError(f"{path}: expected a list of per-epoch records")
    return history


def _best_epoch(run_dir: Path, history: list[dict], notes: list[str]) -> tuple[dict, int | None]:
    """(results.json or {}, best epoch): results.json's, else the highest val SRCC of the history."""
    path = run_dir / "results.json"
    results = _read_json(path) if path.is_file() else {}
    results = results if isinstance(results, dict) else {}
    best = results.get("best_epoch")
    if isinstance(best, int) and best >= 0:
        return results, best
    notes.append(f"{path.name} has no best epoch (run not finished?): taken from training_history.json")
    scored = [(h["val_srcc"], int(h.get("epoch", i))) for i, h in enumerate(history)
              if isinstance(h.get("val_srcc"), (int, float)) and math.isfinite(h["val_srcc"])]
    return results, max(scored, key=lambda t: t[0])[1] if scored else None


def _read_predictions(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError) as e:
        raise AvakitError(f"{path}: unreadable predictions parquet: {e}") from None
    missing = sorted({"image_id", "pred_mean", "gt_mean"} - set(df.columns))
    if missing:
        raise AvakitError(f"{path}: missing column(s) {', '.join(missing)}")
    return df.dropna(subset=["pred_mean", "gt_mean"]).reset_index(drop=True)


def _load_splits(run_dir: Path, best: int | None, notes: list[str]) -> list[SplitData]:
    """The best epoch's val predictions (else predictions/val.parquet) and test predictions."""
    pred_dir = run_dir / "predictions"
    epoch_file = pred_dir / f"val_epoch_{best:03d}.parquet" if best is not None else None
    sources: list[tuple[str, Path, str]] = []
    if epoch_file is not None and epoch_file.is_file():
        sources.append(("val", epoch_file, f"val, best epoch {best}"))
    elif (pred_dir / "val.parquet").is_file():
        sources.append(("val", pred_dir / "val.parquet", "val, best model"))
        notes.append("no predictions file of the best epoch: val analysis uses predictions/val.parquet")
    else:
        notes.append("no val predictions of the best epoch: val sections skipped")
    if (pred_dir / "test.parquet").is_file():
        sources.append(("test", pred_dir / "test.parquet", "test"))
    else:
        notes.append("no predictions/test.parquet (no test split, or the run did not finish): "
                         "test sections skipped")
    if not sources:
        raise AvakitError(f"{pred_dir}: no predictions found (expected val_epoch_NNN.parquet, "
                          "val.parquet or test.parquet)")
    splits = []
    for key, path, label in sources:
        df = _read_predictions(path)
        if df.empty:
            notes.append(f"{path.name} has no rows: {key} sections skipped")
            continue
        splits.append(SplitData(key, label, df, frame_metrics(df)))
    if not splits:
        raise AvakitError(f"{pred_dir}: every predictions file is empty")
    return splits


def _epoch_points(run_dir: Path) -> pd.DataFrame:
    """epoch, srcc, plcc from each predictions/val_epoch_NNN.parquet (one row per file)."""
    rows = []
    for path in sorted((run_dir / "predictions").glob("val_epoch_*.parquet")):
        suffix = path.stem.rsplit("_", 1)[-1]
        try:
            df = pd.read_parquet(path, columns=["pred_mean", "gt_mean"]) if suffix.isdigit() else None
        except (OSError, ValueError):
            df = None
        if df is not None:
            rows.append({"epoch": int(suffix), "srcc": metrics.srcc(df["pred_mean"], df["gt_mean"]),
                         "plcc": metrics.plcc(df["pred_mean"], df["gt_mean"])})
    return pd.DataFrame(rows, columns=["epoch", "srcc", "plcc"])


def _resolve_shards(run_dir: Path, shards: Path | None, notes: list[str]) -> Path | None:
    """The shards folder given, else the run config's data.shards when it is a folder; None + a note."""
    if shards is not None:
        if (Path(shards) / MANIFEST).is_file():
            return Path(shards)
        notes.append(f"{shards}: no {MANIFEST} there, so no readable shards")
        return None
    try:
        source = load_config(run_dir / "config.yaml").data.shards
    except AvakitError as e:
        notes.append(f"{e}; shards unknown (pass them explicitly)")
        return None
    if not isinstance(source, str):
        notes.append("config.yaml data.shards lists URL patterns, not a folder: pass the shards folder")
        return None
    base = Path(source).expanduser()
    roots = [] if base.is_absolute() else [Path.cwd(), *run_dir.resolve().parents]
    tries = [root / base for root in roots] or [base]
    found = next((t for t in tries if (t / MANIFEST).is_file()), None)
    if found is None:
        notes.append(f"shards folder {source} (config.yaml data.shards) not found: pass it explicitly")
    return found


def read_split_samples(shards_dir: Path, split: str, wanted: set[int]) -> tuple[dict, dict, list[str]]:
    """(image id -> json label for every sample, image id -> JPEG bytes of `wanted` ids, problems)."""
    labels: dict[int, dict] = {}
    jpgs: dict[int, bytes] = {}
    try:
        paths = shard_files(shards_dir, split)
    except AvakitError as e:
        return labels, jpgs, [str(e)]
    problems = []
    for path in paths:
        try:
            with tarfile.open(path) as tar:
                for info in tar:
                    key, _, ext = Path(info.name).name.partition(".")
                    if not (info.isfile() and key.isdigit() and ext in ("json", "jpg")):
                        continue
                    if ext == "jpg" and int(key) not in wanted:
                        continue
                    data = tar.extractfile(info).read()
                    if ext == "jpg":
                        jpgs[int(key)] = data
                        continue
                    try:
                        label = json.loads(data)
                    except ValueError:
                        continue
                    if isinstance(label, dict):
                        labels[int(key)] = label
        except (tarfile.TarError, OSError) as e:
            problems.append(f"{path.name}: unreadable: {e}")
    return labels, jpgs, problems


def _write_thumbs(jpgs: dict[int, bytes], out: Path, prefix: str) -> dict[int, str]:
    """Small JPEG copies under out/thumbs/; image id -> path relative to `out`."""
    from PIL import Image

    (out / THUMB_DIR).mkdir(parents=True, exist_ok=True)
    thumbs = {}
    for image_id, data in jpgs.items():
        name = f"{THUMB_DIR}/{prefix}_{image_id}.jpg"
        try:
            with Image.open(io.BytesIO(data)) as im:
                small = im.convert("RGB")
                small.thumbnail((THUMB_PX, THUMB_PX))
                buf = io.BytesIO()
                small.save(buf, format="JPEG", quality=85)
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        write_bytes_atomic(out / name, buf.getvalue())
        thumbs[image_id] = name
    return thumbs


def _extremes(df: pd.DataFrame, n: int = GALLERY_SIZE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The n best- and n worst-predicted rows by |pred - real| (worst first in the second)."""
    ordered = df.assign(_err=(df["pred_mean"] - df["gt_mean"]).abs()).sort_values(
        ["_err", "image_id"], kind="stable")
    return ordered.head(n), ordered.tail(n).iloc[::-1]


def _attach_shards(splits: list[SplitData], shards_dir: Path, out: Path, notes: list[str]) -> None:
    """Read each split's labels and the gallery images from its shards."""
    for sp in splits:
        best, worst = _extremes(sp.df)
        wanted = {int(i) for i in pd.concat([best, worst])["image_id"]}
        sp.labels, jpgs, problems = read_split_samples(shards_dir, sp.key, wanted)
        notes.extend(f"{sp.key} shards: {p}" for p in problems[:5])
        sp.thumbs = _write_thumbs(jpgs, out, sp.key)
        missing = int((~sp.df["image_id"].isin(sp.labels)).sum())
        if missing:
            notes.append(f"{missing} of {len(sp.df)} {sp.key} images are not in the {sp.key} shards "
                             f"of {shards_dir}: left out of the tag/challenge statistics and galleries")


def group_stats(df: pd.DataFrame, labels: dict[int, dict], kind: str, names: dict[int, str],
                min_group: int) -> pd.DataFrame:
    """Per tag (kind 'tags') or challenge: id, name, count, mae, srcc, mean_real, mean_pred.

    Id 0 (none) is excluded, an image counts once in each of its groups, groups with fewer than
    `min_group` images are dropped; sorted by count (largest first), then id.
    """
    rows = []
    for image_id, pred, gt in df[["image_id", "pred_mean", "gt_mean"]].itertuples(index=False):
        label = labels.get(int(image_id))
        if label is None:
            continue
        ids = label.get(kind, [])
        for gid in {g for g in (ids if isinstance(ids, list) else [ids]) if isinstance(g, int) and g}:
            rows.append((gid, pred, gt))
    frame = pd.DataFrame(rows, columns=["id", "pred", "gt"])
    out = [{"id": int(gid), "name": names.get(int(gid), f"#{gid}"), "count": len(g),
            "mae": metrics.mae(g["pred"], g["gt"]), "srcc": metrics.srcc(g["pred"], g["gt"]),
            "mean_real": float(g["gt"].mean()), "mean_pred": float(g["pred"].mean())}
           for gid, g in frame.groupby("id") if len(g) >= min_group]
    cols = ["id", "name", "count", "mae", "srcc", "mean_real", "mean_pred"]
    stats = pd.DataFrame(out, columns=cols)
    return stats.sort_values(["count", "id"], ascending=[False, True], kind="stable").reset_index(drop=True)


def _group_tables(splits: list[SplitData], names: dict[str, dict[int, str]],
                  min_group: int) -> list[tuple[SplitData, str, str, pd.DataFrame]]:
    """(split, what, file-name part, group stats) for each split with labels and each group kind."""
    return [(sp, what, part, group_stats(sp.df, sp.labels, kind, names[kind], min_group))
            for sp in splits if sp.labels for kind, what, part in GROUP_KINDS]


def _shard_sections(c: H.Collector, splits: list[SplitData], shards_dir: Path | None,
                    names: dict[str, dict[int, str]], min_group: int) -> tuple[str, str]:
    """HTML of the per-tag/challenge section and of the galleries (notes without shards)."""
    if shards_dir is None:
        text = "no readable shards: {} skipped (pass the shards folder)"
        return c.note(text.format("per-tag and per-challenge statistics")), c.note(text.format("galleries"))
    _attach_shards(splits, shards_dir, c.out, c.notes)
    for kind, what, part in GROUP_KINDS:
        if not names[kind]:
            c.notes.append(f"no {part}.txt given: {what}s shown by id")
    groups = H.groups_section(c, _group_tables(splits, names, min_group), min_group)
    if not any(sp.labels for sp in splits):
        groups += c.note(f"no labels read from the shards in {shards_dir}: per-group statistics skipped")
    return groups, H.gallery_section(splits, _extremes)


def build_report(run_dir: Path, shards: Path | None = None, tags: Path | None = None,
                 challenges: Path | None = None, min_group: int = 5) -> dict:
    """Write `run_dir/report/` (PNGs, thumbs/, report.html) from a run folder; returns a summary.

    `shards` defaults to the run config's data.shards when that is a folder; `tags` and
    `challenges` (tags.txt / challenges.txt) name the groups, ids are shown otherwise. Raises
    AvakitError for a folder without training_history.json or predictions, or a bad names file.
    Summary: report, pngs, best_epoch, val and test metrics (None when absent), gradient
    warnings and notes about skipped sections.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AvakitError(f"{run_dir}: run folder not found")
    if min_group < 1:
        raise AvakitError(f"--min-group must be at least 1, got {min_group}")
    names = {"tags": parse_id_names(tags) if tags else {},
             "challenge": parse_id_names(challenges) if challenges else {}}
    history = _load_history(run_dir)
    c = H.Collector(run_dir / REPORT_DIR)
    results, best = _best_epoch(run_dir, history, c.notes)
    splits = _load_splits(run_dir, best, c.notes)
    c.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(c.out / THUMB_DIR, ignore_errors=True)  # report/ is ours: no stale images
    for stale in c.out.glob("*.png"):
        stale.unlink()
    clear_stale_tmp(c.out)
    shards_dir = _resolve_shards(run_dir, shards, c.notes)
    grad_df, lr_df = read_telemetry(run_dir)
    warnings = gradient_warnings(grad_df)
    sections = [("training", "Training curves", H.training_section(c, history, lr_df)),
                ("telemetry", "Telemetry: gradient norms", H.telemetry_section(c, grad_df, warnings)),
                ("predictions", "Prediction analysis", H.predictions_section(c, splits)),
                ("epochs", "SRCC over epochs", H.epochs_section(c, _epoch_points(run_dir), best)),
                ("votes", "Predicted vs real vote distributions", H.votes_section(c, splits))]
    groups_html, gallery_html = _shard_sections(c, splits, shards_dir, names, min_group)
    sections += [("groups", "Per semantic tag and per challenge", groups_html),
                 ("galleries", "Best and worst predicted images", gallery_html)]
    found = {sp.key: sp.metrics for sp in splits}
    summary_html = H.summary_table(best, {"val": found.get("val"), "test": found.get("test")})
    if c.notes:
        summary_html += "<p>Skipped or limited sections:</p>\n<ul>" + "".join(
            f"<li>{H.esc(n)}</li>" for n in c.notes) + "</ul>\n"
    entries = [("summary", "Summary"), *((a, h) for a, h, _ in sections)]
    body = H.contents(entries) + H.section("Summary", summary_html, anchor="summary") + "".join(
        H.section(h, b, anchor=a) for a, h, b in sections)
    subtitle = (f"Run folder {run_dir.resolve()} · {len(history)} epoch(s) · "
                f"finished {results.get('finished_at', 'n/a')}")
    report = c.out / REPORT_FILE
    write_text_atomic(report, H.page(f"avakit report: {run_dir.name}", subtitle, body))
    return {"report": report, "pngs": list(c.pngs), "best_epoch": best, "val": found.get("val"),
            "test": found.get("test"), "warnings": warnings, "notes": list(c.notes)}
