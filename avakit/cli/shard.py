"""`avakit shard`: AVA.txt, a table, a preset, PhotoTriage or culling folders -> shards + manifest.json."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from avakit.cli.console import console, cpu_count, print_shard_summary, progress_bar, say
from avakit.cli.options import Preset, ShardSplit
from avakit.config import QUALITY_RANGE, SHORT_SIDE_RANGE, SPLIT_SEED_MAX
from avakit.errors import AvakitError

if TYPE_CHECKING:
    from avakit.dataset.epic_plan import EpicInput
    from avakit.dataset.folders_plan import FoldersInput
    from avakit.dataset.phototriage_plan import PhotoTriageInput
    from avakit.dataset.plan import ShardPlan

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
_Folders = Annotated[
    Path | None,
    typer.Option(
        help="Culling folders: ROOT/<folder>/good/*.jpg and bad/*.jpg (or ROOT/training_files/...); "
        "one group sample per folder, large folders chunked (needs --splits).",
        metavar="ROOT",
        show_default=False,
    ),
]
_SplitsJson = Annotated[
    Path | None,
    typer.Option(
        "--splits",
        help='--folders: splits.json, {"train": [folders], "val": [...], "test": [...]}.',
        metavar="FILE",
        show_default=False,
    ),
]
_Mos = Annotated[
    Path | None,
    typer.Option(
        help="--folders: optional mos.csv (image relative to ROOT, mos).", metavar="FILE", show_default=False
    ),
]
_MosScale = Annotated[
    str | None,
    typer.Option(help="--mos: its scale LO:HI (default: the file's min:max).", show_default=False),
]
_GroupSize = Annotated[
    int | None,
    typer.Option(
        min=2,
        help="--folders: photos per group sample; larger folders are cut into chunks.",
        show_default="32",
    ),
]
_Epic = Annotated[
    Path | None,
    typer.Option(
        "--epic-kitchens",
        help="EPIC-KITCHENS-100 annotations folder (EPIC_100_train.csv, EPIC_100_validation.csv, the "
        "class CSVs): one group sample per action segment (needs --frames).",
        metavar="ANNOTATIONS_DIR",
        show_default=False,
    ),
]
_Frames = Annotated[
    Path | None,
    typer.Option(
        help="--epic-kitchens: frames root, FRAMES_ROOT/P01/rgb_frames/P01_01/frame_0000000001.jpg.",
        metavar="FRAMES_ROOT",
        show_default=False,
    ),
]
_FramesPerSegment = Annotated[
    int | None,
    typer.Option(
        min=1, help="--epic-kitchens: frames stored per segment, uniformly spaced.", show_default="16"
    ),
]
_TestShare = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        max=1.0,
        help="--epic-kitchens: share of EPIC_100_train.csv's participants carved out as the test split.",
        show_default="0: no test split",
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
_ValRatio = Annotated[
    float | None, typer.Option(min=0.0, max=1.0, help="Share of rows for validation.", show_default="0.1")
]
_TestRatio = Annotated[
    float | None,
    typer.Option(min=0.0, max=1.0, help="Share of rows for test (random split).", show_default="0.1"),
]
_Seed = Annotated[
    int | None,
    typer.Option(
        min=0, max=SPLIT_SEED_MAX, help="Split seed: the same seed gives the same split.", show_default="42"
    ),
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
        help="Rows per shard (AVA train: ~200 shards); series for --phototriage, chunks for --folders.",
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
    folders: _Folders = None,
    splits: _SplitsJson = None,
    mos: _Mos = None,
    mos_scale: _MosScale = None,
    group_size: _GroupSize = None,
    epic_kitchens: _Epic = None,
    frames: _Frames = None,
    frames_per_segment: _FramesPerSegment = None,
    test_share: _TestShare = None,
    images: _Images = None,
    scale: _Scale = None,
    lower_is_better: _LowerIsBetter = False,
    out: _Out = Path("shards"),
    split: _Split = "random",
    test_list: _TestList = None,
    val_ratio: _ValRatio = None,
    test_ratio: _TestRatio = None,
    seed: _Seed = None,
    short_side: _ShortSide = 256,
    quality: _Quality = 90,
    shard_size: _ShardSize = None,
    workers: _Workers = None,
    limit: _Limit = None,
    strict: _Strict = False,
) -> None:
    """Preprocess labelled photos into WebDataset shards and manifest.json.

    Labels: AVA.txt (--ava-txt), your own table (--labels: K-point votes,
    or a MOS on --scale), a dataset's release (--preset NAME ROOT),
    PhotoTriage's photo series (--phototriage ROOT: one sample per series),
    culling folders (--folders ROOT --splits splits.json: good/ and bad/
    photos per folder, one sample per folder chunk), or EPIC-KITCHENS-100
    (--epic-kitchens DIR --frames ROOT: one sample per action segment).
    Each image is decoded, EXIF-rotated, made RGB, resized to --short-side
    and re-encoded. Unusable rows are skipped and listed in the manifest
    with their line and reason. Interrupted? Rerun the same command.

    Examples:
      avakit shard --ava-txt AVA/AVA.txt --images AVA/images --out shards/ava
      avakit shard --labels labels.csv --images photos/ --scale 0:100 --out shards/mine
      avakit shard --preset koniq10k data/koniq --out shards/koniq
      avakit shard --phototriage data/phototriage --out shards/pt
      avakit shard --folders data/culling --splits data/culling/splits.json --out shards/cull
      avakit shard --epic-kitchens epic/annotations --frames epic/frames --out shards/epic
    """
    from avakit.dataset.plan import ShardOptions
    from avakit.dataset.table_plan import LabelInput, plan_inputs

    pt = _phototriage_input(phototriage, reviews, min_agreement, min_reviewers)
    fo = _folders_input(folders, splits, mos, mos_scale, group_size, (val_ratio, test_ratio, seed))
    ep = _epic_input(epic_kitchens, frames, frames_per_segment, test_share, (val_ratio, test_ratio))
    options = ShardOptions(
        short_side=short_side,
        quality=quality,
        shard_size=shard_size or _default_shard_size(pt, fo, ep),
        split=str(split),
        val_ratio=0.1 if val_ratio is None else val_ratio,
        test_ratio=test_ratio if test_ratio is not None else (0.0 if pt else 0.1),
        seed=42 if seed is None else seed,
        limit=limit,
    )
    given = LabelInput(
        phototriage=pt,
        folders=fo,
        epic=ep,
        ava_txt=ava_txt,
        labels=labels,
        preset=(str(preset[0]), preset[1]) if preset else None,
        scale=scale,
        lower_is_better=lower_is_better,
    )
    _write(plan_inputs(given, images, out, options, test_list, strict), out, workers)


def _write(plan: ShardPlan, out: Path, workers: int | None) -> None:
    """Write the plan's pending shards with a progress bar, then print the summary."""
    from avakit.dataset.shards import write_shards

    done = len(plan.tasks) - len(plan.pending)
    if done:
        console.print(f"resuming: {done} of {len(plan.tasks)} shards already complete")
    with progress_bar("sharding", plan.pending_images, _unit(plan)) as advance:
        manifest = write_shards(plan, cpu_count() if workers is None else workers, advance)
    print_shard_summary(manifest, out)
    say(f"manifest: {out / 'manifest.json'}")


def _phototriage_input(
    root: Path | None, reviews: Path | None, min_agreement: float | None, min_reviewers: int | None
) -> PhotoTriageInput | None:
    """--phototriage's input; its own flags without it are an error."""
    from avakit.dataset.phototriage_plan import PhotoTriageInput

    if root is not None:
        return PhotoTriageInput(
            root=root, reviews=reviews, min_agreement=min_agreement, min_reviewers=min_reviewers
        )
    if reviews is not None or min_agreement is not None or min_reviewers is not None:
        raise AvakitError("--reviews, --min-agreement and --min-reviewers belong to --phototriage ROOT")
    return None


def _folders_input(
    root: Path | None,
    splits: Path | None,
    mos: Path | None,
    mos_scale: str | None,
    group_size: int | None,
    split_flags: tuple[float | None, float | None, int | None],
) -> FoldersInput | None:
    """--folders' input; its flags without it, or the split flags with it, are an error."""
    from avakit.dataset.folders_plan import GROUP_SIZE, FoldersInput
    from avakit.dataset.labels import parse_scale

    if root is None:
        if any(v is not None for v in (splits, mos, mos_scale, group_size)):
            raise AvakitError("--splits, --mos, --mos-scale and --group-size belong to --folders ROOT")
        return None
    if splits is None:
        raise AvakitError("--folders needs --splits FILE, the splits.json naming each split's folders")
    if any(v is not None for v in split_flags):
        raise AvakitError(
            "--val-ratio, --test-ratio and --seed do not apply to --folders: splits.json decides"
        )
    try:
        scale = parse_scale(mos_scale) if mos_scale is not None else None
    except AvakitError as e:
        raise AvakitError(str(e).replace("--scale", "--mos-scale", 1)) from None
    return FoldersInput(
        root=root, splits=splits, mos=mos, mos_scale=scale, group_size=group_size or GROUP_SIZE
    )


def _epic_input(
    root: Path | None,
    frames: Path | None,
    frames_per_segment: int | None,
    test_share: float | None,
    ratios: tuple[float | None, float | None],
) -> EpicInput | None:
    """--epic-kitchens' input; its flags without it, or the ratio flags with it, are an error."""
    from avakit.dataset.epic_plan import FRAMES_PER_SEGMENT, EpicInput

    if root is None:
        if any(v is not None for v in (frames, frames_per_segment, test_share)):
            raise AvakitError(
                "--frames, --frames-per-segment and --test-share belong to --epic-kitchens ANNOTATIONS_DIR"
            )
        return None
    if any(v is not None for v in ratios):
        raise AvakitError(
            "--val-ratio and --test-ratio do not apply to --epic-kitchens: EPIC_100_validation.csv is "
            "the val split, --test-share carves test participants out of EPIC_100_train.csv"
        )
    return EpicInput(
        annotations=root,
        frames=frames,
        frames_per_segment=FRAMES_PER_SEGMENT if frames_per_segment is None else frames_per_segment,
        test_share=test_share or 0.0,
    )


def _default_shard_size(pt: PhotoTriageInput | None, fo: FoldersInput | None, ep: EpicInput | None) -> int:
    """Rows per shard unless --shard-size: series, folder chunks or segments per shard, else 1000 rows."""
    from avakit.dataset import epic_plan, folders_plan, phototriage_plan

    if ep:
        return epic_plan.SHARD_SIZE
    return phototriage_plan.SHARD_SIZE if pt else folders_plan.SHARD_SIZE if fo else 1000


def _unit(plan) -> str:
    """What the shard progress counts: images, groups (a PhotoTriage series, a folder chunk) or
    segments (EPIC-KITCHENS)."""
    return {"pairs": "groups", "clips": "segments"}.get(plan.scale.kind, "images")
