"""The clip task's parts: TSN sampling, one crop per clip, counted placeholders, the model, the
loss and its train counts, metrics tables, config rules, the manifest's classes and refusals."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg

from avakit.config import load_config
from avakit.dataset.clip_classes import check_classes, run_classes
from avakit.dataset.samples import Reason
from avakit.errors import AvakitError
from avakit.model.build import model_from_config
from avakit.model.clip import ClipModel
from avakit.scores import CLIPS, refuse_clip
from avakit.tasks import get_task
from avakit.tasks.base import StepContext
from avakit.tasks.clip import ClipDecoder, tsn_indices
from avakit.training.transforms import EvalPreset, Normalize, TrainPreset

CLIP_SETS = ("task=clip", "training.select_metric=action_top1", "clip.verb_classes=4", "clip.noun_classes=5")


def jpeg(img: torch.Tensor) -> bytes:
    return encode_jpeg(img, quality=95).numpy().tobytes()


def clip_sample(
    key: str = "P01_01_0", n: int = 16, verb: int = 1, noun: int = 2, size=(40, 48), **extra
) -> dict:
    """A raw clip sample as the loader hands it over: json + n identical noise frames."""
    frame = jpeg(
        torch.randint(0, 256, (3, *size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    )
    label = {
        "key": key,
        "kind": "clips",
        "image_id": 7,
        "narration_id": key,
        "participant": "P01",
        "video": "P01_01",
        "frames": list(range(100, 100 + n)),
        "verb_class": verb,
        "noun_class": noun,
        "unseen": None,
        "tail_verb": False,
        "tail_noun": True,
        **extra,
    }
    return {"__key__": key, "json": json.dumps(label).encode(), **{f"{k:03d}.jpg": frame for k in range(n)}}


def test_tsn_eval_takes_the_centre_of_each_segment() -> None:
    assert tsn_indices(16, 8, train=False) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert tsn_indices(8, 8, train=False) == list(range(8))
    assert tsn_indices(3, 8, train=False) == [0, 0, 0, 1, 1, 2, 2, 2]  # fewer stored: repeats


def test_tsn_train_draws_within_each_segment() -> None:
    torch.manual_seed(0)
    seen = [set() for _ in range(8)]
    for _ in range(200):
        for k, i in enumerate(tsn_indices(16, 8, train=True)):
            assert 2 * k <= i < 2 * k + 2
            seen[k].add(i)
    assert all(len(s) == 2 for s in seen)  # both frames of each segment get drawn
    short = tsn_indices(4, 8, train=True)
    assert short == sorted(short) and set(short) == {0, 1, 2, 3}


def test_one_crop_flip_and_jitter_for_every_frame(tiny_config) -> None:
    cfg = tiny_config(
        *CLIP_SETS,
        "transform.augmentation.color_jitter.brightness=0.4",
        "transform.augmentation.color_jitter.contrast=0.4",
        "transform.augmentation.random_erasing.p=0.5",
        "transform.augmentation.crop_scale=[0.5,1.0]",
    )
    dec = ClipDecoder(TrainPreset(cfg.transform), 32, 8, (4, 5), train=True)
    torch.manual_seed(1)
    outs = [dec(clip_sample())[0] for _ in range(6)]
    for frames in outs:
        assert frames.shape == (8, 3, 32, 32) and frames.dtype == torch.uint8
        assert all(torch.equal(frames[0], f) for f in frames[1:])  # identical frames stay identical
    assert not all(torch.equal(outs[0], o) for o in outs[1:])  # but clips get different crops


def test_bad_samples_become_counted_placeholders(tiny_config) -> None:
    cfg = tiny_config(*CLIP_SETS)
    dec = get_task("clip").decoder(EvalPreset(cfg.transform), 32, CLIPS, False, cfg)
    missing = clip_sample("P01_01_3")
    del missing["005.jpg"]
    broken = clip_sample("P01_01_4")
    broken["001.jpg"] = b"not a jpeg"  # eval takes frames 1, 3, ...: decoded, fails
    mixed = clip_sample("P01_01_6")
    mixed["003.jpg"] = jpeg(torch.zeros((3, 20, 20), dtype=torch.uint8))
    cases = {
        0: clip_sample(),
        int(Reason.CLIP): clip_sample("P01_01_1", verb=4),  # class id = the configured count
        int(Reason.KEY): {**clip_sample("P01_01_2"), "__key__": "other"},
        int(Reason.MEMBERS): missing,
        int(Reason.IMAGE): broken,
        -1: mixed,  # frames of different sizes: IMAGE too
        int(Reason.JSON): {**clip_sample("P01_01_5"), "json": b"{"},
    }
    out = {code: dec(s) for code, s in cases.items()}
    assert {c: o[-1] for c, o in out.items()} == {**{c: c for c in cases if c >= 0}, -1: int(Reason.IMAGE)}
    frames, labels, ids, codes = dec.collate(list(out.values()))
    assert frames.shape == (7, 8, 3, 32, 32)
    ctx = StepContext(
        model=None, normalize=Normalize([0.5] * 3, [0.5] * 3), optimizer=None, loss_fn=None,
        output_mode="regression", device=torch.device("cpu"), scale=CLIPS,
    )  # fmt: skip
    p = get_task("clip").prepare((frames, labels, ids, codes), ctx)
    assert (p.n, p.corrupt, tuple(p.x.shape)) == (1, 6, (8, 3, 32, 32))
    assert p.labels["classes"].tolist() == [[1, 2]] and p.labels["flags"].tolist() == [[-1, 0, 1]]


def test_model_shapes_and_loss_with_train_counts(tiny_config) -> None:
    cfg = tiny_config(*CLIP_SETS, "clip.frames=4", "model.mlp_hidden_dims=[]")
    model = model_from_config(cfg, scale=CLIPS)
    assert isinstance(model, ClipModel) and model.frames == 4
    clips = torch.randn(3, 4, 3, 32, 32)
    model.eval()
    verb, noun = model(clips)
    assert verb.shape == (3, 4) and noun.shape == (3, 5)
    torch.testing.assert_close(model(clips.flatten(0, 1))[0], verb)
    # temporal average pooling: the order of a clip's frames does not matter
    torch.testing.assert_close(model(clips.flip(1))[1], noun)
    task = get_task("clip")
    ctx = StepContext(
        model=model, normalize=torch.nn.Identity(), optimizer=None, loss_fn=None,
        output_mode="regression", device=torch.device("cpu"), scale=CLIPS, epoch_counts={},
    )  # fmt: skip
    classes = torch.tensor([[0, 1], [2, 3], [3, 4]])
    from avakit.tasks.base import Prepared

    loss, n = task.loss(model, Prepared(clips.flatten(0, 1), {"classes": classes}, 3, 0), ctx)
    want = torch.nn.functional.cross_entropy(verb, classes[:, 0]) + torch.nn.functional.cross_entropy(
        noun, classes[:, 1]
    )
    torch.testing.assert_close(loss, want)
    assert n == 3 and ctx.epoch_counts["n"] == 3
    assert (
        0
        <= ctx.epoch_counts["action_top1"]
        <= min(ctx.epoch_counts["verb_top1"], ctx.epoch_counts["noun_top1"])
    )


def test_summarise_metrics_and_predictions_table() -> None:
    merged = {
        "n": 2,
        "verb_prob": np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]]),
        "noun_prob": np.array([[0.5, 0.4, 0.1], [0.2, 0.2, 0.6]]),
        "classes": np.array([[0, 1], [2, 2]]),
        "flags": np.array([[1, -1, 0], [0, -1, 1]], dtype=np.int8),
        "ids": np.array([3, 9]),
        "meta": [("a", "P01", "P01_01"), ("b", "P02", "P02_03")],
    }
    found, frames = get_task("clip").summarise(merged, None, None)
    assert (found["action_top1"], found["action_top5"], found["n"]) == (0.5, 1.0, 2)
    assert found["unseen_n"] == 1 and found["unseen_action_top1"] == 0.0
    assert "tail_n" not in found  # tail_verb unknown: no tail subset
    df = frames[""]
    assert df["action_correct"].tolist() == [False, True] and df["action_top5_correct"].tolist() == [
        True,
        True,
    ]
    assert df["key"].tolist() == ["a", "b"] and df["participant"].tolist() == ["P01", "P02"]
    assert df["verb_top5"].tolist()[0] == [0, 1, 2]
    assert df["unseen"].tolist() == [True, False] and df["tail_verb"].isna().all()
    df.to_parquet(io.BytesIO())  # the nullable flags and the top-5 lists store


def test_config_rules(tiny_config) -> None:
    with pytest.raises(AvakitError, match="task clip picks its best epoch"):
        tiny_config("task=clip", "training.select_metric=srcc")
    with pytest.raises(AvakitError, match="'action_top1' needs task: clip"):
        tiny_config("training.select_metric=action_top1")
    with pytest.raises(AvakitError, match="task pairwise picks its best epoch"):
        tiny_config("task=pairwise", "model.output_mode=regression", "training.select_metric=verb_top1")
    with pytest.raises(AvakitError, match="features"):
        tiny_config(*CLIP_SETS, "features.iqa=true")
    cfg = load_config("configs/epic_resnet18.yaml")
    assert (cfg.task, cfg.clip.frames, cfg.model.backbone, cfg.model.dropout) == ("clip", 8, "resnet18", 0.3)
    assert (cfg.training.batch_size, cfg.training.max_epochs, cfg.training.checkpoint_every) == (32, 30, 5)
    assert cfg.model.mlp_hidden_dims == [] and cfg.training.select_metric == "action_top1"
    aug = cfg.transform.augmentation
    assert (aug.crop_scale, aug.random_erasing.p, aug.random_erasing.scale) == ([0.85, 1.0], 0.1, [0.02, 0.1])
    assert (cfg.training.scheduler, cfg.training.plateau_factor, cfg.training.plateau_patience) == (
        "plateau",
        0.5,
        3,
    )


def test_manifest_classes(tmp_path) -> None:
    good = {"classes": {"verb": ["take", "put"], "noun": ["cup", "plate", "tap"]}}
    assert check_classes(good, "m.json")["noun"][2] == "tap"
    for bad, key in (({}, "classes"), ({"classes": {"verb": [], "noun": ["a"]}}, "classes.verb")):
        with pytest.raises(AvakitError, match=key):
            check_classes(bad, "m.json")
    with pytest.raises(AvakitError, match=r"classes.noun\[1\]"):
        check_classes({"classes": {"verb": ["a"], "noun": ["a", ""]}}, "m.json")
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(good))
    assert run_classes([str(path)], 2, 3) == good["classes"]
    with pytest.raises(
        AvakitError, match=r"2 verb and 3 noun classes.*clip.verb_classes 97, clip.noun_classes 300"
    ):
        run_classes([str(path)], 97, 300)
    with pytest.raises(AvakitError, match="manifest.json"):
        run_classes([], 2, 3)


def test_single_photo_commands_refuse_clip_runs(tiny_config) -> None:
    with pytest.raises(AvakitError, match="avakit predict"):
        refuse_clip("clip", "predict", "run/best_model.pt")
    refuse_clip("score", "predict", "x")  # other tasks pass
    from avakit.training.features import extract_features

    with pytest.raises(AvakitError, match="avakit features"):
        extract_features(tiny_config(*CLIP_SETS))
