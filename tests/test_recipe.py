"""The cluster recipe's options: augmentation keys, plateau settings, resampled shards, workers warning."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from avakit.config import Config, load_config
from avakit.dataset.sources import resolve_split
from avakit.errors import AvakitError
from avakit.training import transforms
from avakit.training.checkpoint import load_checkpoint, run_config, save_checkpoint
from avakit.training.distributed import DistInfo
from avakit.training.engine import WarmupSchedule
from avakit.training.fit import fit
from avakit.training.loader import SampleDecoder, make_loader
from avakit.training.run_checkpoint import restore
from avakit.training.shard_share import idle_workers_warning, no_shard_error, steps_per_epoch
from avakit.training.trainer import _shard_sources, build_trainer
from avakit.training.transforms import EvalPreset, Normalize, TrainPreset

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
AUG = "transform.augmentation."
MEAN = (0.485, 0.456, 0.406)


def _error(*overrides: str) -> str:
    with pytest.raises(AvakitError) as info:
        load_config(None, list(overrides))
    assert "\n" not in str(info.value)
    return str(info.value)


def test_defaults_are_off_and_every_config_has_the_keys() -> None:
    cfg = load_config(None)
    aug = cfg.transform.augmentation
    assert aug.random_erasing.p == 0.0 and aug.random_erasing.scale == [0.02, 0.33]
    assert aug.crop_scale is None
    assert cfg.training.plateau_factor == 0.1 and cfg.training.plateau_patience is None
    assert cfg.data.resampled is False and cfg.data.epoch_samples is None
    for path in sorted(CONFIGS.glob("*.yaml")):
        text = path.read_text()
        for key in ("random_erasing:", "crop_scale:", "plateau_factor:", "plateau_patience:", "resampled:"):
            line = next(line for line in text.splitlines() if line.strip().startswith(key))
            assert "#" in line, (path.name, key)  # every key commented


def test_cluster_config_is_the_recipe() -> None:
    cfg = load_config(CONFIGS / "cluster.yaml")
    t, aug = cfg.training, cfg.transform.augmentation
    assert cfg.task == "score" and cfg.model.backbone == "resnet18" and cfg.model.pretrained
    assert t.optimizer == "adamw" and t.learning_rate == 1e-4 and t.weight_decay == 1e-4
    assert t.scheduler == "plateau" and t.plateau_factor == 0.5 and t.plateau_patience == 3
    assert t.select_metric == "srcc" and t.warmup_epochs == 0 and t.amp == "bf16"
    assert t.checkpoint_every == 5 and t.max_epochs == 30 and t.batch_size == 32
    assert cfg.data.num_workers == 4
    assert aug.crop_scale == [0.85, 1.0] and 0 < aug.random_erasing.p <= 0.25
    assert aug.random_erasing.scale[1] <= 0.2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (f"{AUG}random_erasing.p=1.5", "transform.augmentation.random_erasing.p: must be <= 1.0"),
        (f"{AUG}random_erasing.scale=[0.0, 0.1]", "random_erasing.scale[0]: must be > 0.0"),
        (f"{AUG}random_erasing.scale=[0.3, 0.1]", "random_erasing.scale: [lo, hi] needs lo <= hi"),
        (f"{AUG}random_erasing.scale=[0.1]", "random_erasing.scale: expected 2 values"),
        (f"{AUG}crop_scale=[0.9, 0.5]", "transform.augmentation.crop_scale: [lo, hi] needs lo <= hi"),
        (f"{AUG}crop_scale=[0.5, 1.5]", "crop_scale[1]: must be <= 1.0"),
        (f"{AUG}crop_scale=0.5", "crop_scale: expected list of float or null"),
        ("training.plateau_factor=1.0", "training.plateau_factor: must be < 1.0"),
        ("training.plateau_factor=0", "training.plateau_factor: must be > 0.0"),
        ("training.plateau_patience=0", "training.plateau_patience: must be >= 1"),
        ("data.epoch_samples=0", "data.epoch_samples: must be >= 1"),
        ("data.resampled=yes", "data.resampled: expected bool"),
    ],
)
def test_validation_errors_are_one_line(override: str, message: str) -> None:
    assert message in _error(override)


def test_resampled_feature_cache_is_refused() -> None:
    assert "data.resampled" in _error("data.resampled=true", "data.features=cache")
    assert "data.epoch_samples: sets a resampled epoch" in _error("data.epoch_samples=100")


def _preset(*overrides: str) -> TrainPreset:
    base = ["transform.resize_size=48", "transform.crop_size=40"]
    return TrainPreset(load_config(None, base + list(overrides)).transform)


ALL_ON = (
    f"{AUG}crop_scale=[0.5, 1.0]",
    f"{AUG}random_erasing.p=1.0",
    f"{AUG}color_jitter.brightness=0.4",
    f"{AUG}color_jitter.contrast=0.4",
    f"{AUG}color_jitter.saturation=0.4",
    f"{AUG}color_jitter.hue=0.1",
)


@pytest.mark.parametrize(
    "overrides", [ALL_ON, (f"{AUG}random_erasing.p=0.5",), ()], ids=["all", "crop", "default"]
)
def test_preset_draws_once_per_stack(overrides: tuple[str, ...]) -> None:
    """Frames that are copies of one image stay identical; a stack gets what one image gets."""
    preset = _preset(*overrides)
    img = torch.randint(0, 256, (3, 56, 72), dtype=torch.uint8)
    for seed in range(8):
        torch.manual_seed(seed)
        stack = preset(img.expand(6, 3, 56, 72).contiguous())
        assert stack.shape == (6, 3, 40, 40) and stack.dtype == torch.uint8
        assert all(torch.equal(stack[0], frame) for frame in stack[1:])
        torch.manual_seed(seed)
        assert torch.equal(preset(img), stack[0])


def test_erasing_is_torchvision_with_the_mean() -> None:
    """The erased patch is round(mean * 255), 0 after Normalize; the box is v2.RandomErasing's."""
    preset = _preset(
        f"{AUG}random_erasing.p=1.0", f"{AUG}random_erasing.scale=[0.1, 0.2]", f"{AUG}random_crop=false"
    )
    preset.flip = False
    fill = [round(m * 255) for m in MEAN]
    reference = v2.RandomErasing(1.0, (0.1, 0.2), value=fill)
    img = torch.full((3, 48, 48), 255, dtype=torch.uint8)
    for seed in range(5):
        torch.manual_seed(seed)
        out = preset(img)
        torch.manual_seed(seed)
        assert torch.equal(out, reference(img[..., 4:44, 4:44]))
        erased = (out != 255).all(0)
        assert 0.1 * 1600 * 0.9 <= int(erased.sum()) <= 0.2 * 1600 * 1.1
        for c in range(3):
            assert set(out[c][erased].tolist()) == {fill[c]}
        normed = Normalize(MEAN, (0.229, 0.224, 0.225))(out[None])[0]
        assert normed[:, erased].abs().max() < 0.01


def test_random_resized_crop_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    boxes: list[tuple[int, int, int, int]] = []
    resized_crop = transforms.F.resized_crop

    def spy(img, top, left, h, w, size, antialias=True):
        boxes.append((top, left, h, w))
        return resized_crop(img, top, left, h, w, size, antialias=antialias)

    monkeypatch.setattr(transforms.F, "resized_crop", spy)
    preset = _preset(f"{AUG}crop_scale=[0.5, 0.7]")
    img = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8)
    for seed in range(40):
        torch.manual_seed(seed)
        assert preset(img).shape == (3, 40, 40)
    for top, left, h, w in boxes:
        assert 0.5 * 0.95 <= h * w / (60 * 80) <= 0.7 * 1.05
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
        assert top + h <= 60 and left + w <= 80
    assert len({b[:2] for b in boxes}) > 10  # the box moves
    cfg = load_config(
        None, ["transform.resize_size=48", "transform.crop_size=40", f"{AUG}crop_scale=[0.5, 0.7]"]
    )
    plain = load_config(None, ["transform.resize_size=48", "transform.crop_size=40"])
    assert torch.equal(EvalPreset(cfg.transform)(img), EvalPreset(plain.transform)(img))  # eval unchanged


def test_plateau_factor_and_patience() -> None:
    schedule = WarmupSchedule("plateau", 0, 100, patience=2, factor=0.5)
    factors = []
    for value in (0.5, 0.4, 0.3, 0.6, 0.6, 0.6, 0.1, 0.1):
        schedule.epoch_end(value)
        factors.append(schedule(0))
    assert factors == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.125]
    cosine = WarmupSchedule("cosine", 0, 100, patience=1, factor=0.5)
    cosine.epoch_end(0.1)
    cosine.epoch_end(0.0)
    assert cosine.plateau_factor == 1.0  # only the plateau scheduler reacts


@pytest.mark.parametrize(
    ("overrides", "patience", "factor"),
    [
        (("training.early_stop_patience=5",), 2, 0.1),  # today's rule: half of early stopping
        (("training.early_stop_patience=0",), 1, 0.1),
        (("training.plateau_patience=3", "training.plateau_factor=0.5"), 3, 0.5),
    ],
)
def test_trainer_builds_the_plateau(
    tiny_cfg: Callable[..., Config], shared_shards: Path, tmp_path: Path, overrides, patience, factor
) -> None:
    cfg = tiny_cfg(shared_shards, "training.scheduler=plateau", *overrides)
    tr = build_trainer(cfg, tmp_path, 1.0, DistInfo(), torch.device("cpu"))
    assert (tr.schedule.patience, tr.schedule.factor) == (patience, factor)


def test_old_scheduler_state_resumes(
    tiny_cfg: Callable[..., Config], shared_shards: Path, tmp_path: Path
) -> None:
    """A last.pt written before plateau_factor existed (no `factor` in its schedule) still resumes."""
    cfg = tiny_cfg(shared_shards, "training.scheduler=plateau", "training.plateau_factor=0.5")
    part = fit(cfg, output_dir=tmp_path, stop_after_epochs=1)
    last = part / "last.pt"
    ckpt = load_checkpoint(last)
    for entry in ckpt["scheduler"]["lr_lambdas"]:
        entry.pop("factor")
        entry.update(plateau_factor=0.1, best=0.25, bad_epochs=1)
    save_checkpoint(last, ckpt)
    tr = build_trainer(run_config(part), part, 1.0, DistInfo(), torch.device("cpu"))
    restore(tr, load_checkpoint(last), last)
    s = tr.schedule
    assert (s.factor, s.plateau_factor, s.best, s.bad_epochs) == (0.5, 0.1, 0.25, 1)
    assert fit(run_config(part), resume=part, stop_after_epochs=0) == part  # fit's own restore


def _ids(source, *, epoch: int = 0, rank: int = 0, workers: int = 0, batches: int = 6) -> list[int]:
    preset = _preset()
    loader = make_loader(
        source,
        SampleDecoder(preset, 40),
        batch_size=8,
        train=True,
        seed=3,
        epoch=epoch,
        num_workers=workers,
        shuffle_buffer=20,
        rank=rank,
        world_size=2,
        resampled=True,
    )
    return [i for _, _, ids, _ in itertools.islice(loader, batches) for i in ids.tolist()]


def test_resampled_stream_is_seeded_and_endless(shared_shards: Path) -> None:
    source = resolve_split(str(shared_shards), "train")
    n = source.samples
    first = _ids(source, batches=n // 8 + 4)  # longer than the split: the stream does not end
    assert len(first) == (n // 8 + 4) * 8
    assert first == _ids(source, batches=n // 8 + 4)  # same seed, epoch, rank: same batches
    assert len(set(first)) < len(first)  # with replacement: samples repeat
    assert _ids(source, epoch=1) != first[:48] and _ids(source, rank=1) != first[:48]
    two = _ids(source, workers=2)
    assert two == _ids(source, workers=2)  # workers: each its own seeded stream, still determined
    assert set(two) <= {int(k) for k in _all_keys(source)}


def _all_keys(source) -> list[str]:
    from avakit.training.loader import iter_samples

    return [s["__key__"] for s in iter_samples(source)]


def test_resampled_epoch_length() -> None:
    cfg = load_config(None, ["data.resampled=true", "data.epoch_samples=1000", "training.batch_size=16"])
    assert steps_per_epoch(cfg, 72, 1.0, 4) == 1000 // (4 * 16)
    accum = load_config(None, ["data.resampled=true", "training.batch_size=8", "training.grad_accum_steps=2"])
    assert steps_per_epoch(accum, 100, 1.0, 2) == 100 // (2 * 8 * 2)  # null: the split's size
    assert steps_per_epoch(accum, 10, 1.0, 2) == 1  # at least one step
    with pytest.raises(AvakitError, match="data.epoch_samples: data.resampled needs it"):
        steps_per_epoch(accum, None, 1.0, 2)  # URL shards of unknown size
    plain = load_config(None, ["training.batch_size=16"])
    assert steps_per_epoch(plain, 72, 1.0, 1) == 5 and steps_per_epoch(plain, 72, 1.0, 2) == 2
    assert steps_per_epoch(plain, None, 1.0, 1) is None


def test_resampled_run_resumes_exactly(
    tiny_cfg: Callable[..., Config], shared_shards: Path, tmp_path: Path
) -> None:
    cfg = tiny_cfg(shared_shards, "data.resampled=true", "data.epoch_samples=40")
    full = fit(cfg, output_dir=tmp_path / "a")
    part = fit(cfg, output_dir=tmp_path / "b", stop_after_epochs=1)
    fit(run_config(part), resume=part)
    a, b = (json.loads((run / "results.json").read_text()) for run in (full, part))
    assert a["steps"] == 2 * (40 // 16)  # epoch_samples / batch, per epoch
    for key in ("srcc", "loss", "mae"):
        assert a["val"][key] == pytest.approx(b["val"][key], abs=1e-6)
    ha, hb = (json.loads((run / "training_history.json").read_text()) for run in (full, part))
    assert [h["train_loss"] for h in ha] == pytest.approx([h["train_loss"] for h in hb], abs=1e-6)


def test_workers_warning_arithmetic() -> None:
    """AVA-like: 230k samples in 200 shards over 64 ranks x 8 workers leave 5 of 8 idle."""
    text = idle_workers_warning(200, 230_000, 64, 8)
    assert text is not None and "\n" not in text
    assert text.startswith("data.num_workers 8: each of 64 ranks gets 3 train shards, so 5 workers idle")
    assert "--shard-size 449`" in text and "data.resampled: true" in text
    assert 230_000 // 449 + 1 >= 64 * 8  # the suggested size fills every worker
    assert "--shard-size N`" in (idle_workers_warning(200, None, 64, 8) or "")
    assert idle_workers_warning(200, 230_000, 64, 3) is None  # every worker has a shard
    assert idle_workers_warning(200, 230_000, 8, 8) is None
    assert "the one process gets 5 train shards, so 3 workers idle" in (
        idle_workers_warning(5, 72, 1, 8) or ""
    )
    assert "data.resampled: true" in str(no_shard_error("train", 2, 3))


def test_no_shard_error_names_resampled(shared_shards: Path) -> None:
    source = resolve_split(str(shared_shards), "train")
    world = len(source.entries) + 1
    kwargs = dict(batch_size=8, train=True, seed=0, epoch=0, rank=world - 1, world_size=world)
    with pytest.raises(AvakitError, match=r"fewer shards \(\d+\) than processes .*data.resampled: true"):
        make_loader(source, SampleDecoder(_preset(), 40), **kwargs)
    loader = make_loader(source, SampleDecoder(_preset(), 40), resampled=True, **kwargs)
    assert len(next(iter(loader))[2]) == 8  # resampled: every rank draws from all shards


def test_training_run_logs_the_workers_warning(
    tiny_cfg: Callable[..., Config], shared_shards: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shards = len(resolve_split(str(shared_shards), "train").entries)
    cfg = tiny_cfg(shared_shards, f"data.num_workers={shards + 1}")
    run = fit(cfg, output_dir=tmp_path, stop_after_epochs=0)  # logged at the start, before any epoch
    log = (run / "training.log").read_text()
    expected = f"data.num_workers {shards + 1}: the one process gets {shards} train shards, so 1 worker idle"
    assert expected in log
    assert any(expected in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_ddp_share_checks_before_any_write(tiny_cfg: Callable[..., Config], shared_shards: Path) -> None:
    """Under DDP: too few shards is an error naming resampled, at start; URL shards need epoch_samples."""
    shards = len(resolve_split(str(shared_shards), "train").entries)
    many = DistInfo(rank=0, world_size=shards + 1)
    with pytest.raises(
        AvakitError, match=f"fewer shards \\({shards}\\) than processes .*data.resampled: true"
    ):
        _shard_sources(tiny_cfg(shared_shards), many)
    assert (
        len(_shard_sources(tiny_cfg(shared_shards, "data.resampled=true"), many)["train"].entries) == shards
    )
    urls = {
        split: [str(p) for p in sorted(shared_shards.glob(f"{split}-*.tar"))] for split in ("train", "val")
    }
    flow = ",".join(f"{k}: [{', '.join(v)}]" for k, v in urls.items())
    pair = DistInfo(rank=0, world_size=2)
    with pytest.raises(AvakitError, match="manifest.json .or data.resampled with data.epoch_samples"):
        _shard_sources(tiny_cfg(f"{{{flow}}}"), pair)
    found = _shard_sources(tiny_cfg(f"{{{flow}}}", "data.resampled=true", "data.epoch_samples=64"), pair)
    assert found["train"].samples is None and len(found["train"].entries) == len(urls["train"])
