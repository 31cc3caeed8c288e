"""Tests for avakit.config: defaults, shipped configs, overrides, validation errors, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from avakit.config import (
    Config,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from avakit.errors import AvakitError

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
SHIPPED = sorted(CONFIGS_DIR.glob("*.yaml"))


def _leaf_keys(d: dict, prefix: str = "") -> set[str]:
    """Dotted keys of the scalar/list leaves of a nested dict (a mapping of shards is a leaf)."""
    keys = set()
    for k, v in d.items():
        if isinstance(v, dict) and k != "shards":
            keys |= _leaf_keys(v, f"{prefix}{k}.")
        else:
            keys.add(prefix + k)
    return keys


def _error(overrides: list[str], path: str | Path | None = None) -> str:
    """The message of the AvakitError raised by load_config."""
    with pytest.raises(AvakitError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults() -> None:
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.name == "ava" and cfg.device == "auto" and cfg.seed == 42
    assert cfg.data.shards == "shards" and cfg.data.features is None
    assert cfg.model.backbone == "resnet50" and cfg.model.mlp_hidden_dims == [256]
    assert cfg.transform.crop_size == 224
    assert cfg.transform.augmentation.color_jitter.hue == 0.0
    assert cfg.training.learning_rate == 1e-4 and cfg.training.amp == "bf16"
    assert cfg.telemetry.collect_every_n == 10
    assert cfg == Config()


def test_shipped_configs_exist() -> None:
    assert {p.stem for p in SHIPPED} >= {"cpu", "gpu", "demo"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_loads_and_spells_out_every_key(path: Path) -> None:
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text())
    assert _leaf_keys(raw) == _leaf_keys(config_to_dict(cfg))


def test_shipped_config_values() -> None:
    gpu = load_config(CONFIGS_DIR / "gpu.yaml")
    assert gpu.model.backbone == "resnet50" and gpu.training.learning_rate == pytest.approx(3e-5)
    assert gpu.training.amp == "bf16" and gpu.training.channels_last is True
    assert gpu.training.loss_type == "emd" and gpu.training.early_stop_patience == 4
    cpu = load_config(CONFIGS_DIR / "cpu.yaml")
    assert cpu.model.backbone == "resnet18" and cpu.training.amp == "off"
    assert cpu.training.batch_size == 16 and cpu.data.num_workers == 2
    demo = load_config(CONFIGS_DIR / "demo.yaml")
    assert demo.model.pretrained is False and demo.transform.crop_size == 56
    assert demo.data.shards == "demo/shards" and demo.output_dir == "demo/outputs"
    assert demo.training.early_stop_patience == 0 and demo.training.warmup_epochs == 0


def test_overrides() -> None:
    cfg = load_config(
        CONFIGS_DIR / "gpu.yaml",
        [
            "training.batch_size=8",
            "training.learning_rate=3",  # int accepted for a float
            "training.weight_decay=1e-5",  # YAML 1.2 float, not the string '1e-5'
            "model.mlp_hidden_dims=[512, 256]",
            "model.weights_path=null",
            "training.grad_clip=null",
            "training.amp=off",  # a string, not YAML 1.1's False
            "transform.augmentation.color_jitter.brightness=0.4",
            "name=run=1",  # only the first '=' splits
        ],
    )
    assert cfg.training.batch_size == 8
    assert cfg.training.learning_rate == 3.0 and isinstance(cfg.training.learning_rate, float)
    assert cfg.training.weight_decay == pytest.approx(1e-5)
    assert cfg.model.mlp_hidden_dims == [512, 256]
    assert cfg.model.weights_path is None and cfg.training.grad_clip is None
    assert cfg.training.amp == "off"
    assert cfg.transform.augmentation.color_jitter.brightness == 0.4
    assert cfg.name == "run=1"


def test_override_without_equals() -> None:
    assert "training.batch_size" in _error(["training.batch_size"])
    assert "key=value" in _error(["=3"])


def test_unknown_key_suggests_closest() -> None:
    message = _error(["training.lerning_rate=1e-3"])
    assert "unknown key 'training.lerning_rate'" in message
    assert "did you mean 'training.learning_rate'" in message
    assert "did you mean 'training.learning_rate'" in _error(["lerning_rate=1"])
    assert "unknown key 'model.zzzz'" in _error(["model.zzzz=1"])
    assert "did you mean" not in _error(["model.zzzz=1"])


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("transform:\n  augmentation:\n    colour_jitter: {}\n")
    assert "transform.augmentation.colour_jitter" in _error([], path)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("training.batch_size=abc", "training.batch_size: expected int, got str"),
        ("training.batch_size=1.5", "training.batch_size: expected int, got float"),
        ("training.learning_rate=fast", "training.learning_rate: expected float"),
        ("model.mlp_hidden_dims=[64, x]", "model.mlp_hidden_dims[1]: expected int"),
        ("model.mlp_hidden_dims=64", "model.mlp_hidden_dims: expected list of int"),
        ("transform.normalize_mean=[0.5, 0.5]", "transform.normalize_mean: expected 3 values"),
        ("model=3", "model: expected a mapping"),
        ("name=[a]", "name: expected str"),
    ],
)
def test_wrong_type(override: str, expected: str) -> None:
    assert expected in _error([override])


def test_bool_vs_int() -> None:
    assert "telemetry.enabled: expected bool, got int" in _error(["telemetry.enabled=1"])
    assert "model.pretrained: expected bool, got str" in _error(["model.pretrained=yes"])
    assert "training.batch_size: expected int, got bool" in _error(["training.batch_size=true"])
    assert "training.learning_rate: expected float" in _error(["training.learning_rate=true"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.dropout=1.0", "model.dropout: must be < 1.0"),
        ("model.dropout=-0.1", "model.dropout: must be >= 0.0"),
        ("training.batch_size=0", "training.batch_size: must be > 0"),
        ("training.learning_rate=0", "training.learning_rate: must be > 0"),
        ("training.grad_accum_steps=0", "training.grad_accum_steps: must be >= 1"),
        ("transform.augmentation.color_jitter.hue=0.6", "color_jitter.hue: must be <= 0.5"),
        ("transform.normalize_std=[0.2, 0, 0.2]", "transform.normalize_std[1]: must be > 0"),
        ("telemetry.collect_every_n=0", "telemetry.collect_every_n: must be >= 1"),
        ("model.backbone=resnet5", "model.backbone: must be one of"),
        ("training.amp=fp8", "training.amp: must be one of 'bf16', 'fp16', 'off'"),
    ],
)
def test_out_of_range_and_choices(override: str, expected: str) -> None:
    assert expected in _error([override])


def test_zero_disables() -> None:
    cfg = load_config(None, ["training.grad_clip=0", "training.early_stop_patience=0"])
    assert cfg.training.grad_clip == 0.0 and cfg.training.early_stop_patience == 0


def test_loss_output_mode_mismatch() -> None:
    assert _error(["training.loss_type=mse"]) == (
        "training.loss_type: 'mse' needs model.output_mode 'regression' (got 'distribution')"
    )
    assert "needs model.output_mode 'distribution'" in _error(
        ["model.output_mode=regression", "training.loss_type=kl_div"]
    )
    cfg = load_config(None, ["model.output_mode=regression", "training.loss_type=l1"])
    assert cfg.training.loss_type == "l1"


def test_crop_larger_than_resize() -> None:
    message = _error(["transform.crop_size=300"])
    assert message.startswith("transform.crop_size:") and "resize_size" in message


def test_missing_file(tmp_path: Path) -> None:
    assert "not found" in _error([], tmp_path / "nope.yaml")


def test_bad_yaml_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntraining:\n  batch_size: [1, 2\n  amp: off\n")
    message = _error([], path)
    assert "invalid YAML" in message and "line 4" in message


def test_non_mapping_file(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    assert "expected a mapping" in _error([], path)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    assert load_config(empty) == Config()


def test_round_trip(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS_DIR / "gpu.yaml", ["model.mlp_hidden_dims=[128, 64]"])
    d = config_to_dict(cfg)
    assert isinstance(d["training"], dict) and d["model"]["mlp_hidden_dims"] == [128, 64]
    assert config_from_dict(d) == cfg
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    assert config_from_dict(yaml.safe_load(path.read_text())) == cfg


def test_partial_dict_gets_defaults() -> None:
    cfg = config_from_dict({"training": {"batch_size": 4}, "data": None})
    assert cfg.training.batch_size == 4 and cfg.training.max_epochs == 20
    assert cfg.data.num_workers == 4


def test_shards_as_url_mapping(tmp_path: Path) -> None:
    path = tmp_path / "remote.yaml"
    path.write_text(
        "data:\n"
        "  shards:\n"
        "    train: https://example.com/ava/train-{000000..000099}.tar\n"
        "    val: [gs://bucket/val-000000.tar, gs://bucket/val-000001.tar]\n"
        "    test: 'pipe:curl -s https://example.com/test-{000..009}.tar'\n"
    )
    cfg = load_config(path)
    assert cfg.data.shards == {
        "train": "https://example.com/ava/train-{000000..000099}.tar",
        "val": ["gs://bucket/val-000000.tar", "gs://bucket/val-000001.tar"],
        "test": "pipe:curl -s https://example.com/test-{000..009}.tar",
    }
    assert config_from_dict(config_to_dict(cfg)) == cfg
    cfg = load_config(None, ["data.shards.train=pipe:cat /data/train-{0..3}.tar"])
    assert cfg.data.shards == {"train": "pipe:cat /data/train-{0..3}.tar"}


def test_bad_shards_mapping() -> None:
    assert "did you mean 'data.shards.train'" in _error(["data.shards.trian=a.tar"])
    assert "data.shards.train: expected str or list of str" in _error(["data.shards.train=5"])
    assert "data.shards.val[1]: expected str" in _error(["data.shards.val=[a.tar, 3]"])
    assert "data.shards: must not be empty" in _error(["data.shards={}"])
    assert "data.shards: expected str or mapping" in _error(["data.shards=7"])
