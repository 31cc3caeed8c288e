"""Tests for avakit.training.telemetry: CSV layout, norm consistency, lr groups, disabled, resume, frozen."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from avakit.model.network import AestheticModel, build_model, param_groups
from avakit.training.rundir import read_telemetry
from avakit.training.telemetry import Telemetry

GRAD_HEADER = "batch_idx,epoch,overall,backbone_layer4,mlp_head,mlp_layer_0,mlp_layer_1,mlp_layer_2"
LR = 1e-3


def tiny(backbone: str = "resnet18", freeze: str = "none") -> AestheticModel:
    torch.manual_seed(0)
    return build_model(backbone, pretrained=False, mlp_hidden_dims=[16, 8], freeze=freeze)


def train(
    model: AestheticModel,
    run_dir: Path,
    steps: int = 5,
    start: int = 0,
    **kwargs: object,
) -> tuple[torch.optim.Optimizer, dict[int, float]]:
    """Run `steps` optimizer steps from `start`; return the optimizer and the reference norms."""
    opt = torch.optim.AdamW(param_groups(model, lr=LR, head_lr_multiplier=10.0))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    reference = {}
    model.train()
    with Telemetry(run_dir, model, opt, collect_every_n=2, **kwargs) as tel:
        for step in range(start, start + steps):
            opt.zero_grad(set_to_none=True)
            torch.log_softmax(model(x), dim=-1).mean().neg().backward()
            grads = [p.grad.flatten().double() for p in model.parameters() if p.grad is not None]
            reference[step] = float(torch.cat(grads).norm())
            tel.maybe_collect(step, epoch=step // 3)
            opt.step()
    return opt, reference


def rows(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as fh:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def test_gradient_norms_csv(tmp_path: Path) -> None:
    _, reference = train(tiny(), tmp_path)
    grad_file = tmp_path / "telemetry" / "gradient_norms.csv"
    assert grad_file.read_text().splitlines()[0] == GRAD_HEADER
    data = rows(grad_file)
    assert [r["batch_idx"] for r in data] == [0, 2, 4]
    assert [r["epoch"] for r in data] == [0, 0, 1]
    parts = GRAD_HEADER.split(",")[3:]
    for r in data:
        assert all(r[c] > 0 for c in ["overall", *parts])
        assert all(r["overall"] >= r[c] for c in parts)
        assert r["overall"] == pytest.approx(reference[int(r["batch_idx"])], rel=1e-5)
        layers = sum(r[f"mlp_layer_{i}"] ** 2 for i in range(3))
        assert r["mlp_head"] ** 2 == pytest.approx(layers, rel=1e-5)


def test_learning_rates_csv(tmp_path: Path) -> None:
    train(tiny(), tmp_path)
    lr_file = tmp_path / "telemetry" / "learning_rates.csv"
    assert lr_file.read_text().splitlines()[0] == "batch_idx,epoch,lr_group_0,lr_group_1"
    data = rows(lr_file)
    assert [r["batch_idx"] for r in data] == [0, 2, 4]
    for r in data:
        assert r["lr_group_0"] == pytest.approx(LR)
        assert r["lr_group_1"] == pytest.approx(10 * r["lr_group_0"])
    grads, lrs = read_telemetry(tmp_path)
    assert grads is not None and lrs is not None
    assert list(grads["batch_idx"]) == [0, 2, 4] and list(lrs.columns)[2:] == ["lr_group_0", "lr_group_1"]


def test_disabled_writes_nothing(tmp_path: Path) -> None:
    train(tiny(), tmp_path, enabled=False)
    assert not (tmp_path / "telemetry").exists()
    assert read_telemetry(tmp_path) == (None, None)


def test_resume_drops_later_rows_and_appends(tmp_path: Path) -> None:
    model = tiny()
    train(model, tmp_path, steps=7)  # rows 0, 2, 4, 6
    grad_file = tmp_path / "telemetry" / "gradient_norms.csv"
    with grad_file.open("a") as fh:
        fh.write("8,2,0.5")  # a row cut short by a crash
    train(model, tmp_path, steps=3, start=3, resume_step=3)  # steps 3..5 collect step 4
    lines = grad_file.read_text().splitlines()
    assert lines.count(GRAD_HEADER) == 1
    assert [r["batch_idx"] for r in rows(grad_file)] == [0, 2, 4]
    lr_rows = rows(tmp_path / "telemetry" / "learning_rates.csv")
    assert [r["batch_idx"] for r in lr_rows] == [0, 2, 4]
    train(model, tmp_path, steps=1)  # no resume_step: files are recreated
    assert [r["batch_idx"] for r in rows(grad_file)] == [0]


def test_frozen_backbone(tmp_path: Path) -> None:
    train(tiny(freeze="full"), tmp_path, steps=3)
    data = rows(tmp_path / "telemetry" / "gradient_norms.csv")
    assert [r["backbone_layer4"] for r in data] == [0.0, 0.0]
    assert all(r["mlp_head"] > 0 and r["overall"] == pytest.approx(r["mlp_head"]) for r in data)
    lr_file = tmp_path / "telemetry" / "learning_rates.csv"
    assert lr_file.read_text().splitlines()[0] == "batch_idx,epoch,lr_group_0"
    assert all(r["lr_group_0"] == pytest.approx(10 * LR) for r in rows(lr_file))


def test_unregistered_last_stage_backbone(tmp_path: Path) -> None:
    """mobilenet's last_stage() is a fresh Sequential over the real blocks; its grads still count."""
    train(tiny("mobilenet_v3_large", freeze="partial"), tmp_path, steps=1)
    (r,) = rows(tmp_path / "telemetry" / "gradient_norms.csv")
    assert 0 < r["backbone_layer4"] < r["overall"]
    # classifier.0 (the 960 -> 1280 Linear kept from torchvision) is trainable too
    assert r["overall"] ** 2 >= (r["backbone_layer4"] ** 2 + r["mlp_head"] ** 2) * (1 - 1e-5)
