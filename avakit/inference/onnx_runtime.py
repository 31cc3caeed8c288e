"""Scoring with an exported ONNX model in onnxruntime: no torch anywhere on this import path.

`avakit export` writes everything `predict` needs into the model's `metadata_props`, so an
.onnx file alone is enough to score photos the way the run's checkpoint would. Every value is
a string: plain text for the STRING_KEYS, JSON for the rest (numbers, lists); `null` means
unknown. This module owns that schema; `avakit.inference.export` writes it with `encode_metadata`.
`labels` (JSON of `Scale.as_dict()`) says what the output means: K points or a MOS, range,
direction; a file written before scales has no `labels` and is read as AVA's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from avakit.config import TransformConfig, check_value
from avakit.dataset.images import check_preprocessing
from avakit.errors import AvakitError
from avakit.extras import require
from avakit.fileio import atomic_write
from avakit.inference.preprocess import PreprocessSpec
from avakit.inference.scorer import Scorer
from avakit.scores import AVA, Scale

# What export writes; the first six are required to score (see PreprocessSpec).
REQUIRED_KEYS = (
    "avakit_version",
    "output_mode",
    "input_size",
    "resize_size",
    "normalize_mean",
    "normalize_std",
)
STRING_KEYS = frozenset(
    {
        "avakit_version",
        "output_mode",
        "backbone",
        "trained_at",
        "manifest_sha256",
        "precision",
        "checkpoint",
        "exported_at",
        "quantization",
    }
)
OUTPUT_MODES = ("distribution", "regression")
# TransformConfig field -> the metadata key holding it (checked with the config's own rules)
_TRANSFORM_KEYS = {
    "resize_size": "resize_size",
    "crop_size": "input_size",
    "normalize_mean": "normalize_mean",
    "normalize_std": "normalize_std",
}


def encode_metadata(values: dict[str, Any]) -> dict[str, str]:
    """Metadata values -> the strings stored in `metadata_props` (None -> "null")."""
    out = {}
    for key, value in values.items():
        if value is None:
            out[key] = "null"
        elif key in STRING_KEYS:
            out[key] = str(value)
        else:
            out[key] = json.dumps(value)
    return out


def decode_metadata(props: dict[str, str]) -> dict[str, Any]:
    """The inverse of `encode_metadata`; keys it does not know are parsed as JSON when they can be."""
    out: dict[str, Any] = {}
    for key, text in props.items():
        if text == "null":
            out[key] = None
        elif key in STRING_KEYS:
            out[key] = text
        else:
            try:
                out[key] = json.loads(text)
            except ValueError:  # not JSON, or an integer of more than 4300 digits: kept as text
                out[key] = text
    return out


def _session(path: Path, threads: int | None) -> Any:
    """An onnxruntime CPU session with all graph optimisations; AvakitError for a bad file."""
    require("scoring an ONNX model (predict --onnx)", ("onnxruntime",))
    import onnxruntime as ort

    if not path.is_file():
        raise AvakitError(f"{path}: ONNX model not found")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No busy-waiting between runs: predict decodes the next batch on the same cores meanwhile.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises several types for a foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise AvakitError(f"{path}: not a readable ONNX model ({first[:200]})") from None


def scale_from_metadata(path: Path, meta: dict[str, Any]) -> Scale:
    """The Scale of decoded metadata: its `labels`, validated (AVA when the key is absent: a file
    exported before scales). AvakitError naming the file and key for anything else."""
    if "labels" not in meta:
        return AVA
    labels = meta["labels"]
    if isinstance(labels, str):
        raise AvakitError(f"{path}: metadata labels is not JSON ({labels[:60]!r})")
    try:
        return Scale.from_dict(labels, f"{path}: metadata labels")
    except ValueError as e:
        raise AvakitError(str(e)[:300]) from None


def _spec_from_metadata(path: Path, meta: dict[str, Any]) -> tuple[PreprocessSpec, str]:
    """(PreprocessSpec, output_mode) from decoded metadata, validated like a checkpoint's values:
    the config's types and bounds for the transform, `check_preprocessing` for the shard step.
    AvakitError naming the file and key otherwise."""
    if "avakit_version" not in meta:
        raise AvakitError(f"{path}: not an avakit model (no avakit metadata; export it with `avakit export`)")
    missing = [k for k in REQUIRED_KEYS if meta.get(k) is None]
    if missing:
        raise AvakitError(f"{path}: avakit metadata lacks {', '.join(missing)}")
    mode = meta["output_mode"]
    if mode not in OUTPUT_MODES:
        raise AvakitError(
            f"{path}: metadata output_mode {mode[:60]!r} is not one of {', '.join(OUTPUT_MODES)}"
        )
    try:
        transform = TransformConfig(
            **{
                field: check_value(TransformConfig, field, meta[key], key)
                for field, key in _TRANSFORM_KEYS.items()
            }
        )
    except AvakitError as e:
        raise AvakitError(f"{path}: metadata {e}") from None
    if transform.crop_size > transform.resize_size:
        raise AvakitError(
            f"{path}: metadata input_size {transform.crop_size} must be <= resize_size "
            f"({transform.resize_size})"
        )
    shard = check_preprocessing({k: meta.get(k) for k in ("short_side", "quality")}, f"{path}: metadata", "")
    return PreprocessSpec.from_config(transform, shard), mode


def _check_graph(path: Path, session: Any, spec: PreprocessSpec, mode: str, scale: Scale) -> None:
    """The graph's static input/output dims agree with the metadata (else one line at load)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise AvakitError(
            f"{path}: not an avakit model ({len(inputs)} inputs, {len(outputs)} outputs; expected 1 each)"
        )
    shape = list(inputs[0].shape)
    want = [None, 3, spec.crop_size, spec.crop_size]
    if len(shape) != 4 or any(
        isinstance(g, int) and w is not None and g != w for g, w in zip(shape, want, strict=True)
    ):
        raise AvakitError(
            f"{path}: metadata input_size {spec.crop_size} does not match the model's input "
            f"shape {shape} (expected [batch, 3, {spec.crop_size}, {spec.crop_size}])"
        )
    if mode == "distribution" and scale.k is None:
        raise AvakitError(f"{path}: metadata output_mode distribution needs a vote scale, labels is a MOS")
    out = list(outputs[0].shape)
    rank, last = (2, scale.k) if mode == "distribution" else (1, None)
    if len(out) != rank or (last is not None and isinstance(out[-1], int) and out[-1] != last):
        expected = f"[batch, {last}]" if mode == "distribution" else "[batch]"
        raise AvakitError(
            f"{path}: metadata output_mode {mode} does not match the model's output shape {out} "
            f"(expected {expected} for labels {scale.score_name})"
        )


def _open(path: Path, threads: int | None) -> tuple[Any, dict[str, Any], PreprocessSpec, str, Scale]:
    """(session, decoded metadata, spec, output_mode, scale) of an .onnx file, all checked."""
    session = _session(path, threads)
    meta = decode_metadata(session.get_modelmeta().custom_metadata_map)
    spec, mode = _spec_from_metadata(path, meta)
    scale = scale_from_metadata(path, meta)
    _check_graph(path, session, spec, mode, scale)
    return session, meta, spec, mode, scale


def read_metadata(path: Path) -> dict[str, Any]:
    """The decoded avakit metadata of an .onnx file (AvakitError if it has none or it is invalid)."""
    return _open(Path(path), 1)[1]


class OnnxScorer(Scorer):
    """An exported model in onnxruntime (CPUExecutionProvider), with the run's preprocessing.

    `__call__` takes a normalised float32 batch [B, 3, c, c] and returns what the model's
    `scores` output holds: probabilities over the K points [B, K] (distribution) or scores in
    the scale's units, clamped to [lo, hi], [B] (regression). `scale` comes from the metadata.
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session, self.metadata, self.spec, self.output_mode, self.scale = _open(self.path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run the session on a float32 batch [B, 3, c, c]; returns its `scores` output."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: batch})[0]


def write_metadata(path: Path, metadata: dict[str, Any] | None, model: Any = None) -> None:
    """Write an ONNX model to `path` atomically (one inline file) with `metadata` as its metadata_props.

    `model` is an onnx ModelProto (default: the file at `path`); `metadata` None keeps its props.
    """
    import onnx

    model = onnx.load(str(path)) if model is None else model
    if metadata is not None:
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, encode_metadata(metadata))
    with atomic_write(path) as f:
        onnx.save(model, f)
