"""The Scale: points, means and its stored form, validated wherever it is read back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from avakit.dataset.manifest import load_manifest, manifest_scale
from avakit.errors import AvakitError
from avakit.scores import AVA, POINTS, Scale, stored_scale


def test_ava_is_the_scale_of_the_old_constants() -> None:
    np.testing.assert_array_equal(AVA.points, POINTS)
    assert AVA.text == "1-10" and AVA.threshold == 5.0 and AVA.point_names("d")[-1] == "d10"
    assert AVA.score_name == "mean score (1-10)"


def test_points_mean_and_std_on_other_scales() -> None:
    slider = Scale("votes", 0.0, 100.0, 5, True, None)
    np.testing.assert_allclose(slider.points, [0, 25, 50, 75, 100])
    assert slider.mean([0, 0, 1, 0, 1]) == pytest.approx(75.0)
    assert slider.std([1, 0, 0, 0, 1]) == pytest.approx(50.0)
    dmos = Scale("mos", 0.0, 9.0, None, False, None)
    assert dmos.width == 1 and dmos.point_names("x") == [] and dmos.score_name == "MOS (0-9, lower is better)"
    assert dmos.good([1.0, 8.0], 4.5).tolist() == [True, False]
    assert dmos.from_model(0.5) == pytest.approx(4.5)
    with pytest.raises(ValueError, match="expected 5 bins"):
        slider.mean([1, 2, 3])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "stars"}, "labels.kind"),
        ({"k": 1}, "labels.k"),
        ({"k": 10.0}, "labels.k"),
        ({"k": True}, "labels.k"),
        ({"scale": [10, 1]}, "labels.scale"),
        ({"scale": [1, float("inf")]}, "labels.scale"),
        ({"scale": [1]}, "labels.scale"),
        ({"scale": [1, 1e300]}, "labels.scale"),
        ({"higher_is_better": 1}, "labels.higher_is_better"),
        ({"threshold": 11}, "labels.threshold"),
        ({"threshold": "5"}, "labels.threshold"),
        ({"extra": 1}, "exactly"),
    ],
)
def test_bad_stored_scales_are_one_line_errors(change: dict, message: str) -> None:
    doc = {"labels": {**AVA.as_dict(), **change}}
    with pytest.raises(AvakitError, match=f"^where: .*{message}"):
        stored_scale(doc, "where")


def test_round_trip_and_the_default() -> None:
    mos = Scale("mos", 0.0, 100.0, None, False, 40.0)
    assert stored_scale({"labels": json.loads(json.dumps(mos.as_dict()))}, "x") == mos
    assert stored_scale({}, "x") == AVA and stored_scale({"labels": None}, "x") == AVA
    with pytest.raises(AvakitError, match="labels.k"):
        stored_scale({"labels": {**mos.as_dict(), "k": 3}}, "x")


def test_manifest_versions(shared_shards: Path, tmp_path: Path) -> None:
    folder = tmp_path / "s"
    shutil.copytree(shared_shards, folder)
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["format_version"] == 2 and manifest_scale(manifest) == AVA
    old = {k: v for k, v in manifest.items() if k != "labels"}
    path.write_text(json.dumps({**old, "format_version": 1}))  # as the previous version wrote it
    assert manifest_scale(load_manifest(folder)) == AVA
    path.write_text(json.dumps(old))  # format 2 must say what its labels are
    with pytest.raises(AvakitError, match="labels: missing"):
        load_manifest(folder)
    path.write_text(json.dumps({**manifest, "labels": {**AVA.as_dict(), "k": 0}}))
    with pytest.raises(AvakitError, match=r"manifest\.json: labels\.k"):
        load_manifest(folder)
    path.write_text(json.dumps({**manifest, "format_version": 3}))
    with pytest.raises(AvakitError, match="format_version: unsupported 3"):
        load_manifest(folder)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({**AVA.as_dict(), "k": 0}, "best_model.pt: labels.k: expected an integer in 2..101"),
        ({**AVA.as_dict(), "scale": [10, 1]}, "best_model.pt: labels.scale: expected [lo, hi]"),
        ("votes", "best_model.pt: labels: expected an object"),
        ({**AVA.as_dict(), "k": 7}, "best_model.pt: model_state_dict"),  # 10 outputs, 7 points
    ],
)
def test_a_checkpoint_with_crafted_labels_is_one_line(
    trained_run: Path, tmp_path: Path, labels: object, message: str
) -> None:
    import torch
    from typer.testing import CliRunner

    from avakit.cli.app import app

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ckpt = torch.load(run / "best_model.pt", weights_only=True)
    torch.save({**ckpt, "labels": labels}, run / "best_model.pt")
    photo = next((trained_run.parent / "ava" / "images").glob("*.jpg"))
    for argv in (["evaluate", str(run), "--split", "val"], ["predict", str(photo), "--run", str(run)]):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()) and "Traceback" not in result.output
