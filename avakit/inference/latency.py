"""A phone proxy of a run's inference latency: its INT8 ONNX model, batch 1, on ONE CPU thread.

Phones run quantised models on one or two small cores; a desktop core single-threaded on the
INT8 graph is a rough, repeatable stand-in (an upper bound on speed: a phone core is slower).
The run's checkpoint is exported to a temporary FP32 ONNX file, quantised to INT8 as `avakit
export --int8` does (static QDQ calibrated on the same photos), and timed photo by photo after a
warm-up; nothing is kept.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from avakit.errors import AvakitError
from avakit.extras import require
from avakit.inference.export import ExportModel, export_fp32, val_images
from avakit.inference.preprocess import PreprocessSpec
from avakit.inference.quantize import quantize_int8
from avakit.scores import refuse_clip
from avakit.training.checkpoint import (
    checkpoint_scale,
    load_checkpoint,
    model_from_checkpoint,
    run_checkpoint,
)

PHONE_PHOTOS = 20  # photos timed
WARMUP = 3  # untimed runs first: session set-up, allocations, caches
NOTE = (
    "phone proxy: the run's model as INT8 ONNX (static QDQ, backbone only), batch 1, onnxruntime "
    "CPU on one thread (intra_op 1, inter_op 1), mean over the photos after a warm-up; a phone "
    "core is slower, so read it as a lower bound"
)


def single_thread_session(path: Path) -> Any:
    """An onnxruntime CPU session on one thread (intra_op 1, inter_op 1, sequential)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_batch1(session: Any, photos: np.ndarray, warmup: int = WARMUP) -> list[float]:
    """Milliseconds of each photo's batch-1 run, after `warmup` untimed runs of the first."""
    name = session.get_inputs()[0].name
    for _ in range(warmup):
        session.run(None, {name: photos[:1]})
    times = []
    for i in range(len(photos)):
        start = time.perf_counter()
        session.run(None, {name: photos[i : i + 1]})
        times.append(1000.0 * (time.perf_counter() - start))
    return times


def phone_proxy(
    run_dir: Path,
    split: str = "test",
    shards: Path | None = None,
    checkpoint: str = "best",
    n_photos: int = PHONE_PHOTOS,
) -> dict[str, Any]:
    """The phone-proxy latency of a run on `n_photos` photos of `split` (shards: --shards, else
    the checkpoint's plain paths): {"ms_per_photo", "median_ms", "n_photos", "threads",
    "precision", "quantization", "note"}. AvakitError when no photo of the split can be read."""
    require("--phone-latency", ("onnx", "onnxruntime", "onnxruntime.quantization"))
    if n_photos < 1:
        raise AvakitError(f"phone latency: n_photos must be at least 1, got {n_photos}")
    ckpt_path = run_checkpoint(Path(run_dir), checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    refuse_clip(checkpoint_scale(ckpt).task, "export --phone-latency", str(ckpt_path))
    model, cfg = model_from_checkpoint(ckpt)
    spec = PreprocessSpec.from_checkpoint(ckpt)
    source = str(shards) if shards is not None else cfg.data.shards
    origin = None if shards is not None else str(ckpt_path)
    photos = val_images(source, spec, n_photos, split=split, origin=origin)[:n_photos]
    photos = np.ascontiguousarray(photos, dtype=np.float32)
    wrapped = ExportModel(model, cfg.model.output_mode, checkpoint_scale(ckpt)).eval()
    with tempfile.TemporaryDirectory(prefix="avakit-phone-") as tmp:
        fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        export_fp32(wrapped, fp32, spec.crop_size)
        method = quantize_int8(fp32, int8, photos)
        times = time_batch1(single_thread_session(int8), photos)
    return {
        "ms_per_photo": float(np.mean(times)),
        "median_ms": float(np.median(times)),
        "n_photos": len(times),
        "threads": 1,
        "precision": "int8",
        "quantization": method,
        "note": NOTE,
    }
