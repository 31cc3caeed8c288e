"""Small data: configs/small.yaml from random init on CPU against a ridge regression on colour stats.

Builds a labels table of ~900 "real-looking" photos itself (nothing is downloaded or committed):
procedural scenes (1/f-noise terrain and sky under a random palette, a horizon, textured
objects drawn at 2x and downsampled, so edges are photo-sharp) whose content varies brightness,
colour and detail freely; each photo then gets a random mix of the distortions people vote
down: blur, sensor noise, JPEG blocking, under- or over-exposure and washed-out colour.
Quality is a weighted sum of the distortion severities; each photo gets 20-60 votes on a 1-7
scale around it (rater noise included), written as a `votes_1..votes_7` table.

Then, as a user would: `avakit shard --labels` (hash split, 15 % val, 20 % test, short side
160), `avakit train --config configs/small.yaml` (random init, CPU; the benchmark sets only
paths and the device), its test SRCC from results.json (best val checkpoint, as `avakit
evaluate` reports it). The baseline: a ridge regression (numpy closed form, standardised
features, alpha picked on val SRCC) on per-image mean and std of R, G, B, H, S, V, the log
variance of the Laplacian and avakit's 5 IQA features (model/iqa.py's, in numpy), computed on the very
JPEGs in the shards, fitted on train, tested on test. Neither side sees the test split before
its test figure; small.yaml was tuned on val runs only.

Target: avakit's test SRCC >= the ridge's.

    .venv/bin/python benchmarks/bench_small_data.py [--n 900] [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlog import Check, command_line, load, save
from PIL import Image, ImageDraw, ImageFilter
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "configs" / "small.yaml"
K = 7
WEIGHTS = {"blur": 0.3, "noise": 0.25, "jpeg": 0.2, "exposure": 0.15, "washed": 0.1}
SIZES = ((256, 192), (240, 180), (192, 256), (256, 170), (216, 216))


def fractal_noise(rng: np.random.Generator, h: int, w: int, slope: float) -> np.ndarray:
    """A 1/f^slope noise field, scaled to 0..1."""
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(h, w)) ** slope
    spec = amp * np.exp(2j * np.pi * rng.random(amp.shape)) * rng.normal(1.0, 0.2, amp.shape)
    field = np.fft.irfft2(spec, s=(h, w))
    return (field - field.min()) / (np.ptp(field) + 1e-9)


def palette(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Map 0..1 values through a random 3-colour gradient -> HxWx3 in 0..255."""
    colours = rng.uniform(0, 255, size=(3, 3)) * rng.uniform(0.4, 1.0)
    lo = colours[0] + (colours[1] - colours[0]) * np.clip(2 * t, 0, 1)[..., None]
    return lo + (colours[2] - colours[1]) * np.clip(2 * t - 1, 0, 1)[..., None]


def scene(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A pristine procedural photo: textured sky and ground, a horizon, a few textured objects.

    Object outlines are drawn at 2x and downsampled, so their edges are antialiased like a photo's.
    """
    w, h = size
    horizon = int(h * rng.uniform(0.3, 0.7))
    sky = palette(rng, fractal_noise(rng, h, w, rng.uniform(2.0, 3.0)))
    ground = palette(rng, fractal_noise(rng, h, w, rng.uniform(1.2, 2.2)))
    edge = horizon + (fractal_noise(rng, 1, w, 2.0)[0] - 0.5) * h * 0.2
    img = np.where(np.arange(h)[:, None, None] < edge[None, :, None], sky, ground)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    for _ in range(int(rng.integers(1, 6))):
        texture = palette(rng, fractal_noise(rng, h, w, rng.uniform(1.0, 2.5)))
        mask = Image.new("L", (2 * w, 2 * h))
        r = int(2 * min(w, h) * rng.uniform(0.05, 0.25))
        cx, cy = int(rng.integers(0, 2 * w)), int(rng.integers(horizon, 2 * h))
        if rng.random() < 0.5:
            ImageDraw.Draw(mask).ellipse(
                (cx - r, cy - r, cx + r, cy + int(r * rng.uniform(0.5, 2))), fill=255
            )
        else:
            pts = [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in np.sort(rng.uniform(0, 6.283, 5))]
            ImageDraw.Draw(mask).polygon(pts, fill=255)
        mask = mask.resize((w, h), Image.Resampling.LANCZOS)
        im.paste(Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8)), (0, 0), mask)
    return im


def distort(im: Image.Image, sev: dict[str, float], rng: np.random.Generator) -> Image.Image:
    """Apply the distortions at their severities (0 = none, 1 = worst)."""
    if sev["blur"]:
        im = im.filter(ImageFilter.GaussianBlur(2.5 * sev["blur"]))
    arr = np.asarray(im, dtype=np.float32)
    if sev["exposure"]:
        arr = 255.0 * (arr / 255.0) ** (2.0 ** (rng.choice([-1.4, 1.4]) * sev["exposure"]))
    if sev["washed"]:
        grey = arr.mean(axis=2, keepdims=True)
        arr = grey + (arr - grey) * (1 - 0.85 * sev["washed"]) + 40 * sev["washed"]
    if sev["noise"]:
        arr = arr + rng.normal(0.0, 28.0 * sev["noise"], arr.shape)
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if sev["jpeg"]:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(round(90 - 82 * sev["jpeg"])))
        im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return im


def make_photos(root: Path, n: int, seed: int) -> Path:
    """Write n photos to root/images and their 1-7 votes to root/labels.csv; return the table."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["image," + ",".join(f"votes_{i}" for i in range(1, K + 1))]
    for i in range(n):
        sev = {d: float(rng.uniform() ** 1.3) if rng.random() < 0.65 else 0.0 for d in WEIGHTS}
        quality = 1.0 - sum(WEIGHTS[d] * s for d, s in sev.items()) / 0.6
        im = distort(scene(rng, SIZES[int(rng.integers(len(SIZES)))]), sev, rng)
        im.save(root / "images" / f"photo_{i:04d}.jpg", quality=95)
        centre = 1 + (K - 1) * np.clip(quality + rng.normal(0.0, 0.06), 0, 1)
        p = np.exp(-0.5 * ((np.arange(1, K + 1) - centre) / rng.uniform(0.9, 1.4)) ** 2)
        votes = rng.multinomial(int(rng.integers(20, 61)), p / p.sum())
        lines.append(f"photo_{i:04d}.jpg," + ",".join(map(str, votes)))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def avakit(*args: str) -> None:
    """Run the avakit CLI as a user would; stop with its output when it fails."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "avakit", *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"avakit {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def stats(im: Image.Image) -> list[float]:
    """Mean and std of R, G, B, H, S, V; log Laplacian variance; colourfulness; saturation.

    The last three, with luma mean and std, are model/iqa.py's 5 IQA features (in numpy).
    """
    rgb = np.asarray(im, dtype=np.float32)
    hsv = np.asarray(im.convert("HSV"), dtype=np.float32)
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    lap = luma[1:-1, :-2] + luma[1:-1, 2:] + luma[:-2, 1:-1] + luma[2:, 1:-1] - 4 * luma[1:-1, 1:-1]
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    colourful = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    saturation = ((rgb.max(2) - rgb.min(2)) / np.maximum(rgb.max(2), 1.0)).mean()
    chans = np.concatenate([rgb, hsv], axis=2).reshape(-1, 6)
    extra = [np.log1p(lap.var()), luma.mean(), luma.std(), colourful, saturation]
    return [*chans.mean(0), *chans.std(0), *map(float, extra)]


def shard_features(shards: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Features and mean votes (1..K) of every sample of a split, read from its shard tars."""
    feats, target, parts = [], [], {}
    for tar in sorted(shards.glob(f"{split}-*.tar")):
        with tarfile.open(tar) as tf:
            for member in tf.getmembers():
                key, ext = member.name.split(".", 1)
                parts.setdefault(key, {})[ext] = tf.extractfile(member).read()
    for sample in parts.values():
        feats.append(stats(Image.open(io.BytesIO(sample["jpg"])).convert("RGB")))
        votes = np.asarray(json.loads(sample["json"])["votes"], dtype=float)
        target.append(float(votes @ np.arange(1, K + 1) / votes.sum()))
    return np.asarray(feats), np.asarray(target)


def ridge(shards: Path) -> dict[str, float]:
    """Closed-form ridge on standardised features; alpha by val SRCC; val and test SRCC."""
    (xtr, ytr), (xva, yva), (xte, yte) = (shard_features(shards, s) for s in ("train", "val", "test"))
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-9

    def fit(alpha: float) -> np.ndarray:
        x = np.hstack([(xtr - mu) / sd, np.ones((len(xtr), 1))])
        reg = alpha * np.eye(x.shape[1])
        reg[-1, -1] = 0.0  # no penalty on the intercept
        return np.linalg.solve(x.T @ x + reg, x.T @ ytr)

    def srcc(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
        return float(spearmanr(np.hstack([(x - mu) / sd, np.ones((len(x), 1))]) @ w, y)[0])

    alphas = [10.0**e for e in range(-3, 5)]
    best = max(alphas, key=lambda a: srcc(fit(a), xva, yva))
    w = fit(best)
    return {
        "alpha": best,
        "val_srcc": srcc(w, xva, yva),
        "test_srcc": srcc(w, xte, yte),
        "features": xtr.shape[1],
    }


def train_small(tmp: Path, shards: Path) -> tuple[dict, float]:
    """`avakit train --config configs/small.yaml` on the shards; its results.json and seconds."""
    start = time.perf_counter()
    sets = [f"data.shards={shards}", f"output_dir={tmp / 'runs'}", "device=cpu", "name=small"]
    avakit("train", "--config", str(SMALL), *(a for s in sets for a in ("--set", s)))
    seconds = time.perf_counter() - start
    run = next((tmp / "runs").glob("small-*"))
    return json.loads((run / "results.json").read_text()), seconds


def main() -> int:
    """Build, shard, train, fit the ridge; print both SRCCs and the verdict; 1 on FAIL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=900, help="photos to generate")
    parser.add_argument("--seed", type=int, default=0, help="data seed")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    load_before = load()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        start = time.perf_counter()
        labels = make_photos(tmp / "photos", args.n, args.seed)
        shards = tmp / "shards"
        avakit("shard", "--labels", str(labels), "--images", str(tmp / "photos" / "images"), "--out",
               str(shards), "--val-ratio", "0.15", "--test-ratio", "0.2", "--short-side", "160",
               "--workers", "2")  # fmt: skip
        print(f"{args.n} photos generated and sharded in {time.perf_counter() - start:.0f} s")
        base = ridge(shards)
        results, seconds = train_small(tmp, shards)
    test, val = results["test"], results["val"]
    print(f"{'':34s} {'val SRCC':>9s} {'test SRCC':>10s}")
    print(f"{'avakit, configs/small.yaml':34s} {val['srcc']:9.3f} {test['srcc']:10.3f}   ({seconds:.0f} s)")
    print(f"{'ridge on colour + sharpness stats':34s} {base['val_srcc']:9.3f} {base['test_srcc']:10.3f}")
    check = Check("avakit test SRCC minus ridge test SRCC", test["srcc"] - base["test_srcc"], 0.0)
    print(check.line())
    measured = (
        f"test SRCC **{test['srcc']:.3f}** (avakit, {seconds / 60:.1f} min) vs **{base['test_srcc']:.3f}** "
        f"(ridge), n={test['n']}"
    )
    return save(
        "bench_small_data",
        command=command_line(),
        what=f"configs/small.yaml from random init on {args.n} photos (1-7 votes) vs ridge on colour stats",
        measured=measured,
        target="avakit >= ridge",
        checks=[check],
        figures={
            "avakit": {
                "val_srcc": val["srcc"],
                "test_srcc": test["srcc"],
                "test_plcc": test["plcc"],
                "best_epoch": results.get("best_epoch"),
                "train_seconds": seconds,
                "test_srcc_ci": test.get("srcc_ci"),
            },
            "ridge": base,
            "test_n": test["n"],
            "photos": args.n,
        },  # fmt: skip
        load_before=load_before,
        options={k: str(v) for k, v in vars(args).items()},
    )


if __name__ == "__main__":
    raise SystemExit(main())
