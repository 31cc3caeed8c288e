"""Tests for avakit.model.fused: the frozen feature sources of the pairwise frozen mode and the
per-source standardiser (random init only, no network)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from avakit import scores
from avakit.errors import AvakitError
from avakit.model import fused
from avakit.model.fused import CLIP_MISSING, SOURCES, FusedSources, SourceStandardiser
from avakit.model.iqa import iqa_features

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _fused(sources: list[str], **kwargs) -> FusedSources:
    return FusedSources(sources, pretrained=False, normalize_mean=MEAN, normalize_std=STD, **kwargs)


def _batch(n: int = 2, size: int = 64) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(n, 3, size, size)


def test_registry_matches_the_choice_list() -> None:
    assert tuple(SOURCES) == scores.FEATURE_SOURCES
    assert all(spec.name == name for name, spec in SOURCES.items())
    dims = {name: spec.dim for name, spec in SOURCES.items()}
    assert dims == {"resnet50": 2048, "resnet50_layer3": 1024, "vgg16": 4096, "iqa": 5, "clip": 512}


@pytest.mark.parametrize("name", ["resnet50", "resnet50_layer3", "vgg16", "iqa"])
def test_each_source_shape_and_slice(name: str) -> None:
    f = _fused([name])
    out = f(_batch())
    assert out.shape == (2, SOURCES[name].dim) and out.dtype == torch.float32
    assert f.dim == SOURCES[name].dim and f.slices == {name: (0, f.dim)}
    assert torch.isfinite(out).all()


def test_clip_source_on_a_small_crop() -> None:
    f = _fused(["clip"])  # a 64x64 crop is resized to CLIP's 224x224 inside
    out = f(_batch(2, 64))
    assert out.shape == (2, 512) and f.slices == {"clip": (0, 512)}
    assert torch.isfinite(out).all()
    clip = f.extractors["clip"]
    rgb = torch.rand(1, 3, 8, 8)  # the training normalisation undone, CLIP's applied
    normalised = (rgb - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    import open_clip

    want = (rgb - torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        open_clip.OPENAI_DATASET_STD
    ).view(1, 3, 1, 1)
    assert torch.allclose(normalised * clip.gain + clip.bias, want, atol=1e-5)


def test_order_of_sources_is_kept_and_blocks_are_the_extractors_outputs() -> None:
    x = _batch()
    f = _fused(["resnet50_layer3", "iqa"])
    assert f.sources == ("resnet50_layer3", "iqa")
    assert f.slices == {"resnet50_layer3": (0, 1024), "iqa": (1024, 1029)} and f.dim == 1029
    out = f(x)
    rgb = x * torch.tensor(STD).view(1, 3, 1, 1) * 255 + torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    assert torch.allclose(out[:, 1024:], iqa_features(rgb), atol=1e-4)
    assert torch.allclose(out[:, :1024], f.extractors["resnet50_layer3"](x))
    g = _fused(["iqa", "resnet50_layer3"])
    assert g.slices == {"iqa": (0, 5), "resnet50_layer3": (5, 1029)}
    assert torch.allclose(g(x)[:, :5], out[:, 1024:])


def test_everything_frozen_and_train_keeps_eval() -> None:
    f = _fused(["resnet50_layer3", "iqa"])
    assert not any(p.requires_grad for p in f.parameters())
    f.train()
    assert not f.training and not any(m.training for m in f.modules())
    out = f(_batch())
    assert out.grad_fn is None and not out.requires_grad
    f.train(True)
    assert not any(m.training for m in f.modules())


def test_resnet50_layer3_reads_the_resnet50_weights_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = tvm.resnet50()
    path = tmp_path / "r50.pt"
    torch.save(net.state_dict(), path)
    f = _fused(["resnet50_layer3"], weights={"resnet50": str(path)})
    assert torch.equal(f.extractors["resnet50_layer3"].conv1.weight, net.conv1.weight)


@pytest.mark.parametrize(
    ("sources", "weights", "match"),
    [
        (["resnet50", "sift"], {}, "unknown source 'sift'"),
        (["iqa", "iqa"], {}, "'iqa' is listed more than once"),
        ([], {}, "at least one"),
        (["iqa"], {"resnet": "x.pt"}, "unknown source 'resnet'"),
        (
            ["resnet50"],
            {"resnet50": "/nonexistent/r50.pt"},
            "features.sources resnet50: weights file not found",
        ),
    ],
)
def test_bad_source_lists_are_user_errors(sources: list[str], weights: dict, match: str) -> None:
    with pytest.raises(AvakitError, match=match):
        _fused(sources, weights=weights)


# --- CLIP weights --------------------------------------------------------------------------


def test_clip_random_init_state_dict_loads_back(tmp_path: Path) -> None:
    import open_clip

    torch.manual_seed(2)
    model = open_clip.create_model(fused.CLIP_MODEL, pretrained=None)
    # the full model's keys (visual.* plus the text tower's, here one), half precision: a smaller file
    state = {f"visual.{k}": v.half() for k, v in model.visual.state_dict().items()}
    path = tmp_path / "clip.pt"
    torch.save({**state, "logit_scale": model.logit_scale.detach()}, path)
    f = _fused(["clip"], weights={"clip": str(path)})
    got = f.extractors["clip"].visual.state_dict()
    assert all(torch.equal(v.half().float(), got[k]) for k, v in model.visual.state_dict().items())


def test_clip_checkpoint_forms(tmp_path: Path) -> None:
    t = torch.zeros(2)
    for i, saved in enumerate(
        [
            {"visual.proj": t, "transformer.x": t},  # open_clip's model.state_dict()
            {"proj": t},  # model.visual.state_dict()
            {"state_dict": {"module.visual.proj": t, "module.logit_scale": t}},  # a training checkpoint
        ]
    ):
        path = tmp_path / f"{i}.pt"
        torch.save(saved, path)
        assert list(fused._clip_state(path)) == ["proj"]


@pytest.mark.parametrize("content", ["missing", "text", "list", "mismatch"])
def test_clip_bad_weights_file_names_it(tmp_path: Path, content: str) -> None:
    path = tmp_path / "clip.bin"
    if content == "text":
        path.write_text("not a checkpoint\n")
    elif content == "list":
        torch.save([torch.zeros(2)], path)
    elif content == "mismatch":
        torch.save({"visual.conv1.weight": torch.zeros(3, 3), "visual.extra": torch.zeros(1)}, path)
    with pytest.raises(AvakitError) as info:
        _fused(["clip"], weights={"clip": str(path)})
    message = str(info.value)
    assert str(path) in message and "\n" not in message and message.startswith("features.clip_weights")


def test_missing_open_clip_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip -> ImportError
    with pytest.raises(AvakitError) as info:
        _fused(["iqa", "clip"])
    assert str(info.value) == CLIP_MISSING
    assert CLIP_MISSING == "features.sources clip needs open-clip-torch: pip install 'avakit[clip]'"


def test_clip_download_failure_offline_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip

    def offline(name: str, pretrained: str | None = None, **kwargs: object) -> None:
        assert pretrained == "openai"
        raise OSError("We couldn't connect to 'https://huggingface.co'\nsecond line")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(AvakitError, match="set features.clip_weights") as info:
        FusedSources(["clip"], pretrained=True, normalize_mean=MEAN, normalize_std=STD)
    assert "\n" not in str(info.value)


# --- the standardiser ----------------------------------------------------------------------

SLICES = {"wide": (0, 64), "narrow": (64, 72), "one": (72, 73)}


def _features(n: int = 2000) -> torch.Tensor:
    torch.manual_seed(3)
    wide = torch.randn(n, 64) * 50.0 + 7.0  # a large source: many dims, large values
    narrow = torch.randn(n, 8) * 0.01 - 3.0
    one = torch.rand(n, 1) * 4.0
    return torch.cat([wide, narrow, one], dim=1)


def test_standardiser_is_identity_until_fitted() -> None:
    s = SourceStandardiser(73)
    x = _features(10)
    assert not s.fitted and torch.equal(s(x), x)


def test_standardiser_gives_every_source_mean_zero_and_total_variance_one() -> None:
    x = _features()
    s = SourceStandardiser(73).fit(x, SLICES)
    assert s.fitted
    y = s(x).double()
    assert y.mean(dim=0).abs().max() < 1e-4
    for start, stop in SLICES.values():
        total = y[:, start:stop].var(dim=0, unbiased=False).sum()
        assert math.isclose(float(total), 1.0, rel_tol=1e-4)


def test_streaming_fit_matches_one_go() -> None:
    x = _features()
    whole = SourceStandardiser(73).fit(x, SLICES)
    streamed = SourceStandardiser(73)
    for chunk in x.split(300):
        streamed.update(chunk)
    streamed.finish(SLICES)
    assert torch.allclose(streamed.mean, whole.mean, atol=1e-5)
    assert torch.allclose(streamed.scale, whole.scale, rtol=1e-5)


def test_standardiser_state_dict_round_trip() -> None:
    x = _features()
    s = SourceStandardiser(73).fit(x, SLICES)
    assert set(s.state_dict()) == {"mean", "scale", "fitted_flag"}
    t = SourceStandardiser(73)
    t.load_state_dict(s.state_dict())
    assert t.fitted and torch.equal(t(x), s(x))


def test_constant_dimensions_get_weight_zero() -> None:
    x = _features()
    x[:, 3] = 5.0  # a dead unit in the wide block
    s = SourceStandardiser(73).fit(x, SLICES)
    assert s.scale[3] == 0.0
    y = s(x).double()
    assert math.isclose(float(y[:, :64].var(dim=0, unbiased=False).sum()), 1.0, rel_tol=1e-4)


def test_standardiser_refuses_bad_input() -> None:
    s = SourceStandardiser(73)
    with pytest.raises(AvakitError, match="at least 2"):
        s.fit(_features(1), SLICES)
    bad = _features(10)
    bad[0, 0] = float("nan")
    with pytest.raises(AvakitError, match="non-finite"):
        s.fit(bad, SLICES)
    with pytest.raises(ValueError, match="tile"):
        s.fit(_features(10), {"a": (0, 10), "b": (11, 73)})
    with pytest.raises(ValueError, match=r"\[B, 73\]"):
        s.update(torch.zeros(4, 5))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_clip_exports_to_onnx(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    f = _fused(["iqa", "clip"])
    x = _batch(2, 64)
    path = tmp_path / "fused.onnx"
    torch.onnx.export(f, (x,), str(path), opset_version=17, dynamo=False, input_names=["x"])
    assert torch.backends.mha.get_fastpath_enabled()  # restored after the export
    got = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), f(x), rtol=1e-3, atol=1e-3)
