"""`avakit export`: a run's checkpoint -> one self-contained ONNX file (+ INT8), parity-checked.

The graph is the whole scorer: backbone + MLP head + softmax over the scale's K points
(distribution) or the score in the data's own units clamped to [lo, hi] (regression: a MOS
model's 0..1 output is mapped to lo..hi in the graph), input `input` float32 [N, 3, crop, crop]
normalised, output `scores` ([N, K] or [N]), batch dimension dynamic. Exported with torch's
TorchScript-based exporter (`dynamo=False`: the dynamo exporter needs onnxscript, which avakit
does not depend on).
Everything `predict --onnx` needs (preprocessing, output mode, the labels' Scale) and the run's
provenance go into `metadata_props` (schema: avakit.inference.onnx_runtime).

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

After export both files are checked against torch on val images (or given photos), on the
score in the scale's units (FP32: within FP32_MAX_ABS_DIFF per AVA-sized range, see
`fp32_tolerance`); a failed check raises AvakitError with exit code 1. A pairwise run's INT8
file is judged on ranking instead of SRCC (`avakit.inference.rank_parity`: pair accuracy on the
val groups within one point of FP32's, Kendall tau >= 0.95).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from avakit.dataset.images import ImageSkip
from avakit.errors import AvakitError
from avakit.extras import require
from avakit.inference.onnx_runtime import OnnxScorer, write_metadata
from avakit.inference.preprocess import PreprocessSpec, prepare, prepare_image
from avakit.inference.provenance import build_metadata
from avakit.inference.quantize import quantize_int8
from avakit.inference.rank_parity import export_ranking
from avakit.metrics import srcc
from avakit.model.losses import native_outputs
from avakit.scores import AVA, PAIRS, Scale, refuse_clip
from avakit.training.checkpoint import (
    checkpoint_scale,
    load_checkpoint,
    model_from_checkpoint,
    run_checkpoint,
)

log = logging.getLogger("avakit.inference.export")

FP32_MAX_ABS_DIFF = 1e-4  # torch vs ONNX FP32, score on AVA's 1..10 (scaled with the range: fp32_tolerance)
INT8_MIN_SRCC = 0.99  # rank agreement of INT8 with FP32 mean scores
BATCH = 32
RANDOM_INPUTS_MAX = 256  # parity inputs drawn at random when no val image can be read
OPSET_MIN = 13  # per-channel QuantizeLinear (INT8); Softmax over one axis as the graph uses it


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


def fp32_tolerance(scale: Scale) -> float:
    """The allowed torch vs ONNX FP32 score difference: FP32_MAX_ABS_DIFF on AVA's 1..10, scaled
    with the range (float32 rounding grows with the numbers), so 1e-4 for AVA, ~1.1e-3 for 0..100."""
    if not scale.bounded:  # a pairwise score (a logit): judged as on AVA's scale
        return FP32_MAX_ABS_DIFF
    return FP32_MAX_ABS_DIFF * (scale.hi - scale.lo) / (AVA.hi - AVA.lo)


class ExportModel(nn.Module):
    """The run's model plus what scoring applies on top: softmax, or native units clamped to [lo, hi]."""

    def __init__(self, model: nn.Module, output_mode: str, scale: Scale = AVA) -> None:
        super().__init__()
        self.model, self.output_mode, self.scale = model, output_mode, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's outputs as scoring gives them: softmax (distribution) or the score in the
        scale's units clamped to [lo, hi] (regression)."""
        out = self.model(x)
        if self.output_mode == "distribution":
            return out.softmax(dim=1)
        out = native_outputs(out, self.scale, self.output_mode)
        return out.clamp(self.scale.lo, self.scale.hi) if self.scale.bounded else out  # pairwise: a logit


def val_images(
    shards: str | dict, spec: PreprocessSpec, n: int, split: str = "val", origin: str | None = None
) -> np.ndarray:
    """The first n samples of a split of a shard source (folder or URL patterns), model-ready.

    `origin`: the file `shards` was read from (the checkpoint); its paths must then be plain.
    """
    from avakit.dataset.sources import resolve_split
    from avakit.training.loader import iter_samples

    source = resolve_split(shards, split, origin=origin)
    arrays: list[np.ndarray] = []
    for sample in iter_samples(source):
        if len(arrays) >= n:
            break
        for image in _sample_images(sample):  # a group sample (pairwise) holds 000.jpg, 001.jpg, ...
            with contextlib.suppress(OSError, KeyError, ValueError):  # an undecodable image is skipped
                arrays.append(prepare_image(Image.open(io.BytesIO(image)), spec))
    if not arrays:
        raise AvakitError(f"no decodable {split} images in {shards}")
    return np.stack(arrays)


def _sample_images(sample: dict) -> list[bytes]:
    """The image members of a shard sample: its `jpg`, or a group sample's `NNN.jpg` in order."""
    if "jpg" in sample:
        return [sample["jpg"]]
    return [sample[k] for k in sorted(sample) if re.fullmatch(r"[0-9]{3}\.jpg", k)]


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


def mean_scores(outputs: np.ndarray, output_mode: str, scale: Scale = AVA) -> np.ndarray:
    """Model outputs -> scores [N] in the scale's units (probabilities @ points, or the scores themselves)."""
    out = np.asarray(outputs, dtype=np.float64)
    return scale.mean(out, normalise=False) if output_mode == "distribution" else out.reshape(-1)


def _run(fn: Any, inputs: np.ndarray) -> np.ndarray:
    """`fn` over `inputs` in batches of BATCH, concatenated."""
    return np.concatenate([np.asarray(fn(inputs[i : i + BATCH])) for i in range(0, len(inputs), BATCH)])


def _compare(name: str, got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    diff = float(np.max(np.abs(got - ref)))
    rank = srcc(got, ref) if len(ref) > 2 else float("nan")
    log.info("parity %s on %d inputs: score max |diff| %.3g, SRCC %.5f", name, len(ref), diff, rank)
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
    refuse_clip(checkpoint_scale(ckpt).task, "export", str(ckpt_path))
    model, cfg = model_from_checkpoint(ckpt)
    mode, spec, scale = cfg.model.output_mode, PreprocessSpec.from_checkpoint(ckpt), checkpoint_scale(ckpt)
    wrapped = ExportModel(model, mode, scale).eval()
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
        inputs = _random_inputs(parity_images, spec.crop_size)
        origin = f"{origin}; checked on {len(inputs)} random inputs"
        notes.append(origin + ("; INT8 falls back to dynamic quantisation" if int8 else ""))
        log.warning("note: %s", notes[-1])
    check = inputs[:parity_images]
    with torch.inference_mode():
        ref = mean_scores(_run(lambda b: wrapped(torch.from_numpy(b)).numpy(), check), mode, scale)
    fp32_scores = mean_scores(_run(OnnxScorer(output), check), mode, scale)
    fp32_diff, fp32_srcc = _check_fp32(output, fp32_scores, ref, scale)
    parity = {
        "n": len(check),
        "inputs": origin,
        "fp32_max_abs_diff": fp32_diff,
        "fp32_srcc": fp32_srcc,
        "int8_max_abs_diff": None,
        "int8_srcc": None,
    }
    int8_path = output.with_name(f"{output.stem}.int8.onnx") if int8 else None
    if int8_path is not None:
        int8_meta = {**metadata, "precision": "int8"}
        parity.update(
            _check_int8(output, int8_path, calibration, int8_meta, check, fp32_scores, (mode, scale), notes)
        )
        if scale.kind == PAIRS.kind:  # a pairwise run's INT8 is judged on ranking (rank_parity)
            groups = _group_source(cfg, shards, ckpt_path) if calibration is not None and not images else None
            parity["ranking"] = export_ranking(output, int8_path, spec, groups, parity_images, notes)
    return {
        "fp32": output,
        "int8": int8_path,
        "parity": parity,
        "metadata": metadata,
        "sizes_mb": {"fp32": _size_mb(output), "int8": _size_mb(int8_path)},
        "score_name": scale.score_name,
        "notes": notes,
    }


def _check_fp32(output: Path, got: np.ndarray, ref: np.ndarray, scale: Scale) -> tuple[float, float]:
    """(max |diff|, SRCC) of ONNX FP32 scores against torch's; AvakitError (exit 1, file left for
    inspection) beyond `fp32_tolerance(scale)`."""
    diff, rank = _compare("ONNX FP32 vs torch", got, ref)
    if not diff <= fp32_tolerance(scale):
        raise AvakitError(
            f"{output}: ONNX FP32 scores ({scale.score_name}) differ from torch by up to {diff:.3g} "
            f"(allowed {fp32_tolerance(scale):.3g}) on {len(ref)} inputs; file left for inspection",
            exit_code=1,
        )
    return diff, rank


def _check_int8(
    fp32: Path,
    int8_path: Path,
    calibration: np.ndarray | None,
    metadata: dict[str, Any],
    check: np.ndarray,
    fp32_scores: np.ndarray,
    output: tuple[str, Scale],
    notes: list[str],
) -> dict[str, Any]:
    """Quantise `fp32` to `int8_path` and check it ranks `check` like FP32: the parity fields.

    Raises AvakitError (exit 1, file left for inspection) when SRCC < INT8_MIN_SRCC; with fewer
    than 3 inputs the ranking cannot be checked and a note says so. `output`: (output_mode, scale).
    A pairwise run's SRCC is reported, not gated: `rank_parity` judges its file on the val groups.
    """
    method = quantize_int8(fp32, int8_path, calibration, metadata)
    got = mean_scores(_run(OnnxScorer(int8_path), check), *output)
    int8_diff, int8_srcc = _compare("ONNX INT8 vs ONNX FP32", got, fp32_scores)
    gated = output[1].kind != PAIRS.kind  # a pairwise run: rank_parity judges the file instead
    if gated and len(check) < 3:
        notes.append(f"INT8 ranking not checked: {len(check)} parity inputs (need 3)")
    elif gated and not int8_srcc >= INT8_MIN_SRCC:
        raise AvakitError(
            f"{int8_path}: INT8 ranks {len(check)} images differently from FP32 "
            f"(SRCC {int8_srcc:.4f} < {INT8_MIN_SRCC}; max |diff| {int8_diff:.3g}); "
            f"file left for inspection",
            exit_code=1,
        )
    return {"int8_max_abs_diff": int8_diff, "int8_srcc": int8_srcc, "int8_method": method}


def _group_source(cfg: Any, shards: Path | None, ckpt_path: Path) -> tuple[str, str | None]:
    """(the shards the checks read, the file they were read from: the checkpoint, or None for --shards)."""
    return (str(shards), None) if shards is not None else (cfg.data.shards, str(ckpt_path))


def _random_inputs(n: int, crop: int) -> np.ndarray:
    """`n` (at most RANDOM_INPUTS_MAX, for memory) seeded random model inputs [n, 3, crop, crop]."""
    shape = (min(n, RANDOM_INPUTS_MAX), 3, crop, crop)
    return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
