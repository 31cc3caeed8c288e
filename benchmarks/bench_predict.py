"""Benchmark `avakit predict` on CPU: cold start of the command, and warm images/s.

Cold: wall time of `avakit predict one.jpg --run RUN --format json` in a fresh process, from
process start to output (target <= 3 s on CPU for resnet50). Warm: images/s of the loaded
scorer at batch 1 and 32 (preprocessing excluded). Also checks that `avakit --help` imports no
torch, which is what keeps the cold path short.

    .venv/bin/python benchmarks/bench_predict.py [--backbone resnet50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from benchlog import Check, command_line, load, save

from avakit.config import config_to_dict, load_config
from avakit.dataset.synthetic import make_synthetic_ava
from avakit.inference.predict import load_scorer
from avakit.inference.preprocess import prepare
from avakit.model.network import build_model
from avakit.training.checkpoint import save_checkpoint


def make_run(root: Path, backbone: str) -> Path:
    """A run folder holding a randomly initialised `backbone` checkpoint (no download)."""
    cfg = load_config(None, [f"model.backbone={backbone}", "model.pretrained=false"])
    torch.manual_seed(0)
    model = build_model(backbone, pretrained=False).eval()
    run = root / "run"
    run.mkdir()
    save_checkpoint(
        run / "best_model.pt",
        {
            "model_state_dict": model.state_dict(),
            "config": config_to_dict(cfg),
            "epoch": 0,
            "metrics": {},
            "preprocessing": {"short_side": 256, "quality": 90},
        },
    )
    return run


def cold_start(model: list[str], image: Path, repeats: int) -> list[float]:
    """Wall seconds of whole `avakit predict IMAGE <model> --format json` processes."""
    cmd = [sys.executable, "-m", "avakit", "predict", str(image), *model, "--format", "json"]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def help_imports_torch() -> tuple[bool, float]:
    """(does `avakit --help` import torch, its wall seconds)."""
    code = (
        "import sys; from avakit.cli.app import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n"
        "    pass\nprint('torch' in sys.modules, file=sys.stderr)"
    )
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return proc.stderr.strip().endswith("True"), time.perf_counter() - start


def warm_rate(run: Path, images: list[Path], batch: int, seconds: float = 5.0) -> float:
    """Images/s of the loaded scorer's forward pass at `batch` (inputs prepared beforehand)."""
    scorer = load_scorer(run=run, device="cpu")
    arrays = np.stack([prepare(p, scorer.spec) for p in images[:batch]])
    scorer(arrays)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        scorer(arrays)
        done += len(arrays)
    return done / (time.perf_counter() - start)


def _export(run: Path, root: Path) -> Path | None:
    """The run as ONNX FP32 (None without the export extra)."""
    try:
        from avakit.inference.export import export_onnx
    except ImportError:
        return None
    return export_onnx(run, root / "model.onnx", parity_images=4)["fp32"]


def main() -> int:
    """Time --help, the cold torch and ONNX paths and the warm scorer; print, write the JSON; 1 on FAIL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_before, figures = load(), {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ava = make_synthetic_ava(root / "ava", n=32, seed=0, fixed_size=(800, 534))
        images = [ava.images / f"{i}.jpg" for i in ava.image_ids]
        run = make_run(root, args.backbone)
        imports_torch, figures["help_s"] = help_imports_torch()
        print(f"avakit --help: {figures['help_s']:.2f} s, imports torch: {imports_torch}")
        cold = cold_start(["--run", str(run)], images[0], args.repeats)
        figures["cold_torch_s"] = {"best": min(cold), "median": sorted(cold)[len(cold) // 2]}
        check = Check("cold `avakit predict one.jpg --run`", min(cold), 3, at_least=False, unit=" s")
        threads = torch.get_num_threads()
        print(
            f"cold `avakit predict one.jpg --run` ({args.backbone}, cpu, {threads} threads): "
            f"best {min(cold):.2f} s, median {sorted(cold)[len(cold) // 2]:.2f} s "
            f"(target <= 3 s) {'PASS' if check.passed else 'FAIL'}"
        )
        onnx = _export(run, root)
        if onnx is not None:
            cold = cold_start(["--onnx", str(onnx)], images[0], args.repeats)
            figures["cold_onnx_s"] = {"best": min(cold), "median": sorted(cold)[len(cold) // 2]}
            print(
                f"cold `avakit predict one.jpg --onnx` (onnxruntime, no torch): best {min(cold):.2f} s, "
                f"median {sorted(cold)[len(cold) // 2]:.2f} s"
            )
        for batch in (1, 32):
            figures[f"warm_img_per_s_batch{batch}"] = warm_rate(run, images, batch)
            print(f"warm forward, batch {batch:2d}: {figures[f'warm_img_per_s_batch{batch}']:7.1f} images/s")
    print(f"--help imports no torch: {'PASS' if not imports_torch else 'FAIL'}")
    no_torch = Check("`avakit --help` imports no torch (1 = none)", float(not imports_torch), 1)
    onnx_s = f"`--onnx` path **{figures['cold_onnx_s']['best']:.2f} s**; " if "cold_onnx_s" in figures else ""
    measured = (
        f"torch path **{check.value:.1f} s**; {onnx_s}warm "
        f"{figures['warm_img_per_s_batch1']:.1f} img/s at batch 1, "
        f"{figures['warm_img_per_s_batch32']:.1f} img/s at batch 32; `avakit --help` "
        f"{figures['help_s']:.2f} s, {'imports torch' if imports_torch else 'imports no torch'}"
    )
    return save(
        "bench_predict",
        command=command_line(),
        what=f"cold `avakit predict one.jpg` ({args.backbone}, CPU)",
        measured=measured,
        target="cold <= 3 s",
        checks=[check, no_torch],
        figures=figures,
        load_before=load_before,
        options=vars(args),
    )


if __name__ == "__main__":
    raise SystemExit(main())
