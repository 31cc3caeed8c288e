"""The shard summary of `avakit shard` and `avakit inspect`: a manifest's per-split table and counts.

Votes and MOS shards show the mean score; PhotoTriage series their pairs and photos; culling
folders their chunks, folders, photos, good, bad, pairs and photos with a MOS.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def print_summary(console: Console, manifest: dict, out: Path) -> None:
    """Print a manifest's per-split table, its row counts and its skipped rows by reason."""
    from avakit.dataset.manifest import manifest_scale

    scale = manifest_scale(manifest)
    if scale.kind == "clips":
        _print_clips(console, manifest, out)
        return
    pairs = scale.kind == "pairs"
    folders = "photos_written" in manifest["counts"]
    if folders:
        title, columns = f"shards in {out}: good/bad folders, pairs within a folder", FOLDER_COLUMNS
    elif pairs:
        title, columns = f"shards in {out}: photo series, pairwise preferences", ("pairs", "photos")
    else:
        title = f"shards in {out}: {scale.score_name}" + (f", {scale.k}-point votes" if scale.k else "")
        columns = ("mean score", "votes/image")
    table = Table(title=escape(title))  # a path or a manifest's text is not markup
    unit = "chunks" if folders else "series" if pairs else "samples"
    for col in ("split", unit, "shards", "MB", *columns):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split, info in manifest["splits"].items():
        stats = info["label_stats"]
        if pairs:
            cells = [f"{stats[c]:,}" if stats["n"] and c in stats else "-" for c in columns]
        else:
            cells = [
                f"{stats['mean_score_mean']:.2f} ± {stats['mean_score_std']:.2f}" if stats["n"] else "-",
                f"{stats['votes_per_image_mean']:.0f}" if "votes_per_image_mean" in stats else "-",
            ]
        table.add_row(
            split, f"{info['samples']:,}", str(len(info["shards"])), f"{info['bytes'] / 1e6:,.1f}", *cells
        )
    console.print(table)
    _print_counts(console, manifest, pairs, folders)


FOLDER_COLUMNS = ("folders", "photos", "good", "bad", "pairs", "mos")


def _print_counts(console: Console, manifest: dict, pairs: bool, folders: bool) -> None:
    """The counts line (rows read = written + skipped) and the skipped rows by reason."""
    counts = manifest["counts"]
    if folders:
        written = f"photos written {counts['photos_written']:,}"
        rows = " (rows: photos in the folders' good/ and bad/)"
    else:
        written = f"samples written {counts['samples_written']:,}"
        rows = " (rows: series, and pair-list lines that could not be read)" if pairs else ""
    console.print(
        f"rows read {counts['rows_read']:,} = {written} + rows skipped {counts['rows_skipped']:,}{rows}"
    )
    if manifest["skipped_by_reason"]:
        skipped = Table(title="skipped rows by reason (all listed in manifest.json)")
        skipped.add_column("reason")
        skipped.add_column("rows", justify="right")
        for reason, n in manifest["skipped_by_reason"].items():
            skipped.add_row(escape(reason), f"{n:,}")
        console.print(skipped)


def _print_clips(console: Console, manifest: dict, out: Path) -> None:
    """EPIC-KITCHENS shards: segments, frames, classes seen and participants per split; the test
    participants and the segments skipped for missing frames."""
    table = Table(title=escape(f"shards in {out}: video segments, verb + noun classes"))
    for col in ("split", "segments", "shards", "MB", "frames", "verbs", "nouns", "participants"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split, info in manifest["splits"].items():
        stats = info["label_stats"]
        cells = (
            [str(stats["frames_per_segment"])]
            + [str(sum(n > 0 for n in stats[k])) for k in ("verb_counts", "noun_counts")]
            + [str(len(stats["participants"]))]
            if stats["n"]
            else ["-"] * 4
        )
        table.add_row(
            split, f"{info['samples']:,}", str(len(info["shards"])), f"{info['bytes'] / 1e6:,.1f}", *cells
        )
    console.print(table)
    epic = manifest.get("epic_kitchens", {})
    if isinstance(epic, dict) and epic.get("test_participants"):
        console.print(f"test participants: {escape(', '.join(map(str, epic['test_participants'])))}")
    for split, m in (epic.get("frames_missing") or {}).items() if isinstance(epic, dict) else ():
        if isinstance(m, dict) and m.get("segments_skipped"):
            first = (m.get("first_missing_frames") or ["?"])[0]
            console.print(
                f"{split}: {m['segments_skipped']:,} segments skipped, {m.get('frames_missing', 0):,} frames "
                f"missing (first {escape(str(first))}; up to 20 listed in manifest.json)"
            )
    _print_counts(console, manifest, False, False)
