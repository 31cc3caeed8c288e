"""`avakit shard`: AVA.txt, a labels table or a dataset preset -> WebDataset shards + manifest.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from avakit.cli.console import console, cpu_count, print_shard_summary, progress_bar, say
from avakit.cli.options import Preset, ShardSplit
from avakit.config import QUALITY_RANGE, SHORT_SIDE_RANGE, SPLIT_SEED_MAX

_AvaTxt = Annotated[Path | None, typer.Option("--ava-txt", help="AVA.txt (15 integer columns per line).")]
_Labels = Annotated[
    Path | None,
    typer.Option(
        help="Your own labels table, .csv or .parquet: image, votes_1..votes_K or mos (std, n), "
        "optional split, group, weight (see README, 'Your own data')."
    ),
]
_Preset = Annotated[
    tuple[Preset, Path] | None,
    typer.Option(
        help="A dataset's own release files: --preset NAME ROOT, NAME one of "
        f"{', '.join(str(p) for p in Preset)} (layouts in the README).",
        metavar="NAME ROOT",
        show_default=False,
    ),
]
_Images = Annotated[
    Path | None,
    typer.Option(help="Images folder: {image id}.jpg for AVA.txt; the table's paths are relative to it."),
]
_Scale = Annotated[
    str | None,
    typer.Option(
        help="--labels: the scale LO:HI, e.g. 0:100 (needed for mos; votes: 1:K).", show_default=False
    ),
]
_LowerIsBetter = Annotated[
    bool, typer.Option("--lower-is-better", help="--labels: low values are good (DMOS-style data).")
]
_Out = Annotated[Path, typer.Option(help="Output folder for shards + manifest.json.")]
_Split = Annotated[
    ShardSplit,
    typer.Option(
        help="random (tables: by a hash of key or group, so edits move no other image), "
        "or official (AVA, needs --test-list)."
    ),
]
_TestList = Annotated[Path | None, typer.Option(help="Official test ids (generic_test.jpgl).")]
_ValRatio = Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of rows for validation.")]
_TestRatio = Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of rows for test (random split).")]
_Seed = Annotated[
    int, typer.Option(min=0, max=SPLIT_SEED_MAX, help="Split seed: the same seed gives the same split.")
]
_ShortSide = Annotated[
    int,
    typer.Option(
        min=SHORT_SIDE_RANGE[0], max=SHORT_SIDE_RANGE[1], help="Shorter side of stored images, pixels."
    ),
]
_Quality = Annotated[
    int, typer.Option(min=QUALITY_RANGE[0], max=QUALITY_RANGE[1], help="JPEG quality of stored images.")
]
_ShardSize = Annotated[int, typer.Option(min=1, help="Rows per shard (AVA train: ~200 shards).")]
_Workers = Annotated[int | None, typer.Option(min=1, help="Worker processes.", show_default="all cores")]
_Limit = Annotated[int | None, typer.Option(min=1, help="Only the first N rows (for trials).")]
_Strict = Annotated[bool, typer.Option(help="Stop at the first malformed line.")]


def shard(
    ava_txt: _AvaTxt = None,
    labels: _Labels = None,
    preset: _Preset = None,
    images: _Images = None,
    scale: _Scale = None,
    lower_is_better: _LowerIsBetter = False,
    out: _Out = Path("shards"),
    split: _Split = "random",
    test_list: _TestList = None,
    val_ratio: _ValRatio = 0.1,
    test_ratio: _TestRatio = 0.1,
    seed: _Seed = 42,
    short_side: _ShortSide = 256,
    quality: _Quality = 90,
    shard_size: _ShardSize = 1000,
    workers: _Workers = None,
    limit: _Limit = None,
    strict: _Strict = False,
) -> None:
    """Preprocess labelled photos into WebDataset shards and manifest.json.

    Labels: AVA.txt (--ava-txt), your own table (--labels: K-point votes,
    or a MOS on --scale) or a dataset's release (--preset NAME ROOT).
    Each image is decoded, EXIF-rotated, made RGB, resized to --short-side
    and re-encoded. Unusable rows are skipped and listed in the manifest
    with their line and reason. Interrupted? Rerun the same command.

    Examples:
      avakit shard --ava-txt AVA/AVA.txt --images AVA/images --out shards/ava
      avakit shard --labels labels.csv --images photos/ --scale 0:100 --out shards/mine
      avakit shard --preset koniq10k data/koniq --out shards/koniq
    """
    from avakit.dataset.plan import ShardOptions
    from avakit.dataset.shards import write_shards
    from avakit.dataset.table_plan import LabelInput, plan_inputs

    options = ShardOptions(
        short_side=short_side,
        quality=quality,
        shard_size=shard_size,
        split=str(split),
        val_ratio=val_ratio,
        test_ratio=test_ratio,
        seed=seed,
        limit=limit,
    )
    given = LabelInput(
        ava_txt=ava_txt,
        labels=labels,
        preset=(str(preset[0]), preset[1]) if preset else None,
        scale=scale,
        lower_is_better=lower_is_better,
    )
    plan = plan_inputs(given, images, out, options, test_list, strict)
    done = len(plan.tasks) - len(plan.pending)
    if done:
        console.print(f"resuming: {done} of {len(plan.tasks)} shards already complete")
    with progress_bar("sharding", plan.pending_images) as advance:
        manifest = write_shards(plan, cpu_count() if workers is None else workers, advance)
    print_shard_summary(manifest, out)
    say(f"manifest: {out / 'manifest.json'}")
