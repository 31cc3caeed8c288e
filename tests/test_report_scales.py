"""`avakit report` on data that is not AVA: a 1-7 vote table and a 0-100 MOS (lower is better)
with groups. Axes, bins, thresholds and texts follow the run's scale; groups, file names and
bootstrap intervals show up; a threshold set in the run's config brings the 2x2 confusion back."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.config import Config
from avakit.dataset.synthetic import SyntheticTable, make_synthetic_table
from avakit.errors import AvakitError
from avakit.report import prediction_plots
from avakit.report.build import build_report
from avakit.report.scale import RunScale
from avakit.scores import AVA, Scale

runner = CliRunner()
FILE_NAME = re.compile(r"photo\.\d{4}\.(?:jpg|JPG|png|bmp)")
INTERVAL = re.compile(r"<td>\[(-?\d\.\d{3}), (-?\d\.\d{3})\]</td>")


def _train(
    root: Path, table: SyntheticTable, tiny_cfg: Callable[..., Config], extra: list[str], *sets: str
) -> Path:
    """Shard `table` with the CLI (half of the rows held out) and train a tiny run on it."""
    from avakit.training.fit import fit

    args = [
        "shard",
        "--labels",
        str(table.labels),
        "--images",
        str(table.images),
        "--out",
        str(root / "shards"),
    ]
    opts = ["--short-side", "48", "--workers", "1", "--val-ratio", "0.25", "--test-ratio", "0.25"]
    result = runner.invoke(app, [*args, *opts, *extra])
    assert result.exit_code == 0, result.output
    return fit(tiny_cfg(root / "shards", f"name={root.name}", *sets), output_dir=root / "runs")


@pytest.fixture(scope="module")
def v7_run(tmp_path_factory: pytest.TempPathFactory, tiny_cfg: Callable[..., Config]) -> Path:
    """A finished tiny distribution-mode run on 100 images rated with 1-7 votes (no groups)."""
    root = tmp_path_factory.mktemp("v7")
    table = make_synthetic_table(root / "data", n=100, seed=3, kind="votes", k=7, long_side=(64, 96))
    return _train(root, table, tiny_cfg, [])


@pytest.fixture(scope="module")
def mos_run(tmp_path_factory: pytest.TempPathFactory, tiny_cfg: Callable[..., Config]) -> Path:
    """A finished tiny regression run on 100 images with a 0-100 MOS, lower is better, 10 groups."""
    root = tmp_path_factory.mktemp("mos")
    table = make_synthetic_table(
        root / "data", n=100, seed=4, kind="mos", scale=(0, 100), lower_is_better=True, groups=10,
        long_side=(64, 96),
    )  # fmt: skip
    extra = ["--scale", "0:100", "--lower-is-better"]
    sets = ("model.output_mode=regression", "training.loss_type=mse")
    return _train(root, table, tiny_cfg, extra, *sets)


@pytest.fixture
def axes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """(title, x label, y label) of every prediction plot the report draws."""
    seen: list[tuple[str, str, str]] = []
    style = prediction_plots._style

    def record(ax, title: str, xlabel: str, ylabel: str, outside: bool = False) -> None:  # noqa: ANN001
        seen.append((title, xlabel, ylabel))
        style(ax, title, xlabel, ylabel, outside)

    monkeypatch.setattr(prediction_plots, "_style", record)
    return seen


def _copy(run: Path, dest: Path, threshold: float | None = None) -> Path:
    """A copy of `run` (without the checkpoints), with eval.threshold set in its config.yaml."""
    out = dest / run.name
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("*.pt", "report"))
    if threshold is not None:
        cfg = yaml.safe_load((out / "config.yaml").read_text())
        cfg["eval"]["threshold"] = threshold
        (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    return out


def _check_intervals(text: str, summary: dict) -> None:
    """The summary table shows SRCC/PLCC 95 % intervals, and the summary returns them."""
    assert "SRCC 95% CI" in text and "PLCC 95% CI" in text
    cells = INTERVAL.findall(text)
    assert len(cells) >= 2 and all(float(lo) <= float(hi) for lo, hi in cells)
    for split in ("val", "test"):
        lo, hi = summary[split]["srcc_ci"]
        assert -1.0 <= lo <= hi <= 1.0 and len(summary[split]["plcc_ci"]) == 2


def test_votes_7_report_speaks_1_to_7(v7_run: Path, tmp_path: Path, axes: list) -> None:
    run = _copy(v7_run, tmp_path)
    summary = build_report(run)
    text = summary["report"].read_text(encoding="utf-8")
    assert summary["labels"] == Scale("votes", 1.0, 7.0, 7, True, None).as_dict()
    assert summary["threshold"] is None and "accuracy" not in summary["val"]
    assert "1-10" not in text and "above 5" not in text and "Acc" not in text
    names = {p.name for p in summary["pngs"]}
    assert "val_vote_histograms.png" in names and not any("confusion" in n for n in names)
    labels = [label for _, x, y in axes for label in (x, y)]
    assert "real mean score (1-7)" in labels and "predicted mean score (1-7)" in labels
    assert not any("1-10" in label for label in labels)
    assert "no groups" in text and "Per group" in text and "Per semantic tag" not in text
    assert FILE_NAME.search(text) and ">id " not in text  # galleries name the original files
    _check_intervals(text, summary)


def test_votes_7_with_a_threshold_draws_the_confusion(v7_run: Path, tmp_path: Path, axes: list) -> None:
    run = _copy(v7_run, tmp_path, threshold=4.0)
    summary = build_report(run, shards=v7_run.parent.parent / "shards")
    text = summary["report"].read_text(encoding="utf-8")
    assert summary["threshold"] == 4.0 and summary["val"]["threshold"] == 4.0
    assert {"accuracy", "majority_baseline"} <= set(summary["val"])
    assert "val_confusion.png" in {p.name for p in summary["pngs"]}
    assert "mean score above 4" in text and "majority baseline" in text and "above 5" not in text
    assert any(t.startswith("Distribution of mean scores") for t, _, _ in axes)


def test_mos_lower_is_better_report_with_groups(mos_run: Path, tmp_path: Path, axes: list) -> None:
    run = _copy(mos_run, tmp_path)
    result = runner.invoke(app, ["report", str(run)], terminal_width=250)
    assert result.exit_code == 0, result.output
    text = (run / "report" / "report.html").read_text(encoding="utf-8")
    assert "1-10" not in text and "above 5" not in text and "EMD" not in text
    assert "MOS (0-100, lower is better)" in text and "lower is better" in text
    labels = {label for _, x, y in axes for label in (x, y)}
    assert {"real MOS (0-100, lower is better)", "predicted MOS (0-100, lower is better)"} <= labels
    assert "residual = predicted - real (MOS points)" in labels
    pngs = {p.name for p in (run / "report").glob("*.png")}
    assert not any("confusion" in n or "vote_histograms" in n for n in pngs)
    assert "MOS labels (no vote distributions)" in text
    groups = text[text.index('id="groups"') : text.index('id="galleries"')]
    assert re.search(r'<td class="name">ref\d{3}</td>', groups), groups[:2000]
    assert "SRCC" in groups and "MAE" in groups
    assert FILE_NAME.search(text[text.index('id="galleries"') :])
    assert "SRCC 95% CI" in text and INTERVAL.search(text)


def test_mos_threshold_good_is_below_it(mos_run: Path, tmp_path: Path, axes: list) -> None:
    run = _copy(mos_run, tmp_path, threshold=50.0)
    summary = build_report(run, min_group=2)
    text = summary["report"].read_text(encoding="utf-8")
    assert "MOS below 50" in text and "above 50" not in text
    assert {"val_confusion.png", "test_confusion.png"} <= {p.name for p in summary["pngs"]}
    assert summary["test"]["threshold"] == 50.0 and 0.5 <= summary["test"]["majority_baseline"] <= 1.0
    assert any(x == "real MOS (0-100, lower is better), bin and number of images" for _, x, _ in axes)


def test_scale_from_checkpoint_when_results_has_none(mos_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(mos_run, run, ignore=shutil.ignore_patterns("report", "last.pt"))
    results = json.loads((run / "results.json").read_text())
    del results["labels"]
    (run / "results.json").write_text(json.dumps(results))
    summary = build_report(run, shards=tmp_path / "none")
    assert Scale.from_dict(summary["labels"], "labels") == Scale("mos", 0.0, 100.0, None, False, None)
    results["labels"] = {
        "kind": "mos",
        "k": 3,
        "scale": [0, 100],
        "higher_is_better": False,
        "threshold": None,
    }
    (run / "results.json").write_text(json.dumps(results))
    with pytest.raises(AvakitError, match=r"results\.json: labels\.k"):
        build_report(run)


def test_bins_follow_the_scale() -> None:
    gt = np.array([1.0, 1.99, 2.0, 5.5, 9.99, 10.0])
    idx, names = RunScale().bins(gt)
    assert idx.tolist() == np.clip(np.floor(gt).astype(int) - 1, 0, 8).tolist()  # AVA's bins as before
    assert names == [f"{k}-{k + 1}" for k in range(1, 10)]
    mos = RunScale(Scale("mos", 0.0, 100.0, None, False, None), None)
    idx, names = mos.bins(np.array([0.0, 9.9, 10.0, 100.0]))
    assert idx.tolist() == [0, 0, 1, 9] and names[0] == "0-10" and len(names) == 10 and mos.unit == 10
    v7 = RunScale(Scale("votes", 1.0, 7.0, 7, True, None), None)
    assert v7.bins(np.array([7.0]))[1] == ["1-2", "2-3", "3-4", "4-5", "5-6", "6-7"]
    assert RunScale(AVA, 5.0).cut()["rule"] == "above 5" and mos.axis == "MOS (0-100, lower is better)"
