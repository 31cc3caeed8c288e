"""`avakit export` and `predict --onnx`: parity with torch, INT8, metadata, no torch when scoring.

About the INT8 bound (SRCC >= 0.99 vs FP32, the same as `export_onnx`'s own check): the tiny
2-epoch `trained_run` fixture predicts almost the same mean score for every image (range about
0.12, std about 0.02), not far above INT8's noise (the backbone's 8-bit activations: up to
about 0.005-0.01 in mean score, the head and output stay FP32), so on it INT8 swaps a few
neighbours (SRCC about 0.98) and `export_onnx` refuses the file: tested as such.
The pass path is tested on the same trained backbone with a head whose scores spread like a
trained model's (std 0.7 along the features' first principal component), where INT8 reaches
SRCC >= 0.99.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from avakit.errors import AvakitError
from avakit.inference.export import INT8_MIN_SRCC, export_onnx, val_images
from avakit.inference.onnx_runtime import OnnxScorer, read_metadata
from avakit.inference.predict import load_scorer, score_images
from avakit.inference.preprocess import PreprocessSpec
from avakit.inference.quantize import quantize_int8
from avakit.training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def run_copy(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the session's trained run (export must not touch the original)."""
    dst = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(trained_run, dst)
    return dst


@pytest.fixture(scope="module")
def fp32_export(run_copy: Path) -> dict:
    """The run exported without INT8 (its parity check passed, or this raised)."""
    return export_onnx(run_copy, run_copy.parent / "out" / "model.onnx", parity_images=64)  # data.shards


def _shards(trained_run: Path) -> Path:
    return trained_run.parent / "shards"


def _photos(trained_run: Path, n: int = 4) -> list[Path]:
    return sorted((trained_run.parent / "ava" / "images").glob("*.jpg"))[:n]


def _regression_run(src: Path, dst: Path, shards: Path, spread: float, offset: float = 0.0) -> Path:
    """A regression checkpoint: `src`'s backbone + a head scoring along the features' first PC.

    Scores on the val images have mean 5.5 + offset and standard deviation `spread`.
    """
    ckpt = load_checkpoint(src / "best_model.pt")
    model, _ = model_from_checkpoint(ckpt)
    x = val_images(str(shards), PreprocessSpec.from_checkpoint(ckpt), 256)
    with torch.inference_mode():
        feats = model.features(torch.from_numpy(x)).double()
    centred = feats - feats.mean(0)
    direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    direction = direction * spread / (centred @ direction).std()
    state = copy.deepcopy(ckpt["model_state_dict"])
    hidden = state["head.layers.0.weight"].shape[0]
    w0, b0 = torch.zeros(hidden, feats.shape[1]), torch.zeros(hidden)
    w0[0], b0[0] = direction.float(), float(5.5 + offset - feats.mean(0) @ direction)  # unit 0 = score
    w1 = torch.zeros(1, hidden)
    w1[0, 0] = 1.0
    state.update(
        {
            "head.layers.0.weight": w0,
            "head.layers.0.bias": b0,
            "head.layers.1.weight": w1,
            "head.layers.1.bias": torch.zeros(1),
        }
    )
    config = copy.deepcopy(ckpt["config"])
    config["model"]["output_mode"], config["training"]["loss_type"] = "regression", "mse"
    dst.mkdir(parents=True)
    save_checkpoint(dst / "best_model.pt", {**ckpt, "model_state_dict": state, "config": config})
    return dst


def test_fp32_matches_torch(fp32_export: dict) -> None:
    parity = fp32_export["parity"]
    assert fp32_export["fp32"].is_file() and fp32_export["int8"] is None
    assert not list(fp32_export["fp32"].parent.glob("*.data"))  # one self-contained file
    assert parity["n"] == 24 and "val images" in parity["inputs"]  # the fixture's whole val split
    assert parity["fp32_max_abs_diff"] <= 1e-4
    assert parity["fp32_srcc"] > 0.999
    assert fp32_export["notes"] == []


def test_graph_has_named_io_and_dynamic_batch(fp32_export: dict) -> None:
    graph = onnx.load(str(fp32_export["fp32"])).graph
    (inp,), (out,) = graph.input, graph.output
    assert inp.name == "input" and out.name == "scores"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [3, 32, 32]
    scorer = OnnxScorer(fp32_export["fp32"])
    for batch in (1, 5):
        probs = scorer(np.zeros((batch, 3, 32, 32), np.float32))
        assert probs.shape == (batch, 10)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_metadata_round_trip(fp32_export: dict, run_copy: Path) -> None:
    meta = read_metadata(fp32_export["fp32"])
    ckpt = load_checkpoint(run_copy / "best_model.pt")
    assert meta == fp32_export["metadata"]
    assert meta["output_mode"] == "distribution" and meta["backbone"] == "resnet18"
    assert (meta["input_size"], meta["resize_size"]) == (32, 40)
    assert meta["normalize_mean"] == [0.485, 0.456, 0.406] and len(meta["normalize_std"]) == 3
    assert meta["short_side"] == 48 and meta["quality"] == ckpt["preprocessing"]["quality"]
    assert meta["manifest_sha256"] == ckpt["manifest_sha256"] and len(meta["manifest_sha256"]) == 64
    results = json.loads((run_copy / "results.json").read_text())
    assert meta["trained_at"] == results["finished_at"]
    assert meta["val_srcc"] == pytest.approx(results["val"]["srcc"])
    assert meta["test_srcc"] == pytest.approx(results["test"]["srcc"])
    assert meta["avakit_version"] and meta["precision"] == "fp32"
    raw = {p.key: p.value for p in onnx.load(str(fp32_export["fp32"])).metadata_props}
    assert raw["normalize_mean"] == "[0.485, 0.456, 0.406]" and raw["output_mode"] == "distribution"
    assert OnnxScorer(fp32_export["fp32"]).spec == PreprocessSpec.from_checkpoint(ckpt)


def test_predict_onnx_equals_predict_run(fp32_export: dict, run_copy: Path, trained_run: Path) -> None:
    photos = _photos(trained_run)
    onnx_rows = score_images(load_scorer(onnx=fp32_export["fp32"]), photos, batch_size=3)
    torch_rows = score_images(load_scorer(run=run_copy, device="cpu"), photos, batch_size=3)
    for a, b in zip(onnx_rows, torch_rows, strict=True):
        assert a.error is None and b.error is None
        assert a.mean_score == pytest.approx(b.mean_score, abs=1e-3)
        assert a.std == pytest.approx(b.std, abs=1e-3)
        np.testing.assert_allclose(a.dist, b.dist, atol=1e-3)


def test_predict_onnx_imports_no_torch(fp32_export: dict, trained_run: Path) -> None:
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from avakit.inference.predict import load_scorer, score_images\n"
        f"s = load_scorer(onnx=Path({str(fp32_export['fp32'])!r}))\n"
        f"(row,) = score_images(s, [Path({str(_photos(trained_run, 1)[0])!r})])\n"
        "assert row.error is None and 1 <= row.mean_score <= 10, row\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_int8_gate_refuses_tiny_fixture(run_copy: Path) -> None:
    # See the module docstring: scores too flat for INT8 to keep their order.
    out = run_copy.parent / "gate" / "model.onnx"
    with pytest.raises(AvakitError, match="SRCC") as info:
        export_onnx(run_copy, out, int8=True, parity_images=64)
    assert info.value.exit_code == 1
    assert (out.parent / "model.int8.onnx").is_file() and out.is_file()


def test_int8_export_regression(trained_run: Path, tmp_path: Path) -> None:
    run = _regression_run(trained_run, tmp_path / "run", _shards(trained_run), spread=0.7)
    result = export_onnx(run, tmp_path / "out" / "m.onnx", int8=True, shards=_shards(trained_run))
    parity, int8 = result["parity"], result["int8"]
    assert int8 == tmp_path / "out" / "m.int8.onnx" and int8.is_file()
    assert parity["fp32_max_abs_diff"] <= 1e-4
    assert parity["int8_srcc"] >= INT8_MIN_SRCC and parity["int8_max_abs_diff"] < 0.2
    assert "static QDQ" in parity["int8_method"]
    assert result["sizes_mb"]["int8"] < result["sizes_mb"]["fp32"] / 2
    meta = read_metadata(int8)
    assert meta["precision"] == "int8" and meta["output_mode"] == "regression"
    assert meta["trained_at"] and meta["val_srcc"] is not None  # no results.json: checkpoint mtime, metrics
    scores = OnnxScorer(int8)(val_images(str(_shards(trained_run)), OnnxScorer(int8).spec, 8))
    assert scores.shape == (8,) and np.all((scores >= 1) & (scores <= 10))


def test_regression_scores_are_clamped(trained_run: Path, tmp_path: Path) -> None:
    run = _regression_run(trained_run, tmp_path / "run", _shards(trained_run), spread=8.0, offset=0.3)
    result = export_onnx(run, tmp_path / "m.onnx", shards=_shards(trained_run))
    scorer = OnnxScorer(result["fp32"])
    scores = scorer(val_images(str(_shards(trained_run)), scorer.spec, 256))
    assert scores.min() == 1.0 and scores.max() == 10.0  # raw scores reach beyond both ends
    assert result["parity"]["fp32_max_abs_diff"] <= 1e-4


def test_no_shards_falls_back(run_copy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    ckpt = load_checkpoint(run_copy / "best_model.pt")
    ckpt["config"]["data"]["shards"] = str(tmp_path / "gone")
    save_checkpoint(run / "best_model.pt", ckpt)
    result = export_onnx(run, tmp_path / "m.onnx", parity_images=8)
    assert result["parity"]["n"] == 8 and result["parity"]["fp32_max_abs_diff"] <= 1e-4
    assert "random inputs" in result["notes"][0] and "random inputs" in caplog.text
    quantize_int8(result["fp32"], tmp_path / "dyn.onnx", None)  # the dynamic fallback runs
    import onnxruntime as ort

    out = ort.InferenceSession(str(tmp_path / "dyn.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": np.zeros((2, 3, 32, 32), np.float32)}
    )[0]
    assert out.shape == (2, 10)
    with pytest.raises(AvakitError, match="manifest.json"):  # an explicit bad folder is an error
        export_onnx(run, tmp_path / "m2.onnx", shards=tmp_path / "gone")


def test_foreign_onnx_file_is_a_user_error(tmp_path: Path) -> None:
    node = onnx.helper.make_node("Identity", ["input"], ["scores"])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [value("input", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
        [value("scores", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(foreign))
    with pytest.raises(AvakitError, match="foreign.onnx: not an avakit model"):
        load_scorer(onnx=foreign)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(AvakitError, match="garbage.onnx: not a readable ONNX model"):
        OnnxScorer(garbage)
    with pytest.raises(AvakitError, match="not found"):
        OnnxScorer(tmp_path / "missing.onnx")


def test_cli_export_and_predict_onnx(run_copy: Path, trained_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from avakit.cli.app import app

    runner = CliRunner()
    out = tmp_path / "cli.onnx"
    result = runner.invoke(app, ["export", str(run_copy), "--output", str(out), "--parity-images", "16"])
    assert result.exit_code == 0, result.output
    assert "parity on 16 inputs" in result.output and out.is_file()
    photo = str(_photos(trained_run, 1)[0])
    onnx_rows = json.loads(
        runner.invoke(app, ["predict", photo, "--onnx", str(out), "--format", "json"]).stdout
    )
    torch_rows = json.loads(
        runner.invoke(app, ["predict", photo, "--run", str(run_copy), "--format", "json"]).stdout
    )
    assert abs(onnx_rows[0]["mean_score"] - torch_rows[0]["mean_score"]) < 1e-3
    result = runner.invoke(app, ["export", str(run_copy), "--output", str(tmp_path / "x.onnx"), "--int8"])
    assert result.exit_code == 1 and "INT8 ranks" in result.output  # the flat fixture, see above
