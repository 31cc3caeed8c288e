"""`avakit export`: a run's checkpoint -> one self-contained ONNX file (+ INT8), parity-checked.

The graph is the whole scorer: backbone + MLP head + softmax (distribution) or clamp to [1, 10]
(regression), input `input` float32 [N, 3, crop, crop] normalised, output `scores` ([N, 10]
or [N]), batch dimension dynamic. Exported with torch's TorchScript-based exporter
(`dynamo=False`: the dynamo exporter needs onnxscript, which avakit does not depend on).
Everything `predict --onnx` needs (preprocessing, output mode) and the run's provenance go into
`metadata_props` (schema: avakit.inference.onnx_runtime).

`int8=True` adds `<stem>.int8.onnx`: onnxruntime static quantisation after `quant_pre_process`,
QDQ format, uint8 activations / int8 per-channel weights, MinMax calibration on val images of
the run's shards. onnxruntime fuses the QDQ pairs into its integer kernels; on this x86 CPU
(AVX512-VNNI) that was the fastest variant measured for resnet50 (QOperator U8S8 ~1.3x slower,
int8 activations ~3x slower) and per-channel weights cost no speed. Only the backbone is
quantised (`backbone_nodes`: the nodes in the exporter's `/model/backbone/` scope); everything
after its pooled features stays FP32: the IQA branch, the MLP head, the softmax or clamp. So
the output is never rounded to 8 bits: distributions sum to 1 and scores are not bucketed
(~1.5 MB and no measurable time for a resnet50 head). Without shards it falls back to dynamic
quantisation of the same nodes (ConvInteger: little faster than FP32), with a note.

Opsets: `OPSET_MIN` (per-channel QuantizeLinear, and the current semantics of Softmax and the
reductions the graph uses) to torch's TorchScript exporter's highest (20 in torch 2.x).

After export both files are checked against torch on val images (or given photos); a failed
check raises AvakitError with exit code 1.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from avakit import __version__
from avakit.dataset.images import ImageSkip
from avakit.errors import AvakitError
from avakit.extras import require
from avakit.fileio import atomic_write, write_errors
from avakit.inference.onnx_runtime import OnnxScorer, encode_metadata
from avakit.inference.preprocess import PreprocessSpec, prepare, prepare_image
from avakit.metrics import srcc
from avakit.scores import SCORE_MAX, SCORE_MIN, mean_score
from avakit.training.checkpoint import load_checkpoint, model_from_checkpoint, run_checkpoint
from avakit.training.rundir import read_json

log = logging.getLogger("avakit.inference.export")

FP32_MAX_ABS_DIFF = 1e-4  # torch vs ONNX FP32, mean score
INT8_MIN_SRCC = 0.99  # rank agreement of INT8 with FP32 mean scores
BATCH = 32
CALIBRATION_BATCH = 8  # the calibration session outputs every tensor: resnet50 at 32 peaks at 8 GB, at 8 3 GB
RANDOM_INPUTS_MAX = 256  # parity inputs drawn at random when no val image can be read
OPSET_MIN = 13  # per-channel QuantizeLinear (INT8); Softmax over one axis as the graph uses it
# The TorchScript exporter's scope of the backbone: ExportModel.model -> AestheticModel.backbone
BACKBONE_SCOPE = "/model/backbone/"


def opset_max() -> int:
    """The highest opset torch's TorchScript exporter (dynamo=False) supports."""
    try:
        from torch.onnx import _constants  # private, but the exporter's own bound
    except ImportError:
        return 20  # torch 2.x
    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))


def check_opset(opset: int) -> None:
    """AvakitError naming the supported range unless OPSET_MIN <= opset <= opset_max()."""
    high = opset_max()
    if not OPSET_MIN <= opset <= high:
        raise AvakitError(
            f"opset {opset} is not supported: use {OPSET_MIN} to {high} (torch's exporter "
            f"writes up to {high}; the graph and INT8 quantisation need at least {OPSET_MIN})"
        )


def check_output(output: Path) -> Path:
    """`output` when it names an .onnx file; AvakitError otherwise (before any work).

    The suffix rule keeps a slip of the keyboard (`--output run/best_model.pt`, a folder)
    from replacing a checkpoint, a config or anything else that is not a model file.
    """
    if output.suffix.lower() != ".onnx":
        raise AvakitError(
            f"output {output}: give a file name ending in .onnx, e.g. "
            f"{output.with_name((output.stem or 'model') + '.onnx')}"
        )
    if output.is_dir():
        raise AvakitError(f"output {output}: is a folder; give a file name, e.g. {output / 'model.onnx'}")
    return output


class ExportModel(nn.Module):
    """The run's model plus what scoring applies on top: softmax or clamp to [1, 10]."""

    def __init__(self, model: nn.Module, output_mode: str) -> None:
        super().__init__()
        self.model, self.output_mode = model, output_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's outputs as scoring gives them: softmax (distribution) or clamped to [1, 10]."""
        out = self.model(x)
        return out.softmax(dim=1) if self.output_mode == "distribution" else out.clamp(SCORE_MIN, SCORE_MAX)


def val_images(
    shards: str | dict, spec: PreprocessSpec, n: int, split: str = "val", origin: str | None = None
) -> np.ndarray:
    """The first n samples of a split of a shard source (folder or URL patterns), model-ready.

    `origin`: the file `shards` was read from (the checkpoint); its paths must then be plain.
    """
    from avakit.training.loader import iter_samples, resolve_split

    source = resolve_split(shards, split, origin=origin)
    arrays: list[np.ndarray] = []
    for sample in iter_samples(source):
        if len(arrays) >= n:
            break
        with contextlib.suppress(OSError, KeyError, ValueError):  # an undecodable sample is skipped
            arrays.append(prepare_image(Image.open(io.BytesIO(sample["jpg"])), spec))
    if not arrays:
        raise AvakitError(f"no decodable {split} images in {shards}")
    return np.stack(arrays)


def _inputs(
    cfg: Any,
    spec: PreprocessSpec,
    shards: Path | None,
    photos: Sequence[Path] | None,
    n: int,
    ckpt_path: Path | None = None,
) -> tuple[np.ndarray | None, str]:
    """(parity/calibration inputs, where they came from); (None, why) when there are none."""
    if photos:
        arrays = []
        for p in photos[:n]:
            with contextlib.suppress(ImageSkip):
                arrays.append(prepare(Path(p), spec))
        if not arrays:
            raise AvakitError("none of the given photos could be read")
        return np.stack(arrays), f"{len(arrays)} given photos"
    source = str(shards) if shards is not None else cfg.data.shards
    if shards is None:  # read from the checkpoint: a URL or `pipe:` source is refused, not skipped
        from avakit.dataset.sources import require_plain_shards

        require_plain_shards(source, str(ckpt_path), "val")
    try:
        arrays = val_images(source, spec, n, origin=None if shards is not None else str(ckpt_path))
    except AvakitError as e:
        if shards is not None:
            raise
        return None, f"the run's shards are not available ({e})"
    return arrays, f"{len(arrays)} val images from {source}"


def _finite(value: Any) -> float | None:
    """A number read back from a run's files, or None when it is not a finite number."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _provenance(ckpt: dict, ckpt_path: Path) -> tuple[float | None, float | None, str | None]:
    """(val SRCC, test SRCC, finished_at) of the checkpoint: results.json's when it describes this
    checkpoint, else the checkpoint's own epoch metrics. A results.json that is not a JSON object
    is one AvakitError naming it; a field of the wrong type counts as unknown."""
    path = ckpt_path.parent / "results.json"
    results = read_json(path) if path.is_file() else {}
    if not isinstance(results, dict):
        raise AvakitError(f"{path}: expected a JSON object, got {type(results).__name__}")
    if results.get("checkpoint") != ckpt_path.name:  # this checkpoint's own epoch
        metrics = ckpt.get("metrics")
        return _finite(metrics.get("srcc")) if isinstance(metrics, dict) else None, None, None

    def srcc(split: str) -> float | None:
        part = results.get(split)
        return _finite(part.get("srcc")) if isinstance(part, dict) else None

    finished = results.get("finished_at")
    return srcc("val"), srcc("test"), finished if isinstance(finished, str) and finished else None


def build_metadata(ckpt: dict, ckpt_path: Path, precision: str = "fp32") -> dict[str, Any]:
    """Provenance and preprocessing of a checkpoint, as stored in the ONNX file."""
    cfg, shard = ckpt["config"], ckpt.get("preprocessing") or {}
    val_srcc, test_srcc, finished = _provenance(ckpt, ckpt_path)
    trained = finished or datetime.fromtimestamp(ckpt_path.stat().st_mtime, timezone.utc).isoformat(
        timespec="seconds"
    )
    t = cfg["transform"]
    return {
        "avakit_version": __version__,
        "output_mode": cfg["model"]["output_mode"],
        "backbone": cfg["model"]["backbone"],
        "input_size": t["crop_size"],
        "resize_size": t["resize_size"],
        "normalize_mean": list(t["normalize_mean"]),
        "normalize_std": list(t["normalize_std"]),
        "short_side": shard.get("short_side"),
        "quality": shard.get("quality"),
        "trained_at": trained,
        "manifest_sha256": ckpt.get("manifest_sha256"),
        "val_srcc": val_srcc,
        "test_srcc": test_srcc,
        "checkpoint": ckpt_path.name,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "precision": precision,
    }


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


def export_fp32(
    model: nn.Module, output: Path, crop: int, opset: int = 17, metadata: dict[str, Any] | None = None
) -> None:
    """torch.onnx.export (TorchScript exporter) with a dynamic batch dimension, one inline file.

    The graph is exported in memory and written once, with `metadata`, through fileio.
    """
    import onnx

    check_opset(opset)
    example = torch.zeros(2, 3, crop, crop)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter warns that it is legacy
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["scores"],
            do_constant_folding=True,
            dynamic_axes={"input": {0: "batch"}, "scores": {0: "batch"}},
        )
    write_metadata(output, metadata, onnx.load_from_string(buf.getvalue()))


@contextlib.contextmanager
def _quiet_onnxruntime_quantization() -> Iterator[None]:
    """onnxruntime.quantization logs through the root logger (adding a handler): keep it quiet."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def backbone_nodes(model: Any) -> list[str]:
    """Names of the nodes INT8 may quantise: those in the exporter's backbone scope.

    Everything else (the IQA branch, the concatenation, the MLP head, softmax / clamp) stays
    FP32, so the output is not rounded to 8 bits. A node that onnxruntime's pre-processing
    renamed (a fusion) drops out of the scope and stays FP32 too: the safe direction.
    """
    names = [n.name for n in model.graph.node if n.name.startswith(BACKBONE_SCOPE)]
    if not names:
        raise AvakitError(
            f"no node in the exporter's {BACKBONE_SCOPE} scope: nothing to quantise to INT8 "
            "(the exporter's node naming changed?)",
            exit_code=1,
        )
    return names


def quantize_int8(
    fp32: Path, output: Path, calibration: np.ndarray | None, metadata: dict[str, Any] | None = None
) -> str:
    """Static QDQ INT8 (U8S8, per-channel) of the backbone calibrated on `calibration`, else dynamic.

    Returns the method. Only `backbone_nodes` are quantised. `output` is written once, with
    `metadata` plus the method as "quantization" (if given).
    """
    import onnx
    import onnxruntime.quantization as ortq

    class Reader(ortq.CalibrationDataReader):
        def __init__(self, arrays: np.ndarray) -> None:
            step = CALIBRATION_BATCH
            self.batches = iter([{"input": arrays[i : i + step]} for i in range(0, len(arrays), step)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    with (
        write_errors(output),
        tempfile.TemporaryDirectory(dir=output.parent) as tmp,
        _quiet_onnxruntime_quantization(),
    ):
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        # ONNX shape inference + graph optimisation; onnxruntime's symbolic shape inference is for
        # transformers and fails on the IQA branch's reductions at opset >= 18 (same graph without it)
        ortq.quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        nodes = backbone_nodes(onnx.load(str(pre)))
        if calibration is None:
            # ConvInteger (dynamic conv) only has uint8 x uint8 kernels on CPU
            ortq.quantize_dynamic(
                str(pre),
                str(out),
                per_channel=True,
                weight_type=ortq.QuantType.QUInt8,
                nodes_to_quantize=nodes,
            )
            method = "dynamic (uint8 weights, per-channel), backbone only"
        else:
            ortq.quantize_static(
                str(pre),
                str(out),
                Reader(calibration),
                quant_format=ortq.QuantFormat.QDQ,
                per_channel=True,
                activation_type=ortq.QuantType.QUInt8,
                weight_type=ortq.QuantType.QInt8,
                nodes_to_quantize=nodes,
            )
            method = f"static QDQ U8S8 per-channel, backbone only, MinMax on {len(calibration)} images"
        write_metadata(
            output,
            {**metadata, "quantization": method} if metadata is not None else None,
            onnx.load(str(out)),
        )
    return method


def mean_scores(outputs: np.ndarray, output_mode: str) -> np.ndarray:
    """Model outputs -> mean scores [N] (probabilities @ POINTS, or the scores themselves)."""
    out = np.asarray(outputs, dtype=np.float64)
    return mean_score(out, normalise=False) if output_mode == "distribution" else out.reshape(-1)


def _run(fn: Any, inputs: np.ndarray) -> np.ndarray:
    """`fn` over `inputs` in batches of BATCH, concatenated."""
    return np.concatenate([np.asarray(fn(inputs[i : i + BATCH])) for i in range(0, len(inputs), BATCH)])


def _compare(name: str, got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    diff = float(np.max(np.abs(got - ref)))
    rank = srcc(got, ref) if len(ref) > 2 else float("nan")
    log.info("parity %s on %d inputs: mean score max |diff| %.3g, SRCC %.5f", name, len(ref), diff, rank)
    return diff, rank


def _size_mb(path: Path | None) -> float | None:
    return round(path.stat().st_size / 1e6, 2) if path is not None else None


def export_onnx(
    run_dir: Path,
    output: Path,
    int8: bool = False,
    opset: int = 17,
    shards: Path | None = None,
    parity_images: int = 256,
    checkpoint: str = "best",
    images: Sequence[Path] | None = None,
    calibration_images: int = 256,
) -> dict:
    """Export a run's checkpoint to `output` (and `<stem>.int8.onnx` with `int8`), then check both.

    Parity and calibration inputs: the given `images` (photo files), else up to `parity_images`
    / `calibration_images` val images of `shards` (default: the run's data.shards); with
    neither available, random inputs and dynamic INT8 quantisation (noted). Raises AvakitError
    (exit code 1) when ONNX FP32 differs from torch by more than FP32_MAX_ABS_DIFF in mean score
    or INT8 ranks the images differently from FP32 (SRCC < INT8_MIN_SRCC). Missing onnx /
    onnxruntime and an opset outside OPSET_MIN..opset_max() are refused before any work.
    """
    require("export", ("onnx", "onnxruntime", *(("onnxruntime.quantization",) if int8 else ())))
    check_opset(opset)
    if parity_images < 1:
        raise AvakitError(f"parity_images must be at least 1, got {parity_images}")
    output = check_output(Path(output))
    ckpt_path = run_checkpoint(Path(run_dir), checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    model, cfg = model_from_checkpoint(ckpt)
    mode, spec = cfg.model.output_mode, PreprocessSpec.from_checkpoint(ckpt)
    wrapped = ExportModel(model, mode).eval()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AvakitError(f"output {output}: cannot create its folder ({e.strerror or e})") from None
    metadata = build_metadata(ckpt, ckpt_path)
    # inputs first: a refused source (a URL read from the checkpoint) leaves no unchecked .onnx
    inputs, origin = _inputs(
        cfg, spec, shards, images, max(parity_images, calibration_images if int8 else 0), ckpt_path
    )
    export_fp32(wrapped, output, spec.crop_size, opset, metadata)

    notes: list[str] = []
    calibration = inputs[:calibration_images] if inputs is not None else None
    if inputs is None:  # random inputs: as many as asked, up to RANDOM_INPUTS_MAX (memory)
        n_random = min(parity_images, RANDOM_INPUTS_MAX)
        inputs = np.random.default_rng(0).standard_normal(
            (n_random, 3, spec.crop_size, spec.crop_size), dtype=np.float32
        )
        origin = f"{origin}; checked on {n_random} random inputs"
        notes.append(origin + ("; INT8 falls back to dynamic quantisation" if int8 else ""))
        log.warning("note: %s", notes[-1])
    check = inputs[:parity_images]
    with torch.inference_mode():
        ref = mean_scores(_run(lambda b: wrapped(torch.from_numpy(b)).numpy(), check), mode)
    fp32_scores = mean_scores(_run(OnnxScorer(output), check), mode)
    fp32_diff, fp32_srcc = _compare("ONNX FP32 vs torch", fp32_scores, ref)
    parity = {
        "n": len(check),
        "inputs": origin,
        "fp32_max_abs_diff": fp32_diff,
        "fp32_srcc": fp32_srcc,
        "int8_max_abs_diff": None,
        "int8_srcc": None,
    }
    if not fp32_diff <= FP32_MAX_ABS_DIFF:
        raise AvakitError(
            f"{output}: ONNX FP32 mean scores differ from torch by up to {fp32_diff:.3g} "
            f"(allowed {FP32_MAX_ABS_DIFF:g}) on {len(check)} inputs; file left for inspection",
            exit_code=1,
        )

    int8_path = output.with_name(f"{output.stem}.int8.onnx") if int8 else None
    if int8_path is not None:
        method = quantize_int8(output, int8_path, calibration, {**metadata, "precision": "int8"})
        got = mean_scores(_run(OnnxScorer(int8_path), check), mode)
        int8_diff, int8_srcc = _compare("ONNX INT8 vs ONNX FP32", got, fp32_scores)
        parity.update(int8_max_abs_diff=int8_diff, int8_srcc=int8_srcc, int8_method=method)
        if len(check) < 3:
            notes.append(f"INT8 ranking not checked: {len(check)} parity inputs (need 3)")
        elif not int8_srcc >= INT8_MIN_SRCC:
            raise AvakitError(
                f"{int8_path}: INT8 ranks {len(check)} images differently from FP32 "
                f"(SRCC {int8_srcc:.4f} < {INT8_MIN_SRCC}; max |diff| {int8_diff:.3g}); "
                f"file left for inspection",
                exit_code=1,
            )
    return {
        "fp32": output,
        "int8": int8_path,
        "parity": parity,
        "metadata": metadata,
        "sizes_mb": {"fp32": _size_mb(output), "int8": _size_mb(int8_path)},
        "notes": notes,
    }
