"""Table cells of metrics as the CLI prints them: intervals and accuracy beside its baseline;
a pairwise run's pair accuracy beside the human ceiling; a clip run's verb, noun and action
top-1 / top-5 with its subsets (values read from files: a cell shows "-" for anything that is
not a number in its metric's range)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from avakit.scores import HELD_OUT_SPLITS, TASK_NAMES, Scale

Cell = Callable[[dict], str]

# Under `predict`'s table for a pairwise model: its score has no unit, only differences mean something.
RELATIVE_SCORE = (
    "relative score: compare photos of the same scene, higher is better; P(a better than b) = "
    "sigmoid(score a - score b); not a rating on any scale"
)


def with_interval(m: dict, key: str, sep: str = " ") -> str:
    """A metric with its bootstrap 95% interval where it has one: "0.7120 [0.68, 0.74]"
    (`sep` "\n": the interval on a line of its own, for narrow tables)."""
    value = m.get(key, math.nan)
    text = f"{value:.4f}" if isinstance(value, int | float) else "-"
    ci = m.get(f"{key}_ci")
    if isinstance(ci, list) and len(ci) == 2 and all(isinstance(v, int | float) for v in ci):
        text += f"{sep}[{ci[0]:.2f}, {ci[1]:.2f}]"
    return text


def with_majority(m: dict, sep: str = " ") -> str:
    """Accuracy beside the majority-class rate it must beat: "0.767 (maj 0.767)"."""
    return f"{m['accuracy']:.3f}{sep}(maj {m.get('majority_baseline', math.nan):.3f})"


def eval_rows(m: dict, pairwise: bool = False) -> list[tuple[str, str]]:
    """(metric, value) rows of `evaluate`'s table: SRCC, PLCC with intervals, Acc beside its
    majority rate (where a threshold applied), EMD, MAE, RMSE, SRCC(std); or `pair_rows`."""
    from avakit.metrics import METRIC_NAMES

    if pairwise:
        return pair_rows(m)
    rows = [(f"{METRIC_NAMES[key]} [95% CI]", with_interval(m, key)) for key in ("srcc", "plcc")]
    if "accuracy" in m:
        rows.append((f"Acc at {m['threshold']:g} (majority class)", with_majority(m)))
    rows += [
        (METRIC_NAMES.get(key, key), f"{m[key]:.4f}")
        for key in ("emd", "mae", "rmse", "std_srcc")
        if key in m
    ]
    return rows


def written_files(written: Any, pairwise: bool = False) -> str:
    """The files `evaluate` wrote: "X.json, X.parquet", and for a pairwise run its per-photo
    scores X_photos.parquet (the parquet holds the pairs)."""
    if not pairwise:
        return f"{written.json}, {written.parquet}"
    photos = Path(written.parquet).with_name(f"{Path(written.parquet).stem}_photos.parquet")
    return f"{written.json}, {written.parquet} (pairs), {photos} (photos)"


def report_columns(rows: list[tuple[str, str, dict]], task: str = "score") -> list[tuple[str, Cell]]:
    """(header, cell function) of `avakit report`'s table. Score: accuracy and EMD only where some
    row has them (a threshold applies; vote distributions), SRCC and PLCC with their intervals.
    Pairwise: `pair_columns`; clip: `clip_columns`."""
    if task == "pairwise":
        return pair_columns("\n")
    if task == "clip":
        return clip_columns()
    has = {key: any(key in m for _, _, m in rows) for key in ("accuracy", "emd")}
    columns: list[tuple[str, Cell]] = [
        ("SRCC", lambda m: with_interval(m, "srcc")),
        ("PLCC", lambda m: with_interval(m, "plcc")),
    ]
    if has["accuracy"]:
        columns.append(("Acc", lambda m: with_majority(m) if "accuracy" in m else "-"))
    if has["emd"]:
        columns.append(("EMD", lambda m: f"{m['emd']:.4f}" if "emd" in m else "-"))
    columns += [
        ("MAE", lambda m: f"{m['mae']:.4f}" if isinstance(m.get("mae"), float) else "-"),
        ("n", lambda m: str(m.get("n", "-"))),
    ]
    return columns


# --- pairwise runs --------------------------------------------------------------------------

# The range of each pairwise metric: a value outside it (or not a finite number) shows as "-".
PAIR_RANGES: dict[str, tuple[float, float]] = {
    "pair_accuracy": (0.0, 1.0),
    "pair_accuracy_se": (0.0, 0.5),  # sqrt(a (1 - a) / n) <= 0.5
    "human_ceiling": (0.5, 1.0),  # mean max(p, 1 - p)
    "confident_accuracy": (0.0, 1.0),
    "series_top1": (0.0, 1.0),
    "kendall_tau": (-1.0, 1.0),
    "log_loss": (0.0, 100.0),  # at most -log(1e-7) ~ 16.1 with pair_metrics' clipping
    "pair_accuracy_macro": (0.0, 1.0),  # culling folders
    "auc_mean": (0.0, 1.0),
    "kendall_tau_mos": (-1.0, 1.0),
}


def run_task(doc: object) -> str:
    """What a results.json, eval json or report summary is of: its "task" when that is a task
    name (avakit.scores.TASK_NAMES), else its labels' task (the labels validated as a Scale);
    "score" when neither says (files written before tasks existed)."""
    if not isinstance(doc, dict):
        return "score"
    task = doc.get("task")
    if isinstance(task, str) and task in TASK_NAMES:
        return task
    try:
        return Scale.from_dict(doc.get("labels"), "labels").task
    except ValueError:
        return "score"


def metric(m: dict, key: str, digits: int = 3) -> str:
    """m[key] with `digits` decimals, "-" unless it is a finite number within PAIR_RANGES[key]."""
    value = m.get(key)
    lo, hi = PAIR_RANGES.get(key, (-math.inf, math.inf))
    if type(value) not in (int, float) or not (math.isfinite(value) and lo <= value <= hi):
        return "-"
    return f"{value:.{digits}f}"


def count(m: dict, key: str) -> str:
    """m[key] as "1,234", "-" unless it is a whole number >= 0."""
    value = m.get(key)
    return f"{value:,}" if type(value) is int and value >= 0 else "-"


def pair_accuracy_cell(m: dict, sep: str = " ") -> str:
    """Pair accuracy ± its standard error beside the human ceiling: "0.712 ± 0.021 (human 0.750)"."""
    acc = metric(m, "pair_accuracy")
    if acc == "-":
        return "-"
    se = metric(m, "pair_accuracy_se")
    beside = (  # culling folders: p = 1 for every pair, no ceiling to show; the per-folder mean instead
        f"macro {metric(m, 'pair_accuracy_macro')}"
        if "auc_mean" in m
        else f"human {metric(m, 'human_ceiling')}"
    )
    return acc + (f" ± {se}" if se != "-" else "") + f"{sep}({beside})"


def confident_cell(m: dict, sep: str = " ") -> str:
    """Accuracy on the confident pairs with their number: "0.810 (n=129)"."""
    acc = metric(m, "confident_accuracy")
    return "-" if acc == "-" else f"{acc}{sep}(n={count(m, 'n_confident')})"


def ties(m: dict) -> int:
    """Pairs left out of the accuracies (p = 0.5): n_pairs - n_decided; 0 unless both are counts."""
    n, decided = m.get("n_pairs"), m.get("n_decided")
    if type(n) is int and type(decided) is int and 0 <= decided <= n:
        return n - decided
    return 0


def ties_text(m: dict) -> str:
    """ "1 tie", "12 ties"; "" without ties."""
    n = ties(m)
    return f"{n:,} tie{'s' if n > 1 else ''}" if n else ""


def pairs_cell(m: dict, sep: str = " ") -> str:
    """The pairs, and their ties where there are any: "483 (12 ties)"."""
    n, tied = count(m, "n_pairs"), ties_text(m)
    return n + (f"{sep}({tied})" if tied else "")


def counts_cell(m: dict, sep: str = "\n") -> str:
    """Pairs (ties) and series of a split: "483 pairs\n(12 ties)\n195 series"."""
    n, tied = count(m, "n_pairs"), ties_text(m)
    return sep.join([f"{n} pairs", *([f"({tied})"] if tied else []), f"{count(m, 'n_series')} series"])


def pair_columns(sep: str = "\n") -> list[tuple[str, Cell]]:
    """(header, cell function) of a pairwise run's row tables (train's, report's; under 80
    columns): `sep` "\n" puts the human ceiling and the counts on lines of their own."""
    return [
        ("pair acc ± SE", lambda m: pair_accuracy_cell(m, sep)),
        ("log-loss", lambda m: metric(m, "log_loss", 4)),
        ("confident", lambda m: confident_cell(m, sep)),
        ("top-1", lambda m: metric(m, "series_top1")),
        ("τ", lambda m: metric(m, "kendall_tau")),
        ("n", lambda m: counts_cell(m, sep)),
    ]


def pair_rows(m: dict) -> list[tuple[str, str]]:
    """(metric, value) rows of `evaluate`'s table for a pairwise run (its series row apart)."""
    return [
        (
            "pair accuracy ± SE (" + ("macro" if "auc_mean" in m else "human ceiling") + ")",
            pair_accuracy_cell(m),
        ),
        ("log-loss", metric(m, "log_loss", 4)),
        ("confident-pair accuracy (pairs)", confident_cell(m)),
        ("series top-1 (best photo scored highest)", metric(m, "series_top1")),
        ("Kendall τ (mean over series)", metric(m, "kendall_tau")),
        ("pairs", pairs_cell(m)),
        *(folder_rows(m) if "auc_mean" in m else []),
    ]


def folder_rows(m: dict) -> list[tuple[str, str]]:
    """`evaluate`'s extra rows for culling folders: macro accuracy, good-vs-bad AUC, tau vs MOS."""
    return [
        ("pair accuracy, mean over folders (macro)", metric(m, "pair_accuracy_macro")),
        (f"ROC AUC good vs bad, mean over {count(m, 'n_auc_groups')} folders", metric(m, "auc_mean")),
        (f"Kendall τ of score vs MOS ({count(m, 'n_mos')} photos)", metric(m, "kendall_tau_mos")),
    ]


def pair_caption() -> str:
    """The line under a pairwise table: what its numbers are."""
    from avakit.pair_metrics import CONFIDENT

    return (
        "pair accuracy leaves ties out, ± its standard error; human: how often a random rater agrees "
        f"with the majority; confident: pairs with |p - 0.5| >= {CONFIDENT:g}; top-1: series whose "
        "best photo scores highest; τ: Kendall's, mean over series"
    )


# --- clip runs (verb + noun segments) --------------------------------------------------------

CLIP_PARTS = ("verb", "noun", "action")
CLIP_SUBSETS = {"unseen": "unseen participants", "tail": "tail classes"}  # subset -> what it is


def fraction(m: dict, key: str, digits: int = 3) -> str:
    """m[key] with `digits` decimals, "-" unless it is a finite number in 0..1."""
    value = m.get(key)
    if type(value) not in (int, float) or not (math.isfinite(value) and 0 <= value <= 1):
        return "-"
    return f"{value:.{digits}f}"


def clip_top_cell(m: dict, part: str, prefix: str = "") -> str:
    """Top-1 / top-5 of `part` ("verb", "noun", "action"), of a subset with `prefix` ("tail_"):
    "0.412 / 0.733"; "-" when neither is a fraction."""
    one, five = fraction(m, f"{prefix}{part}_top1"), fraction(m, f"{prefix}{part}_top5")
    return "-" if one == five == "-" else f"{one} / {five}"


def clip_columns() -> list[tuple[str, Cell]]:
    """(header, cell function) of a clip run's row tables (train's, report's): verb, noun and
    action top-1 / top-5 and the segments."""
    columns: list[tuple[str, Cell]] = [
        (f"{part} top-1/5", lambda m, part=part: clip_top_cell(m, part)) for part in CLIP_PARTS
    ]
    return [*columns, ("segments", lambda m: count(m, "n"))]


def clip_subset(m: dict, subset: str) -> dict | None:
    """A subset's metrics under the plain keys (verb_top1.., n), None when `m` has no such subset
    or it is empty (a test split carved from train has no unseen-participant segments)."""
    if not isinstance(m, dict) or f"{subset}_n" not in m or m[f"{subset}_n"] == 0:
        return None
    keys = [f"{p}_top{k}" for p in CLIP_PARTS for k in (1, 5)] + ["n"]
    return {key: m.get(f"{subset}_{key}") for key in keys}


def task_rows(rows: list[tuple[str, str, dict]], task: str) -> list[tuple[str, str, dict]]:
    """The rows of `avakit report`'s table: for a clip run each split's unseen and tail subsets
    follow it as rows of their own ("val · tail"); other tasks' rows unchanged."""
    if task != "clip":
        return rows
    out = []
    for split, model, m in rows:
        out.append((split, model, m))
        for subset in CLIP_SUBSETS:
            found = clip_subset(m, subset)
            if found is not None:
                out.append((f"{split} · {subset}", model, found))
    return out


def clip_rows(m: dict) -> list[tuple[str, str]]:
    """(metric, value) rows of `evaluate`'s table for a clip run (its segments row apart): verb,
    noun and action top-1 / top-5, then those of each subset with its segments."""
    rows = [(f"{part} top-1 / top-5", clip_top_cell(m, part)) for part in CLIP_PARTS]
    for subset, what in CLIP_SUBSETS.items():
        found = clip_subset(m, subset)
        if found is not None:
            rows += [(f"{what}: {part} top-1 / top-5", clip_top_cell(found, part)) for part in CLIP_PARTS]
            rows.append((f"{what}: segments", count(found, "n")))
    return rows


def clip_caption() -> str:
    """The line under a clip table: what its numbers are."""
    return (
        "top-1 / top-5 accuracy over segments; an action is right when verb and noun both are, actions "
        "ranked by p(verb) x p(noun); unseen: participants absent from training; tail: EPIC-KITCHENS-100 "
        "tail classes (verb on tail-verb segments, noun on tail-noun ones, action on either)"
    )


def task_caption(task: str) -> str | None:
    """The caption of a task's metrics table (None for score runs)."""
    return {"pairwise": pair_caption, "clip": clip_caption}.get(task, lambda: None)()


def task_results_table(found: dict, task: str) -> Table:
    """`train`'s final table for a pairwise or clip run's results.json: one row per held-out split
    (a clip run's unseen and tail subsets as rows of their own)."""
    best, epochs = count(found, "best_epoch"), count(found, "epochs")
    chosen = found.get("select_metric")
    by = f" (by val {chosen})" if isinstance(chosen, str) else ""
    table = Table(
        title=escape(f"best epoch {best} of {epochs}{by}"), caption=task_caption(task), caption_justify="left"
    )
    table.add_column("split")
    columns = pair_columns("\n") if task == "pairwise" else clip_columns()
    for header, _ in columns:
        table.add_column(header, justify="right")
    rows = [(s, "", found[s]) for s in HELD_OUT_SPLITS if isinstance(found.get(s), dict)]
    for split, _, m in task_rows(rows, task):
        table.add_row(escape(split), *(cell(m) for _, cell in columns))
    return table
