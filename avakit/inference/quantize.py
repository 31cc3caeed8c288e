"""INT8 quantisation of an exported ONNX model's backbone with onnxruntime (static QDQ, else dynamic).

Only the nodes in the exporter's backbone scope are quantised (`backbone_nodes`); the IQA branch,
the MLP head and the softmax / clamp stay FP32, so the scores are not rounded to 8 bits.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from avakit.errors import AvakitError
from avakit.fileio import write_errors
from avakit.inference.onnx_runtime import write_metadata

CALIBRATION_BATCH = 8  # the calibration session outputs every tensor: resnet50 at 32 peaks at 8 GB, at 8 3 GB


# The TorchScript exporter's scope of the backbone: ExportModel.model -> AestheticModel.backbone
BACKBONE_SCOPE = "/model/backbone/"


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
