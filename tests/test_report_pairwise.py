"""`avakit report` on a pairwise run folder built by hand: sections, PNGs, galleries with and
without shards, bad files as one line."""

from __future__ import annotations

import hashlib
import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from avakit.dataset.samples import member_name
from avakit.errors import AvakitError
from avakit.report.build import build_report
from avakit.report.pairwise_run import run_task
from avakit.scores import PAIRS

SERIES = {10: 3, 11: 4, 12: 2, 13: 5, 14: 3}  # series id -> photos


def _frames(seed: int, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pair predictions and photo scores of every series: ranks 1..n, scores that mostly follow them."""
    rng = np.random.default_rng(seed)
    pairs, photos = [], []
    for series, n in SERIES.items():
        ranks = rng.permutation(np.arange(1, n + 1))
        scores = -ranks + rng.normal(0, 0.8, n)
        for k in range(n):
            photos.append((series, k, f"{series:06d}-{k + 1:02d}.JPG", float(scores[k]), int(ranks[k])))
        for i in range(n):
            for j in range(i + 1, n):
                p_true = float(np.clip(0.5 + 0.12 * (ranks[j] - ranks[i]), 0.01, 0.99))
                p_pred = float(1 / (1 + math.exp(-(scores[i] - scores[j]))))
                pairs.append((series, i, j, p_true, int(ranks[i]), int(ranks[j]), p_pred))
    cols = ["series", "i", "j", "p_true", "rank_i", "rank_j", "p_pred"]
    photo_cols = ["series", "index", "member", "score", "rank"]
    return pd.DataFrame(pairs, columns=cols), pd.DataFrame(photos, columns=photo_cols)


def _history(epochs: int = 3) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_loss": 0.7 - 0.1 * e,
            "val_loss": 0.69 - 0.05 * e,
            "val_pair_accuracy": 0.6 + 0.05 * e,
            "val_log_loss": 0.69 - 0.05 * e,
            "val_series_top1": 0.4 + 0.1 * e,
            "val_kendall_tau": 0.2 + 0.1 * e,
            "lr": [1e-3, 1e-4],
            "steps": 4,
        }
        for e in range(epochs)
    ]


def _jpeg(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (shade, 255 - shade, 128)).save(buf, format="JPEG")
    return buf.getvalue()


def _write_shards(root: Path, split: str, photos: pd.DataFrame) -> None:
    """A one-shard group-sample folder for `split` (members 000.jpg.., json label) and its manifest."""
    root.mkdir(parents=True, exist_ok=True)
    tar_path = root / f"{split}-000000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for series, g in photos.groupby("series"):
            key = f"{series:06d}"
            label = {
                "key": key,
                "kind": "pairs",
                "image_id": int(series),
                "group": key,
                "members": list(g["member"]),
                "pairs": [],
                "source": "phototriage",
            }
            files = {f"{key}.json": json.dumps(label).encode()}
            files |= {f"{key}.{member_name(k)}": _jpeg(20 * k) for k in range(len(g))}
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = tar_path.read_bytes()
    shard = {"name": tar_path.name, "samples": len(SERIES), "bytes": len(data)}
    shard["sha256"] = hashlib.sha256(data).hexdigest()
    stats = {"n": len(SERIES), "pairs": 0, "photos": len(photos), "decided_pairs": 0, "human_ceiling": None}
    info = {"samples": len(SERIES), "bytes": len(data), "shards": [shard], "label_stats": stats}
    manifest = {
        "format_version": 2,
        "labels": PAIRS.as_dict(),
        "counts": {"rows_read": 0, "samples_written": len(SERIES), "rows_skipped": 0},
        "skipped_by_reason": {},
        "splits": {split: info},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))


def make_run(tmp_path: Path, *, labels: bool = True, photos: bool = True) -> Path:
    """A finished pairwise run folder: results.json, history, val/test pair and photo predictions."""
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    results: dict = {"best_epoch": 2, "task": "pairwise", "finished_at": "now"}
    if labels:
        results["labels"] = PAIRS.as_dict()
    (run / "results.json").write_text(json.dumps(results))
    (run / "training_history.json").write_text(json.dumps(_history()))
    for seed, split, name in ((1, "val", "val_epoch_002"), (2, "test", "test")):
        pairs, photo_df = _frames(seed, split)
        pairs.to_parquet(run / "predictions" / f"{name}.parquet")
        if photos:
            photo_df.to_parquet(run / "predictions" / f"{split}_photos.parquet")
    return run


def test_pairwise_report_has_every_section(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    summary = build_report(run)
    assert summary["task"] == "pairwise" and summary["labels"] == PAIRS.as_dict()
    assert summary["best_epoch"] == 2 and summary["threshold"] is None
    page = Path(summary["report"]).read_text()
    for heading in (
        "Summary",
        "Training curves",
        "Accuracy by confidence of the people",
        "Accuracy by series size",
        "Calibration of P",
        "Best and worst ranked series",
        "human ceiling",
        "Kendall τ",
    ):
        assert heading in page, heading
    names = {p.name for p in summary["pngs"]}
    for split in ("val", "test"):
        for what in ("accuracy_by_confidence", "accuracy_by_series_size", "calibration"):
            assert f"{split}_{what}.png" in names
    assert "training_curves.png" in names
    assert all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in summary["pngs"])
    val = summary["val"]
    assert 0.0 <= val["pair_accuracy"] <= 1.0 and val["n_series"] == len(SERIES)
    assert f"{val['pair_accuracy']:.4f} ± {val['pair_accuracy_se']:.4f}" in page
    assert "no thumbnail" in page  # no shards given and the config has none
    assert any("no readable shards" in n for n in summary["notes"])
    json.dumps(summary["val"])


def test_galleries_read_thumbnails_from_group_samples(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    _, val_photos = _frames(1, "val")
    _, test_photos = _frames(2, "test")
    shards = tmp_path / "shards"
    _write_shards(shards, "val", val_photos)
    summary = build_report(run, shards=shards)
    page = Path(summary["report"]).read_text()
    thumbs = sorted((run / "report" / "thumbs").glob("val_*.jpg"))
    assert thumbs, "no thumbnails written"
    assert f'src="thumbs/{thumbs[0].name}"' in page
    assert "predicted #1" in page and "true rank" in page
    assert "000010-01.JPG" in page
    # the test split is not in this shard folder: a note, not a failure
    assert any("test" in n and "split" in n for n in summary["notes"]), summary["notes"]


def test_a_run_known_only_by_its_config_is_pairwise(tmp_path: Path) -> None:
    run = make_run(tmp_path, labels=False)
    assert run_task(run) == "score"
    (run / "config.yaml").write_text("task: pairwise\n")
    assert run_task(run) == "pairwise"
    summary = build_report(run)
    assert summary["task"] == "pairwise"


def test_without_photo_scores_the_series_parts_are_notes(tmp_path: Path) -> None:
    run = make_run(tmp_path, photos=False)
    summary = build_report(run)
    assert math.isnan(summary["val"]["kendall_tau"]) and math.isnan(summary["val"]["series_top1"])
    assert any("val_photos.parquet" in n for n in summary["notes"])
    assert Path(summary["report"]).is_file()


def test_best_epoch_from_history_when_results_lack_it(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    results = json.loads((run / "results.json").read_text())
    del results["best_epoch"]
    (run / "results.json").write_text(json.dumps(results))
    assert build_report(run)["best_epoch"] == 2  # highest val_pair_accuracy


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("p_true", 1.5, "column 'p_true', row 0: expected a probability in 0..1"),
        ("i", -1, "column 'i', row 0: expected a whole number >= 0"),
        ("j", 0, "column 'j', row 0: expected a photo other than i"),
    ],
)
def test_a_bad_pair_file_is_one_line(tmp_path: Path, column: str, value: float, message: str) -> None:
    run = make_run(tmp_path)
    path = run / "predictions" / "test.parquet"
    df = pd.read_parquet(path)
    df.loc[0, column] = value
    df.to_parquet(path)
    with pytest.raises(AvakitError, match=message):
        build_report(run)


def test_a_nan_prediction_is_dropped_with_a_note(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    path = run / "predictions" / "test.parquet"
    df = pd.read_parquet(path)
    df.loc[0, "p_pred"] = float("nan")
    df.to_parquet(path)
    summary = build_report(run)
    assert summary["test"]["n_pairs"] == len(df) - 1
    assert any("test.parquet: 1 pair(s) with a NaN" in n for n in summary["notes"])


def test_a_bad_history_value_is_one_line(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    history = _history()
    history[1]["val_pair_accuracy"] = "high"
    (run / "training_history.json").write_text(json.dumps(history))
    with pytest.raises(AvakitError, match="record 1, key 'val_pair_accuracy'"):
        build_report(run)
