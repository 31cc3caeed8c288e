"""`evaluate --changelog` / `--phone-latency` and `export`'s ranking parity on a pairwise run."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avakit.changelog import COLUMNS, append_row, changelog_row, config_hash, table_lines
from avakit.cli.app import app
from avakit.errors import AvakitError

runner = CliRunner()
NOW = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)


def run(*argv: str, code: int = 0) -> str:
    result = runner.invoke(app, list(argv))
    assert result.exit_code == code, result.output
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def run_copy(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("extras") / "run"
    shutil.copytree(trained_run, dst)
    return dst


def pair_report(split: str = "test", **metrics: float) -> dict:
    return {"split": split, "checkpoint": "best_model.pt", "epoch": 2, "tta": "none", "metrics": metrics}


def test_rows_are_appended_to_a_new_then_an_existing_changelog(tmp_path: Path) -> None:
    path = tmp_path / "docs" / "model_changelog.md"
    path.parent.mkdir()
    report = pair_report(pair_accuracy=0.8, pair_accuracy_macro=0.75, auc_mean=float("nan"), n_pairs=9)
    row = changelog_row(report, "run|a", "ab" * 32, {"b": 1, "a": [1, 2]}, now=NOW)
    assert row[:5] == ["2026-01-02 03:04", "run|a", "ab" * 6, config_hash({"a": [1, 2], "b": 1}), "test"]
    assert row[5] == "best_model.pt (epoch 2)"
    assert row[6] == "pair_accuracy 0.8000, pair_accuracy_macro 0.7500, auc_mean n/a"
    assert append_row(path, row) == 1
    score = {**pair_report("val"), "tta": "flip", "metrics": {"srcc": 0.5, "plcc": 0.25, "emd": 1.0}}
    row2 = changelog_row(score, "run-b", None, {}, now=NOW)
    assert row2[2] == "unknown" and row2[5].endswith("tta flip") and row2[6] == "srcc 0.5000, plcc 0.2500"
    assert append_row(path, row2) == 2
    text = path.read_text()
    assert text.startswith("# Model changelog") and text.count("\n| ") == 4  # header, rule, 2 rows
    assert "run\\|a" in text  # a pipe in a cell is escaped: the row keeps its 7 cells
    assert len(table_lines(path)) == len(text.splitlines())


def test_config_hash_is_canonical() -> None:
    assert config_hash({"a": 1, "b": {"c": 2}}) == config_hash({"b": {"c": 2}, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2}) and len(config_hash({})) == 12


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("# notes\n\nsome prose\n", "no table header"),
        ("| " + " | ".join(COLUMNS) + " |\nnot a rule\n", ":2:"),
        ("| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|\n| a | b |\n", ":3:"),
        ("| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|\n\nprose after\n", ":3:"),
    ],
)
def test_a_file_that_is_not_the_changelog_table_is_refused(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "log.md"
    path.write_text(text)
    with pytest.raises(AvakitError, match=where) as e:
        append_row(path, ["x"] * len(COLUMNS))
    assert e.value.exit_code == 2 and path.read_text() == text  # untouched


def test_evaluate_refuses_a_bad_changelog_before_evaluating(run_copy: Path, tmp_path: Path) -> None:
    bad = tmp_path / "CHANGELOG.md"
    bad.write_text("# Changes\n\n- fixed things\n")
    out = run("evaluate", str(run_copy), "--device", "cpu", "--changelog", str(bad), code=2)
    assert "not a model changelog" in out and "Traceback" not in out
    assert not (run_copy / "eval").exists() or not list((run_copy / "eval").glob("*.json"))


def test_evaluate_with_phone_latency_and_changelog(run_copy: Path, tmp_path: Path) -> None:
    log = tmp_path / "model_changelog.md"
    out = run("evaluate", str(run_copy), "--device", "cpu", "--phone-latency", "--changelog", str(log))
    assert "phone proxy" in out and "ms/photo" in out and "changelog: row 1" in out
    report = json.loads(next((run_copy / "eval").glob("test_best*.json")).read_text())
    assert report["phone_proxy_ms_per_photo"] > 0
    proxy = report["phone_proxy"]
    assert proxy["threads"] == 1 and proxy["precision"] == "int8" and 1 <= proxy["n_photos"] <= 20
    assert "one thread" in proxy["note"] and report["metrics"]["latency_ms_per_image"] > 0
    rows = [line for line in log.read_text().splitlines() if line.startswith("| ")][2:]
    assert len(rows) == 1 and f"| {run_copy.name} |" in rows[0] and "srcc " in rows[0]
    run("evaluate", str(run_copy), "--device", "cpu", "--split", "val", "--changelog", str(log))
    assert len(table_lines(log)) == len(log.read_text().splitlines()) and "| val |" in log.read_text()


# --- export of a pairwise run: INT8 judged on ranking --------------------------------------------

PAIRWISE_E2E = Path(__file__).parents[1] / "configs" / "pairwise_e2e.yaml"
PAIR_FAST = (  # a random-init resnet18 on 48 px photos, 2 epochs: seconds on 2 CPU cores
    "model.backbone=resnet18",
    "model.pretrained=false",
    "model.mlp_hidden_dims=[32]",
    "model.dropout=0.1",
    "model.freeze=none",
    "transform.resize_size=48",
    "transform.crop_size=48",
    "training.learning_rate=1e-3",
    "training.differential_lr=false",
    "training.max_epochs=2",
    "training.batch_size=8",
    "training.amp=off",
    "data.num_workers=0",
    "device=cpu",
    "telemetry.collect_every_n=5",
)


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pairwise run (synthetic PhotoTriage, `shard --phototriage`, 2 epochs)."""
    from avakit.dataset.synthetic_pairs import make_synthetic_phototriage

    root = tmp_path_factory.mktemp("pairs")
    data = make_synthetic_phototriage(root / "PhotoTriage", n_series=40, seed=5, long_side=(64, 96))
    shards = root / "shards"
    args = ["--short-side", "48", "--val-ratio", "0.25", "--workers", "1"]
    run("shard", "--phototriage", str(data.root), "--out", str(shards), *args)
    sets = [f"data.shards={shards}", f"output_dir={root / 'runs'}", "name=pt", *PAIR_FAST]
    run("train", "--config", str(PAIRWISE_E2E), *[a for s in sets for a in ("--set", s)])
    (run_dir,) = (root / "runs").glob("pt-*")
    return run_dir


@pytest.mark.slow
def test_pairwise_int8_export_passes_on_ranking_with_provenance(pair_run: Path, tmp_path: Path) -> None:
    from avakit.inference.onnx_runtime import OnnxScorer
    from avakit.training.checkpoint import load_checkpoint

    onnx = tmp_path / "pt.onnx"
    out = run("export", str(pair_run), "--output", str(onnx), "--int8")
    assert "ranking parity on" in out and "Kendall" in out
    meta = OnnxScorer(tmp_path / "pt.int8.onnx").metadata
    ckpt = load_checkpoint(pair_run / "best_model.pt")
    assert meta["manifest_sha256"] == ckpt["manifest_sha256"] and len(meta["manifest_sha256"]) == 64
    results = json.loads((pair_run / "results.json").read_text())
    assert meta["trained_at"] == results["finished_at"] and meta["avakit_version"]


@pytest.mark.slow
def test_pairwise_ranking_parity_figures_and_sabotage(
    pair_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from avakit.inference import rank_parity
    from avakit.inference.export import export_onnx

    result = export_onnx(pair_run, tmp_path / "ok.onnx", int8=True)
    found = result["parity"]["ranking"]
    assert found["n_groups"] >= 1 and found["n_pairs"] > 0 and found["n_photos"] >= 2
    assert found["fp32_pair_accuracy"] - found["int8_pair_accuracy"] <= rank_parity.RANK_MAX_ACC_DIFF
    assert found["kendall_tau"] >= rank_parity.RANK_MIN_TAU

    real = rank_parity.score_photos

    def reversed_int8(path: Path, photos: np.ndarray) -> np.ndarray:
        scores = real(path, photos)
        return -scores if "int8" in path.name else scores  # INT8 ranks every pair the other way

    monkeypatch.setattr(rank_parity, "score_photos", reversed_int8)
    with pytest.raises(AvakitError, match="INT8 pair accuracy") as e:
        export_onnx(pair_run, tmp_path / "bad.onnx", int8=True)
    assert e.value.exit_code == 1

    def noisy_int8(path: Path, photos: np.ndarray) -> np.ndarray:  # same pair accuracy, scrambled order
        scores = real(path, photos)
        if "int8" not in path.name:
            return scores
        return scores + np.random.default_rng(0).normal(0, 100 * (np.ptp(scores) + 1), len(scores))

    monkeypatch.setattr(rank_parity, "pair_accuracy", lambda scores, pairs: 0.75)
    monkeypatch.setattr(rank_parity, "score_photos", noisy_int8)
    out = run("export", str(pair_run), "--output", str(tmp_path / "cli.onnx"), "--int8", code=1)
    assert "Kendall tau" in out and "Traceback" not in out
