"""The synthetic culling folders: the layout audit and shard read, bad copies worse than good."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avakit.dataset.synthetic_folders import FAULTS, make_synthetic_folders


def test_layout_splits_and_mos(tmp_path: Path) -> None:
    s = make_synthetic_folders(tmp_path / "a", n_folders=5, seed=1, mos_share=1.0)
    splits = json.loads(s.splits.read_text())
    assert sorted(sum(splits.values(), [])) == sorted(s.folders)
    for folder in s.folders:
        good, bad = (sorted((s.files / folder / g).glob("*.jpg")) for g in ("good", "bad"))
        assert len(good) == len(bad) >= 2
    rows = s.mos.read_text().splitlines()
    assert rows[0] == "image,mos" and all((s.files / r.split(",")[0]).is_file() for r in rows[1:])
    again = make_synthetic_folders(tmp_path / "b", n_folders=5, seed=1, mos_share=1.0)
    first = sorted(s.files.rglob("*.jpg"))[0]
    assert first.read_bytes() == (again.files / first.relative_to(s.files)).read_bytes()


def test_bad_copies_are_darker_blurrier_or_noisier(tmp_path: Path) -> None:
    s = make_synthetic_folders(tmp_path, n_folders=4, seed=2)
    for bad in s.files.rglob("bad/*.jpg"):
        good = bad.parent.parent / "good" / bad.name
        g, b = (np.asarray(Image.open(p).convert("L"), dtype=np.float64) for p in (good, bad))
        sharp = lambda a: np.abs(np.diff(a, axis=1)).mean()  # noqa: E731
        assert b.mean() < 0.8 * g.mean() or sharp(b) < 0.8 * sharp(g) or sharp(b) > 1.2 * sharp(g)


def test_every_fault_is_planted(tmp_path: Path) -> None:
    s = make_synthetic_folders(tmp_path, n_folders=6, seed=3, faults=FAULTS)
    assert set(s.faults) == set(FAULTS)
    assert not list((s.root / s.faults["empty_bad"]).glob("*.jpg"))
    assert s.faults["unlisted"] not in sum(json.loads(s.splits.read_text()).values(), [])
    with pytest.raises(ValueError, match="unknown faults"):
        make_synthetic_folders(tmp_path / "x", faults=("nope",))
