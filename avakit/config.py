"""The typed training config: nested dataclasses, loaded from YAML plus `key.sub=value` overrides.

One generic builder (`_build`) walks the dataclass field types and turns a plain dict into a
`Config`, checking types, choices and ranges (kept in field metadata) as it goes. Every problem
raises `AvakitError` with one line naming the dotted key, before any work starts.

YAML is read with YAML 1.2 scalars: `off`/`yes`/`no` stay strings (so `amp: off` works) and
`3e-5` is a float, where PyYAML's YAML 1.1 defaults would give `False` and the string '3e-5'.
"""

from __future__ import annotations

import dataclasses
import difflib
import operator
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from avakit.errors import AvakitError
from avakit.fileio import write_text_atomic

SPLITS = ("train", "val", "test")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "vgg16", "mobilenet_v3_large")
# loss_type -> the model.output_mode it needs
LOSS_OUTPUT_MODE = {**dict.fromkeys(("kl_div", "cross_entropy", "emd"), "distribution")}
LOSS_OUTPUT_MODE.update(mse="regression", l1="regression")


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (true/false only) and floats (`1e-4` included)."""


_BOOL, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
        r"|[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _f(default: Any = dataclasses.MISSING, *, factory: Any = None, **meta: Any) -> Any:
    """A dataclass field with validation metadata (choices, ge, gt, le, lt, length, keys)."""
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    """Where the samples come from and how they are streamed."""

    shards: str | dict[str, str | list[str]] = _f("shards", keys=SPLITS, nonempty=True)
    num_workers: int = _f(4, ge=0)
    shuffle_buffer: int = _f(1000, ge=0)
    features: str | None = None  # folder of cached backbone features (null = compute on the fly)


@dataclass
class ModelConfig:
    """Backbone plus MLP head."""

    backbone: str = _f("resnet50", choices=BACKBONES)
    pretrained: bool = True
    weights_path: str | None = None
    mlp_hidden_dims: list[int] = _f(factory=lambda: [256], gt=0)
    dropout: float = _f(0.2, ge=0.0, lt=1.0)
    activation: str = _f("relu", choices=("relu", "tanh"))
    output_mode: str = _f("distribution", choices=("distribution", "regression"))
    freeze: str = _f("none", choices=("none", "partial", "full"))


@dataclass
class ColorJitterConfig:
    """torchvision ColorJitter strengths (0 = off); training only."""

    brightness: float = _f(0.0, ge=0.0)
    contrast: float = _f(0.0, ge=0.0)
    saturation: float = _f(0.0, ge=0.0)
    hue: float = _f(0.0, ge=0.0, le=0.5)


@dataclass
class AugmentationConfig:
    """Training-time augmentation."""

    horizontal_flip: bool = True
    random_crop: bool = True
    color_jitter: ColorJitterConfig = field(default_factory=ColorJitterConfig)


@dataclass
class TransformConfig:
    """Image preprocessing: resize, crop, normalise, augment."""

    resize_size: int = _f(256, gt=0)
    crop_size: int = _f(224, gt=0)
    normalize_mean: list[float] = _f(factory=lambda: [0.485, 0.456, 0.406], length=3)
    normalize_std: list[float] = _f(factory=lambda: [0.229, 0.224, 0.225], length=3, gt=0.0)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)


@dataclass
class TrainingConfig:
    """Optimisation, schedule, loss and precision."""

    batch_size: int = _f(32, gt=0)
    learning_rate: float = _f(1e-4, gt=0.0)
    differential_lr: bool = True
    head_lr_multiplier: float = _f(10.0, gt=0.0)
    optimizer: str = _f("adamw", choices=("adamw", "sgd"))
    weight_decay: float = _f(1e-4, ge=0.0)
    max_epochs: int = _f(20, ge=1)
    early_stop_patience: int = _f(5, ge=0)
    loss_type: str = _f("emd", choices=tuple(LOSS_OUTPUT_MODE))
    scheduler: str = _f("cosine", choices=("none", "cosine", "plateau"))
    warmup_epochs: int = _f(1, ge=0)
    grad_clip: float | None = _f(1.0, ge=0.0)
    grad_accum_steps: int = _f(1, ge=1)
    amp: str = _f("bf16", choices=("bf16", "fp16", "off"))
    channels_last: bool = False
    checkpoint_every: int = _f(1, ge=1)


@dataclass
class TelemetryConfig:
    """Gradient-norm and learning-rate telemetry (CSV files in the run folder)."""

    enabled: bool = True
    collect_every_n: int = _f(10, ge=1)


@dataclass
class FeaturesConfig:
    """Frozen-backbone features: what `avakit features` caches and the model composes."""

    layer: str = _f("final", choices=("final", "layer3"))  # layer3: ResNets only
    iqa: bool = False  # concatenate hand-crafted IQA features (sharpness, brightness, ...)
    batch_size: int = _f(64, gt=0)  # images per forward pass during extraction


@dataclass
class Config:
    """The whole training config; see configs/*.yaml for every key explained."""

    name: str = _f("ava", nonempty=True)
    output_dir: str = _f("outputs", nonempty=True)
    device: str = _f("auto", choices=("auto", "cpu", "cuda"))
    seed: int = _f(42, ge=0)
    log_interval: int = _f(50, ge=1)
    save_val_predictions: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass schema, sections included."""
    keys = []
    for name, tp in typing.get_type_hints(cls).items():
        keys.append(prefix + name)
        if dataclasses.is_dataclass(tp):
            keys += _all_keys(tp, f"{prefix}{name}.")
    return keys


def _unknown_key(key: str, valid: Sequence[str], prefix: str) -> AvakitError:
    """Error for an unknown key, suggesting the closest sibling or else any close key."""
    close = difflib.get_close_matches(key, list(valid), n=1)
    if close:
        hint = prefix + close[0]
    else:
        paths = _all_keys(Config)
        leaf = difflib.get_close_matches(key, [p.rsplit(".", 1)[-1] for p in paths], n=1)
        hint = next((p for p in paths if leaf and p.rsplit(".", 1)[-1] == leaf[0]), "")
    suffix = f" (did you mean '{hint}'?)" if hint else ""
    return AvakitError(f"unknown key '{prefix}{key}'{suffix}")


def _describe(tp: Any) -> str:
    """Human name of a type annotation, for error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is list:
        return f"list of {_describe(args[0])}"
    if origin is dict:
        return f"mapping of {_describe(args[0])} to ({_describe(args[1])})"
    return "mapping" if dataclasses.is_dataclass(tp) else getattr(tp, "__name__", str(tp))


def _show(value: Any) -> str:
    """A short one-line rendering of a bad value: its type and repr."""
    text = repr(value).replace("\n", " ")
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against annotation `tp` and return it converted (int -> float, new lists)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, {} if value is None else value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arm in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arm, key)
            except AvakitError as exc:
                errors.append((typing.get_origin(arm), exc))
        for arm_origin, exc in errors:  # a container of the right kind: its inner error is clearer
            if arm_origin in (list, dict) and isinstance(value, arm_origin):
                raise exc
    elif origin is list and isinstance(value, list | tuple):
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict and isinstance(value, dict):
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    elif tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif tp in (int, str, bool) and type(value) is tp:  # type(): True is not an int here
        return value
    raise AvakitError(f"{key}: expected {_describe(tp)}, got {_show(value)}")


_OPS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}  # metadata bound -> operator


def _check_meta(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    """Apply a field's metadata rules (choices, bounds, length, keys, nonempty) to its value."""
    if value is None:
        return
    choices = meta.get("choices")
    if choices and value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        allowed = ", ".join(f"'{c}'" for c in choices)
        raise AvakitError(f"{key}: must be one of {allowed} (got {value!r}{hint})")
    if meta.get("nonempty") and (not value or isinstance(value, dict) and not all(value.values())):
        raise AvakitError(f"{key}: must not be empty")
    if "length" in meta and len(value) != meta["length"]:
        raise AvakitError(f"{key}: expected {meta['length']} values, got {len(value)}")
    if "keys" in meta and isinstance(value, dict):
        for name in value:
            if name not in meta["keys"]:
                raise _unknown_key(name, meta["keys"], key + ".")
    items = enumerate(value) if isinstance(value, list) else [(None, value)]
    for i, item in items:
        for rule, op in _OPS.items():
            if rule in meta and not getattr(operator, rule)(item, meta[rule]):
                where = key if i is None else f"{key}[{i}]"
                raise AvakitError(f"{where}: must be {op} {meta[rule]} (got {item!r})")


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a plain dict, recursively, validating every field."""
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "config"
        raise AvakitError(f"{where}: expected a mapping, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    for name in data:
        if name not in hints:
            raise _unknown_key(str(name), list(hints), prefix)
    kwargs = {}
    for fld in dataclasses.fields(cls):
        if fld.name in data:
            key = prefix + fld.name
            kwargs[fld.name] = _coerce(data[fld.name], hints[fld.name], key)
            _check_meta(kwargs[fld.name], fld.metadata, key)
    return cls(**kwargs)


def _check_cross_fields(cfg: Config) -> None:
    """Rules that span several keys."""
    loss, mode = cfg.training.loss_type, cfg.model.output_mode
    if LOSS_OUTPUT_MODE[loss] != mode:
        raise AvakitError(
            f"training.loss_type: '{loss}' needs model.output_mode "
            f"'{LOSS_OUTPUT_MODE[loss]}' (got '{mode}')"
        )
    if cfg.features.layer == "layer3" and not cfg.model.backbone.startswith("resnet"):
        raise AvakitError(
            f"features.layer: 'layer3' needs a ResNet backbone (got model.backbone '{cfg.model.backbone}')"
        )
    crop, resize = cfg.transform.crop_size, cfg.transform.resize_size
    if crop > resize:
        raise AvakitError(
            f"transform.crop_size: {crop} must be <= transform.resize_size ({resize})"
        )


def config_from_dict(d: dict) -> Config:
    """Build and validate a `Config` from a plain (possibly partial) dict; missing keys default."""
    cfg = _build(Config, d)
    _check_cross_fields(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts/lists, the inverse of `config_from_dict`."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (creating parent folders), atomically."""
    path = Path(path)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AvakitError(f"cannot write config {path}: {exc.strerror or exc}") from exc
    write_text_atomic(path, text)


def _apply_override(raw: dict, item: str) -> None:
    """Set one `key.sub=value` override in the raw dict; the value is parsed as YAML."""
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise AvakitError(f"override '{item}': expected key=value, e.g. training.batch_size=32")
    try:
        value = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise AvakitError(f"override '{item}': cannot parse value {text!r} as YAML") from exc
    node = raw
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            section = ".".join(parts[: i + 1])
            raise AvakitError(f"override '{item}': '{section}' is not a section")
        node = node[part]
    node[parts[-1]] = value


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (None = all defaults), apply dotted overrides, validate."""
    raw: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise AvakitError(f"config file not found: {path}")
        try:
            raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
        except OSError as exc:
            raise AvakitError(f"cannot read config {path}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise AvakitError(f"config {path}: invalid YAML{where}: {problem}") from exc
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise AvakitError(f"config {path}: expected a mapping of keys, got {_show(raw)}")
    for item in overrides:
        _apply_override(raw, item)
    return config_from_dict(raw)
