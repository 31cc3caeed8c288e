"""Attack pass on `train`, `features` and `evaluate`: crafted run folders, caches and checkpoints.

Each input here gave a traceback (or was silently ignored) before: now one line naming the file
and key, a non-zero exit, and nothing in the run folder changed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from avakit.cli.app import app

runner = CliRunner()


def one_line_error(result, *needles: str) -> str:
    """The result failed with one `error:` line containing every needle (no traceback)."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:"), result.output
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture(scope="module")
def features_args(tiny_train: tuple[str, ...]) -> Callable[..., list[str]]:
    """`features_args(shards, out, *extra)`: the `avakit features` arguments of the tiny config."""

    def make(shards: Path, out: Path, *extra: str) -> list[str]:
        args = ["features", "--out", str(out), "--device", "cpu"]
        for item in [*tiny_train, f"data.shards={shards}", *extra]:
            args += ["--set", item]
        return args

    return make


@pytest.fixture(scope="module")
def cache(
    features_args: Callable[..., list[str]], trained_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A finished feature cache of the trained run's shards (read-only: copy it first)."""
    out = tmp_path_factory.mktemp("attack_cache") / "feat"
    result = runner.invoke(app, features_args(trained_run.parent / "shards", out))
    assert result.exit_code == 0, result.output
    return out


def copy_cache(cache: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "feat"
    shutil.copytree(cache, dst)
    return dst


@pytest.fixture
def head_only(tiny_train: tuple[str, ...]) -> Callable[..., object]:
    """`head_only(trained_run, cache, tmp_path)`: one epoch of head-only training through the CLI."""

    def train(trained_run: Path, cache: Path, tmp_path: Path) -> object:
        args = ["train", "--output-dir", str(tmp_path / "runs")]
        for item in [
            *tiny_train,
            f"data.shards={trained_run.parent / 'shards'}",
            f"data.features={cache}",
            "training.max_epochs=1",
        ]:
            args += ["--set", item]
        return runner.invoke(app, args)

    return train


@pytest.mark.parametrize("meta", ["{", "[1]", "{}", '{"fingerprint": {}, "splits": [1]}'])
def test_damaged_meta_json_is_one_line(
    head_only: Callable[..., object],
    features_args: Callable[..., list[str]],
    trained_run: Path,
    cache: Path,
    tmp_path: Path,
    meta: str,
) -> None:
    feat = copy_cache(cache, tmp_path)
    (feat / "meta.json").write_text(meta)
    one_line_error(runner.invoke(app, features_args(trained_run.parent / "shards", feat)), "meta.json")
    one_line_error(head_only(trained_run, feat, tmp_path), "meta.json")


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("train.features.npy", lambda p: p.write_bytes(b"\x93NUMPY garbage")),
        ("train.features.npy", lambda p: np.save(p, np.zeros((3, 512), np.float16))),
        ("train.features.npy", lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)),
        ("train.index.parquet", lambda p: p.write_bytes(b"PAR1 not parquet")),
        ("backbone.pt", lambda p: p.write_bytes(b"not a checkpoint")),
        ("backbone.pt", lambda p: torch.save({"x": torch.zeros(1)}, p)),
        ("backbone.pt", lambda p: p.unlink()),
    ],
)
def test_damaged_cache_file_is_one_line(
    head_only: Callable[..., object], trained_run: Path, cache: Path, tmp_path: Path, name: str, damage
) -> None:
    feat = copy_cache(cache, tmp_path)
    damage(feat / name)
    one_line_error(head_only(trained_run, feat, tmp_path), name)
    assert not list((tmp_path / "runs").glob("*")), "a failed start leaves no run folder"


def test_features_out_is_a_file(
    features_args: Callable[..., list[str]], trained_run: Path, tmp_path: Path
) -> None:
    (tmp_path / "feat").write_text("x")
    one_line_error(
        runner.invoke(app, features_args(trained_run.parent / "shards", tmp_path / "feat")),
        str(tmp_path / "feat"),
    )


def crafted_last(trained_run: Path, tmp_path: Path, edit) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, run / "last.pt")
    return run


def _first_state(ckpt: dict) -> dict:
    return next(iter(ckpt["optimizer"]["state"].values()))


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: c.pop("optimizer"), "optimizer"),
        (lambda c: c.__setitem__("state", [1]), "state"),
        (lambda c: c["state"].__setitem__("epoch", "3"), "state.epoch"),
        (lambda c: c["state"].__setitem__("step", -1), "state.step"),
        (lambda c: c["state"].__setitem__("evil", 1), "state"),
        (lambda c: c["state"].__setitem__("history", ["x"] * len(c["state"]["history"])), "state.history"),
        (lambda c: c.__setitem__("rng", {"python": 1}), "rng"),
        (lambda c: c["rng"].__setitem__("torch", torch.zeros(3)), "rng"),
        (
            lambda c: c["optimizer"].__setitem__("param_groups", c["optimizer"]["param_groups"][:1]),
            "optimizer",
        ),
        (lambda c: _first_state(c).__setitem__("exp_avg", torch.zeros(2)), "optimizer.state"),
        (lambda c: c.__setitem__("scheduler", {"foo": 1}), "scheduler"),
        (lambda c: c["scheduler"]["lr_lambdas"][0].__setitem__("best", "x"), "scheduler"),
    ],
)
def test_crafted_last_pt_resume_is_one_line_and_changes_nothing(
    trained_run: Path, tmp_path: Path, edit, needle: str
) -> None:
    run = crafted_last(trained_run, tmp_path, edit)
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    result = runner.invoke(app, ["train", "--resume", str(run), "--set", "training.max_epochs=3"])
    one_line_error(result, "last.pt", needle)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_resume_refuses_output_dir(trained_run: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--resume", str(trained_run), "--output-dir", str(tmp_path)])
    one_line_error(result, "--output-dir")
    assert not list(tmp_path.iterdir())


def test_resume_of_a_good_last_pt_still_works(trained_run: Path, tmp_path: Path) -> None:
    run = crafted_last(trained_run, tmp_path, lambda c: None)
    result = runner.invoke(app, ["train", "--resume", str(run), "--set", "training.max_epochs=3"])
    assert result.exit_code == 0, result.output
    assert len(json.loads((run / "training_history.json").read_text())) == 3


def test_resume_with_another_backbone_is_one_line(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = runner.invoke(
        app,
        ["train", "--resume", str(run), "--set", "model.backbone=resnet34", "--set", "training.max_epochs=3"],
    )
    one_line_error(result, "last.pt", "this run's config")


def test_a_training_batch_of_one_sample_trains(tiny_train: tuple[str, ...]) -> None:
    """A lone sample at a 32 px crop (1x1 maps in layer4): BatchNorm used to raise ValueError."""
    from avakit.config import load_config
    from avakit.model.build import model_from_config
    from avakit.model.losses import get_loss
    from avakit.training.engine import StepContext, train_one_epoch

    cfg = load_config(None, tiny_train)
    model = model_from_config(cfg)
    ctx = StepContext(
        model=model,
        normalize=torch.nn.Identity(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        loss_fn=get_loss("emd").fn,
        output_mode="distribution",
        device=torch.device("cpu"),
    )
    batch = (torch.rand(2, 3, 32, 32), torch.ones(2, 10), torch.arange(2), torch.tensor([True, False]))
    stats = train_one_epoch(ctx, [batch], epoch=0, step=0)
    assert (stats.samples, stats.corrupt, stats.steps) == (1, 1, 1)
    assert all(m.training for m in model.modules())  # BatchNorm back in train mode


def test_evaluate_refuses_non_finite_weights(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ckpt = torch.load(run / "best_model.pt", weights_only=True)
    next(t for t in ckpt["model_state_dict"].values() if t.is_floating_point()).fill_(float("nan"))
    torch.save(ckpt, run / "best_model.pt")
    result = runner.invoke(app, ["evaluate", str(run), "--device", "cpu"])
    one_line_error(result, "best_model.pt", "NaN")
    assert not (run / "eval").exists()


def test_an_error_naming_a_path_with_a_newline_stays_one_line(tmp_path: Path) -> None:
    config = tmp_path / "a\nb.yaml"
    config.write_text("name: [1\n")
    result = runner.invoke(app, ["train", "--config", str(config)])
    assert result.exit_code == 2
    assert one_line_error(result, "a\\nb.yaml")


@pytest.mark.parametrize("damage", ["binary", "folder"])
def test_resume_over_damaged_telemetry(trained_run: Path, tmp_path: Path, damage: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    if damage == "binary":
        for csv_file in (run / "telemetry").glob("*.csv"):
            csv_file.write_bytes(bytes(range(256)) * 4)
        result = runner.invoke(app, ["train", "--resume", str(run), "--set", "training.max_epochs=3"])
        assert result.exit_code == 0, result.output  # started afresh, with a warning in training.log
        assert "starting it afresh" in (run / "training.log").read_text()
    else:
        shutil.rmtree(run / "telemetry")
        (run / "telemetry").write_text("x")
        result = runner.invoke(app, ["train", "--resume", str(run), "--set", "training.max_epochs=3"])
        one_line_error(result, "telemetry")


def test_an_empty_val_split_is_refused_before_training(
    tiny_train: tuple[str, ...], trained_run: Path, tmp_path: Path
) -> None:
    shards = tmp_path / "shards"
    shutil.copytree(trained_run.parent / "shards", shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    for shard in manifest["splits"]["val"]["shards"]:
        (shards / shard["name"]).unlink()
    manifest["splits"]["val"].update(shards=[], samples=0, bytes=0)
    (shards / "manifest.json").write_text(json.dumps(manifest))
    args = ["train", "--output-dir", str(tmp_path / "runs")]
    for item in [*tiny_train, f"data.shards={shards}"]:
        args += ["--set", item]
    one_line_error(runner.invoke(app, args), "val split has no samples")
    assert not (tmp_path / "runs").exists()
