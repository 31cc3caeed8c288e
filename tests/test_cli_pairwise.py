"""The console tables of a pairwise run (issue 11): train's final table, evaluate's, report's and
predict's, built from hand-made results/eval dicts (crafted values show "-", never crash), and
one short end-to-end run through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from avakit.cli import cells
from avakit.cli import console as console_module
from avakit.scores import AVA, PAIRS

runner = CliRunner()

METRICS = {
    "n": 195,
    "n_pairs": 483,
    "n_decided": 471,
    "pair_accuracy": 0.7123,
    "pair_accuracy_se": 0.0208,
    "log_loss": 0.60123,
    "confident_accuracy": 0.81,
    "n_confident": 129,
    "human_ceiling": 0.75,
    "n_series": 195,
    "series_top1": 0.52,
    "kendall_tau": 0.388,
    "loss": 0.6,
}


def _results(run: Path, **changes: object) -> Path:
    """A pairwise run folder with a results.json (val and test metrics), `changes` applied."""
    run.mkdir(exist_ok=True)
    doc = {
        "best_epoch": 4,
        "epochs": 6,
        "task": "pairwise",
        "labels": PAIRS.as_dict(),
        "select_metric": "pair_accuracy",
        "threshold": None,
        "val": {**METRICS, "n_pairs": 51, "n_decided": 50, "n_series": 5},
        "test": dict(METRICS),
    }
    doc.update(changes)
    (run / "results.json").write_text(json.dumps(doc))
    return run


def _printed(fn: object, *args: object) -> str:
    with console_module.console.capture() as captured:
        fn(*args)  # type: ignore[operator]
    return captured.get()


def test_train_table_shows_pair_metrics_not_srcc(tmp_path: Path) -> None:
    out = _printed(console_module.print_results, _results(tmp_path / "run"))
    assert "best epoch 4 of 6 (by val pair_accuracy)" in out
    for text in ("pair acc ± SE", "0.712 ± 0.021", "(human 0.750)", "0.6012", "0.810", "(n=129)", "0.520"):
        assert text in out
    assert "0.388" in out and "483 pairs" in out and "(12 ties)" in out and "195 series" in out
    assert "51 pairs" in out and "(1 tie)" in out and "5 series" in out
    assert "SRCC" not in out and "MAE" not in out and "nan" not in out
    assert "…" not in out  # fits an 80-column terminal without cutting a cell
    assert "human: how often a random rater agrees with the majority" in " ".join(out.split())


@pytest.mark.parametrize(
    "changes",
    [
        {"task": None},  # labels alone say pairs
        {"labels": None},  # task alone says pairwise
        {"task": ["pairwise"], "labels": PAIRS.as_dict()},  # a task that is not a name: labels decide
        {"task": "what", "labels": PAIRS.as_dict()},
    ],
)
def test_the_task_comes_from_task_or_labels(tmp_path: Path, changes: dict) -> None:
    doc = json.loads((_results(tmp_path / "run", **changes) / "results.json").read_text())
    assert cells.run_task(doc) == "pairwise"
    assert "pair acc ± SE" in _printed(console_module.print_results, tmp_path / "run")


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"labels": AVA.as_dict()},
        {"task": "score", "labels": PAIRS.as_dict()},
        {"labels": {"kind": "pairs"}},  # not a valid scale: not trusted
        {"labels": "pairs"},
        [],
        None,
    ],
)
def test_score_documents_stay_score(doc: object) -> None:
    assert cells.run_task(doc) == "score"


def test_crafted_values_show_a_dash(tmp_path: Path) -> None:
    crafted = {
        "n": "x",
        "n_pairs": -3,
        "n_decided": True,
        "pair_accuracy": "0.9",
        "pair_accuracy_se": math.nan,
        "log_loss": 1e300,
        "confident_accuracy": 1.5,
        "n_confident": 2.5,
        "human_ceiling": [0.7],
        "n_series": None,
        "series_top1": True,
        "kendall_tau": -2.0,
    }
    run = _results(
        tmp_path / "run",
        best_epoch="[red]x[/red]",
        epochs={"a": 1},
        select_metric="[bold]pair[/bold]",
        val=crafted,
        test="not a split",
    )
    out = _printed(console_module.print_results, run)
    assert "best epoch - of - (by val [bold]pair[/bold])" in out  # markup shown as text
    row = next(line for line in out.splitlines() if line.startswith("│ val"))
    assert [c.strip() for c in row.strip("│").split("│")][1:] == ["-", "-", "-", "-", "-", "- pairs"]
    assert "1e+300" not in out and "nan" not in out and "True" not in out
    assert not any(line.startswith("│ test") for line in out.splitlines())  # not a dict: no row
    # the accuracy without its SE or ceiling
    assert cells.pair_accuracy_cell({"pair_accuracy": 0.5}) == "0.500 (human -)"
    assert cells.pair_accuracy_cell({"pair_accuracy": 0.5, "pair_accuracy_se": 0.1}, "\n") == (
        "0.500 ± 0.100\n(human -)"
    )
    assert cells.counts_cell({}) == "- pairs\n- series"
    assert cells.pairs_cell({"n_pairs": 10, "n_decided": 11}) == "10"  # inconsistent counts: no ties


def _eval_report(**metrics: object) -> dict:
    return {
        "split": "test",
        "checkpoint": "best_model.pt",
        "epoch": 4,
        "tta": "none",
        "labels": PAIRS.as_dict(),
        "threshold": None,
        "samples_expected": 195,
        "samples_seen": 195,
        "lost": {},
        "device": "cpu",
        "batch_size": 8,
        "metrics": {**METRICS, "latency_ms_per_image": 3.2, "model_img_per_s": 310.0, **metrics},
    }


def test_evaluate_table(tmp_path: Path) -> None:
    written = SimpleNamespace(json=tmp_path / "test.json", parquet=tmp_path / "test.parquet")
    out = _printed(console_module.print_evaluation, _eval_report(), "pw-1", written)
    text = " ".join(out.split())
    for row in (
        "pair accuracy ± SE (human ceiling) │ 0.712 ± 0.021 (human 0.750)",
        "log-loss │ 0.6012",
        "confident-pair accuracy (pairs) │ 0.810 (n=129)",
        "series top-1 (best photo scored highest) │ 0.520",
        "Kendall τ (mean over series) │ 0.388",
        "pairs │ 483 (12 ties)",
        "series │ 195 of 195",
        "latency (cpu, batch 8) │ 3.20 ms/image, 310 img/s",
    ):
        assert row in text, row
    assert "SRCC" not in out and "samples" not in out and "nan" not in out
    assert "test.parquet (pairs)" in text and "test_photos.parquet (photos)" in text
    crafted = _printed(
        console_module.print_evaluation, _eval_report(pair_accuracy=None, kendall_tau="x"), "pw", written
    )
    assert "pair accuracy ± SE (human ceiling) │ -" in " ".join(crafted.split())


def test_report_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from avakit.cli import app as app_module

    wide = Console(width=160)  # the model column makes the table wider than 80 columns
    monkeypatch.setattr(app_module, "console", wide)
    rows = [("val", "best_model.pt, epoch 4, no TTA", METRICS), ("test", "evaluate: best", dict(METRICS))]
    with wide.capture() as captured:
        app_module._report_table("pw: best epoch 4", rows, "pairwise")
    out = captured.get()
    assert "pair acc ± SE" in out and "0.712 ± 0.021" in out and "(human 0.750)" in out
    assert "SRCC" not in out and "MAE" not in out
    headers = [h for h, _ in cells.report_columns(rows, "pairwise")]
    assert headers == ["pair acc ± SE", "log-loss", "confident", "top-1", "τ", "n"]
    assert [h for h, _ in cells.report_columns([("val", "m", {"srcc": 0.5})])] == ["SRCC", "PLCC", "MAE", "n"]


def test_predict_table_of_a_pairwise_model() -> None:
    preds = [
        SimpleNamespace(path="a.jpg", mean_score=-1.25, std=None, error=None),
        SimpleNamespace(path="b[1].jpg", mean_score=None, std=None, error="cannot read"),
    ]
    out = _printed(console_module.print_predictions, preds, PAIRS)
    header = next(line for line in out.splitlines() if "image" in line)
    assert "relative score" in header and "std" not in header
    assert "-1.250" in out and "b[1].jpg" in out and "cannot read" in out
    assert "P(a better than b) = sigmoid(score a - score b)" in " ".join(out.split())
    score = _printed(console_module.print_predictions, preds, AVA)
    assert "mean score (1-10)" in score and "std" in score and "relative" not in score


def test_end_to_end_train_evaluate_report(tmp_path: Path) -> None:
    """A real pairwise run through the CLI: 30 series, one epoch; every table shows pair metrics."""
    from avakit.cli.app import app
    from avakit.dataset.synthetic_pairs import make_synthetic_phototriage

    make_synthetic_phototriage(tmp_path / "pt", n_series=30, seed=0)
    shards = tmp_path / "shards"
    result = runner.invoke(
        app, ["shard", "--phototriage", str(tmp_path / "pt"), "--out", str(shards), "--short-side", "40"]
    )
    assert result.exit_code == 0, result.output
    overrides = [
        *("model.backbone=resnet18", "model.pretrained=false", "model.mlp_hidden_dims=[16]"),
        *("model.output_mode=regression", "task=pairwise", "training.select_metric=pair_accuracy"),
        *("transform.resize_size=40", "transform.crop_size=32", "training.batch_size=8"),
        *("training.max_epochs=1", "training.amp=off", "data.num_workers=0", "device=cpu"),
        f"data.shards={shards}",
        f"output_dir={tmp_path / 'runs'}",
        "name=pw",
    ]
    result = runner.invoke(app, ["train", *(a for o in overrides for a in ("--set", o))])
    assert result.exit_code == 0, result.output
    assert "pair acc ± SE" in result.output and "(human " in result.output and "PLCC" not in result.output
    run = next((tmp_path / "runs").glob("pw-*"))
    result = runner.invoke(app, ["evaluate", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "pair accuracy ± SE (human ceiling)" in result.output and "PLCC" not in result.output
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "(human " in result.output and "SRCC" not in result.output and "nan" not in result.output
