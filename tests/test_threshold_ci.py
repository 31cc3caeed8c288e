"""eval.threshold and --threshold, accuracy beside its majority rate everywhere it is printed,
and bootstrap 95% intervals of SRCC/PLCC in results.json, eval json and the tables."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from avakit import metrics
from avakit.cli.app import app
from avakit.cli.cells import with_interval, with_majority
from avakit.config import Config
from avakit.dataset.synthetic import make_synthetic_table
from avakit.errors import AvakitError
from avakit.scores import AVA, Scale
from avakit.training.rundir import eval_outputs
from avakit.training.selection import eval_threshold, frame_intervals, metrics_line

runner = CliRunner()
VOTES7 = Scale(kind="votes", lo=1.0, hi=7.0, k=7, threshold=None)


def _reference_intervals(pred, gt, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """The bootstrap as first written: scipy's rankdata on every resampled row."""
    a, b = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    rng = np.random.default_rng(seed)
    tail = 100.0 * (1.0 - level) / 2.0
    out = {}
    for name, fn in (("srcc", lambda x: stats.rankdata(x, axis=1)), ("plcc", lambda x: x)):
        values = []
        for start in range(0, n_boot, 100):
            idx = rng.integers(0, a.size, size=(min(100, n_boot - start), a.size))
            values.append(metrics._row_pearson(fn(a[idx]), fn(b[idx])))
        v = np.concatenate(values)
        v = v[np.isfinite(v)]
        out[f"{name}_ci"] = [float(np.percentile(v, tail)), float(np.percentile(v, 100.0 - tail))]
    return out


@pytest.mark.parametrize("ties", [False, True])
def test_fast_intervals_equal_the_rankdata_bootstrap(ties: bool) -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=300)
    b = a + rng.normal(size=300)
    if ties:  # vote means on a coarse grid: many equal values on both sides
        a, b = np.round(a * 2) / 2, np.round(b)
    fast = metrics.confidence_intervals(a, b, n_boot=250, seed=7)
    assert fast == _reference_intervals(a, b, n_boot=250, seed=7)
    lo, hi = fast["srcc_ci"]
    assert lo < metrics.srcc(a, b) < hi


def test_frame_intervals_do_not_depend_on_row_order() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"image_id": np.arange(50), "pred_mean": rng.normal(size=50)})
    df["gt_mean"] = df["pred_mean"] + rng.normal(size=50)
    shuffled = df.sample(frac=1.0, random_state=1)
    assert frame_intervals(df) == frame_intervals(shuffled)


def test_eval_threshold_defaults_and_range() -> None:
    assert eval_threshold(None, AVA) == 5.0
    assert eval_threshold(None, VOTES7) is None
    assert eval_threshold(4, VOTES7) == 4.0
    for bad in (0.5, 7.5, math.nan):
        with pytest.raises(AvakitError, match=r"^eval\.threshold: .*1-7"):
            eval_threshold(bad, VOTES7)
    with pytest.raises(AvakitError, match=r"^--threshold"):
        eval_threshold(11, AVA, "--threshold")


def test_accuracy_is_printed_beside_its_majority_rate_or_not_at_all() -> None:
    with_acc = {"srcc": 0.5, "plcc": 0.4, "accuracy": 0.7674, "majority_baseline": 0.7666}
    assert "Acc 0.767 (majority 0.767)" in metrics_line(with_acc)
    line = metrics_line({"srcc": 0.5, "plcc": 0.4})
    assert "Acc" not in line and "nan" not in line
    assert with_majority(with_acc) == "0.767 (maj 0.767)"
    assert with_interval({"srcc": 0.7123, "srcc_ci": [0.681, 0.744]}, "srcc") == "0.7123 [0.68, 0.74]"
    assert with_interval({"srcc": 0.7123}, "srcc") == "0.7123"


@pytest.fixture(scope="module")
def votes_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of 60 synthetic photos with 7-point votes (no default threshold)."""
    root = tmp_path_factory.mktemp("votes7")
    table = make_synthetic_table(root / "v7", n=60, seed=4, kind="votes", k=7, long_side=(64, 96))
    out = root / "shards"
    argv = ["shard", "--labels", str(table.labels), "--images", str(table.images), "--out", str(out)]
    result = runner.invoke(app, [*argv, "--short-side", "40", "--workers", "1"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def run_at_4(votes_shards: Path, tiny_cfg: Callable[..., Config], tmp_path_factory) -> Path:
    """A 2-epoch run on the 7-point votes with eval.threshold 4."""
    from avakit.training.fit import fit

    out = tmp_path_factory.mktemp("runs")
    return fit(tiny_cfg(votes_shards, "eval.threshold=4", "name=v7"), output_dir=out)


def test_train_uses_eval_threshold_and_records_baselines_and_intervals(run_at_4: Path) -> None:
    results = json.loads((run_at_4 / "results.json").read_text())
    assert results["threshold"] == 4.0 and results["select_metric"] == "srcc"
    for split in ("val", "test"):
        m = results[split]
        assert m["threshold"] == 4.0 and 0.5 <= m["majority_baseline"] <= 1.0
        for key in ("srcc", "plcc"):
            lo, hi = m[f"{key}_ci"]
            assert -1.0 <= lo <= hi <= 1.0
    history = json.loads((run_at_4 / "training_history.json").read_text())
    assert all("val_majority_baseline" in h and "val_accuracy" in h for h in history)
    log = (run_at_4 / "training.log").read_text()
    assert log.count("(majority ") == len(history) + 1  # every epoch and the final test line
    assert "Acc nan" not in log
    assert log.count("val split has") == 1 and "avakit shard --val-ratio" in log


def test_evaluate_threshold_option_intervals_and_table(run_at_4: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(run_at_4), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(eval_outputs(run_at_4, "test", "best", "none").json.read_text())
    trained = json.loads((run_at_4 / "results.json").read_text())["test"]
    assert report["threshold"] == 4.0  # the run's eval.threshold
    for key in ("accuracy", "majority_baseline", "srcc_ci", "plcc_ci"):
        assert report["metrics"][key] == pytest.approx(trained[key], abs=1e-6), key
    assert "(maj " in result.output and "95% CI" in result.output

    result = runner.invoke(app, ["evaluate", str(run_at_4), "--device", "cpu", "--threshold", "3"])
    assert result.exit_code == 0, result.output
    report = json.loads(eval_outputs(run_at_4, "test", "best", "none").json.read_text())
    assert report["threshold"] == 3.0 and report["metrics"]["threshold"] == 3.0
    assert "Acc at 3" in result.output

    result = runner.invoke(app, ["evaluate", str(run_at_4), "--device", "cpu", "--threshold", "9"])
    assert result.exit_code == 2 and "--threshold" in result.output and "1-7" in result.output


def test_no_threshold_no_accuracy(
    votes_shards: Path, tiny_cfg: Callable[..., Config], tmp_path: Path
) -> None:
    from avakit.cli.console import print_results
    from avakit.training.fit import fit

    run = fit(tiny_cfg(votes_shards, "training.max_epochs=1"), output_dir=tmp_path)
    results = json.loads((run / "results.json").read_text())
    assert results["threshold"] is None
    assert "accuracy" not in results["test"] and "majority_baseline" not in results["test"]
    log = (run / "training.log").read_text()
    assert "Acc" not in log and "majority" not in log
    from avakit.cli import console as console_module

    with console_module.console.capture() as captured:
        print_results(run)
    assert "Acc" not in captured.get() and "SRCC" in captured.get()


def test_a_threshold_outside_the_scale_stops_before_the_run_folder(
    votes_shards: Path, tiny_cfg: Callable[..., Config], tmp_path: Path
) -> None:
    from avakit.training.fit import fit

    with pytest.raises(AvakitError, match=r"^eval\.threshold: 8\.0 lies outside .*1-7"):
        fit(tiny_cfg(votes_shards, "eval.threshold=8"), output_dir=tmp_path)
    assert not list(tmp_path.iterdir())
