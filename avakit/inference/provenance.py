"""What `avakit export` records about a checkpoint in the ONNX metadata: provenance and labels.

Values read back from the run's files (results.json, the checkpoint's metrics) are checked;
a field of the wrong type counts as unknown (null).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from avakit import __version__
from avakit.errors import AvakitError
from avakit.training.checkpoint import checkpoint_scale
from avakit.training.rundir import read_json


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
    """Provenance, preprocessing and labels (the Scale) of a checkpoint, as stored in the ONNX file."""
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
        "labels": checkpoint_scale(ckpt).as_dict(),
    }
