"""Table cells of metrics as the CLI prints them: intervals and accuracy beside its baseline."""

from __future__ import annotations

import math


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


def report_columns(rows: list[tuple[str, str, dict]]) -> list[tuple[str, object]]:
    """(header, cell function) of `avakit report`'s table: accuracy and EMD only where some row
    has them (a threshold applies; vote distributions), SRCC and PLCC with their intervals."""
    has = {key: any(key in m for _, _, m in rows) for key in ("accuracy", "emd")}
    columns: list[tuple[str, object]] = [
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
