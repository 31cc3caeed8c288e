"""`avakit report` on a clip run folder built by hand (results.json, history, segment
predictions written with clip_frame): every section and PNG, subsets, class names, crafted and
missing values as "-", "n/a", a note or one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.clip_metrics import clip_frame, clip_metrics
from avakit.errors import AvakitError
from avakit.report.build import build_report
from avakit.report.clip import per_class_table
from avakit.report.pairwise_run import run_task
from avakit.scores import CLIPS, PAIRS

V, NN, SEGMENTS = 12, 25, 120
VERBS = [f"verb{i}" for i in range(V)]
NOUNS = [f"noun{i}" for i in range(NN)]
runner = CliRunner()


def _split(seed: int, subsets: bool = True) -> tuple[pd.DataFrame, dict]:
    """A predictions table of SEGMENTS segments (skewed classes, a model right ~60 % of the
    time) and the clip_metrics computed from the probabilities."""
    rng = np.random.default_rng(seed)
    verb_true = np.minimum(rng.geometric(0.25, SEGMENTS) - 1, V - 1)
    noun_true = np.minimum(rng.geometric(0.15, SEGMENTS) - 1, NN - 1)
    verb, noun = rng.dirichlet(np.ones(V), SEGMENTS), rng.dirichlet(np.ones(NN), SEGMENTS)
    right = rng.random(SEGMENTS) < 0.6
    verb[right, verb_true[right]] += 2
    noun[right, noun_true[right]] += 2
    verb, noun = verb / verb.sum(1, keepdims=True), noun / noun.sum(1, keepdims=True)
    meta: dict = {"participant": [f"P{i % 4:02d}" for i in range(SEGMENTS)]}
    meta["video"] = [f"{p}_01" for p in meta["participant"]]
    if subsets:
        meta |= {
            "unseen": [p == "P03" for p in meta["participant"]],
            "tail_verb": list(verb_true >= 6),
            "tail_noun": list(noun_true >= 10),
        }
    keys = [f"seg{i:04d}" for i in range(SEGMENTS)]
    df = clip_frame(keys, list(range(SEGMENTS)), meta, verb, noun, verb_true, noun_true)
    names = ("unseen", "tail_verb", "tail_noun")
    return df, clip_metrics(verb, noun, verb_true, noun_true, {k: meta[k] for k in names if k in meta})


def _history(epochs: int = 3) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_loss": 5.0 - e,
            "val_loss": 5.2 - 0.8 * e,
            "train_action_top1": 0.2 + 0.15 * e,
            "train_verb_top1": 0.4 + 0.1 * e,
            "train_noun_top1": 0.3 + 0.1 * e,
            **{f"val_{k}": 0.1 + 0.1 * e for k in ("verb_top1", "verb_top5", "noun_top1", "noun_top5")},
            "val_action_top1": 0.1 + 0.1 * e,
            "val_action_top5": 0.2 + 0.1 * e,
            "lr": [1e-4],
            "steps": 4,
        }
        for e in range(epochs)
    ]


def make_run(tmp_path: Path, *, subsets: bool = True, classes: bool = True) -> Path:
    """A finished clip run folder: results.json, history, val (best epoch) and test predictions."""
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    results: dict = {"best_epoch": 2, "task": "clip", "labels": CLIPS.as_dict(), "finished_at": "now"}
    results["select_metric"] = "action_top1"
    if classes:
        results["classes"] = {"verb": VERBS, "noun": NOUNS}
    for seed, split, name in ((1, "val", "val_epoch_002"), (2, "test", "test")):
        df, metrics = _split(seed, subsets)
        df.to_parquet(run / "predictions" / f"{name}.parquet")
        results[split] = metrics | {"loss": 3.1}
    (run / "results.json").write_text(json.dumps(results))
    (run / "training_history.json").write_text(json.dumps(_history()))
    return run


def test_clip_report_has_every_section(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    summary = build_report(run)
    assert summary["task"] == "clip" and summary["labels"] == CLIPS.as_dict()
    assert summary["best_epoch"] == 2 and summary["train_val_gap"] == pytest.approx(0.5 - 0.3)
    page = Path(summary["report"]).read_text()
    for text in (
        "Summary",
        "Training curves",
        "Telemetry: gradient norms",
        "Per-class accuracy (most frequent verbs and nouns)",
        "Confusion of the most frequent verbs",
        "action top-1",
        "noun top-5",
        "val · unseen participants",
        "test · tail classes",
        "Train-val gap of action top-1 at the best epoch: +0.2000 (train above val)",
        "verb0",  # classes named from results.json
    ):
        assert text in page, text
    names = {p.name for p in summary["pngs"]}
    for split in ("val", "test"):
        for what in ("verb_per_class", "noun_per_class", "verb_confusion"):
            assert f"{split}_{what}.png" in names
    assert "training_curves.png" in names
    assert all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in summary["pngs"])
    results = json.loads((run / "results.json").read_text())
    for split in ("val", "test"):  # recomputed from the table: the same as train's numbers
        expected = {k: v for k, v in results[split].items() if k != "loss"}
        assert summary[split] == pytest.approx(expected)
        assert f"{summary[split]['action_top1']:.4f}" in page
    assert any("gradient_norms.csv" in n for n in summary["notes"])  # no telemetry in this folder
    json.dumps(summary["val"])


def test_per_class_table_is_by_support() -> None:
    df = pd.DataFrame({"verb_true": [3, 3, 3, 1, 1, 0], "verb_pred": [3, 3, 1, 1, 0, 0]})
    t = per_class_table(df, "verb", ["a", "b", "c", "d"], top=2)
    assert t["class"].tolist() == ["3 d", "1 b"] and t["segments"].tolist() == [3, 2]
    assert t["accuracy"].tolist() == pytest.approx([2 / 3, 1 / 2])
    assert per_class_table(df, "verb", [], top=5)["class"].tolist() == ["3", "1", "0"]
    huge = pd.DataFrame({"verb_true": [10**15, 10**15, 2], "verb_pred": [10**15, 2, 10**14]})
    t = per_class_table(huge, "verb", ["a"])  # crafted indices: no array of 10**15 classes
    assert t["index"].tolist() == [10**15, 2] and t["accuracy"].tolist() == [0.5, 0.0]
    assert per_class_table(huge.iloc[:0], "verb", []).empty


def test_without_subsets_or_classes(tmp_path: Path) -> None:
    run = make_run(tmp_path, subsets=False, classes=False)
    summary = build_report(run)
    page = Path(summary["report"]).read_text()
    assert "unseen participants" not in page.split("<table>")[1].split("</table>")[0]
    assert not any(k.startswith(("unseen", "tail")) for k in summary["val"])
    assert any("classes.verb" in n for n in summary["notes"])
    assert "verb0" not in page


def test_a_run_known_only_by_its_config_is_clip(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    results = json.loads((run / "results.json").read_text())
    del results["labels"], results["task"], results["best_epoch"]
    (run / "results.json").write_text(json.dumps(results))
    assert run_task(run) == "score"
    (run / "config.yaml").write_text("task: clip\n")
    assert run_task(run) == "clip"
    summary = build_report(run)
    assert summary["task"] == "clip" and summary["best_epoch"] == 2  # highest val_action_top1


def test_crafted_values_degrade(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    results = json.loads((run / "results.json").read_text())
    results["classes"] = {"verb": [1, 2], "noun": "x"}
    (run / "results.json").write_text(json.dumps(results))
    history = _history()
    history[2]["train_action_top1"] = None  # no gap at the best epoch
    (run / "training_history.json").write_text(json.dumps(history))
    (run / "eval").mkdir()
    crafted = {"split": "test", "checkpoint": "last.pt", "tta": "none", "epoch": 2, "task": "clip"}
    crafted["metrics"] = {"verb_top1": 7.5, "noun_top1": "high", "action_top1": 0.25, "n": -3}
    (run / "eval" / "test_last_tta-none.json").write_text(json.dumps(crafted))
    summary = build_report(run)
    page = Path(summary["report"]).read_text()
    assert "n/a (the best epoch&#x27;s history record lacks train or val action top-1)" in page
    row = next(r for r in page.split("<tr>") if "evaluate: last.pt" in r)
    assert "<td>0.2500</td>" in row and "7.5" not in row and "high" not in row and "<td>-</td>" in row
    assert sum("classes." in n for n in summary["notes"]) == 2


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("verb_true", -1, "column 'verb_true', row 0: expected a whole number >= 0"),
        ("noun_pred", 1.5, "column 'noun_pred', row 0: expected a whole number >= 0"),
        ("verb_top5", [1, -2], "column 'verb_top5', row 0: expected a list of up to 5 class indices"),
        ("noun_top5", [], "column 'noun_top5', row 0: expected a list of up to 5 class indices"),
        ("action_correct", None, "column 'action_correct', row 0: expected true or false"),
    ],
)
def test_a_bad_predictions_file_is_one_line(tmp_path: Path, column: str, value: object, message: str) -> None:
    run = make_run(tmp_path)
    path = run / "predictions" / "test.parquet"
    df = pd.read_parquet(path)
    df[column] = [value, *df[column].iloc[1:]]
    df.to_parquet(path)
    with pytest.raises(AvakitError, match=message):
        build_report(run)
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_missing_columns_wrong_labels_and_bad_history(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    path = run / "predictions" / "test.parquet"
    pd.read_parquet(path).drop(columns=["noun_top5"]).to_parquet(path)
    with pytest.raises(AvakitError, match="missing column"):
        build_report(run)
    run2 = make_run(tmp_path / "b")
    history = _history()
    history[1]["val_action_top1"] = "good"
    (run2 / "training_history.json").write_text(json.dumps(history))
    with pytest.raises(AvakitError, match="record 1, key 'val_action_top1'"):
        build_report(run2)
    results = json.loads((run2 / "results.json").read_text())
    results["labels"] = PAIRS.as_dict()
    results["task"] = "clip"
    (run2 / "training_history.json").write_text(json.dumps(_history()))
    (run2 / "results.json").write_text(json.dumps(results))
    assert run_task(run2) == "pairwise"  # labels decide the report


def test_cli_report_prints_the_clip_table(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    result = runner.invoke(app, ["report", str(run)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "action" in out and "SRCC" not in out and "pair acc" not in out
    assert "report.html" in out.replace("\n", "")
