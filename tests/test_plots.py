"""Tests for avakit.plots: every plot writes a sane PNG; gradient_warnings flags each sign."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avakit.plots import (
    gradient_warnings,
    plot_gradient_norms,
    plot_learning_rates,
    plot_training_curves,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path: Path) -> None:
    """A real PNG of plausible pixel size and byte size."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 600 <= width <= 2400 and 300 <= height <= 1200
    assert 10_000 < len(data) < 2_000_000


def history(n: int, nan: bool = False) -> list[dict]:
    rows = []
    for e in range(n):
        rows.append(
            {
                "epoch": e,
                "train_loss": 0.30 - 0.02 * e,
                "val_loss": 0.32 - 0.015 * e,
                "val_srcc": 0.40 + 0.05 * e - 0.02 * (e == 3),
                "val_plcc": 0.42 + 0.045 * e,
                "val_accuracy": 0.7,
                "val_mae": 0.5,
                "val_rmse": 0.6,
                "val_emd": 0.08,
                "lr": [1e-4 * 0.5**e, 1e-3 * 0.5**e],
                "img_per_s": 400.0,
                "time_s": 60.0,
            }
        )
    if nan:
        rows[0]["val_loss"] = math.nan
        rows[-1]["val_srcc"] = math.nan
        rows[0].pop("val_emd")
    return rows


def norms_frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """A calm gradient-norm frame: noisy but flat, head ~3x backbone."""
    rng = np.random.default_rng(seed)
    noise = lambda: np.exp(rng.normal(0.0, 0.1, n))  # noqa: E731
    backbone, layers = 0.5 * noise(), [0.6 * noise(), 0.8 * noise(), 1.0 * noise()]
    head = np.sqrt(sum(x**2 for x in layers))
    return pd.DataFrame(
        {
            "batch_idx": np.arange(n) * 10,
            "epoch": np.arange(n) // 20,
            "overall": np.sqrt(head**2 + backbone**2 + 0.25),
            "backbone_layer4": backbone,
            "mlp_head": head,
            **{f"mlp_layer_{i}": x for i, x in enumerate(layers)},
        }
    )


@pytest.mark.parametrize("epochs", [1, 5])
@pytest.mark.parametrize("nan", [False, True])
def test_training_curves_png(tmp_path: Path, epochs: int, nan: bool) -> None:
    out = plot_training_curves(history(epochs, nan), tmp_path / "sub" / "training_curves.png")
    assert out == tmp_path / "sub" / "training_curves.png"
    check_png(out)


def test_training_curves_empty_and_scalar_lr(tmp_path: Path) -> None:
    check_png(plot_training_curves([], tmp_path / "empty.png"))
    rows = history(2)
    rows[0]["lr"], rows[1]["lr"] = 1e-3, [1e-3, 1e-2]  # a scalar lr and a group added later
    check_png(plot_training_curves(rows, tmp_path / "mixed.png"))


@pytest.mark.parametrize("n", [1, 60])
def test_gradient_norm_and_lr_png(tmp_path: Path, n: int) -> None:
    df = norms_frame(n)
    df.loc[0, "backbone_layer4"] = 0.0  # zeros must not break the log scale
    df.loc[df.index[-1], "overall"] = math.nan
    check_png(plot_gradient_norms(df, tmp_path / "grad.png"))
    lr = pd.DataFrame(
        {
            "batch_idx": df["batch_idx"],
            "epoch": df["epoch"],
            "lr_group_0": 1e-4 * np.linspace(1, 0, n),
            "lr_group_1": 1e-3 * np.linspace(1, 0, n),
        }
    )
    check_png(plot_learning_rates(lr, tmp_path / "lr.png"))


def test_gradient_norms_frozen_backbone_png(tmp_path: Path) -> None:
    df = norms_frame()
    df["backbone_layer4"] = 0.0
    check_png(plot_gradient_norms(df, tmp_path / "grad.png"))


def test_calm_frame_has_no_warnings() -> None:
    assert gradient_warnings(norms_frame()) == []
    assert gradient_warnings(None) == [] and gradient_warnings(pd.DataFrame()) == []


def test_warns_on_spike() -> None:
    df = norms_frame()
    df.loc[40, "overall"] *= 50
    (msg,) = gradient_warnings(df)
    assert msg.startswith("overall:") and "spike" in msg and "batch_idx 400" in msg


def test_warns_on_near_zero_part() -> None:
    df = norms_frame()
    df["backbone_layer4"] = 1e-9
    (msg,) = gradient_warnings(df)
    assert msg.startswith("backbone_layer4:") and "near zero" in msg


def test_warns_on_steady_growth() -> None:
    df = norms_frame()
    df["mlp_layer_2"] *= np.geomspace(1, 20, len(df))
    msgs = gradient_warnings(df)
    assert any(m.startswith("mlp_layer_2:") and "grew steadily" in m for m in msgs)
    assert not any("spike" in m for m in msgs)


def test_warns_when_head_dwarfs_backbone() -> None:
    df = norms_frame()
    df["backbone_layer4"] /= 1000
    (msg,) = gradient_warnings(df)
    assert msg.startswith("mlp_head gradients are") and "backbone_layer4" in msg


def test_warns_on_non_finite_overall() -> None:
    df = norms_frame()
    df.loc[5, "overall"] = math.inf
    assert any("inf/NaN" in m and "batch_idx 50" in m for m in gradient_warnings(df))
