"""Benchmark `avakit export`: ONNX FP32 and INT8 in onnxruntime against torch, on CPU.

A randomly initialised resnet50 run (no download) is exported with `export_onnx` (its torch vs
ONNX parity check included), then quantised to INT8 (static QDQ, calibrated on synthetic
photos prepared like `predict` does). Reports forward latency of the loaded scorers at batch 1
and 32 (preprocessing excluded; best and median over rounds that visit every backend in turn,
so changing machine load hits all of them; the same thread count for all), speed-ups over
torch, file sizes and INT8's agreement with FP32 (target: INT8 >= 2x torch FP32 at batch 1).
Random weights rank the photos by tiny score differences, so the INT8 SRCC here says little
about a trained model; `export_onnx(..., int8=True)` checks that on a real run's val images.

    .venv/bin/python benchmarks/bench_export.py [--backbone resnet50] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_predict import make_run  # the same random-init run folder (benchmarks/ is on sys.path)
from benchlog import Check, command_line, load, save

from avakit.dataset.synthetic import make_synthetic_ava
from avakit.inference.export import export_onnx, mean_scores
from avakit.inference.onnx_runtime import OnnxScorer, read_metadata, write_metadata
from avakit.inference.predict import load_scorer
from avakit.inference.preprocess import prepare
from avakit.inference.quantize import quantize_int8
from avakit.inference.scorer import Scorer
from avakit.metrics import srcc


def latencies(
    scorers: dict[str, Scorer], batch: np.ndarray, repeats: int, rounds: int = 3
) -> dict[str, list[float]]:
    """Milliseconds per forward pass: per round, each scorer in turn (warm-up call, `repeats` timed)."""
    times: dict[str, list[float]] = {name: [] for name in scorers}
    for _ in range(rounds):
        for name, scorer in scorers.items():
            scorer(batch)
            for _ in range(repeats):
                start = time.perf_counter()
                scorer(batch)
                times[name].append((time.perf_counter() - start) * 1000)
    return times


def main() -> int:
    """Export, quantise, time the three backends; print, write the JSON; 1 on FAIL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per round at batch 1 (32: 1)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the backends")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="for torch and ORT")
    parser.add_argument("--calibration", type=int, default=64, help="synthetic photos to calibrate INT8 on")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = load()
    print(
        f"{os.cpu_count()} CPUs, {args.threads} threads for torch and onnxruntime, "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ava = make_synthetic_ava(root / "ava", n=max(args.calibration, 32), seed=0, fixed_size=(400, 300))
        photos = [ava.images / f"{i}.jpg" for i in ava.image_ids]
        run = make_run(root, args.backbone)
        start = time.perf_counter()
        result = export_onnx(run, root / "model.onnx", images=photos, parity_images=32)
        print(
            f"export + FP32 parity check: {time.perf_counter() - start:.1f} s, max |diff| vs torch "
            f"{result['parity']['fp32_max_abs_diff']:.2g} over {result['parity']['n']} photos"
        )
        fp32 = OnnxScorer(result["fp32"], threads=args.threads)
        arrays = np.stack([prepare(p, fp32.spec) for p in photos])
        int8_path = root / "model.int8.onnx"
        start = time.perf_counter()
        method = quantize_int8(result["fp32"], int8_path, arrays[: args.calibration])
        write_metadata(int8_path, {**read_metadata(result["fp32"]), "precision": "int8"})
        print(f"INT8 ({method}): {time.perf_counter() - start:.1f} s")
        scorers = {
            "torch FP32": load_scorer(run=run, device="cpu"),
            "ONNX FP32": fp32,
            "ONNX INT8": OnnxScorer(int8_path, threads=args.threads),
        }
        ref, got = (
            mean_scores(fp32(arrays), "distribution"),
            mean_scores(scorers["ONNX INT8"](arrays), "distribution"),
        )
        print(
            f"INT8 vs FP32 on {len(arrays)} photos: SRCC {srcc(got, ref):.4f}, max |diff| "
            f"{np.max(np.abs(got - ref)):.3f} (FP32 score std {ref.std():.3f}; random weights)"
        )
        int8_mb = int8_path.stat().st_size / 1e6
        print(f"sizes: FP32 {result['sizes_mb']['fp32']:.1f} MB, INT8 {int8_mb:.1f} MB\n")
        rows = {
            batch: latencies(scorers, arrays[:batch], args.repeats if batch == 1 else 1, args.rounds)
            for batch in (1, 32)
        }
        print(
            f"{'backend':12s} {'batch':>5s} {'best ms':>9s} {'median ms':>10s} {'img/s':>7s} {'vs torch':>9s}"
        )
        for batch, times in rows.items():
            base = min(times["torch FP32"])
            for name, t in times.items():
                print(
                    f"{name:12s} {batch:5d} {min(t):9.1f} {statistics.median(t):10.1f} "
                    f"{batch * 1000 / min(t):7.1f} {base / min(t):8.2f}x"
                )
        check = Check(
            "INT8 vs torch FP32 at batch 1",
            min(rows[1]["torch FP32"]) / min(rows[1]["ONNX INT8"]),
            2,
            unit="x",
        )
        print(f"\n{check.line()}")
        print(f"load average {os.getloadavg()[0]:.2f} at end")
        sizes = {"fp32_mb": result["sizes_mb"]["fp32"], "int8_mb": int8_mb}
    return write_json(rows, check, sizes, args, load_before)


def write_json(
    rows: dict[int, dict[str, list[float]]],
    check: Check,
    sizes: dict[str, float],
    args: argparse.Namespace,
    load_before: list[float],
) -> int:
    """results/bench_export.json: best and median ms per backend and batch, the INT8 speed-up."""
    best = {str(b): {name: min(t) for name, t in times.items()} for b, times in rows.items()}
    median = {str(b): {name: statistics.median(t) for name, t in times.items()} for b, times in rows.items()}
    b1, b32 = best["1"], best["32"]
    measured = (
        f"batch 1: torch FP32 {b1['torch FP32']:.1f} ms, ONNX FP32 {b1['ONNX FP32']:.1f} ms, "
        f"ONNX INT8 {b1['ONNX INT8']:.1f} ms (**{check.value:.1f}x** torch; INT8 of the backbone "
        f"only, head and output FP32); batch 32: {b32['torch FP32']:.0f} / {b32['ONNX FP32']:.0f} / "
        f"{b32['ONNX INT8']:.0f} ms (INT8 {b32['torch FP32'] / b32['ONNX INT8']:.1f}x)"
    )
    return save(
        "bench_export",
        command=command_line(),
        what=f"{args.backbone} latency on CPU",
        measured=measured,
        target="INT8 >= 2x torch FP32 at batch 1",
        checks=[check],
        figures={"best_ms": best, "median_ms": median, "int8_speedup_batch1": check.value, **sizes},
        load_before=load_before,
        options=vars(args),
    )


if __name__ == "__main__":
    raise SystemExit(main())
