"""The console tables of a clip run (issue 15): train's final table, evaluate's and report's,
built from hand-made results/eval dicts; subsets as rows of their own; crafted values show "-"."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from avakit.cli import cells
from avakit.cli import console as console_module
from avakit.scores import CLIPS

METRICS = {
    "n": 412,
    "verb_top1": 0.5123,
    "verb_top5": 0.8012,
    "noun_top1": 0.3456,
    "noun_top5": 0.6234,
    "action_top1": 0.2151,
    "action_top5": 0.4011,
    "loss": 3.2,
}
SUBSETS = {
    "unseen_n": 40,
    "unseen_verb_top1": 0.4,
    "unseen_verb_top5": 0.7,
    "unseen_noun_top1": 0.25,
    "unseen_noun_top5": 0.5,
    "unseen_action_top1": 0.125,
    "unseen_action_top5": 0.3,
    "tail_n": 33,
    "tail_verb_n": 20,
    "tail_noun_n": 18,
    "tail_verb_top1": 0.1,
    "tail_verb_top5": 0.35,
    "tail_noun_top1": 0.05,
    "tail_noun_top5": 0.2,
    "tail_action_top1": 0.0,
    "tail_action_top5": 0.0303,
}


def _results(run: Path, **changes: object) -> Path:
    run.mkdir(exist_ok=True)
    doc = {
        "best_epoch": 7,
        "epochs": 10,
        "task": "clip",
        "labels": CLIPS.as_dict(),
        "select_metric": "action_top1",
        "val": {**METRICS, **SUBSETS},
        "test": dict(METRICS),
        "classes": {"verb": ["take", "put"], "noun": ["tap", "pan"]},
    }
    doc.update(changes)
    (run / "results.json").write_text(json.dumps(doc))
    return run


def _printed(fn: object, *args: object) -> str:
    with console_module.console.capture() as captured:
        fn(*args)  # type: ignore[operator]
    return captured.get()


def test_train_table_shows_verb_noun_action(tmp_path: Path) -> None:
    out = _printed(console_module.print_results, _results(tmp_path / "run"))
    text = " ".join(out.split())
    assert "best epoch 7 of 10 (by val action_top1)" in text
    assert "val │ 0.512 / 0.801 │ 0.346 / 0.623 │ 0.215 / 0.401 │ 412" in text
    assert "val · unseen │ 0.400 / 0.700 │ 0.250 / 0.500 │ 0.125 / 0.300 │ 40" in text
    assert "val · tail │ 0.100 / 0.350 │ 0.050 / 0.200 │ 0.000 / 0.030 │ 33" in text
    assert "test · unseen" not in text  # the test split has no subsets
    assert "SRCC" not in out and "pair acc" not in out and "nan" not in out
    assert "…" not in out  # fits an 80-column terminal
    assert "an action is right when verb and noun both are" in text


@pytest.mark.parametrize(
    "doc",
    [
        {"task": "clip"},
        {"labels": CLIPS.as_dict()},
        {"task": "nope", "labels": CLIPS.as_dict()},
    ],
)
def test_the_task_comes_from_task_or_labels(doc: dict) -> None:
    assert cells.run_task(doc) == "clip"


def test_crafted_values_show_a_dash(tmp_path: Path) -> None:
    crafted = {"n": -1, "verb_top1": 1.5, "verb_top5": "x", "noun_top1": float("nan"), "action_top1": True}
    crafted |= {"tail_n": "many", "tail_verb_top1": 2}
    out = _printed(console_module.print_results, _results(tmp_path / "run", val=crafted, test=None))
    text = " ".join(out.split())
    assert "val │ - │ - │ - │ -" in text
    assert "val · tail │ - │ - │ - │ -" in text
    assert "test" not in text.split("by val")[1]
    assert cells.clip_top_cell({"verb_top1": 0.5}, "verb") == "0.500 / -"
    assert cells.task_rows([("val", "m", {"n": 3})], "score") == [("val", "m", {"n": 3})]


def test_evaluate_table(tmp_path: Path) -> None:
    report = {
        "split": "val",
        "checkpoint": "best_model.pt",
        "epoch": 7,
        "tta": "none",
        "task": "clip",
        "labels": CLIPS.as_dict(),
        "threshold": None,
        "samples_expected": 412,
        "samples_seen": 412,
        "lost": {},
        "device": "cpu",
        "batch_size": 8,
        "metrics": {**METRICS, **SUBSETS, "latency_ms_per_image": 9.5, "model_img_per_s": 105.0},
    }
    written = SimpleNamespace(json=tmp_path / "val.json", parquet=tmp_path / "val.parquet")
    out = _printed(console_module.print_evaluation, report, "clip-1", written)
    text = " ".join(out.split())
    for row in (
        "verb top-1 / top-5 │ 0.512 / 0.801",
        "noun top-1 / top-5 │ 0.346 / 0.623",
        "action top-1 / top-5 │ 0.215 / 0.401",
        "unseen participants: action top-1 / top-5 │ 0.125 / 0.300",
        "unseen participants: segments │ 40",
        "tail classes: verb top-1 / top-5 │ 0.100 / 0.350",
        "tail classes: segments │ 33",
        "segments │ 412 of 412",
    ):
        assert row in text, row
    assert "SRCC" not in out and "samples" not in out and "series" not in out


def test_report_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from avakit.cli import app as app_module

    wide = Console(width=160)
    monkeypatch.setattr(app_module, "console", wide)
    rows = [
        ("val", "best_model.pt, epoch 7, no TTA", {**METRICS, **SUBSETS}),
        ("test", "evaluate: last.pt", dict(METRICS)),
    ]
    with wide.capture() as captured:
        app_module._report_table("clip: best epoch 7", rows, "clip")
    text = " ".join(captured.get().split())
    assert "val · tail │ best_model.pt, epoch 7, no TTA │ 0.100 / 0.350" in text
    assert "test │ evaluate: last.pt │ 0.512 / 0.801 │ 0.346 / 0.623 │ 0.215 / 0.401 │ 412" in text
    assert "SRCC" not in text and "pair acc" not in text
    headers = [h for h, _ in cells.report_columns(rows, "clip")]
    assert headers == ["verb top-1/5", "noun top-1/5", "action top-1/5", "segments"]


def test_an_empty_subset_is_no_row() -> None:
    # a test split carved from train by participant has no unseen-participant segment: no row for it
    m = {**METRICS, "unseen_n": 0, "tail_n": 7, "tail_verb_top1": 1.0}
    rows = cells.task_rows([("test", "m", m)], "clip")
    assert [r[0] for r in rows] == ["test", "test · tail"]
    assert not any("unseen" in name for name, _ in cells.clip_rows(m))


def test_small_val_warning_speaks_of_segments(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from avakit.training.selection import warn_small_val

    log = logging.getLogger("avakit.test.smallval.clip")
    with caplog.at_level(logging.WARNING, logger="avakit.test.smallval.clip"):
        warn_small_val(log, 48, "action_top1", "clip")
        warn_small_val(log, 9668, "action_top1", "clip")  # EPIC-KITCHENS-100's validation split: fine
    assert len(caplog.records) == 1 and "48 segments" in caplog.text and "SRCC" not in caplog.text
