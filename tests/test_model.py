"""Tests for avakit.model.network: registry, shapes, freezing, param groups, local weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from avakit.errors import AvakitError
from avakit.model.network import (
    BACKBONES,
    AestheticModel,
    MLPHead,
    build_model,
    param_groups,
)

NAMES = list(BACKBONES)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts."""
    params = list(model.parameters())
    return {
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
    }


_CACHE: dict[str, AestheticModel] = {}


def cached(name: str) -> AestheticModel:
    """One random-init distribution model per backbone for the whole module (vgg16 is big)."""
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = build_model(name).eval()
    return _CACHE[name]


@pytest.fixture(scope="module", autouse=True)
def _free_cache() -> Any:
    yield
    _CACHE.clear()


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_registry_names() -> None:
    assert set(NAMES) == {
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "vgg16",
        "mobilenet_v3_large",
    }


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_both_modes(name: str) -> None:
    model = cached(name)
    spec = BACKBONES[name]
    regression = AestheticModel(
        model.backbone, MLPHead(spec.feature_dim, (64,), out_dim=1), spec, output_mode="regression"
    ).eval()
    with torch.no_grad():
        feats = model.features(_x())
        assert feats.shape == (2, spec.feature_dim)
        assert model(_x()).shape == (2, 10)
        assert regression(_x()).shape == (2,)


@pytest.mark.parametrize("name", NAMES)
def test_last_stage_is_backbone_part_and_gets_gradients(name: str) -> None:
    model = cached(name)
    stage = model.last_stage()
    backbone_modules = {id(m) for m in model.backbone.modules()}
    assert all(id(m) in backbone_modules for m in stage.modules() if m is not stage)
    stage_params = list(stage.parameters())
    assert stage_params
    backbone_params = {id(p) for p in model.backbone.parameters()}
    assert all(id(p) in backbone_params for p in stage_params)
    # partial freezing starts exactly at the last stage
    spec = BACKBONES[name]
    first = stage if spec.last_stage_start is None else next(iter(stage.children()))
    assert model.backbone.get_submodule(spec.partial_from) is first
    model.zero_grad(set_to_none=True)
    model(_x()).sum().backward()
    try:
        assert all(p.grad is not None for p in stage_params)
        assert sum(float(p.grad.norm()) for p in stage_params) > 0
    finally:
        model.zero_grad(set_to_none=True)


def test_param_groups_order_lr_and_coverage() -> None:
    model = cached("resnet18")
    groups = param_groups(model, lr=1e-4, head_lr_multiplier=10.0, weight_decay=0.01)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert groups[0]["lr"] == pytest.approx(1e-4)
    assert groups[1]["lr"] == pytest.approx(1e-3)
    assert all(g["weight_decay"] == 0.01 for g in groups)
    seen = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert len(seen) == len(set(seen)) and set(seen) == set(trainable)
    flat = param_groups(model, lr=1e-4, differential=False)
    assert [g["lr"] for g in flat] == [1e-4, 1e-4]
    torch.optim.AdamW(groups)  # accepted by an optimizer as-is


def test_freeze_full_keeps_backbone_frozen_and_in_eval() -> None:
    model = build_model("resnet18", freeze="full")
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.train()
    assert not any(m.training for m in model.backbone.modules())
    assert model.head.training
    groups = param_groups(model, lr=1e-3)
    assert [g["name"] for g in groups] == ["head"]
    counts = count_parameters(model)
    head_params = sum(p.numel() for p in model.head.parameters())
    assert counts["trainable"] == head_params < counts["total"]


def test_freeze_partial_resnet() -> None:
    model = build_model("resnet18", freeze="partial")
    bb = model.backbone
    for frozen in (bb.conv1, bb.bn1, bb.layer1, bb.layer3):
        assert not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in bb.layer4.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.train()
    assert not bb.layer3[0].bn1.training and bb.layer4[0].bn1.training
    assert count_parameters(model)["trainable"] < count_parameters(model)["total"]


def test_freeze_partial_mobilenet_keeps_classifier_trainable() -> None:
    model = build_model("mobilenet_v3_large", freeze="partial")
    bb = model.backbone
    assert not any(p.requires_grad for p in bb.features[12].parameters())
    assert all(p.requires_grad for p in bb.features[13].parameters())
    assert all(p.requires_grad for p in bb.classifier.parameters())


@pytest.mark.parametrize(("hidden", "n_layers"), [([], 1), ([256], 2), ([512, 256], 3)])
def test_mlp_head_layers(hidden: list[int], n_layers: int) -> None:
    head = MLPHead(512, hidden, out_dim=10, activation="tanh")
    assert len(head.layers) == n_layers
    assert all(isinstance(layer, nn.Linear) for layer in head.layers)
    assert head.layers[-1].out_features == 10
    assert head(torch.randn(3, 512)).shape == (3, 10)


def test_weights_path_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    src = build_model("resnet18").eval()
    path = tmp_path / "bb.pt"
    torch.save(src.backbone.state_dict(), path)
    torch.manual_seed(4)
    dst = build_model("resnet18", weights_path=str(path)).eval()
    dst.head.load_state_dict(src.head.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(dst(_x()), src(_x()))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_large"])
def test_weights_path_accepts_full_torchvision_state_dict(tmp_path: Path, name: str) -> None:
    full = BACKBONES[name].builder(weights=None)
    path = tmp_path / "full.pt"
    torch.save(full.state_dict(), path)
    model = build_model(name, weights_path=str(path))
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, full.state_dict()[key])


def test_weights_path_takes_precedence_over_pretrained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bb.pt"
    torch.save(build_model("resnet18").backbone.state_dict(), path)
    seen: list[Any] = []

    def builder(**kwargs: Any) -> nn.Module:
        seen.append(kwargs.get("weights"))
        return torchvision.models.resnet18(weights=None)

    spec = dataclasses.replace(BACKBONES["resnet18"], builder=builder)
    monkeypatch.setitem(BACKBONES, "resnet18", spec)
    build_model("resnet18", pretrained=True, weights_path=str(path))
    assert seen == [None]


def test_weights_path_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(AvakitError, match="nope.pt"):
        build_model("resnet18", weights_path=str(missing))
    wrong = tmp_path / "wrong.pt"
    torch.save(torchvision.models.mobilenet_v3_large().state_dict(), wrong)
    with pytest.raises(AvakitError, match="wrong.pt"):
        build_model("resnet18", weights_path=str(wrong))
    state = build_model("resnet18").backbone.state_dict()
    state["conv1.weight"] = torch.zeros(1)
    shape = tmp_path / "shape.pt"
    torch.save(state, shape)
    with pytest.raises(AvakitError, match="shape.pt"):
        build_model("resnet18", weights_path=str(shape))
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(AvakitError, match="garbage.pt"):
        build_model("resnet18", weights_path=str(garbage))


@pytest.mark.parametrize(
    ("kwargs", "allowed"),
    [
        ({"backbone": "resnet9000"}, "resnet18"),
        ({"backbone": "resnet18", "activation": "gelu"}, "tanh"),
        ({"backbone": "resnet18", "output_mode": "ordinal"}, "regression"),
        ({"backbone": "resnet18", "freeze": "most"}, "partial"),
    ],
)
def test_unknown_choices_raise(kwargs: dict[str, str], allowed: str) -> None:
    backbone = kwargs.pop("backbone")
    with pytest.raises(AvakitError, match=allowed):
        build_model(backbone, **kwargs)


def test_offline_pretrained_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The weights API downloads on first use; offline that is one clear line, not a traceback."""
    import urllib.error

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(AvakitError, match="model.pretrained: could not fetch resnet18 .*weights_path"):
        build_model("resnet18", pretrained=True)
