"""`avakit report`: PNG plots and one self-contained report.html from a run folder.

Reads only the run folder (training_history.json, results.json, predictions/*.parquet,
eval/*.json, telemetry/*.csv, config.yaml; the checkpoint only when results.json has no labels)
and, when readable, the val/test shards for each image's tags and challenge (AVA) or group (a
labels table) and for gallery thumbnails (only the selected images are decoded). Every number,
axis and threshold is in the run's own scale (`avakit.report.scale.RunScale`).
Retrains nothing. Writes `run_dir/report/`: the PNGs, `thumbs/*.jpg` and `report.html`, which
references them by relative path and so opens from disk. Missing optional inputs become notes.

Every panel names the model behind its numbers (`avakit.training.rundir.model_label`): the analysis is
of train's own predictions (best_model.pt at its epoch, no TTA); `evaluate`'s results
(eval/*.json, other checkpoints or TTA) are extra, labelled rows of the summary table.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from avakit.config import load_config
from avakit.dataset.ava import parse_id_names
from avakit.dataset.manifest import MANIFEST
from avakit.errors import AvakitError
from avakit.fileio import clear_stale_tmp, write_error, write_text_atomic
from avakit.plots import gradient_warnings
from avakit.report import clip, clip_run, html, pairwise
from avakit.report.pairwise_run import best_epoch as pair_best_epoch
from avakit.report.pairwise_run import check_history, load_pair_splits, run_task
from avakit.report.scale import RunScale, run_scale
from avakit.report.shard_stats import THUMB_DIR, group_ids, group_stats, read_split_samples, write_thumbs
from avakit.report.splits import SplitData, best_epoch, epoch_points, load_splits, read_evaluations
from avakit.scores import CLIPS, HELD_OUT_SPLITS, PAIRS
from avakit.training.rundir import (
    CHECKPOINT_FILES,
    GRAD_FILE,
    LR_FILE,
    TELEMETRY_DIR,
    epoch_start_steps,
    load_history,
    read_telemetry_csv,
)

REPORT_DIR, REPORT_FILE = "report", "report.html"
GALLERY_SIZE = 8
# (key in the shard json, what one group is called, file-name part)
GROUP_KINDS = (("tags", "semantic tag", "tags"), ("challenge", "challenge", "challenges"))
TABLE_GROUP_KINDS = (("group", "group", "groups"),)  # a labels table's group column


def _run_config(run_dir: Path, notes: list[str]) -> Any:
    """The run's config.yaml (a Config), or None with a note when it cannot be read."""
    try:
        return load_config(run_dir / "config.yaml")
    except AvakitError as e:
        notes.append(f"{e}: shards and frozen parts unknown")
        return None


def frozen_parts(cfg: Any) -> tuple[tuple[str, ...], str | None]:
    """(telemetry columns frozen on purpose, why) from a run's config; ((), None) otherwise."""
    if cfg is None:
        return (), None
    if cfg.data.features:
        return ("backbone_layer4",), "head-only run (data.features set): the backbone is frozen on purpose"
    if cfg.model.freeze == "full":
        return ("backbone_layer4",), "model.freeze is full: the backbone is frozen on purpose"
    return (), None


def _telemetry(run_dir: Path, notes: list[str]) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(gradient norms, learning rates); a file that is not a telemetry CSV becomes a note."""
    frames = []
    for name in (GRAD_FILE, LR_FILE):
        try:
            df = read_telemetry_csv(run_dir / TELEMETRY_DIR / name)
        except AvakitError as e:
            notes.append(f"{e}: its plot is skipped")
            df = None
        if df is not None and df.attrs.get("dropped"):
            notes.append(
                f"{TELEMETRY_DIR}/{name}: {df.attrs['dropped']} malformed row(s) left out of its plot"
            )
        frames.append(df)
    return frames[0], frames[1]


def _resolve_shards(run_dir: Path, shards: Path | None, cfg: Any, notes: list[str]) -> Path | None:
    """The shards folder given, else the run config's data.shards when it is a folder; None + a note."""
    if shards is not None:
        if (Path(shards) / MANIFEST).is_file():
            return Path(shards)
        notes.append(f"{shards}: no {MANIFEST} there, so no readable shards")
        return None
    if cfg is None:
        return None
    source = cfg.data.shards
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


def _extremes(df: pd.DataFrame, n: int = GALLERY_SIZE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The n best- and n worst-predicted rows by |pred - real| (worst first in the second)."""
    ordered = df.assign(_err=(df["pred_mean"] - df["gt_mean"]).abs()).sort_values(
        ["_err", "image_id"], kind="stable"
    )
    return ordered.head(n), ordered.tail(n).iloc[::-1]


def _attach_shards(splits: list[SplitData], shards_dir: Path, out: Path, notes: list[str]) -> None:
    """Read each split's labels and the gallery images from its shards."""
    for sp in splits:
        best, worst = _extremes(sp.df)
        wanted = {int(i) for i in pd.concat([best, worst])["image_id"]}
        sp.labels, jpgs, problems = read_split_samples(shards_dir, sp.key, wanted)
        notes.extend(f"{sp.key} shards: {p}" for p in problems[:5])
        sp.thumbs = write_thumbs(jpgs, out, sp.key)
        missing = int((~sp.df["image_id"].isin(sp.labels)).sum())
        if missing:
            notes.append(
                f"{missing} of {len(sp.df)} {sp.key} images are not in the {sp.key} shards "
                f"of {shards_dir}: left out of the per-group statistics and galleries"
            )


def _from_table(splits: list[SplitData]) -> bool:
    """Whether the shards hold a labels table's samples (their json has a "kind"), not AVA's."""
    return any("kind" in label for sp in splits for label in sp.labels.values())


def _group_tables(
    splits: list[SplitData], names: dict[str, dict[int, str]], min_group: int
) -> list[html.GroupTable]:
    """The group stats of each split with labels and each group kind (AVA: tags and challenges;
    a labels table: its groups), with how many images have one."""
    kinds = TABLE_GROUP_KINDS if _from_table(splits) else GROUP_KINDS
    return [
        html.GroupTable(
            split=sp,
            what=what,
            part=part,
            stats=group_stats(sp.df, sp.labels, kind, names.get(kind, {}), min_group),
            tagged=sum(bool(group_ids(sp.labels.get(int(i)), kind)) for i in sp.df["image_id"]),
        )
        for sp in splits
        if sp.labels
        for kind, what, part in kinds
    ]


def _shard_sections(
    c: html.Collector,
    splits: list[SplitData],
    shards_dir: Path | None,
    names: dict[str, dict[int, str]],
    min_group: int,
) -> tuple[str, str, str]:
    """(heading, HTML) of the per-group section (AVA: per tag and challenge) and the galleries'
    HTML (notes without shards)."""
    heading = "Per semantic tag and per challenge"
    if shards_dir is None:
        text = "no readable shards: {} skipped (pass the shards folder)"
        groups = c.note(text.format("per-tag, per-challenge and per-group statistics"))
        return heading, groups, c.note(text.format("galleries"))
    _attach_shards(splits, shards_dir, c.out, c.notes)
    if _from_table(splits):
        heading = "Per group"
    else:
        for kind, what, part in GROUP_KINDS:
            if not names[kind]:
                c.notes.append(f"no {part}.txt given: {what}s shown by id")
    groups = html.groups_section(c, _group_tables(splits, names, min_group), min_group)
    if not any(sp.labels for sp in splits):
        groups += c.note(f"no labels read from the shards in {shards_dir}: per-group statistics skipped")
    return heading, groups, html.gallery_section(splits, _extremes)


def _clean_out(out: Path) -> None:
    """Create report/ and remove the previous report's images (report/ is ours): thumbs/ and the
    *.png entries, whatever kind of entry each is (a stray folder or file does not stop a report)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for stale in [out / THUMB_DIR, *out.glob("*.png")]:
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink(missing_ok=True)
    except OSError as e:
        raise write_error(e, Path(e.filename) if e.filename else out) from None
    clear_stale_tmp(out)


def _summary_rows(splits: list[SplitData], evaluations: list[tuple[str, str, dict]]) -> list[tuple]:
    """(split, model, metrics or None): train's val and test, then each evaluate result."""
    by_key = {sp.key: sp for sp in splits}
    rows: list[tuple] = [
        (k, by_key[k].model, by_key[k].metrics) if k in by_key else (k, CHECKPOINT_FILES["best"], None)
        for k in HELD_OUT_SPLITS
    ]
    return rows + evaluations


def build_report(
    run_dir: Path,
    shards: Path | None = None,
    tags: Path | None = None,
    challenges: Path | None = None,
    min_group: int = 5,
) -> dict:
    """Write `run_dir/report/` (PNGs, thumbs/, report.html) from a run folder; returns a summary.

    `shards` defaults to the run config's data.shards when that is a folder; `tags` and
    `challenges` (tags.txt / challenges.txt) name the groups, ids are shown otherwise. Raises
    AvakitError for a folder without training_history.json or predictions, a history with a
    malformed field, a results.json "labels" that is not a scale, or a bad names file. Summary:
    report, pngs, best_epoch, val and test metrics (None when absent; with srcc_ci and plcc_ci),
    models (split -> the model behind them), evaluations ((split, model, metrics) of evaluate's
    results), gradient warnings, notes, labels (the run's Scale as a dict) and threshold (None:
    no binary accuracy).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AvakitError(f"{run_dir}: run folder not found")
    if min_group < 1:
        raise AvakitError(f"min_group must be at least 1, got {min_group}")
    names = {
        "tags": parse_id_names(tags) if tags else {},
        "challenge": parse_id_names(challenges) if challenges else {},
    }
    if run_task(run_dir) == "pairwise":
        return _pairwise_report(run_dir, shards)
    if run_task(run_dir) == "clip":
        return _clip_report(run_dir)
    history = load_history(run_dir)
    notes: list[str] = []
    results, best = best_epoch(run_dir, history, notes)
    cfg = _run_config(run_dir, notes)
    rs = run_scale(run_dir, results, cfg, notes)
    c = html.Collector(run_dir / REPORT_DIR, notes=notes, rs=rs)
    splits = load_splits(run_dir, best, c.notes, rs)
    evaluations = read_evaluations(run_dir, c.notes)
    _clean_out(c.out)
    shards_dir = _resolve_shards(run_dir, shards, cfg, c.notes)
    telemetry, warnings, lr_df, starts = _telemetry_parts(run_dir, c, cfg, history)
    sections = [
        ("training", "Training curves", html.training_section(c, history, lr_df, starts)),
        ("telemetry", "Telemetry: gradient norms", telemetry),
        ("predictions", "Prediction analysis", html.predictions_section(c, splits)),
        ("epochs", "SRCC over epochs", html.epochs_section(c, epoch_points(run_dir, c.notes, rs), best)),
        ("votes", "Predicted vs real vote distributions", html.votes_section(c, splits)),
    ]
    groups_heading, groups_html, gallery_html = _shard_sections(c, splits, shards_dir, names, min_group)
    sections += [
        ("groups", groups_heading, groups_html),
        ("galleries", "Best and worst predicted images", gallery_html),
    ]
    summary_html = html.summary_table(best, _summary_rows(splits, evaluations), rs) + html.notes_list(c.notes)
    report = _write_page(
        run_dir, c.out, results, len(history), [("summary", "Summary", summary_html), *sections]
    )
    return _summary(report, c, best, splits, evaluations, warnings)


def _telemetry_parts(run_dir: Path, c: html.Collector, cfg: Any, history: list[dict]) -> tuple:
    """(telemetry section html, gradient warnings, learning-rate frame, epoch start steps) of a run."""
    grad_df, lr_df = _telemetry(run_dir, c.notes)
    frozen, why = frozen_parts(cfg)
    warnings = gradient_warnings(grad_df, frozen)
    starts = epoch_start_steps(history)
    return (
        html.telemetry_section(c, grad_df, warnings, html.Frozen(frozen, why), starts),
        warnings,
        lr_df,
        starts,
    )


def _summary(
    report: Path,
    c: html.Collector,
    best: int | None,
    splits: list,
    evaluations: list,
    warnings: list,
    **task: Any,
) -> dict:
    """What build_report returns: the page, its PNGs, best epoch, val/test metrics (None when absent),
    the model behind each split, evaluations, warnings, notes, labels and threshold (+ `task` keys)."""
    found = {sp.key: sp for sp in splits}
    return {
        "report": report,
        "pngs": list(c.pngs),
        "best_epoch": best,
        "val": found["val"].metrics if "val" in found else None,
        "test": found["test"].metrics if "test" in found else None,
        "models": {sp.key: sp.model for sp in splits},
        "evaluations": evaluations,
        "warnings": warnings,
        "notes": list(c.notes),
        "labels": c.rs.scale.as_dict(),
        "threshold": c.rs.threshold,
        **task,
    }


def _pairwise_report(run_dir: Path, shards: Path | None) -> dict:
    """A pairwise run's report (`avakit.report.pairwise`): its sections, with the telemetry, notes
    and page every report shares. Summary keys as `build_report`'s, plus task "pairwise"."""
    history = load_history(run_dir)
    check_history(run_dir, history)
    notes: list[str] = []
    results, best = pair_best_epoch(run_dir, history, notes)
    cfg = _run_config(run_dir, notes)
    c = html.Collector(run_dir / REPORT_DIR, notes=notes, rs=RunScale(PAIRS, None))
    splits = load_pair_splits(run_dir, best, c.notes)
    evaluations = read_evaluations(run_dir, c.notes)
    _clean_out(c.out)
    shards_dir = _resolve_shards(run_dir, shards, cfg, c.notes)
    telemetry, warnings, lr_df, starts = _telemetry_parts(run_dir, c, cfg, history)
    sections = [
        ("training", "Training curves", pairwise.training_section(c, history, lr_df, starts)),
        ("telemetry", "Telemetry: gradient norms", telemetry),
        ("confidence", "Accuracy by confidence of the people", pairwise.confidence_section(c, splits)),
        ("size", "Accuracy by series size", pairwise.size_section(c, splits)),
        ("calibration", "Calibration of P", pairwise.calibration_section(c, splits)),
        ("galleries", "Best and worst ranked series", pairwise.gallery_section(c, splits, shards_dir)),
    ]
    by_key = {sp.key: sp for sp in splits}
    rows = [
        (k, by_key[k].model, by_key[k].metrics) if k in by_key else (k, CHECKPOINT_FILES["best"], None)
        for k in HELD_OUT_SPLITS
    ]
    summary_html = pairwise.summary_table(best, rows + evaluations) + html.notes_list(c.notes)
    page = [("summary", "Summary", summary_html), *sections]
    report = _write_page(run_dir, c.out, results, len(history), page)
    return _summary(report, c, best, splits, evaluations, warnings, task="pairwise")


def _clip_report(run_dir: Path) -> dict:
    """A clip run's report (`avakit.report.clip`): its sections, with the telemetry, notes and
    page every report shares. Summary keys as `build_report`'s, plus task "clip"."""
    history = load_history(run_dir)
    clip_run.check_history(run_dir, history)
    notes: list[str] = []
    results, best = clip_run.best_epoch(run_dir, history, notes)
    cfg = _run_config(run_dir, notes)
    c = html.Collector(run_dir / REPORT_DIR, notes=notes, rs=RunScale(CLIPS, None))
    splits = clip_run.load_clip_splits(run_dir, best, c.notes)
    names = clip_run.class_names(results, c.notes)
    evaluations = read_evaluations(run_dir, c.notes)
    _clean_out(c.out)
    telemetry, warnings, lr_df, starts = _telemetry_parts(run_dir, c, cfg, history)
    extra = {"telemetry": telemetry, "lr_df": lr_df, "starts": starts}
    page = clip.sections(c, history, splits, names, extra)
    rows = clip.split_rows(splits) + evaluations
    gap = clip_run.train_val_gap(history, best)
    summary_html = clip.summary_table(best, rows, gap) + html.notes_list(c.notes)
    report = _write_page(run_dir, c.out, results, len(history), [("summary", "Summary", summary_html), *page])
    return _summary(report, c, best, splits, evaluations, warnings, task="clip", train_val_gap=gap)


def _write_page(run_dir: Path, out: Path, results: dict, epochs: int, sections: list[tuple]) -> Path:
    """report.html: the contents, then each (anchor, heading, HTML) section; returns its path."""
    body = html.contents([(a, h) for a, h, _ in sections]) + "".join(
        html.section(h, b, anchor=a) for a, h, b in sections
    )
    subtitle = (
        f"Run folder {run_dir.resolve()} · {epochs} epoch(s) · finished {results.get('finished_at', 'n/a')}"
    )
    report = out / REPORT_FILE
    write_text_atomic(report, html.page(f"avakit report: {run_dir.name}", subtitle, body))
    return report
