"""Issue 8, points 5, 6 and 17: the NaN/inf guard, resume keeps the data, Ctrl-C says how to go on."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.config import Config, load_config
from avakit.errors import AvakitError
from avakit.model import losses
from avakit.tasks import score as score_task
from avakit.training import engine
from avakit.training.checkpoint import run_config
from avakit.training.engine import NonFiniteError, StepContext, check_val_finite, train_one_epoch
from avakit.training.fit import fit

runner = CliRunner()


@pytest.fixture
def shards(shared_shards: Path) -> Path:
    """The session's read-only shards (120 synthetic images, short side 48, 16 rows per shard)."""
    return shared_shards


@pytest.fixture
def cli_train(tiny_train: tuple[str, ...]) -> Callable[..., object]:
    """`cli_train(shards, out, *extra, flags=())`: `avakit train` of the tiny config through the CLI."""

    def train(shards: Path, out: Path, *extra: str, flags: tuple[str, ...] = ()) -> object:
        args = ["train", "--output-dir", str(out), *flags]
        for item in [*tiny_train, f"data.shards={shards}", "name=h", *extra]:
            args += ["--set", item]
        return runner.invoke(app, args)

    return train


# ---- point 5: any non-finite loss, gradient norm or val metric stops the run naming the step ----


def test_emd_keeps_nan_and_a_zero_gradient_at_zero() -> None:
    target = torch.full((2, 10), 0.1)
    assert math.isnan(losses.emd(torch.full((2, 10), math.nan), target).item())  # was 0.0
    assert math.isnan(losses.emd(torch.tensor([[math.inf] + [0.0] * 9] * 2), target).item())
    logits = torch.zeros(2, 10, requires_grad=True)  # softmax == target: every CDF difference is 0
    loss = losses.emd(logits, target)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0


@pytest.mark.parametrize(
    "extra", [(), ("model.output_mode=regression", "training.loss_type=mse")], ids=["emd", "mse"]
)
def test_huge_learning_rate_stops_naming_the_step(
    cli_train: Callable[..., object], shards: Path, tmp_path: Path, extra: tuple
) -> None:
    result = cli_train(shards, tmp_path, "training.learning_rate=1e30", *extra)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    line = re.search(r"error: (loss is nan at epoch 0, optimizer step \d+; stopped.*)", result.output)
    assert line, result.output
    run = next(tmp_path.glob("h-*"))
    assert line.group(1).split(";")[0] in (run / "training.log").read_text()
    assert not (run / "results.json").exists() and not (run / "last.pt").exists()


def _ctx(model: torch.nn.Module, **kw) -> StepContext:
    return StepContext(
        model=model,
        normalize=torch.nn.Identity(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn=losses.mse,
        output_mode="regression",
        device=torch.device("cpu"),
        **kw,
    )


def _batches(n: int) -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.rand(4, 3, 2, 2, generator=g),
            torch.rand(4, 10, generator=g) + 0.1,
            torch.arange(4),
            torch.ones(4, dtype=torch.bool),
        )
        for _ in range(n)
    ]


def _linear() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 1))


@pytest.mark.parametrize("grad_clip", [None, 1.0])
def test_nonfinite_gradient_norm_stops_before_the_step(grad_clip: float | None) -> None:
    model = _linear()
    model[1].bias.register_hook(lambda g: g * math.inf)  # finite loss, infinite gradient
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteError, match=r"gradient norm is (inf|nan) at epoch 3, optimizer step 7$"):
        train_one_epoch(_ctx(model, grad_clip=grad_clip), _batches(2), epoch=3, step=7)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # not stepped


def test_fp16_overflow_is_skipped_by_the_scaler_unless_it_persists() -> None:
    model = _linear()
    calls = {"n": 0}

    def once(g: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return g * math.inf if calls["n"] == 1 else g

    hook = model[1].bias.register_hook(once)
    ctx = _ctx(model, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**16))
    stats = train_one_epoch(ctx, _batches(3), epoch=0, step=0)  # step 0 skipped, steps 1-2 taken
    assert stats.steps == 3 and ctx.scaler.get_scale() == 2.0**15 and ctx.skipped_steps == 0
    hook.remove()
    model[1].bias.register_hook(lambda g: g * math.inf)  # every step overflows, at any scale
    with pytest.raises(
        NonFiniteError,
        match=r"gradient norm is (inf|nan) at epoch 1, optimizer step 27 "
        r"\(25 fp16 steps in a row skipped",
    ):
        train_one_epoch(ctx, _batches(engine.FP16_MAX_SKIPPED_STEPS + 5), epoch=1, step=3)


def test_val_metrics_nan_only_from_constant_predictions_do_not_stop() -> None:
    check_val_finite(
        {"n": 5, "loss": 0.3, "mae": 1.0, "rmse": 1.2, "srcc": math.nan, "plcc": math.nan}, epoch=0, step=4
    )
    check_val_finite({"n": 0, "loss": math.nan}, epoch=0, step=4)  # nothing evaluated: not a NaN model
    with pytest.raises(NonFiniteError, match=r"val mae is inf at epoch 2 \(after optimizer step 9\)"):
        check_val_finite({"n": 5, "loss": 0.3, "mae": math.inf}, epoch=2, step=9)


def test_nan_val_predictions_stop_before_last_pt_is_overwritten(
    tiny_cfg: Callable[..., Config], shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from avakit.training import epochs as train_mod  # the epoch loop's module

    epoch_now = {"e": 0}
    real_epoch, real_predict = train_mod.train_one_epoch, score_task.predict_batch

    def tracking(ctx, loader, epoch, step, advance=None, stop=None):  # noqa: ANN001, ANN202
        epoch_now["e"] = epoch
        return real_epoch(ctx, loader, epoch, step, advance, stop)

    def nan_in_epoch_1(model, x, ctx):  # noqa: ANN001, ANN202
        out = real_predict(model, x, ctx)
        return out * math.nan if epoch_now["e"] == 1 else out

    monkeypatch.setattr(train_mod, "train_one_epoch", tracking)
    monkeypatch.setattr(score_task, "predict_batch", nan_in_epoch_1)  # the score task's eval pass
    with pytest.raises(
        NonFiniteError,
        match=r"val loss is nan at epoch 1 \(after optimizer step \d+\); "
        r"stopped, the last good checkpoint \(.*last\.pt\) is kept",
    ):
        fit(tiny_cfg(shards, "name=valnan"), output_dir=tmp_path, quick_experiment=0.5)
    run = next(tmp_path.glob("valnan-*"))
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 0
    assert len(json.loads((run / "training_history.json").read_text())) == 1
    assert not (run / "results.json").exists()


# ---- point 6: --resume keeps the data definition (fraction, shards) and the LR schedule ----


@pytest.mark.slow
def test_quick_experiment_resume_equals_uninterrupted(
    tiny_cfg: Callable[..., Config], shards: Path, tmp_path: Path
) -> None:
    full = fit(tiny_cfg(shards), output_dir=tmp_path / "a", quick_experiment=0.5)
    part = fit(tiny_cfg(shards), output_dir=tmp_path / "b", quick_experiment=0.5, stop_after_epochs=1)
    assert torch.load(part / "last.pt", weights_only=True)["data"]["quick_experiment"] == 0.5
    config_before = (part / "config.yaml").read_bytes()

    # a conflicting flag or other shards: one line, before anything in the run folder changes
    other = tmp_path / "other_shards"
    shutil.copytree(shards, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps(manifest, indent=4))  # another manifest file
    for flags, needle in [
        (["--quick-experiment", "0.25"], "was trained with quick_experiment 0.5"),
        (["--quick-experiment", "1"], "was trained with quick_experiment 0.5"),
        (["--set", f"data.shards={other}"], "data.shards: "),
    ]:
        result = runner.invoke(app, ["train", "--resume", str(part), *flags])
        assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output, (
            flags,
            result.output,
        )
    assert (part / "config.yaml").read_bytes() == config_before

    assert fit(run_config(part), resume=part) == part  # no --quick-experiment: the stored 0.5
    a = json.loads((full / "results.json").read_text())
    b = json.loads((part / "results.json").read_text())
    assert b["quick_experiment"] == 0.5
    manifest = json.loads((shards / "manifest.json").read_text())
    assert a["val"]["n"] == b["val"]["n"] < manifest["splits"]["val"]["samples"]
    for split in ("val", "test"):
        for key in ("srcc", "plcc", "accuracy", "mae", "loss"):
            assert a[split][key] == pytest.approx(b[split][key], abs=1e-6, nan_ok=True), (split, key)
    ha = json.loads((full / "training_history.json").read_text())
    hb = json.loads((part / "training_history.json").read_text())
    assert [h["train_loss"] for h in ha] == pytest.approx([h["train_loss"] for h in hb], abs=1e-6)
    assert [lr for h in ha for lr in h["lr"]] == pytest.approx([lr for h in hb for lr in h["lr"]])  # was 0
    assert [h["steps"] for h in ha] == [h["steps"] for h in hb]
    ga = pd.read_csv(full / "telemetry/learning_rates.csv")
    gb = pd.read_csv(part / "telemetry/learning_rates.csv")
    assert ga["batch_idx"].tolist() == gb["batch_idx"].tolist()

    # one more epoch on resume: the schedule's shape follows the new max_epochs (LR not stuck at 0)
    fit(run_config(part, ["training.max_epochs=3"]), resume=part)
    history = json.loads((part / "training_history.json").read_text())
    assert len(history) == 3 and min(history[2]["lr"]) > 0


def test_data_definition_checks_name_the_difference(tmp_path: Path) -> None:
    from avakit.training.resume import check_same_data, run_fraction, stored_definition

    last = tmp_path / "last.pt"
    shards = {
        "train": {"manifest_sha256": "a" * 64, "samples": 40},
        "val": {"manifest_sha256": "a" * 64, "samples": 6},
    }
    stored = {"quick_experiment": 1.0, "features": False, "splits": shards}
    assert stored_definition({"data": stored}, last) == stored and stored_definition({}, last) is None
    for bad in ("x", {**stored, "quick_experiment": 7}, {**stored, "splits": None}):
        with pytest.raises(AvakitError, match="last.pt: key 'data' is not a data definition"):
            stored_definition({"data": bad}, last)
    with pytest.raises(AvakitError, match=r"quick_experiment 0.1: .* the full data"):
        run_fraction(stored, 0.1, last)
    assert run_fraction(stored, None, last) == 1.0 and run_fraction(None, 0.3, last) == 0.3
    check_same_data(stored, stored, last)
    with pytest.raises(AvakitError, match="data.features: .* was trained on shards"):
        check_same_data(stored, {**stored, "features": True}, last)
    url_val = {"manifest_sha256": None, "samples": None, "urls": ["v.tar"]}
    urls = {**stored, "splits": {**shards, "val": url_val}}
    with pytest.raises(
        AvakitError,
        match=r"val data of manifest sha256 aaaaaaaaaaaa \(6 samples\), the "
        r"config now gives 1 URL\(s\) 'v.tar'",
    ):
        check_same_data(stored, urls, last)
    with pytest.raises(AvakitError, match="trained on manifest sha256 bbbbbbbbbbbb"):  # last.pt of old avakit
        check_same_data(None, stored, last, legacy_manifest="b" * 64)


# ---- point 17: Ctrl-C prints what is kept and the real command that goes on ----


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    from avakit.training import epochs as train_mod  # the epoch loop's module

    real = train_mod.train_one_epoch

    def interrupted(ctx, loader, e, step, advance=None, stop=None):  # noqa: ANN001, ANN202
        if e == epoch:
            raise KeyboardInterrupt
        return real(ctx, loader, e, step, advance, stop)

    monkeypatch.setattr(train_mod, "train_one_epoch", interrupted)


def test_ctrl_c_in_train_prints_the_resume_command(
    cli_train: Callable[..., object], shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _interrupt_at(monkeypatch, 1)
    result = cli_train(shards, tmp_path, flags=("--quick-experiment", "0.5"))
    assert result.exit_code == 130, result.output
    run = next(tmp_path.glob("h-*"))
    assert f"interrupted: run folder {run} kept; resume with: avakit train --resume {run}" in result.output
    assert "run the same command" not in result.output
    monkeypatch.undo()
    resumed = runner.invoke(app, ["train", "--resume", str(run)])  # the printed command works
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((run / "results.json").read_text())["quick_experiment"] == 0.5


def test_ctrl_c_before_the_first_checkpoint_starts_the_run_again(
    cli_train: Callable[..., object], shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _interrupt_at(monkeypatch, 0)
    result = cli_train(shards, tmp_path, "training.max_epochs=1", flags=("--quick-experiment", "0.5"))
    assert result.exit_code == 130, result.output
    run = next(tmp_path.glob("h-*"))
    assert (
        f"run folder {run} kept; start it again from epoch 0 with: avakit train --resume {run} "
        "--quick-experiment 0.5"
    ) in result.output
    monkeypatch.undo()
    assert fit(run_config(run), resume=run, quick_experiment=0.5) == run
    assert json.loads((run / "results.json").read_text())["quick_experiment"] == 0.5
    assert "again from epoch 0: no last.pt" in (run / "training.log").read_text()


def test_ctrl_c_before_the_run_folder_exists(
    cli_train: Callable[..., object], shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from avakit.training import fit as train_mod

    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "build_trainer", interrupted)
    result = cli_train(shards, tmp_path)
    assert result.exit_code == 130 and "interrupted: nothing was written" in result.output, result.output
    assert not any(tmp_path.iterdir())


def test_ctrl_c_in_other_commands_says_what_is_kept(
    tiny_ava, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    import avakit.dataset.shards
    import avakit.training.evaluate

    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(avakit.dataset.shards, "write_shards", interrupted)
    result = runner.invoke(
        app,
        [
            "shard",
            "--ava-txt",
            str(tiny_ava.ava_txt),
            "--images",
            str(tiny_ava.images),
            "--out",
            str(tmp_path / "s"),
        ],
    )
    assert result.exit_code == 130
    assert "interrupted: finished shards are kept; run the same command to resume" in result.output
    monkeypatch.setattr(avakit.training.evaluate, "evaluate_run", interrupted)
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 130 and "none were written; run the same command again" in result.output
    assert "resume" not in result.output


def test_resume_of_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(AvakitError, match="config.yaml: not found"):
        fit(load_config(None, ["device=cpu"]), resume=tmp_path)
    assert not any(tmp_path.iterdir())
