"""The sections of a pairwise run's report (PhotoTriage-style photo series). Torch-free.

Summary (pair accuracy ± its standard error beside the human ceiling, log-loss, confident
accuracy, series top-1, Kendall tau), training curves, accuracy by confidence of the people
(|p_true - 0.5|) and by series size, calibration of P, and galleries of the series ranked best
and worst (by per-series Kendall tau): their photos in predicted order, captioned with the true
ranks, thumbnails read from the split's group samples. `avakit.report.build` dispatches here
and adds what every report shares (telemetry, notes, the page).
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from avakit.dataset.manifest import shard_files
from avakit.dataset.samples import member_name, parse_label, read_shard
from avakit.errors import AvakitError
from avakit.pair_metrics import CONFIDENT, series_table
from avakit.plots import plot_learning_rates
from avakit.report import pairwise_plots as pp
from avakit.report.html import Collector, drawn_figure, esc, note, paragraph, section, table
from avakit.report.pairwise_run import PairSplit
from avakit.report.prediction_plots import fmt
from avakit.report.shard_stats import write_thumbs
from avakit.scores import PAIRS

GALLERY_SERIES = 4  # series shown in each of the best and worst galleries

CAPTIONS = {
    "curves": "Per epoch: training and validation loss (left), validation pair accuracy, series top-1 "
    "and mean Kendall tau with the best accuracy starred (middle), learning rate of each param group "
    "(right).",
    "learning_rates": "Learning rate of each param group at every recorded optimizer step.",
    "confidence": "Decided pairs grouped by how clear-cut people found them (|p_true - 0.5|: 0 = split "
    "vote, 0.5 = unanimous). Bars: the model's accuracy ± 1 standard error; dots: the human ceiling "
    "(a random rater's agreement with the majority) in the bin. Clear-cut pairs should be easier.",
    "size": "Decided pairs grouped by the number of photos in their series. Bars: accuracy ± 1 "
    "standard error; dots: the human ceiling; n: pairs.",
    "calibration": "Pairs grouped by predicted P(i better than j). Left: the mean real preference ratio "
    "against the mean prediction per bin (on the diagonal = calibrated; dot size = pairs). Right: "
    "accuracy per bin; bins near 0.5 are the uncertain predictions.",
}


def _figure(c: Collector, name: str, key: str, fn: Callable[..., Path], *args: Any) -> str:
    """Draw `fn(args[0], out/name, *args[1:])`; its <figure> with the caption of `key`."""
    return drawn_figure(c, name, CAPTIONS[key], fn, *args)


def summary_table(best: int | None, rows: Sequence[tuple[str, str, dict | None]]) -> str:
    """Best epoch and, per (split, model, metrics or None), the headline pairwise metrics."""
    header = [
        "split",
        "model",
        "pairs (decided)",
        "pair accuracy ± SE",
        "human ceiling",
        f"confident accuracy (|p - 0.5| ≥ {CONFIDENT:g})",
        "log-loss",
        "series",
        "series top-1",
        "Kendall τ",
    ]
    cells = []
    for name, model, m in rows:
        if m is None:
            cells.append([name, model, "no predictions", *("n/a" for _ in header[3:])])
            continue
        acc = fmt(m.get("pair_accuracy"), 4)
        se = m.get("pair_accuracy_se")
        cells.append(
            [
                name,
                model,
                f"{m.get('n_pairs', 'n/a')} ({m.get('n_decided', 'n/a')})",
                acc if acc == "n/a" or se is None else f"{acc} ± {fmt(se, 4)}",
                fmt(m.get("human_ceiling"), 4),
                f"{fmt(m.get('confident_accuracy'), 4)} (n={m.get('n_confident', 'n/a')})",
                fmt(m.get("log_loss"), 4),
                m.get("n_series", "n/a"),
                fmt(m.get("series_top1"), 4),
                fmt(m.get("kendall_tau"), 4),
            ]
        )
    shown = "n/a" if best is None else str(best)
    return (
        paragraph(
            f"Best epoch (highest val pair accuracy): {shown}. The analysis below is of train's own "
            "predictions; rows marked 'evaluate' come from `avakit evaluate` (eval/*.json)."
        )
        + paragraph(
            "Labels: pairwise preferences within photo series (p = the share of people who preferred "
            "photo i over photo j; 0.5 = a tie); the model scores each photo and P(i better than j) = "
            "sigmoid(score i - score j). Pair accuracy leaves ties out; ± is its binomial standard "
            "error. The human ceiling is how often a random rater agrees with the majority, "
            "mean max(p, 1 - p) over the same pairs: a model is not expected to exceed it."
        )
        + table(header, cells)
    )


def training_section(
    c: Collector,
    history: list[dict],
    lr_df: pd.DataFrame | None,
    starts: Sequence[int] | None,
    plot: Callable[..., Path] = pp.plot_pairwise_curves,
    captions: dict[str, str] = CAPTIONS,
) -> str:
    """Per-epoch curves of a pairwise run (or of a clip run: its `plot` and `captions`) and, from
    telemetry, the learning rate per step."""
    body = drawn_figure(c, "training_curves.png", captions["curves"], plot, history)
    if len(history) <= 1:
        body += c.note(f"training_history.json has {len(history)} epoch(s): the curves are single points")
    if lr_df is None:
        return body + c.note(
            "no usable telemetry/learning_rates.csv: the per-step learning-rate plot is skipped"
        )
    lr = captions["learning_rates"]
    return body + drawn_figure(c, "learning_rates.png", lr, plot_learning_rates, lr_df, starts)


def _bin_table(t: pd.DataFrame, what: str) -> str:
    rows = [
        [b, n, fmt(a), fmt(se), fmt(ceil), *extra] for b, n, a, se, ceil, *extra in t.itertuples(index=False)
    ]
    extra = ["series"] if "series" in t.columns else []
    return table([what, "pairs", "accuracy", "± SE", "human ceiling", *extra], rows)


def confidence_section(c: Collector, splits: list[PairSplit]) -> str:
    """Accuracy per bin of |p_true - 0.5|, table and plot, per split."""
    body = ""
    for sp in splits:
        t = pp.by_confidence(sp.pairs)
        fig = _figure(
            c,
            f"{sp.key}_accuracy_by_confidence.png",
            "confidence",
            pp.plot_accuracy_bins,
            t,
            f"Accuracy by confidence ({sp.label})",
            "|p_true - 0.5| (how clear-cut people found the pair)",
        )
        body += section(f"{sp.label}", _bin_table(t, "|p - 0.5|") + fig, level=3)
    return body


def size_section(c: Collector, splits: list[PairSplit]) -> str:
    """Accuracy per series size (photos per series), table and plot, per split."""
    body = ""
    for sp in splits:
        t = pp.by_series_size(sp.pairs, sp.photos)
        fig = _figure(
            c,
            f"{sp.key}_accuracy_by_series_size.png",
            "size",
            pp.plot_accuracy_bins,
            t,
            f"Accuracy by series size ({sp.label})",
            "photos in the series",
        )
        body += section(f"{sp.label}", _bin_table(t, "series size") + fig, level=3)
    return body


def calibration_section(c: Collector, splits: list[PairSplit]) -> str:
    """Reliability diagram of P and accuracy per P bin, per split."""
    return "".join(
        section(
            sp.label,
            _figure(
                c,
                f"{sp.key}_calibration.png",
                "calibration",
                pp.plot_reliability,
                pp.calibration(sp.pairs),
                sp.label,
            ),
            level=3,
        )
        for sp in splits
    )


def _extremes(photos: pd.DataFrame, n: int = GALLERY_SERIES) -> tuple[list[int], list[int]]:
    """The n series with the highest Kendall tau and the n (others) with the lowest."""
    taus = series_table(photos).dropna(subset=["tau"])
    best = list(taus.sort_values(["tau", "series"], ascending=[False, True], kind="stable")["series"].head(n))
    rest = taus[~taus["series"].isin(best)]
    worst = list(rest.sort_values(["tau", "series"], kind="stable")["series"].head(n))
    return [int(s) for s in best], [int(s) for s in worst]


def read_series(shards_dir: Path, split: str, wanted: set[int]) -> tuple[dict, dict, list[str]]:
    """(series id -> its group label, series id -> {member index: JPEG bytes}, problems) for the
    `wanted` series among the split's group samples; a sample whose json is not a valid group label
    is skipped."""
    labels: dict[int, dict] = {}
    jpgs: dict[int, dict[int, bytes]] = {}
    try:
        paths = shard_files(shards_dir, split)
    except AvakitError as e:
        return labels, jpgs, [str(e)]
    problems = []
    for path in paths:
        try:
            for sample in read_shard(path):
                if "json" not in sample:
                    continue
                _, label = parse_label(Path(sample["__key__"]).name, sample["json"], PAIRS)
                if label is None or label["image_id"] not in wanted:
                    continue
                series = label["image_id"]
                labels[series] = label
                names = (member_name(k) for k in range(len(label["members"])))
                jpgs[series] = {k: sample[m] for k, m in enumerate(names) if m in sample}
        except (tarfile.TarError, EOFError, ValueError, OSError) as e:
            problems.append(f"{path.name}: unreadable: {e}")
    return labels, jpgs, problems


def attach_shards(c: Collector, splits: list[PairSplit], shards_dir: Path) -> None:
    """Read the gallery series' member names and photos from each split's shards; thumbnails."""
    for sp in splits:
        if sp.photos is None:
            continue
        best, worst = _extremes(sp.photos)
        labels, jpgs, problems = read_series(shards_dir, sp.key, {*best, *worst})
        c.notes.extend(f"{sp.key} shards: {p}" for p in problems[:5])
        sp.members = {s: label["members"] for s, label in labels.items()}
        for series, images in jpgs.items():
            thumbs = write_thumbs(images, c.out, f"{sp.key}_{series}")
            sp.thumbs.update({(series, k): src for k, src in thumbs.items()})
        missing = sorted({*best, *worst} - labels.keys())
        if missing:
            shown = ", ".join(map(str, missing[:10]))
            c.notes.append(f"series {shown} not found in the {sp.key} shards of {shards_dir}: no thumbnails")


def _photo_name(sp: PairSplit, series: int, index: int, member: object) -> str:
    """The photo's original file name (photos table, else the shard's label), else "photo k"."""
    if isinstance(member, str) and member:
        return member
    names = sp.members.get(series, [])
    return names[index] if index < len(names) else f"photo {index + 1}"


def series_gallery(sp: PairSplit, series: int, tau: float) -> str:
    """One series: its photos in predicted order (best first), captioned with the true ranks."""
    g = sp.photos[sp.photos["series"] == series].sort_values(["score", "index"], ascending=[False, True])
    cells = []
    for place, row in enumerate(g.to_dict("records"), start=1):
        index, rank = int(row["index"]), int(row["rank"])
        name = _photo_name(sp, series, index, row.get("member"))
        src = sp.thumbs.get((series, index))
        img = (
            f'<img src="{esc(src)}" alt="{esc(name)}">' if src else '<div class="missing">no thumbnail</div>'
        )
        true = f"true rank {rank}" if rank else "true rank unknown"
        caption = f"predicted #{place}<br>{esc(name)}<br>{true} · score {row['score']:.2f}"
        cells.append(f'<div class="thumb">{img}{caption}</div>')
    body = '<div class="gallery">\n' + "\n".join(cells) + "\n</div>\n"
    return section(f"series {series} · Kendall τ {fmt(tau)} · {len(g)} photos", body, level=4)


def gallery_section(c: Collector, splits: list[PairSplit], shards_dir: Path | None) -> str:
    """The best and worst ranked series of each split (by Kendall tau), with thumbnails where read."""
    if shards_dir is None:
        body = c.note("no readable shards: the galleries show no thumbnails (pass the shards folder)")
    else:
        body = ""
        attach_shards(c, splits, shards_dir)
    for sp in splits:
        if sp.photos is None:
            continue
        taus = series_table(sp.photos).set_index("series")["tau"]
        best, worst = _extremes(sp.photos)
        if not best:
            body += c.note(f"{sp.key}: no series with two or more ranked photos: no galleries")
            continue
        for title, chosen in (("Best ranked", best), ("Worst ranked", worst)):
            inner = "".join(series_gallery(sp, s, float(taus[s])) for s in chosen) or note("no other series")
            body += section(f"{title} series ({sp.label}), by Kendall τ", inner, level=3)
    return body
