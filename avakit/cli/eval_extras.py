"""`avakit evaluate`'s extras: the phone-proxy latency and the model changelog row, and their lines.

Library modules are imported inside the functions (no torch at import).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def check_changelog(path: Path | None) -> None:
    """Refuse a --changelog that is not the changelog table before any evaluation runs."""
    if path is not None:
        from avakit.changelog import table_lines

        table_lines(Path(path))


def add_phone_proxy(report: dict, run_dir: Path, shards: Path | None, json_path: Path) -> None:
    """Time the run's INT8 model as a phone proxy on the evaluated split and checkpoint; the figure
    goes into `report` (phone_proxy_ms_per_photo, phone_proxy: details and a note) and the eval
    json at `json_path` is rewritten atomically with it."""
    from avakit.fileio import write_json_atomic
    from avakit.inference.latency import phone_proxy

    which = "last" if report["checkpoint"] == "last.pt" else "best"
    proxy = phone_proxy(run_dir, report["split"], shards, which)
    report["phone_proxy_ms_per_photo"] = proxy["ms_per_photo"]
    report["phone_proxy"] = proxy
    write_json_atomic(json_path, report, default=_jsonable)


def append_changelog(report: dict, run_dir: Path, path: Path) -> str:
    """Append the evaluation's row to the changelog at `path`; the line saying so."""
    from avakit.changelog import append_row, changelog_row
    from avakit.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(Path(run_dir) / report["checkpoint"])
    row = changelog_row(report, Path(run_dir).name, ckpt.get("manifest_sha256"), ckpt["config"])
    n = append_row(Path(path), row)
    return f"changelog: row {n} of {path} (dataset {row[2]}, config {row[3]})"


def latency_rows(report: dict) -> list[tuple[str, str]]:
    """The latency rows of evaluate's table: the desktop figure, and the phone proxy when measured."""
    m = report["metrics"]
    rows = [
        (
            f"latency ({report['device']}, batch {report['batch_size']})",
            f"{m['latency_ms_per_image']:.2f} ms/image, {m['model_img_per_s']:.0f} img/s",
        )
    ]
    proxy = report.get("phone_proxy")
    if isinstance(proxy, dict):
        rows.append(
            (
                "phone proxy (INT8 ONNX, 1 thread, batch 1)",
                f"{proxy['ms_per_photo']:.2f} ms/photo over {proxy['n_photos']} photos",
            )
        )
    return rows


def _jsonable(value: object) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def ranking_table(result: dict) -> Any:
    """`export`'s ranking parity of a pairwise run (FP32 and INT8 pair accuracy, Kendall tau) as a
    Rich table; None when it was not checked."""
    from rich.markup import escape
    from rich.table import Table

    found = result["parity"].get("ranking")
    if not found:
        return None
    pairs, groups, photos = found["n_pairs"], found["n_groups"], found["n_photos"]
    table = Table(title=escape(f"ranking parity on {pairs} pairs of {groups} val groups ({photos} photos)"))
    table.add_column("file")
    table.add_column("pair accuracy", justify="right")
    table.add_column("Kendall τ vs FP32", justify="right")
    table.add_row("FP32", f"{found['fp32_pair_accuracy']:.4f}", "")
    table.add_row("INT8", f"{found['int8_pair_accuracy']:.4f}", f"{found['kendall_tau']:.4f}")
    return table
