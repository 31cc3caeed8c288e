"""`avakit shard`: AVA.txt, a labels table, a preset or PhotoTriage -> WebDataset shards + manifest.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from avakit.cli.console import console, cpu_count, print_shard_summary, progress_bar, say
from avakit.cli.options import Preset, ShardSplit
from avakit.config import QUALITY_RANGE, SHORT_SIDE_RANGE, SPLIT_SEED_MAX
from avakit.errors import AvakitError

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
_PhotoTriage = Annotated[
    Path | None,
    typer.Option(
        help="A PhotoTriage release folder: train_pairlist.txt, val_pairlist.txt, train_val_imgs/ "
        "(one group sample per photo series; val_pairlist.txt is the test split).",
        metavar="ROOT",
        show_default=False,
    ),
]
_Reviews = Annotated[
    Path | None,
    typer.Option(
        help="--phototriage: raw reviews folder (reviews_trainval/, %06d.json).", show_default=False
    ),
]
_MinAgreement = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        max=1.0,
        help="--reviews: keep pairs whose reviews agree at least this much.",
        show_default=False,
    ),
]
_MinReviewers = Annotated[
    int | None, typer.Option(min=0, help="--reviews: keep pairs with at least N reviews.", show_default=False)
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
_TestRatio = Annotated[
    float | None,
    typer.Option(min=0.0, max=1.0, help="Share of rows for test (random split).", show_default="0.1"),
]
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
_ShardSize = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Rows per shard (AVA train: ~200 shards); series for --phototriage.",
        show_default="1000; 100",
    ),
]
_Workers = Annotated[int | None, typer.Option(min=1, help="Worker processes.", show_default="all cores")]
_Limit = Annotated[int | None, typer.Option(min=1, help="Only the first N rows (for trials).")]
_Strict = Annotated[bool, typer.Option(help="Stop at the first malformed line.")]


def shard(
    ava_txt: _AvaTxt = None,
    labels: _Labels = None,
    preset: _Preset = None,
    phototriage: _PhotoTriage = None,
    reviews: _Reviews = None,
    min_agreement: _MinAgreement = None,
    min_reviewers: _MinReviewers = None,
    images: _Images = None,
    scale: _Scale = None,
    lower_is_better: _LowerIsBetter = False,
    out: _Out = Path("shards"),
    split: _Split = "random",
    test_list: _TestList = None,
    val_ratio: _ValRatio = 0.1,
    test_ratio: _TestRatio = None,
    seed: _Seed = 42,
    short_side: _ShortSide = 256,
    quality: _Quality = 90,
    shard_size: _ShardSize = None,
    workers: _Workers = None,
    limit: _Limit = None,
    strict: _Strict = False,
) -> None:
    """Preprocess labelled photos into WebDataset shards and manifest.json.

    Labels: AVA.txt (--ava-txt), your own table (--labels: K-point votes,
    or a MOS on --scale), a dataset's release (--preset NAME ROOT), or
    PhotoTriage's photo series (--phototriage ROOT: one sample per series).
    Each image is decoded, EXIF-rotated, made RGB, resized to --short-side
    and re-encoded. Unusable rows are skipped and listed in the manifest
    with their line and reason. Interrupted? Rerun the same command.

    Examples:
      avakit shard --ava-txt AVA/AVA.txt --images AVA/images --out shards/ava
      avakit shard --labels labels.csv --images photos/ --scale 0:100 --out shards/mine
      avakit shard --preset koniq10k data/koniq --out shards/koniq
      avakit shard --phototriage data/phototriage --out shards/pt
    """
    from avakit.dataset.phototriage_plan import SHARD_SIZE, PhotoTriageInput
    from avakit.dataset.plan import ShardOptions
    from avakit.dataset.shards import write_shards
    from avakit.dataset.table_plan import LabelInput, plan_inputs

    pt = None
    if phototriage is not None:
        pt = PhotoTriageInput(
            root=phototriage, reviews=reviews, min_agreement=min_agreement, min_reviewers=min_reviewers
        )
    elif reviews is not None or min_agreement is not None or min_reviewers is not None:
        raise AvakitError("--reviews, --min-agreement and --min-reviewers belong to --phototriage ROOT")
    options = ShardOptions(
        short_side=short_side,
        quality=quality,
        shard_size=shard_size or (SHARD_SIZE if pt else 1000),
        split=str(split),
        val_ratio=val_ratio,
        test_ratio=test_ratio if test_ratio is not None else (0.0 if pt else 0.1),
        seed=seed,
        limit=limit,
    )
    given = LabelInput(
        phototriage=pt,
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
