"""The sections of `report.html`: one self-contained page with inline CSS and no JavaScript.

Small HTML helpers (every inserted text goes through `html.escape`), then one function per
report section that draws its PNGs through a `Collector` and returns the section's HTML.
Images are referenced by paths relative to the report folder, so the page opens from disk.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from avakit.metrics import METRIC_NAMES
from avakit.plots import plot_gradient_norms, plot_learning_rates, plot_training_curves
from avakit.predictions import dist_columns
from avakit.report import prediction_plots
from avakit.report.captions import caption
from avakit.report.prediction_plots import fmt
from avakit.report.scale import AVA_RUN, RunScale

if TYPE_CHECKING:
    from avakit.report.splits import SplitData

SUMMARY_METRICS = ("srcc", "plcc", "accuracy", "emd", "mae", "rmse")
CI_METRICS = ("srcc_ci", "plcc_ci")  # 95 % bootstrap intervals (metrics.confidence_intervals)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ccc; padding-bottom: .3em; }
h2 { margin-top: 2.2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: right; }
th { background: #f2f2f2; } td.name, th.name { text-align: left; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.92em; max-width: 60em; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .5em .8em; margin: .8em 0; }
.warn { background: #fdecea; border-left: 4px solid #d93025; padding: .5em .8em; margin: .8em 0; }
.ok { background: #e8f5e9; border-left: 4px solid #2e7d32; padding: .5em .8em; margin: .8em 0; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.thumb { width: 170px; font-size: 0.85em; text-align: center; }
.thumb img { max-width: 160px; max-height: 160px; display: block; margin: 0 auto 4px; }
.missing { width: 160px; height: 100px; background: #eee; color: #777; display: flex;
           align-items: center; justify-content: center; margin: 0 auto 4px; }
"""


def esc(value: object) -> str:
    """Text made safe for HTML (quotes too)."""
    return html.escape(str(value), quote=True)


def note(text: str, kind: str = "note") -> str:
    """A highlighted paragraph: kind 'note', 'warn' or 'ok'."""
    return f'<p class="{esc(kind)}">{esc(text)}</p>\n'


def paragraph(text: str) -> str:
    """A plain paragraph."""
    return f"<p>{esc(text)}</p>\n"


def figure(src: str, key: str, alt: str, rs: RunScale = AVA_RUN) -> str:
    """An <img> (path relative to the report folder) with the caption for plot kind `key`."""
    caption_text = caption(key, rs)
    return (
        f'<figure><img src="{esc(src)}" alt="{esc(alt)}"><figcaption>{esc(caption_text)}</figcaption>'
        "</figure>\n"
    )


def drawn_figure(c: Collector, name: str, text: str, fn: Callable[..., Path], *args: Any) -> str:
    """Draw `fn(args[0], out/name, *args[1:])` (its PNG kept in `c.pngs`); its <figure> captioned `text`."""
    c.pngs.append(fn(args[0], c.out / name, *args[1:]))
    alt = name.removesuffix(".png").replace("_", " ")
    return f'<figure><img src="{esc(name)}" alt="{esc(alt)}"><figcaption>{esc(text)}</figcaption></figure>\n'


def table(header: list[str], rows: Iterable[list[object]], first_is_name: bool = True) -> str:
    """A plain table; the first column left-aligned when `first_is_name`."""

    def cell(tag: str, i: int, value: object) -> str:
        cls = ' class="name"' if first_is_name and i == 0 else ""
        return f"<{tag}{cls}>{esc(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>\n" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n"


def interval(value: object) -> str:
    """A [lo, hi] interval as "[0.512, 0.634]"; 'n/a' when absent or not two numbers."""
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        return "n/a"
    lo, hi = (fmt(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else "n/a" for v in value)
    return "n/a" if "n/a" in (lo, hi) else f"[{lo}, {hi}]"


def summary_table(
    best_epoch: int | None, rows: Sequence[tuple[str, str, dict | None]], rs: RunScale = AVA_RUN
) -> str:
    """Best epoch and the headline metrics (with the 95 % intervals of SRCC and PLCC) of each
    (split, model behind them, metrics or None) row; accuracy and its majority baseline only
    when a threshold applies."""
    names = [m for m in SUMMARY_METRICS if m != "accuracy" or rs.threshold is not None]
    if rs.scale.kind == "mos":
        names.remove("emd")  # a MOS has no distribution to compare
    if rs.threshold is not None:
        names.insert(names.index("accuracy") + 1, "majority_baseline")
    header = [
        "split",
        "model",
        "images",
        *(METRIC_NAMES.get(m, "majority baseline") for m in names),
        *(f"{METRIC_NAMES[m[:4]]} 95% CI" for m in CI_METRICS),
    ]
    cells = []
    for name, model, found in rows:
        if found is None:
            cells.append([name, model, "no predictions", *("n/a" for _ in header[3:])])
        else:
            values = [fmt(found.get(m), 4) for m in names] + [interval(found.get(m)) for m in CI_METRICS]
            cells.append([name, model, found.get("n", "n/a"), *values])
    best = "n/a" if best_epoch is None else str(best_epoch)
    return (
        paragraph(
            f"Best epoch (highest val SRCC): {best}. The analysis below is of train's own "
            "predictions; rows marked 'evaluate' come from `avakit evaluate` (eval/*.json). "
            "95% CI: percentile bootstrap interval over the images (1000 resamples)."
        )
        + paragraph(rs.describe())
        + table(header, cells)
    )


def notes_list(notes: list[str]) -> str:
    """The skipped or limited sections, as a list ('' when there are none)."""
    if not notes:
        return ""
    items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return f"<p>Skipped or limited sections:</p>\n<ul>{items}</ul>\n"


def group_table(stats: pd.DataFrame, what: str, max_rows: int = 60) -> str:
    """Per-group table (name, [id], count, mae, srcc, mean real, mean predicted), sorted by count.

    The id column is left out when every group is named by its id (a labels table's groups).
    """
    with_id = not (stats["name"] == stats["id"].astype(str)).all()
    header = [what, *(["id"] if with_id else []), "images", "MAE", "SRCC", "mean real", "mean predicted"]
    cols = ["name", "id", "count", "mae", "srcc", "mean_real", "mean_pred"]
    rows = [
        [name, *([gid] if with_id else []), n, fmt(mae), fmt(srcc), fmt(real, 2), fmt(pred, 2)]
        for name, gid, n, mae, srcc, real, pred in stats.head(max_rows)[cols].itertuples(index=False)
    ]
    more = paragraph(f"{len(stats) - max_rows} smaller groups not shown.") if len(stats) > max_rows else ""
    return table(header, rows) + more


def gallery(items: list[tuple[str | None, int | str, float, float]]) -> str:
    """Thumbnails (relative path or None when unavailable) captioned with the image's name ("id 123"
    for AVA, the original file name for a labels table), real and predicted."""
    cells = []
    for src, name, real, pred in items:
        img = (
            f'<img src="{esc(src)}" alt="{esc(name)}">' if src else '<div class="missing">no thumbnail</div>'
        )
        cells.append(
            f'<div class="thumb">{img}{esc(name)}<br>real {real:.2f} · '
            f"predicted {pred:.2f}<br>error {pred - real:+.2f}</div>"
        )
    return '<div class="gallery">\n' + "\n".join(cells) + "\n</div>\n"


def section(heading: str, body: str, level: int = 2, anchor: str | None = None) -> str:
    """A heading (with an id for the table of contents) followed by its body (already HTML)."""
    ident = f' id="{esc(anchor)}"' if anchor else ""
    return f"<h{level}{ident}>{esc(heading)}</h{level}>\n{body}"


def contents(entries: list[tuple[str, str]]) -> str:
    """A list of links to the sections, as (anchor, heading) pairs."""
    items = "".join(f'<li><a href="#{esc(a)}">{esc(h)}</a></li>' for a, h in entries)
    return f"<nav><ul>{items}</ul></nav>\n"


def page(title: str, subtitle: str, body: str) -> str:
    """The whole document."""
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{esc(title)}</h1>\n<p>{esc(subtitle)}</p>\n{body}</body>\n</html>\n"
    )


@dataclass(frozen=True)
class Frozen:
    """Telemetry parts frozen on purpose by the run's config, and why (None: nothing frozen)."""

    parts: tuple[str, ...] = ()
    why: str | None = None


@dataclass(frozen=True, kw_only=True)
class GroupTable:
    """One split's statistics for one group kind; `tagged` images have at least one group id."""

    split: SplitData
    what: str  # "semantic tag", "challenge" or "group" (a labels table's group column)
    part: str  # file-name part: "tags" or "challenges"
    stats: pd.DataFrame
    tagged: int


@dataclass
class Collector:
    """The report folder plus the PNGs written and the sections skipped so far."""

    out: Path
    pngs: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rs: RunScale = AVA_RUN  # the run's scale: captions and plots speak in it

    def figure(self, name: str, key: str, fn: Callable[..., Path], data: Any, *rest: Any) -> str:
        """Draw `fn(data, out/name, *rest)`; its <figure> with the caption of plot kind `key`."""
        self.pngs.append(fn(data, self.out / name, *rest))
        return figure(name, key, alt=name.removesuffix(".png").replace("_", " "), rs=self.rs)

    def note(self, text: str) -> str:
        """Record a skipped or limited section; the note as a highlighted paragraph."""
        self.notes.append(text)
        return note(text)


def training_section(
    c: Collector, history: list[dict], lr_df: pd.DataFrame | None, epoch_starts: Sequence[int] | None = None
) -> str:
    """Per-epoch training curves and, from telemetry, the learning rate per step."""
    body = c.figure("training_curves.png", "training_curves", plot_training_curves, history)
    if len(history) <= 1:
        body += c.note(
            f"training_history.json has {len(history)} epoch(s): the curves are "
            f"{'single points' if history else 'empty'}"
        )
    if lr_df is None:
        return body + c.note(
            "no usable telemetry/learning_rates.csv: the per-step learning-rate plot is skipped"
        )
    return body + c.figure("learning_rates.png", "learning_rates", plot_learning_rates, lr_df, epoch_starts)


def telemetry_section(
    c: Collector,
    grad_df: pd.DataFrame | None,
    warnings: list[str],
    frozen: Frozen = Frozen(),
    epoch_starts: Sequence[int] | None = None,
) -> str:
    """Gradient norms per part (log scale), the warning signs found in them, what is frozen on purpose."""
    if grad_df is None:
        return c.note(
            "no usable telemetry/gradient_norms.csv (telemetry disabled?): gradient-norm plot skipped"
        )
    body = c.figure(
        "gradient_norms.png", "gradient_norms", plot_gradient_norms, grad_df, frozen.parts, epoch_starts
    )
    if frozen.why:
        body += note(f"{', '.join(frozen.parts)}: {frozen.why}; a zero gradient norm there is expected.")
    if not warnings:
        return body + note("No warning signs in the gradient norms.", "ok")
    return body + "".join(note(w, "warn") for w in warnings)


def predictions_section(c: Collector, splits: list[SplitData]) -> str:
    """The six prediction-analysis plots of each split (no confusion matrix without a threshold)."""
    plots = prediction_plots.PREDICTION_PLOTS.items()
    if c.rs.threshold is None:
        plots = [(k, fn) for k, fn in plots if k != "confusion"]
        c.notes.append(
            "no threshold applies (eval.threshold not set): no binary accuracy or confusion matrix"
        )
    body = ""
    for sp in splits:
        figs = "".join(c.figure(f"{sp.key}_{key}.png", key, fn, sp.df, sp.label, c.rs) for key, fn in plots)
        body += section(f"{sp.label} ({len(sp.df)} images)", figs, level=3)
    return body


def epochs_section(c: Collector, points: pd.DataFrame, best_epoch: int | None) -> str:
    """SRCC/PLCC per epoch from the per-epoch prediction files."""
    if points.empty:
        return c.note("no predictions/val_epoch_NNN.parquet (save_val_predictions off?): plot skipped")
    body = c.figure(
        "srcc_by_epoch.png", "srcc_by_epoch", prediction_plots.plot_srcc_by_epoch, points, best_epoch
    )
    if len(points) == 1:
        body += c.note("only one per-epoch predictions file: SRCC over epochs is a single point")
    return body


def votes_section(c: Collector, splits: list[SplitData]) -> str:
    """Predicted vs real vote histograms (vote labels in distribution mode only)."""
    if c.rs.scale.kind != "votes":
        return c.note("MOS labels (no vote distributions): vote-histogram grid skipped")
    with_votes = [sp for sp in splits if dist_columns(sp.df, "pred_dist_")]
    if not with_votes:
        return c.note("regression mode (no pred_dist columns): vote-histogram grid skipped")
    return "".join(
        c.figure(
            f"{sp.key}_vote_histograms.png",
            "vote_histograms",
            prediction_plots.plot_vote_histograms,
            sp.df,
            sp.label,
            c.rs,
        )
        for sp in with_votes
    )


def groups_section(c: Collector, groups: list[GroupTable], min_group: int) -> str:
    """Per (split, kind): the group table sorted by count and the MAE bar chart."""
    body = ""
    for g in groups:
        sp = g.split
        if g.tagged == 0 and g.what == "group":
            inner = c.note(f"{sp.label}: no groups (the labels table had no group column)")
        elif g.tagged == 0:
            inner = c.note(
                f"{sp.label}: the data has no {g.what}s (every image's {g.what} id is 0 or absent)"
            )
        elif g.stats.empty:
            inner = c.note(
                f"{sp.label}: no {g.what} with at least {min_group} images "
                f"({g.tagged} of {len(sp.df)} images have one)"
            )
        else:
            inner = group_table(g.stats, g.what) + c.figure(
                f"{sp.key}_{g.part}_mae.png",
                "group_mae",
                prediction_plots.plot_group_mae,
                g.stats,
                f"MAE per {g.what} ({sp.label})",
                sp.metrics.get("mae", float("nan")),
                25,
                c.rs.units,
            )
        body += section(f"Per {g.what} ({sp.label})", inner, level=3)
    return body


def image_name(label: dict | None, image_id: int) -> str:
    """How a gallery names an image: a labels table's original file name, else "id 123" (AVA)."""
    name = (label or {}).get("image")
    return name if isinstance(name, str) and name else f"id {image_id}"


def gallery_section(splits: list[SplitData], extremes: Callable) -> str:
    """Best- and worst-predicted images of each split, with thumbnails where read."""
    body = ""
    for sp in splits:
        for title, rows in zip(("Best predicted", "Worst predicted"), extremes(sp.df), strict=True):
            items = [
                (sp.thumbs.get(int(i)), image_name(sp.labels.get(int(i)), int(i)), float(g), float(p))
                for i, g, p in rows[["image_id", "gt_mean", "pred_mean"]].itertuples(index=False)
            ]
            body += section(f"{title} ({sp.label}), by |predicted - real|", gallery(items), level=3)
    return body
