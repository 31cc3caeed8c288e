"""The typed training config: nested dataclasses, loaded from YAML plus `key.sub=value` overrides.

One generic builder (`avakit.schema.build`) walks the dataclass field types and turns a plain dict into a
`Config`, checking types, choices and ranges (kept in field metadata) as it goes. Every problem
raises `AvakitError` with one line naming the dotted key, before any work starts.

Upper bounds sit where a huge value would cost memory or time rather than mean something (a
6000 px crop, a batch of 10^9): configs read back from a checkpoint go through the same builder
(`config_from_dict(d, where=path)`), so a crafted file gets the same one-line error. Every
float must be finite. YAML is read by `avakit.yamlio` (YAML 1.2 scalars, alias bombs refused).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from avakit.config_rules import check_cross_fields
from avakit.errors import AvakitError
from avakit.fileio import write_text_atomic
from avakit.schema import build, check_field, show
from avakit.scores import (
    ACTIVATIONS,
    AMP_MODES,
    BACKBONES,
    FEATURE_SOURCES,
    FREEZE_MODES,
    LOSSES,
    OUTPUT_MODES,
    SPLITS,
    TASK_NAMES,
)
from avakit.yamlio import parse_yaml, read_yaml, yaml_problem

# Choice lists (splits, backbones, losses -> output mode, ...) live in avakit.scores, which
# tests/test_scores.py ties to the model registries.
DEVICES = ("auto", "cpu", "cuda")
# Choices the library checks and the CLI offers (one definition, light to import for `--help`):
TTA_MODES = ("none", "flip", "five-crop")  # test-time augmentation: 1, 2 or 5 views per image
CHECKPOINTS = ("best", "last")  # a run's best_model.pt or last.pt
SHARD_SPLITS = ("random", "official")  # how `shard` splits AVA: seeded random, or the official test list
PREDICT_FORMATS = ("table", "json", "csv")  # how predictions are shown or written
SHORT_SIDE_RANGE = (1, 4096)  # pixels: the stored shorter side of a shard image
QUALITY_RANGE = (1, 100)  # JPEG quality of a stored shard image
SPLIT_SEED_MAX = 2**64 - 1  # shard's split seed (numpy's default_rng takes any; bounded to 64 bits)
# val metric that picks best_model.pt (srcc/plcc/pair_accuracy: higher is better; loss/emd: lower)
SELECT_METRICS = ("srcc", "plcc", "loss", "emd", "pair_accuracy")
# pairs.head: s(a) - s(b); an MLP on both embeddings; or a unit embedding dotted with a learned unit vector
PAIR_HEADS = ("difference", "concat", "unit")
PAIR_TARGETS = ("soft", "hard")  # pairs.target: the preference ratio itself, or which photo won
PAIR_LOSSES = ("bce", "hinge")  # pairs.loss
# pairs.view: the whole frame resized; one crop for the series; or each photo's own centre crop (folders)
PAIR_VIEWS = ("full", "same_crop", "crop")

# Upper bounds where a larger value costs memory or time instead of meaning something:
MAX_IMAGE_SIDE = 2048  # resize/crop px: one 2048² float32 image is 48 MB, a batch of 32 1.5 GB;
#                        AVA's stored photos are 256 px (a crafted 6000 px transform would ask 6 GB)
MAX_BATCH = 16_384  # samples per step (per process): more than any GPU holds at a useful image size
MAX_HIDDEN = 65_536  # units per head layer: 2048 x 65536 weights are already 512 MB
MAX_HEAD_LAYERS = 8
MAX_WORKERS = 256  # loader processes (each holds its own copy of the pipeline and shuffle buffer)
MAX_SHUFFLE_BUFFER = 100_000  # samples held per loader process (~30 KB each at 256 px: 3 GB)
MAX_SEED = 2**32 - 1  # numpy's seed range; the loaders derive torch seeds as seed * 100_003 + ...,
#                       which must stay below torch's 2**64


def _f(default: Any = dataclasses.MISSING, *, factory: Any = None, **meta: Any) -> Any:
    """A dataclass field with validation metadata (choices, ge, gt, le, lt, length, max_length, keys,
    nonempty, filename)."""
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    """Where the samples come from and how they are streamed."""

    shards: str | dict[str, str | list[str]] = _f("shards", keys=SPLITS, nonempty=True)
    num_workers: int = _f(4, ge=0, le=MAX_WORKERS)
    shuffle_buffer: int = _f(1000, ge=0, le=MAX_SHUFFLE_BUFFER)
    features: str | None = None  # folder of cached backbone features (null = compute on the fly)
    # train: every rank draws shards with replacement from the whole split (an endless stream seeded
    # by seed, epoch, rank), for more ranks x workers than shards; eval splits never resample
    resampled: bool = False
    epoch_samples: int | None = _f(None, ge=1)  # resampled epoch length over all ranks (null = split size)


@dataclass
class ModelConfig:
    """Backbone plus MLP head."""

    backbone: str = _f("resnet50", choices=BACKBONES)
    pretrained: bool = True
    weights_path: str | None = None
    mlp_hidden_dims: list[int] = _f(factory=lambda: [256], gt=0, le=MAX_HIDDEN, max_length=MAX_HEAD_LAYERS)
    dropout: float = _f(0.2, ge=0.0, lt=1.0)
    activation: str = _f("relu", choices=ACTIVATIONS)
    output_mode: str = _f("distribution", choices=OUTPUT_MODES)
    freeze: str = _f("none", choices=FREEZE_MODES)


@dataclass
class ColorJitterConfig:
    """torchvision ColorJitter strengths (0 = off); training only."""

    brightness: float = _f(0.0, ge=0.0)
    contrast: float = _f(0.0, ge=0.0)
    saturation: float = _f(0.0, ge=0.0)
    hue: float = _f(0.0, ge=0.0, le=0.5)


@dataclass
class RandomErasingConfig:
    """torchvision RandomErasing on the training crop, erased with the normalisation mean."""

    p: float = _f(0.0, ge=0.0, le=1.0)  # probability per sample (0 = off)
    scale: list[float] = _f(factory=lambda: [0.02, 0.33], length=2, gt=0.0, le=1.0)  # area bounds


@dataclass
class AugmentationConfig:
    """Training-time augmentation."""

    horizontal_flip: bool = True
    random_crop: bool = True
    color_jitter: ColorJitterConfig = field(default_factory=ColorJitterConfig)
    rotation: float = _f(0.0, ge=0.0, le=45.0)  # random rotation within +- this many degrees (0 = off)
    random_erasing: RandomErasingConfig = field(default_factory=RandomErasingConfig)
    # RandomResizedCrop area bounds [lo, hi] in (0, 1] replacing resize + random crop (null = off)
    crop_scale: list[float] | None = _f(None, length=2, gt=0.0, le=1.0)


@dataclass
class TransformConfig:
    """Image preprocessing: resize, crop, normalise, augment."""

    resize_size: int = _f(256, gt=0, le=MAX_IMAGE_SIDE)
    crop_size: int = _f(224, gt=0, le=MAX_IMAGE_SIDE)
    normalize_mean: list[float] = _f(factory=lambda: [0.485, 0.456, 0.406], length=3)
    normalize_std: list[float] = _f(factory=lambda: [0.229, 0.224, 0.225], length=3, gt=0.0)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)


@dataclass
class TrainingConfig:
    """Optimisation, schedule, loss and precision."""

    batch_size: int = _f(32, gt=0, le=MAX_BATCH)
    learning_rate: float = _f(1e-4, gt=0.0)
    differential_lr: bool = True
    head_lr_multiplier: float = _f(10.0, gt=0.0)
    optimizer: str = _f("adamw", choices=("adamw", "sgd"))
    weight_decay: float = _f(1e-4, ge=0.0)
    max_epochs: int = _f(20, ge=1)
    early_stop_patience: int = _f(5, ge=0)
    # an epoch improves only when it beats the best val value by at least this (absolute, in the
    # metric's units: 0.005 = half a point of accuracy); it alone resets patience and saves the best
    early_stop_min_delta: float = _f(0.0, ge=0.0)
    loss_type: str = _f("emd", choices=tuple(LOSSES))
    scheduler: str = _f("cosine", choices=("none", "cosine", "plateau"))
    plateau_factor: float = _f(0.1, gt=0.0, lt=1.0)  # plateau: LR times this after `patience` bad epochs
    plateau_patience: int | None = _f(None, ge=1)  # null = early_stop_patience // 2, at least 1
    warmup_epochs: int = _f(1, ge=0)
    grad_clip: float | None = _f(1.0, ge=0.0)
    grad_accum_steps: int = _f(1, ge=1)
    # autocast dtype on cuda; on any other device "off" (training.engine.resolve_amp), the same
    # for train, evaluate and features
    amp: str = _f("bf16", choices=AMP_MODES)
    channels_last: bool = False
    checkpoint_every: int = _f(1, ge=1)
    # the val metric that picks best_model.pt and drives early stopping and the plateau
    # scheduler: srcc / plcc (higher is better), loss / emd (lower; emd needs vote distributions)
    select_metric: str = _f("srcc", choices=SELECT_METRICS)


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
    batch_size: int = _f(64, gt=0, le=MAX_BATCH)  # images per forward pass during extraction
    # frozen mode (the seed's train_frozen): fuse these frozen extractors instead of model.backbone,
    # each source standardised on the train split, then the MLP head trains on their concatenation;
    # any of resnet50 (2048) resnet50_layer3 (1024) vgg16 (4096) iqa (5) clip (512); [] = off
    sources: list[str] = _f(factory=list, max_length=len(FEATURE_SOURCES))
    resnet50_weights: str | None = None  # frozen mode, offline: a local torchvision resnet50 state dict
    vgg16_weights: str | None = None  # frozen mode, offline: a local torchvision vgg16 state dict
    clip_weights: str | None = None  # frozen mode: a local open_clip ViT-B/32 (OpenAI) weights file


@dataclass
class PairsConfig:
    """The pairwise task (`task: pairwise`): how pairs of photos of one series train a scorer."""

    # difference: P(a > b) = sigmoid(s(a) - s(b)), one score per photo (predict/export work);
    # concat: an MLP on both embeddings, run in both orders and averaged (compares, cannot score alone);
    # unit: an L2-normalised embedding dotted with a learned unit vector, scores in [-1, 1] (hinge margins)
    head: str = _f("difference", choices=PAIR_HEADS)
    target: str = _f("soft", choices=PAIR_TARGETS)  # bce against the ratio p, or against p > 0.5 (ties out)
    loss: str = _f("bce", choices=PAIR_LOSSES)  # bce on the logit s(a) - s(b), or hinge with `margin`
    margin: float = _f(1.0, ge=0.0)  # hinge: the winner's score must lead by this much (logit units)
    min_confidence: float = _f(0.0, ge=0.0, le=0.5)  # train on pairs with |p - 0.5| >= this only
    # full: every photo resized whole to crop_size x crop_size (people judged the framing, a random
    # crop removes it); same_crop: shorter side to resize_size, one crop and flip for the series;
    # crop: each photo's centre crop, augmented on its own in training (flip, jitter, rotation)
    view: str = _f("full", choices=PAIR_VIEWS)
    # crop view: augment only the good photo of a pair (the seed's recipe: it leaks the label, since
    # rotation corners and jitter then appear only on positives); false = every photo alike
    augment_anchor_only: bool = False
    embedding_dim: int = _f(512, gt=0, le=MAX_HIDDEN)  # unit head: the L2-normalised embedding's width
    mos_weight: float = _f(0.0, ge=0.0)  # unit head: weight of the auxiliary MOS loss (photos with a MOS)
    max_pairs_per_group: int = _f(0, ge=0)  # training: pairs drawn afresh per folder and epoch (0 = all)


@dataclass
class EvalConfig:
    """How held-out predictions are judged."""

    # binary accuracy's cut: a photo is "good" strictly beyond it in the better direction;
    # null = the data's default (AVA.txt: 5; a labels table or preset: none, no accuracy)
    threshold: float | None = None


@dataclass
class Config:
    """The whole training config; see configs/*.yaml for every key explained."""

    name: str = _f("ava", nonempty=True, filename=True)  # the run folder is {name}-{time}
    # what the run learns: score (a photo's votes or MOS) or pairwise (which photo of a series is
    # better); the shards' labels must be of that task's kind (avakit.tasks)
    task: str = _f("score", choices=TASK_NAMES)
    output_dir: str = _f("outputs", nonempty=True)
    device: str = _f("auto", choices=DEVICES)
    seed: int = _f(42, ge=0, le=MAX_SEED)
    log_interval: int = _f(50, ge=1)
    save_val_predictions: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


_STORED = "config."  # key prefix of a config read back from a checkpoint
# Keys a stored config must hold rather than default: they define the model's input and head
# (a checkpoint from an older avakit may lack newer keys, which then take their defaults).
_STORED_REQUIRED = {
    "model": ("backbone", "output_mode", "mlp_hidden_dims", "activation"),
    "transform": ("resize_size", "crop_size", "normalize_mean", "normalize_std"),
}


def _check_stored_keys(d: Any) -> None:
    """A stored config records the keys that define its model (see _STORED_REQUIRED)."""
    if not isinstance(d, dict):
        return  # build() names the wrong type
    for section, keys in _STORED_REQUIRED.items():
        if section not in d:
            raise AvakitError(f"{_STORED}{section}: missing")
        if isinstance(d[section], dict):
            for key in keys:
                if key not in d[section]:
                    raise AvakitError(f"{_STORED}{section}.{key}: missing")


def config_from_dict(d: Any, where: str | None = None) -> Config:
    """Build and validate a `Config` from a plain (possibly partial) dict; missing keys default.

    `where` (a file, e.g. a checkpoint) is for a config read back from it: errors then read
    "WHERE: config.transform.resize_size: must be <= 2048 (got 6000)".
    """
    if where is None:
        cfg = build(Config, d)
        check_cross_fields(cfg)
        return cfg
    try:
        _check_stored_keys(d)
        cfg = build(Config, d, _STORED)
        check_cross_fields(cfg, _STORED)
    except AvakitError as exc:
        raise AvakitError(f"{where}: {exc}") from None
    return cfg


def check_value(cls: type, name: str, value: Any, key: str) -> Any:
    """`value` checked (and converted) as field `name` of config section `cls`; errors name `key`.

    For values stored outside a config (ONNX metadata) that must obey the same rules.
    """
    return check_field(cls, name, value, key)


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
        value = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise AvakitError(f"override '{item}': cannot parse value as YAML ({yaml_problem(exc)})") from None
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
        raw = read_yaml(Path(path), "config")
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise AvakitError(f"config {path}: expected a mapping of keys, got {show(raw)}")
    for item in overrides:
        _apply_override(raw, item)
    return config_from_dict(raw)
