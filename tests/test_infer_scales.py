"""predict (checkpoint), export and predict --onnx on a 7-point vote table and a MOS 0-100
lower-is-better table: scores in the data's own units, the same numbers from torch and ONNX,
headers naming the score, and the ONNX `labels` metadata validated like every other field."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.dataset.synthetic import make_synthetic_table
from avakit.errors import AvakitError
from avakit.inference.export import ExportModel, fp32_tolerance
from avakit.inference.onnx_runtime import (
    OnnxScorer,
    decode_metadata,
    encode_metadata,
    read_metadata,
    scale_from_metadata,
)
from avakit.inference.predict import format_predictions
from avakit.inference.scorer import FIELDS, Prediction, fields, to_prediction
from avakit.scores import AVA, Scale

runner = CliRunner()

VOTES7 = Scale("votes", 1.0, 7.0, 7, True, None)
MOS = Scale("mos", 0.0, 100.0, None, False, None)
CASES = {
    "votes7": (VOTES7, {"kind": "votes", "k": 7}, []),
    "mos": (
        MOS,
        {"kind": "mos", "scale": (0, 100), "lower_is_better": True, "groups": 30},
        ["--scale", "0:100", "--lower-is-better"],
    ),
}


# --- fast: the scale-aware pieces without a trained model ----------------------------------


def test_rows_follow_the_scale() -> None:
    probs = np.array([0, 0, 0, 0.5, 0.5, 0, 0], np.float32)
    row = to_prediction(Path("a.jpg"), probs, "distribution", VOTES7)
    assert row.mean_score == pytest.approx(4.5) and row.std == pytest.approx(0.5)
    assert list(row.row(VOTES7)) == [
        "path",
        "mean_score",
        "std",
        *(f"dist_{i}" for i in range(1, 8)),
        "error",
    ]
    mos = to_prediction(Path("b.jpg"), np.float32(37.5), "regression", MOS)
    assert mos.mean_score == 37.5 and list(mos.row(MOS)) == fields(MOS) == [
        "path",
        "mean_score",
        "std",
        "error",
    ]
    assert fields(AVA) == FIELDS and len(fields(AVA)) == 14  # AVA's columns are unchanged
    doc = json.loads(format_predictions([mos, Prediction("c.jpg", error="empty file")], "json", MOS))
    assert [r["score"] for r in doc] == ["MOS (0-100, lower is better)"] * 2
    assert [r["mean_score"] for r in doc] == [37.5, None]
    rows = list(csv.DictReader(io.StringIO(format_predictions([mos], "csv", MOS))))
    assert rows == [{"path": "b.jpg", "mean_score": "37.5", "std": "", "error": "", "score": MOS.score_name}]


def test_export_graph_maps_a_mos_model_to_native_units_and_clamps() -> None:
    class Raw(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, 0, 0, 0]

    x = torch.tensor([-0.5, 0.0, 0.25, 1.0, 1.7]).reshape(5, 1, 1, 1)
    got = ExportModel(Raw(), "regression", MOS)(x)
    assert got.tolist() == [0.0, 0.0, 25.0, 100.0, 100.0]
    ava = ExportModel(Raw(), "regression")(torch.tensor([0.0, 5.5, 12.0]).reshape(3, 1, 1, 1))
    assert ava.tolist() == [1.0, 5.5, 10.0]  # AVA: the score itself, clamped to 1..10
    assert fp32_tolerance(AVA) == pytest.approx(1e-4) and fp32_tolerance(MOS) == pytest.approx(1e-3 / 0.9)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({**VOTES7.as_dict(), "k": 0}, "x.onnx: metadata labels.k: expected an integer"),
        ({**MOS.as_dict(), "scale": [100, 0]}, "x.onnx: metadata labels.scale: expected [lo, hi]"),
        ("[1, 7", "x.onnx: metadata labels is not JSON ('[1, 7')"),
        ({**VOTES7.as_dict(), "kind": "x"}, "x.onnx: metadata labels.kind: expected one of"),
        ({**MOS.as_dict(), "threshold": 200}, "x.onnx: metadata labels.threshold: expected null or a number"),
        (None, "x.onnx: metadata labels: expected an object"),
    ],
)
def test_labels_metadata_is_checked(labels: object, expected: str) -> None:
    with pytest.raises(AvakitError) as info:
        scale_from_metadata(Path("x.onnx"), {"labels": labels})
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_labels_metadata_round_trips_and_absent_means_ava() -> None:
    for scale in (VOTES7, MOS, AVA):
        meta = decode_metadata(encode_metadata({"labels": scale.as_dict()}))
        assert scale_from_metadata(Path("x.onnx"), meta) == scale
    assert scale_from_metadata(Path("x.onnx"), {}) == AVA  # exported before scales


# --- slow: the CLI end to end on a votes-7 and a MOS run ------------------------------------


def _invoke(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.stdout


def _build(root: Path, name: str, tiny_train: tuple[str, ...]) -> dict:
    """Synthetic table -> shards -> a 1-epoch run -> model.onnx, all through the CLI."""
    scale, table, shard_extra = CASES[name]
    data = make_synthetic_table(root / "data", n=120, seed=3, **table)
    shards = root / "shards"
    _invoke(
        ["shard", "--labels", str(data.labels), "--images", str(data.images), "--out", str(shards)]
        + ["--short-side", "48", "--workers", "1", *shard_extra]
    )
    mode = ["model.output_mode=regression", "training.loss_type=mse"] if scale.kind == "mos" else []
    sets = [*tiny_train, "training.max_epochs=1", "training.warmup_epochs=0", f"data.shards={shards}"]
    sets += [f"output_dir={root / 'runs'}", f"name={name}", *mode]
    _invoke(["train", *(a for s in sets for a in ("--set", s))])
    (run,) = (root / "runs").iterdir()
    onnx_path = root / "model.onnx"
    out = _invoke(["export", str(run), "--output", str(onnx_path), "--parity-images", "8"])
    photos = sorted(Path(data.images).iterdir())[:5]
    return {"scale": scale, "run": run, "onnx": onnx_path, "photos": photos, "export_out": out}


@pytest.fixture(scope="module")
def votes7(tmp_path_factory: pytest.TempPathFactory, tiny_train: tuple[str, ...]) -> dict:
    """A 7-point vote table trained (distribution) and exported."""
    return _build(tmp_path_factory.mktemp("votes7"), "votes7", tiny_train)


@pytest.fixture(scope="module")
def mos(tmp_path_factory: pytest.TempPathFactory, tiny_train: tuple[str, ...]) -> dict:
    """A MOS 0-100 lower-is-better table trained (regression, mse) and exported."""
    return _build(tmp_path_factory.mktemp("mos"), "mos", tiny_train)


@pytest.fixture(params=sorted(CASES))
def built(request: pytest.FixtureRequest) -> dict:
    """Each of the two exported runs in turn."""
    return request.getfixturevalue(request.param)


def _json(built: dict, model: list[str]) -> list[dict]:
    return json.loads(_invoke(["predict", *map(str, built["photos"]), *model, "--format", "json"]))


@pytest.mark.slow
def test_predict_checkpoint_and_onnx_agree_in_native_units(built: dict) -> None:
    scale: Scale = built["scale"]
    torch_doc = _json(built, ["--run", str(built["run"])])
    onnx_doc = _json(built, ["--onnx", str(built["onnx"])])
    for doc in (torch_doc, onnx_doc):
        assert {r["score"] for r in doc} == {scale.score_name} and len(doc) == len(built["photos"])
    names = scale.point_names("dist_")
    for a, b in zip(torch_doc, onnx_doc, strict=True):
        assert a["error"] is None and b["error"] is None and list(a) == list(b)
        assert list(a) == ["path", "mean_score", "std", *names, "error", "score"]
        assert scale.lo <= a["mean_score"] <= scale.hi
        assert a["mean_score"] == pytest.approx(b["mean_score"], abs=1e-3 * (scale.hi - scale.lo))
        if scale.kind == "votes":
            dist = np.array([a[n] for n in names])
            assert dist.sum() == pytest.approx(1.0, abs=1e-4)
            assert a["mean_score"] == pytest.approx(float(scale.mean(dist)), abs=1e-4)
            np.testing.assert_allclose(dist, [b[n] for n in names], atol=1e-4)
            assert a["std"] == pytest.approx(b["std"], abs=1e-3)
        else:
            assert a["std"] is None and b["std"] is None and not any(k.startswith("dist_") for k in a)


@pytest.mark.slow
def test_table_and_csv_name_the_score(built: dict) -> None:
    scale: Scale = built["scale"]
    photos = [str(p) for p in built["photos"][:2]]
    tables = [
        _invoke(["predict", *photos, *model])
        for model in (["--run", str(built["run"])], ["--onnx", str(built["onnx"])])
    ]
    assert scale.score_name in tables[0] and "1-10" not in tables[0]
    assert tables[0] == tables[1]  # the same header and the same numbers (3 decimals)
    rows = list(
        csv.DictReader(
            io.StringIO(_invoke(["predict", *photos, "--onnx", str(built["onnx"]), "--format", "csv"]))
        )
    )
    assert list(rows[0]) == ["path", "mean_score", "std", *scale.point_names("dist_"), "error", "score"]
    assert {r["score"] for r in rows} == {scale.score_name}
    assert scale.score_name in built["export_out"]


@pytest.mark.slow
def test_onnx_metadata_and_graph_carry_the_scale(built: dict) -> None:
    scale: Scale = built["scale"]
    meta = read_metadata(built["onnx"])
    assert meta["labels"] == scale.as_dict()
    scorer = OnnxScorer(built["onnx"])
    assert scorer.scale == scale
    out = scorer(np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32) * 50)
    if scale.kind == "votes":
        assert out.shape == (4, 7)
    else:
        assert out.shape == (4,) and np.all((out >= scale.lo) & (out <= scale.hi))


def _with_labels(src: Path, dst: Path, text: str | None) -> Path:
    """A copy of `src` whose raw `labels` metadata is `text` (None: no labels entry at all)."""
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props if p.key != "labels"}
    if text is not None:
        props["labels"] = text
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(dst))
    return dst


def _labels_text(**changes: object) -> str:
    return json.dumps({**VOTES7.as_dict(), **changes})


BAD_LABELS = [
    (_labels_text(k=0), "metadata labels.k: expected an integer in 2..101"),
    (_labels_text(scale=[7, 1]), "metadata labels.scale: expected [lo, hi]"),
    ("{votes: 7", "metadata labels is not JSON"),
    (_labels_text(kind="x"), "metadata labels.kind: expected one of"),
    ("null", "metadata labels: expected an object"),
    (_labels_text(k=10), "output shape ['batch', 7] (expected [batch, 10] for labels mean score (1-7))"),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("text", "expected"), BAD_LABELS, ids=["k0", "lo>hi", "not-json", "kind-x", "null", "k10"]
)
def test_bad_labels_metadata_is_one_line(votes7: dict, tmp_path: Path, text: str, expected: str) -> None:
    path = _with_labels(votes7["onnx"], tmp_path / "crafted.onnx", text)
    with pytest.raises(AvakitError) as info:
        OnnxScorer(path)
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value)
    result = runner.invoke(app, ["predict", str(votes7["photos"][0]), "--onnx", str(path)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ")


@pytest.mark.slow
def test_onnx_without_labels_is_read_as_ava(built: dict, tmp_path: Path) -> None:
    """A file exported before scales has no `labels`: AVA's. A MOS regression graph then loads as
    AVA (its numbers are what the graph gives); a 7-way graph does not fit AVA's 10 points."""
    path = _with_labels(built["onnx"], tmp_path / "old.onnx", None)
    if built["scale"].kind == "mos":
        assert OnnxScorer(path).scale == AVA
    else:
        with pytest.raises(AvakitError, match=r"output shape \['batch', 7\] \(expected \[batch, 10\]"):
            OnnxScorer(path)
