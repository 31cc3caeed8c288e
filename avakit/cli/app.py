"""The `avakit` command line: parse options, call the library, print with Rich. No logic here.

Library modules are imported inside each command so `avakit --help` stays fast (no torch).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from avakit.cli.audit import audit
from avakit.cli.cells import run_task
from avakit.cli.console import (
    ErrorGroup,
    RichDemoReporter,
    RichProgress,
    console,
    cpu_count,
    err_console,
    log_to_console,
    print_evaluation,
    print_export,
    print_features,
    print_predictions,
    print_results,
    print_shard_summary,
    print_unscored,
    progress_bar,
    say,
)
from avakit.cli.options import Checkpoint, Device, Format, Split, Tta, split_list
from avakit.cli.shard import shard
from avakit.cli.sweep import sweep
from avakit.config import (
    MAX_BATCH,
)
from avakit.errors import AvakitError
from avakit.scores import HELD_OUT_SPLITS

app = typer.Typer(
    cls=ErrorGroup,
    name="avakit",
    help="From the AVA aesthetics dataset to a trained, evaluated, deployable score model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


app.command()(shard)
app.command()(audit)
app.command()(sweep)


@app.command()
def inspect(
    shards: Annotated[Path, typer.Argument(help="Folder with manifest.json and the shards.")],
    decode: Annotated[bool, typer.Option(help="Decode every image and validate every label.")] = False,
) -> None:
    """Check shards against manifest.json (files, sha256, counts) and print label statistics.

    Exits 1 naming each mismatch.
    """
    from avakit.dataset.manifest import load_manifest, verify_shards

    n_shards = sum(len(s["shards"]) for s in load_manifest(shards)["splits"].values())
    with progress_bar("checking", n_shards, unit="shards") as advance:
        manifest, problems = verify_shards(shards, decode=decode, progress=advance)
    print_shard_summary(manifest, shards)
    if problems:
        for p in problems:
            err_console.print(f"[red]mismatch:[/red] {escape(p)}", highlight=False, soft_wrap=True)
        raise AvakitError(f"{shards}: {len(problems)} problem(s) found", exit_code=1)
    checked = "matches the manifest and decodes" if decode else "matches the manifest"
    console.print(f"[green]ok[/green]: every shard {checked}")


@app.command()
def train(
    config: Annotated[Path | None, typer.Option(help="YAML config (configs/*.yaml).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a key: --set training.batch_size=32 (repeatable)."),
    ] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Parent folder of the run folder.")] = None,
    quick_experiment: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Use a fixed fraction of every split, e.g. 0.1 (--resume keeps the run's own).",
        ),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Continue an interrupted run folder, on the data it started with; 'auto': the newest "
            "unfinished run of --config's name under the output dir, or a new one (--config then "
            "only names the run and its output dir; the run keeps its own config.yaml and --set)."
        ),
    ] = None,
    sweep: Annotated[
        Path | None, typer.Option(help="A sweep file (avakit sweep): run --sweep-line of it.")
    ] = None,
    sweep_line: Annotated[int | None, typer.Option(min=1, help="Which run of --sweep (1-based).")] = None,
) -> None:
    """Train a backbone + MLP head on the shards; writes outputs/{name}-{timestamp}/.

    Every epoch: train, evaluate on val (SRCC, PLCC, accuracy beside its majority rate), keep
    best_model.pt (best val training.select_metric) and last.pt; at the end, evaluate the best
    model on test (with bootstrap 95% intervals of SRCC and PLCC). A pairwise run (task: pairwise)
    reports pair accuracy ± its standard error beside the human ceiling, log-loss, confident-pair
    accuracy, series top-1 and Kendall tau instead; a clip run (task: clip) verb, noun and action
    top-1 / top-5, on the unseen-participant and tail-class subsets too.
    Multi-GPU: torchrun --nproc_per_node N avakit train (or srun, one task per GPU).
    A NaN/inf loss, gradient norm or val metric stops the run (exit 1); Ctrl-C prints the
    command that resumes it; SIGTERM/SIGUSR1 (slurm preemption) stop it after the current step
    with last.pt at the start of that epoch, exit 75: a requeued job goes on with --resume auto.

    Example: avakit train --config configs/gpu.yaml --set training.batch_size=32
    """
    from avakit.training.autoresume import train_target
    from avakit.training.fit import fit
    from avakit.training.sweep import sweep_loader

    load = None if sweep is None and sweep_line is None else sweep_loader(sweep, sweep_line, resume)
    log_to_console()
    cfg, run, output_dir = train_target(config, set_ or [], output_dir, resume, load)
    run_dir = fit(cfg, output_dir, quick_experiment, run, RichProgress())
    print_results(run_dir)
    console.print(f"run folder: {run_dir}")


@app.command()
def features(
    config: Annotated[Path | None, typer.Option(help="Training config (backbone, shards).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key (repeatable).")] = None,
    splits: Annotated[
        str, typer.Option(callback=split_list, help="Comma-separated splits to extract.")
    ] = "train,val,test",
    out: Annotated[
        Path | None, typer.Option(help="Feature cache folder.", show_default="data.features, else features")
    ] = None,
    device: Annotated[Device, typer.Option(help="auto, cpu or cuda.")] = "auto",
    allow_missing: Annotated[
        bool, typer.Option(help="Cache what is there when shard files are missing (counted in meta.json).")
    ] = False,
) -> None:
    """Run the frozen backbone once over the shards and cache its pooled features per split.

    Then train only the head, thousands of samples/s on a CPU:
      avakit train --config CFG --set data.features=features/
    The layer (features.layer: final | layer3) and IQA features (features.iqa) come from the
    config; a pairwise config (task: pairwise) caches its features.sources for every photo of
    every series. Extraction resumes per split; a cache made with other settings is refused.
    """
    from avakit.config import load_config
    from avakit.training.features import extract_features

    cfg = load_config(config, set_ or ())
    if cfg.task == "pairwise":  # frozen sources' features of every photo of every series
        from avakit.training.pair_cache import extract_pair_features as extract_features
    meta = extract_features(cfg, splits, out, device, RichProgress(), allow_missing=allow_missing)
    print_features(meta)


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `avakit train`.")],
    split: Annotated[Split, typer.Option(help="test, val or train.")] = "test",
    shards: Annotated[
        Path | None, typer.Option(help="Shards folder.", show_default="the run's data.shards")
    ] = None,
    checkpoint: Annotated[Checkpoint, typer.Option(help="best (best_model.pt) or last (last.pt).")] = "best",
    tta: Annotated[Tta, typer.Option(help="Test-time augmentation: none, flip or five-crop.")] = "none",
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1, max=MAX_BATCH, help="Images per forward pass.", show_default="the run's batch size"
        ),
    ] = None,
    device: Annotated[Device, typer.Option(help="auto, cpu or cuda.")] = "auto",
    allow_missing: Annotated[
        bool,
        typer.Option(help="Evaluate what is there when shard files are missing (counted in the output)."),
    ] = False,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Binary accuracy's cut on the labels' scale (a photo is good strictly beyond it).",
            show_default="the run's eval.threshold, else the data's (AVA 5; others none)",
        ),
    ] = None,
    changelog: Annotated[
        Path | None, typer.Option(help="Append a row to this Markdown changelog (created if missing).")
    ] = None,
    phone_latency: Annotated[
        bool, typer.Option("--phone-latency", help="Also time the INT8 ONNX model on 1 thread, batch 1.")
    ] = False,
) -> None:
    """Score a split with a run's checkpoint: SRCC and PLCC (with bootstrap 95% intervals), Acc
    beside its majority-class rate (where a threshold applies), EMD, MAE, RMSE and latency; for a
    pairwise run, pair accuracy ± SE beside the human ceiling, log-loss, confident-pair accuracy,
    series top-1 and Kendall tau (its parquet holds the pairs, _photos.parquet the photo scores).

    Writes RUN_DIR/eval/{split}_{checkpoint}_tta-{tta}.json and .parquet (one pair per split,
    checkpoint and TTA; train's results.json and predictions/ are never overwritten). Without
    --tta the numbers equal those `train` wrote to results.json for the same checkpoint and split.
    --phone-latency adds a phone proxy: the model as INT8 ONNX timed at batch 1 on one CPU thread
    over 20 photos of the split (phone_proxy_ms_per_photo in the json). --changelog FILE appends
    a row (date, run, dataset and config hashes, split, main metrics) to a Markdown table.
    """
    from avakit.cli.eval_extras import add_phone_proxy, append_changelog, check_changelog
    from avakit.training.evaluate import evaluate_run
    from avakit.training.rundir import eval_outputs

    check_changelog(changelog)
    log_to_console()
    report = evaluate_run(
        run_dir,
        split,
        shards,
        checkpoint,
        tta,
        batch_size,
        device,
        RichProgress(),
        allow_missing=allow_missing,
        threshold=threshold,
    )
    written = eval_outputs(run_dir, split, checkpoint, tta)
    if phone_latency:
        add_phone_proxy(report, run_dir, shards, written.json)
    print_evaluation(report, run_dir.name, written)
    if changelog is not None:
        say(append_changelog(report, run_dir, changelog))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `avakit train`.")],
    shards: Annotated[
        Path | None,
        typer.Option(help="Shards for labels and thumbnails.", show_default="the run's data.shards"),
    ] = None,
    tags: Annotated[Path | None, typer.Option(help="tags.txt, to name semantic tags.")] = None,
    challenges: Annotated[Path | None, typer.Option(help="challenges.txt, to name challenges.")] = None,
    open_: Annotated[bool, typer.Option("--open", help="Open report.html in the browser.")] = False,
) -> None:
    """Plots and one self-contained report.html from a run folder (nothing is retrained).

    Training curves, gradient-norm telemetry with warning signs, prediction analysis of
    best_model.pt (train's own val and test predictions) in the data's own units, SRCC over
    epochs, errors per semantic tag and challenge (AVA) or per group (a labels table's `group`),
    and galleries of the best and worst predicted images. Every panel names the checkpoint,
    epoch and TTA behind its numbers; `avakit evaluate` results are extra rows.
    """
    from avakit.report.build import build_report

    summary = build_report(run_dir, shards, tags, challenges)
    rows = [(s, summary["models"][s], summary[s]) for s in HELD_OUT_SPLITS if summary.get(s)]
    title = f"{run_dir.name}: best epoch {summary['best_epoch']}"
    _report_table(title, [*rows, *summary["evaluations"]], run_task(summary))
    for line in summary["warnings"]:
        console.print(f"[yellow]telemetry:[/yellow] {escape(line)}", highlight=False)
    for line in summary["notes"]:
        console.print(escape(f"note: {line}"), highlight=False)
    console.print(escape(f"report: {summary['report']}  ({len(summary['pngs'])} plots)"))
    if open_:
        import webbrowser

        webbrowser.open(Path(summary["report"]).resolve().as_uri())


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders (walked for images).")],
    run: Annotated[Path | None, typer.Option(help="Run folder: scores with its best_model.pt.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="A checkpoint file instead of --run.")] = None,
    onnx: Annotated[Path | None, typer.Option(help="An exported model.onnx (onnxruntime, no torch).")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="table, json or csv.")] = "table",
    output: Annotated[Path | None, typer.Option(help="Write json/csv here instead of stdout.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 16,
    device: Annotated[Device, typer.Option(help="auto, cpu or cuda (torch only).")] = "auto",
) -> None:
    """Score photos in the units of the model's data: its mean score (e.g. 1-10) or MOS; a
    pairwise run gives a relative score (compare photos of one scene: P(a better than b) =
    sigmoid(score a - score b)).

    Distribution models also give the std and the distribution over the scale's K points.
    Uses the eval transform and labels stored with the model. Folders are walked for jpg, jpeg,
    png, webp, bmp, tif (any case). A file that cannot be read is reported and the others are
    still scored; the exit code is then 1. json: a list of rows; rows and csv columns: path,
    mean_score, std, dist_1..dist_K (votes only), error, and score: what mean_score is, e.g.
    "mean score (1-10)".

    Example: avakit predict photo.jpg holidays/ --run outputs/ava-resnet50-20261123-101500
    """
    from avakit.inference.predict import format_predictions, plan_prediction, write_predictions

    job = plan_prediction(inputs, run, checkpoint, onnx, fmt, output, device)  # checks --output first
    bar = progress_bar("scoring", len(job.paths)) if len(job.paths) > 32 else contextlib.nullcontext()
    with bar as advance:
        predictions = job.run(batch_size, advance)
    if fmt == "table":
        print_predictions(predictions, job.scale)
    elif output is not None:
        write_predictions(predictions, fmt, output, job.scale)
        console.print(escape(f"wrote {len(predictions)} rows to {output}"), highlight=False)
    else:
        sys.stdout.write(format_predictions(predictions, fmt, job.scale))
    if print_unscored(predictions):
        raise typer.Exit(1)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `avakit train`.")],
    output: Annotated[Path, typer.Option(help="The ONNX file to write (a name ending in .onnx).")] = Path(
        "model.onnx"
    ),
    int8: Annotated[bool, typer.Option("--int8", help="Also write <stem>.int8.onnx (calibrated).")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset version, 13 or higher.")] = 17,
    shards: Annotated[
        Path | None, typer.Option(help="Shards for the checks.", show_default="the run's data.shards")
    ] = None,
    parity_images: Annotated[int, typer.Option(min=1, help="Val images for the parity check.")] = 256,
    checkpoint: Annotated[Checkpoint, typer.Option(help="best or last.")] = "best",
) -> None:
    """Export backbone + head (+ softmax / clamp) to ONNX with a dynamic batch, then check parity.

    Input: NCHW float32, normalised as the run's eval transform (stored in the file's metadata
    with the labels' scale, the avakit version, output mode, training date, manifest sha256 and
    val/test SRCC). Output: probabilities over the scale's K points, or the score in the data's
    units clamped to its range. After export, torch and ONNX FP32 must agree to 1e-4 in score
    (per 1-10 of range) and INT8 must keep SRCC >= 0.99 against FP32 over the val images, or
    the command fails (exit 1). A pairwise run's INT8 file is judged on ranking: on the val
    groups' photos its pair accuracy must be within 1 point of FP32's and the Kendall tau between
    their scores at least 0.95.
    Then: avakit predict photo.jpg --onnx model.onnx   (onnxruntime only)
    """
    from avakit.cli.eval_extras import ranking_table
    from avakit.inference.export import export_onnx

    log_to_console()
    result = export_onnx(run_dir, output, int8, opset, shards, parity_images, checkpoint)
    print_export(result)
    if (ranking := ranking_table(result)) is not None:
        console.print(ranking)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo dataset and outputs.")] = Path("demo"),
    config: Annotated[Path, typer.Option(help="Training config of the demo.")] = Path("configs/demo.yaml"),
    n: Annotated[int, typer.Option(min=50, max=100_000, help="Number of synthetic images.")] = 600,
    seed: Annotated[int, typer.Option(min=0, max=2**64 - 1, help="Seed of the synthetic dataset.")] = 0,
) -> None:
    """The whole loop on a synthetic AVA-like dataset: generate, shard, train, evaluate, report, predict.

    Everything goes under --out: ava/ (AVA.txt, tags, challenges, images), shards/, outputs/.
    """
    from avakit.demo import run_demo

    result = run_demo(out, config, n, seed, RichDemoReporter(), workers=cpu_count())
    done = f"run folder: {result.run_dir}\nreport: {result.report}"
    console.print("[bold]demo done[/bold]. " + escape(done))


def main() -> None:
    """Console-script entry point."""
    app()


def _report_table(title: str, rows: list[tuple[str, str, dict]], task: str = "score") -> None:
    """`avakit report`'s summary: one row per split and model, the metrics the data (the task) has."""
    from avakit.cli.cells import report_columns, task_caption, task_rows

    table = Table(title=escape(title), caption=task_caption(task), caption_justify="left")
    table.add_column("split")
    table.add_column("model")
    columns = report_columns(rows, task)
    for header, _ in columns:
        table.add_column(header, justify="right")
    for split, model, m in task_rows(rows, task):
        table.add_row(escape(split), escape(model), *(cell(m) for _, cell in columns))
    console.print(table)
