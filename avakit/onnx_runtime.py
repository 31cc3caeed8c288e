"""Scoring with an exported ONNX model in onnxruntime: no torch anywhere on this import path.

`avakit export` writes everything `predict` needs into the model's `metadata_props`, so an
.onnx file alone is enough to score photos the way the run's checkpoint would. Every value is
a string: plain text for the STRING_KEYS, JSON for the rest (numbers, lists); `null` means
unknown. This module owns that schema; `avakit.export` writes it with `encode_metadata`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from avakit.errors import AvakitError
from avakit.extras import require
from avakit.predict import Scorer
from avakit.preprocess import PreprocessSpec

# What export writes; the first six are required to score (see PreprocessSpec).
REQUIRED_KEYS = ("avakit_version", "output_mode", "input_size", "resize_size", "normalize_mean",
                 "normalize_std")
STRING_KEYS = frozenset({"avakit_version", "output_mode", "backbone", "trained_at", "manifest_sha256",
                         "precision", "checkpoint", "exported_at", "quantization"})
OUTPUT_MODES = ("distribution", "regression")


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
            except json.JSONDecodeError:
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


def _spec_from_metadata(path: Path, meta: dict[str, Any]) -> tuple[PreprocessSpec, str]:
    """(PreprocessSpec, output_mode) from decoded metadata; AvakitError naming the file otherwise."""
    if "avakit_version" not in meta:
        raise AvakitError(f"{path}: not an avakit model (no avakit metadata; export it with `avakit export`)")
    missing = [k for k in REQUIRED_KEYS if meta.get(k) is None]
    if missing:
        raise AvakitError(f"{path}: avakit metadata lacks {', '.join(missing)}")
    mode = meta["output_mode"]
    if mode not in OUTPUT_MODES:
        raise AvakitError(f"{path}: metadata output_mode {mode!r} is not one of {', '.join(OUTPUT_MODES)}")
    try:
        mean = tuple(float(x) for x in meta["normalize_mean"])
        std = tuple(float(x) for x in meta["normalize_std"])
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("normalize_mean/std need 3 values")
        short, quality = meta.get("short_side"), meta.get("quality")
        spec = PreprocessSpec(int(meta["resize_size"]), int(meta["input_size"]), mean, std,  # type: ignore[arg-type]
                              None if short is None else int(short),
                              None if quality is None else int(quality))
    except (TypeError, ValueError) as e:
        raise AvakitError(f"{path}: malformed avakit metadata ({e})") from None
    return spec, mode


def read_metadata(path: Path) -> dict[str, Any]:
    """The decoded avakit metadata of an .onnx file (AvakitError if it has none)."""
    path = Path(path)
    meta = decode_metadata(_session(path, 1).get_modelmeta().custom_metadata_map)
    _spec_from_metadata(path, meta)
    return meta


class OnnxScorer(Scorer):
    """An exported model in onnxruntime (CPUExecutionProvider), with the run's preprocessing.

    `__call__` takes a normalised float32 batch [B, 3, c, c] and returns what the model's
    `scores` output holds: probabilities [B, 10] (distribution) or scores in [1, 10] [B].
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = _session(self.path, threads)
        self.metadata = decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        self.spec, self.output_mode = _spec_from_metadata(self.path, self.metadata)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: batch})[0]
