"""training.select_metric: which val metric picks best_model.pt, early stopping and the plateau
LR, in its direction; resume of a last.pt written before it (state.best_srcc) still works."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from avakit.config import Config, load_config
from avakit.dataset.synthetic import make_synthetic_table
from avakit.errors import AvakitError
from avakit.scores import AVA, Scale
from avakit.training import selection
from avakit.training.checkpoint import run_config
from avakit.training.engine import WarmupSchedule
from avakit.training.fit import fit
from avakit.training.resume import check_resume_state

MOS = Scale(kind="mos", lo=0.0, hi=100.0, k=None, higher_is_better=False, threshold=None)


def test_directions() -> None:
    assert selection.worst("srcc") == -math.inf and selection.worst("loss") == math.inf
    assert selection.improves("srcc", 0.3, 0.2) and not selection.improves("srcc", 0.2, 0.3)
    assert selection.improves("loss", 0.2, 0.3) and not selection.improves("emd", 0.3, 0.2)
    assert selection.improves("emd", 0.1, math.inf) and not selection.improves("loss", math.nan, math.inf)
    assert not selection.improves("plcc", math.nan, -math.inf)


def test_plateau_scheduler_follows_a_lower_is_better_metric() -> None:
    schedule = WarmupSchedule("plateau", 0, 10, 1)
    schedule.epoch_end(selection.plateau_value("loss", 0.5))
    schedule.epoch_end(selection.plateau_value("loss", 0.4))  # better: no cut
    assert schedule.plateau_factor == 1.0
    schedule.epoch_end(selection.plateau_value("loss", 0.45))  # worse: cut after patience 1
    assert schedule.plateau_factor == pytest.approx(0.1)


def test_select_metric_config_and_emd_rule(tiny_config: Callable[..., Config]) -> None:
    assert tiny_config().training.select_metric == "srcc"
    with pytest.raises(AvakitError, match="training.select_metric"):
        tiny_config("training.select_metric=accuracy")
    selection.check_select_metric(tiny_config("training.select_metric=emd"), AVA)
    regression = tiny_config(
        "training.select_metric=emd", "model.output_mode=regression", "training.loss_type=mse"
    )
    with pytest.raises(AvakitError, match=r"^training\.select_metric: 'emd' needs a distribution model"):
        selection.check_select_metric(regression, AVA)
    mos = tiny_config("training.select_metric=emd", "model.output_mode=regression", "training.loss_type=mse")
    with pytest.raises(AvakitError, match="MOS"):
        selection.check_select_metric(mos, MOS)


def test_every_shipped_config_names_select_metric() -> None:
    for path in sorted(Path(__file__).parent.parent.glob("configs/*.yaml")):
        assert re.search(r"^  select_metric: \w+ +# ", path.read_text(), re.M), path
        load_config(path)


@pytest.fixture(scope="module")
def mos_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of 60 synthetic photos with a MOS on 0..100, lower is better."""
    from typer.testing import CliRunner

    from avakit.cli.app import app

    root = tmp_path_factory.mktemp("mos")
    table = make_synthetic_table(
        root / "t", n=60, seed=5, kind="mos", scale=(0, 100), lower_is_better=True, long_side=(64, 96)
    )
    out = root / "shards"
    argv = ["shard", "--labels", str(table.labels), "--images", str(table.images), "--out", str(out)]
    extra = ["--short-side", "40", "--workers", "1", "--scale", "0:100", "--lower-is-better"]
    result = CliRunner().invoke(app, [*argv, *extra])
    assert result.exit_code == 0, result.output
    return out


REGRESSION = ("model.output_mode=regression", "training.loss_type=mse")


def test_emd_on_mos_labels_is_refused_at_train_start(
    mos_shards: Path, tiny_cfg: Callable[..., Config], tmp_path: Path
) -> None:
    cfg = tiny_cfg(mos_shards, *REGRESSION, "training.select_metric=emd")
    with pytest.raises(AvakitError, match=r"^training\.select_metric: 'emd'"):
        fit(cfg, output_dir=tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def loss_run(mos_shards: Path, tiny_cfg: Callable[..., Config], tmp_path_factory) -> Path:
    """A 3-epoch run on MOS labels picked by val loss, stopped after 1 epoch and resumed."""
    cfg = tiny_cfg(mos_shards, *REGRESSION, "training.select_metric=loss", "training.max_epochs=3")
    part = fit(cfg, output_dir=tmp_path_factory.mktemp("runs"), stop_after_epochs=1)
    state = torch.load(part / "last.pt", weights_only=True)["state"]
    assert state["select_metric"] == "loss" and state["best_value"] < math.inf
    return fit(run_config(part), resume=part)


def test_select_metric_loss_picks_the_lowest_val_loss(loss_run: Path) -> None:
    results = json.loads((loss_run / "results.json").read_text())
    history = json.loads((loss_run / "training_history.json").read_text())
    losses = [h["val_loss"] for h in history]
    assert results["select_metric"] == "loss" and len(history) == 3
    assert results["best_epoch"] == losses.index(min(losses))
    best = torch.load(loss_run / "best_model.pt", weights_only=True)
    assert best["epoch"] == results["best_epoch"]
    # "*best*" marks exactly the epochs whose val loss beat every earlier one
    log = (loss_run / "training.log").read_text()
    marked = [int(m) for m in re.findall(r"epoch (\d{3}) .*\*best\*", log)]
    assert marked == [i for i, v in enumerate(losses) if v < min(losses[:i], default=math.inf)]


def _old_state(ckpt: dict) -> None:
    """last.pt as avakit wrote it before training.select_metric: state.best_srcc."""
    state = ckpt["state"]
    state.pop("select_metric")
    value = state.pop("best_value")
    state["best_srcc"] = value if value != math.inf else -math.inf


def test_an_old_last_pt_with_best_srcc_still_resumes(
    mos_shards: Path, tiny_cfg: Callable[..., Config], tmp_path: Path
) -> None:
    part = fit(tiny_cfg(mos_shards, *REGRESSION), output_dir=tmp_path, stop_after_epochs=1)
    ckpt = torch.load(part / "last.pt", weights_only=True)
    _old_state(ckpt)
    torch.save(ckpt, part / "last.pt")
    state = check_resume_state(ckpt, part / "last.pt")
    assert state["select_metric"] == "srcc" and "best_srcc" not in state
    resumed = fit(run_config(part), resume=part)
    results = json.loads((resumed / "results.json").read_text())
    assert results["select_metric"] == "srcc" and results["epochs"] == 2


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda s: s.__setitem__("best_value", "0.5"), "state.best_value"),
        (lambda s: s.__setitem__("best_value", 2.0), "state.best_value"),
        (lambda s: s.__setitem__("select_metric", "accuracy"), "state.select_metric"),
        (lambda s: (_old_state({"state": s}), s.__setitem__("best_srcc", 7.0)), "state.best_srcc"),
    ],
)
def test_a_crafted_best_value_is_one_line(edit, needle: str) -> None:
    ckpt = {
        "optimizer": {},
        "scheduler": {},
        "rng": {},
        "state": {
            "epoch": 0,
            "step": 0,
            "select_metric": "srcc",
            "best_value": -math.inf,
            "best_epoch": -1,
            "bad_epochs": 0,
            "elapsed_s": 0.0,
            "history": [],
        },
    }
    check_resume_state(ckpt, Path("last.pt"))
    edit(ckpt["state"])
    with pytest.raises(AvakitError, match=re.escape(f"last.pt: {needle}")):
        check_resume_state(ckpt, Path("last.pt"))


def test_resume_with_another_select_metric_is_refused(loss_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(loss_run, run)
    (run / "results.json").unlink()  # as if interrupted
    with pytest.raises(AvakitError, match=r"^training\.select_metric: .*val loss"):
        fit(run_config(run, ["training.select_metric=srcc", "training.max_epochs=4"]), resume=run)
