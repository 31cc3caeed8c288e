"""Issue 8, export slice: points 7, 13 (opset, bad history/telemetry), 15, 16 and 18.

Builds on the session's `trained_run` (copied, never modified) and one head-only run trained
here on its shards (features cache + 6 epochs of the head, a few seconds).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from matplotlib.figure import Figure
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.config import load_config
from avakit.errors import AvakitError
from avakit.inference.export import (
    INT8_MIN_SRCC,
    OPSET_MIN,
    export_onnx,
    opset_max,
    val_images,
)
from avakit.inference.onnx_runtime import OnnxScorer
from avakit.inference.quantize import BACKBONE_SCOPE
from avakit.plots import _step_axis, gradient_warnings
from avakit.report import html as H
from avakit.report.build import _group_tables, build_report, frozen_parts
from avakit.report.splits import SplitData
from avakit.scores import POINTS
from avakit.training.rundir import (
    epoch_start_steps,
    eval_outputs,
    load_history,
    model_label,
    read_telemetry,
    read_telemetry_csv,
)

runner = CliRunner()
TRAIN_OUTPUTS = ("results.json", "predictions/test.parquet", "predictions/val.parquet")


def _one_line_error(result, exit_code: int = 2) -> str:
    """The CLI printed one `error:` line and no traceback; returns the line."""
    assert result.exit_code == exit_code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.strip()]
    assert line.startswith("error:"), result.output
    return line


def _without_tags(shards: Path, dest: Path) -> Path:
    """A copy of a shards folder whose labels have no semantic tags (all 0); challenges kept."""
    shutil.copytree(shards, dest)
    for path in dest.glob("*.tar"):
        members = []
        with tarfile.open(path) as tar:
            for info in tar:
                data = tar.extractfile(info).read()
                if info.name.endswith(".json"):
                    data = json.dumps({**json.loads(data), "tags": [0, 0]}).encode()
                    info.size = len(data)
                members.append((info, data))
        with tarfile.open(path, "w") as tar:
            for info, data in members:
                tar.addfile(info, io.BytesIO(data))
    return dest


@pytest.fixture(scope="module")
def evaluated(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A copy of the run, evaluated twice (last.pt + flip, best.pt plain), then reported.

    Its telemetry/gradient_norms.csv ends in a non-UTF-8 line, its learning_rates.csv is
    replaced by binary bytes, and the report reads shards without semantic tags.
    """
    root = tmp_path_factory.mktemp("evaluated")
    run = root / "run"
    shutil.copytree(trained_run, run)
    before = {name: (run / name).read_bytes() for name in TRAIN_OUTPUTS}
    cli = [
        runner.invoke(app, ["evaluate", str(run), "--checkpoint", "last", "--tta", "flip"]),
        runner.invoke(app, ["evaluate", str(run)]),
    ]
    for result in cli:
        assert result.exit_code == 0, result.output
    with open(run / "telemetry" / "gradient_norms.csv", "ab") as f:
        f.write(b"\xff\xfe\x00\x81garbage\x9c\n")
    (run / "telemetry" / "learning_rates.csv").write_bytes(bytes(range(256)) * 8)
    shards = _without_tags(trained_run.parent / "shards", root / "shards")
    report = runner.invoke(app, ["report", str(run), "--shards", str(shards)], terminal_width=250)
    assert report.exit_code == 0, report.output
    html = (run / "report" / "report.html").read_text(encoding="utf-8")
    return {
        "run": run,
        "before": before,
        "cli": cli,
        "report": report.output,
        "html": html,
        "notes": re.findall(r"<li>(.*?)</li>", html),
    }


# --- point 7: evaluate never overwrites train's outputs; every panel names its model ----------


def test_evaluate_keeps_train_outputs_and_names_its_own(evaluated: dict) -> None:
    run = evaluated["run"]
    for name, data in evaluated["before"].items():
        assert (run / name).read_bytes() == data, f"evaluate changed train's {name}"
    assert not (run / "eval_test.json").exists() and not (run / "predictions" / "test_last.parquet").exists()
    last, best = eval_outputs(run, "test", "last", "flip"), eval_outputs(run, "test", "best", "none")
    assert last.json.name == "test_last_tta-flip.json" and best.json.name == "test_best_tta-none.json"
    for out, checkpoint, tta in ((last, "last.pt", "flip"), (best, "best_model.pt", "none")):
        report = json.loads(out.json.read_text())
        assert (report["checkpoint"], report["tta"]) == (checkpoint, tta)
        assert report["predictions"] == out.parquet.relative_to(run).as_posix()
        assert len(pd.read_parquet(out.parquet)) == report["metrics"]["n"]
    wrote = " ".join(evaluated["cli"][0].output.split())
    assert f"wrote {last.json}, {last.parquet}" in wrote


def test_every_report_panel_names_checkpoint_epoch_and_tta(evaluated: dict) -> None:
    run, html = evaluated["run"], evaluated["html"]
    results = json.loads((run / "results.json").read_text())
    model = model_label("best_model.pt", results["best_epoch"], "none")
    for heading in (
        f"<h3>test: {model} (",
        f"<h3>val: {model} (",
        f"Best predicted (test: {model})",
        f"Worst predicted (val: {model})",
        f"Per challenge (test: {model})",
    ):
        assert heading in html, heading
    last_epoch = json.loads(eval_outputs(run, "test", "last", "flip").json.read_text())["epoch"]
    table = html[html.index("<table>") : html.index("</table>")]  # the summary table
    for row in (
        f"<td>{model}</td>",
        f"evaluate: last.pt, epoch {last_epoch}, TTA flip",
        f"evaluate: best_model.pt, epoch {results['best_epoch']}, no TTA",
    ):
        assert row in table, row
    assert "the model of that epoch, no TTA" in html  # SRCC-over-epochs caption
    cli = " ".join(evaluated["report"].split())
    assert "model" in cli and "TTA flip" in cli and "no TTA" in cli
    test = results["test"]  # the analysis is train's own: results.json's numbers, not evaluate's
    row = f'<tr><td class="name">test</td><td>{model}</td><td>{test["n"]}</td><td>{test["srcc"]:.4f}</td>'
    assert row in table


# --- point 13: --opset out of range; strings in the history; binary telemetry ---------------------


@pytest.mark.parametrize("opset", [3, 12, 99])
def test_export_opset_out_of_range_is_one_line(trained_run: Path, tmp_path: Path, opset: int) -> None:
    out = tmp_path / "m.onnx"
    line = _one_line_error(
        runner.invoke(app, ["export", str(trained_run), "--output", str(out), "--opset", str(opset)])
    )
    assert f"opset {opset} is not supported: use {OPSET_MIN} to {opset_max()}" in line
    assert not list(tmp_path.iterdir())  # refused before any work


@pytest.mark.parametrize(
    ("key", "value"), [("val_srcc", "high"), ("lr", ["a"]), ("steps", -1), ("epoch", "x")]
)
def test_report_on_history_with_wrong_types_is_one_line(
    trained_run: Path, tmp_path: Path, key: str, value: object
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("*.pt", "predictions"))
    history = json.loads((run / "training_history.json").read_text())
    history[1][key] = value
    (run / "training_history.json").write_text(json.dumps(history))
    line = _one_line_error(runner.invoke(app, ["report", str(run)], terminal_width=300))
    assert f"training_history.json: record 1, key '{key}': expected" in line


def test_report_on_binary_history_is_one_line(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("*.pt", "predictions"))
    (run / "training_history.json").write_bytes(b"\xff\xfe\x00binary")
    line = _one_line_error(runner.invoke(app, ["report", str(run)], terminal_width=300))
    assert "training_history.json: not UTF-8 text" in line


def test_binary_telemetry_csv_is_a_note(evaluated: dict, trained_run: Path) -> None:
    notes = " ".join(evaluated["notes"])
    assert "learning_rates.csv: not a telemetry CSV" in notes
    pngs = {p.name for p in (evaluated["run"] / "report").glob("*.png")}
    assert "learning_rates.png" not in pngs and "gradient_norms.png" in pngs  # the other file still drawn
    grads, _ = read_telemetry(trained_run)  # the non-UTF-8 line spoils only itself:
    salvaged = read_telemetry_csv(evaluated["run"] / "telemetry" / "gradient_norms.csv")
    pd.testing.assert_frame_equal(salvaged, grads, check_dtype=False)
    with pytest.raises(AvakitError, match="learning_rates.csv: not a telemetry CSV"):
        read_telemetry(evaluated["run"])


# --- point 15: a missing optional dependency is one line naming the extra -----------------------


@pytest.mark.parametrize("hidden", ["onnx", "onnxruntime"])
def test_export_without_onnx_names_the_extra(
    trained_run: Path, tmp_path: Path, hidden: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, hidden, None)  # `import onnx` now raises ImportError
    result = runner.invoke(
        app, ["export", str(trained_run), "--output", str(tmp_path / "m.onnx")], terminal_width=300
    )
    line = _one_line_error(result)
    assert "export needs onnx and onnxruntime: pip install 'avakit[export]'" in line and hidden in line
    assert not list(tmp_path.iterdir())  # checked before any work


def test_predict_onnx_without_onnxruntime_names_the_extra(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    photo = next((trained_run.parent / "ava" / "images").glob("*.jpg"))
    result = runner.invoke(app, ["predict", str(photo), "--onnx", "model.onnx"], terminal_width=300)
    assert "needs onnxruntime: pip install 'avakit[export]'" in _one_line_error(result)


# --- point 16: INT8 keeps the head's output in float; parity passes on a head-only run ----------


@pytest.fixture(scope="module")
def head_only_run(
    tiny_train: tuple[str, ...], trained_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A head-only run (frozen backbone from a feature cache, IQA features) on the fixture's shards."""
    from avakit.training.features import extract_features
    from avakit.training.fit import fit

    root = tmp_path_factory.mktemp("head_only")
    cfg = load_config(
        None,
        [
            *tiny_train,
            f"data.shards={trained_run.parent / 'shards'}",
            f"data.features={root / 'cache'}",
            "features.iqa=true",
            "training.max_epochs=6",
            "training.learning_rate=1e-2",
        ],
    )
    extract_features(cfg, out=root / "cache")
    return fit(cfg, output_dir=root / "runs")


@pytest.fixture(scope="module")
def int8_export(head_only_run: Path) -> dict:
    out = head_only_run.parent / "onnx" / "model.onnx"
    return export_onnx(head_only_run, out, int8=True, parity_images=64)  # raises when parity fails


def test_int8_parity_passes_on_a_head_only_run(int8_export: dict) -> None:
    parity = int8_export["parity"]
    assert parity["n"] == 24 and parity["int8_srcc"] >= INT8_MIN_SRCC
    assert "backbone only" in parity["int8_method"]


def test_int8_distributions_sum_to_one_and_scores_are_not_bucketed(
    int8_export: dict, trained_run: Path
) -> None:
    scorer = OnnxScorer(int8_export["int8"])
    x = val_images(str(trained_run.parent / "shards"), scorer.spec, 200, split="train")
    probs = scorer(x).astype(np.float64)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    scores = probs @ POINTS
    assert len(np.unique(scores)) >= 0.95 * len(x), f"{len(np.unique(scores))} distinct of {len(x)}"


def test_int8_quantises_only_the_backbone(int8_export: dict) -> None:
    graph = onnx.load(str(int8_export["int8"])).graph
    producer = {out: node for node in graph.node for out in node.output}
    quantized = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert quantized
    for q in quantized:  # every 8-bit activation is the model input or a backbone node's output
        source = producer.get(q.input[0])
        assert source is None or source.name.startswith(BACKBONE_SCOPE), (q.name, source.name)
    assert producer["scores"].op_type == "Softmax"  # the output itself is float
    iqa_convs = [n for n in graph.node if n.name.startswith("/model/iqa/") and n.op_type == "Conv"]
    assert iqa_convs and all(
        producer.get(i) is None or producer[i].op_type != "DequantizeLinear"
        for n in iqa_convs
        for i in n.input
    )  # the IQA branch stays float


# --- point 18: frozen on purpose; no tags at all; epoch lines; help texts ------------------------


def test_head_only_report_does_not_warn_frozen_backbone(head_only_run: Path) -> None:
    summary = build_report(head_only_run, shards=head_only_run / "nope")
    assert not [w for w in summary["warnings"] if "backbone_layer4" in w], summary["warnings"]
    html = summary["report"].read_text(encoding="utf-8")
    assert "head-only run (data.features set): the backbone is frozen on purpose" in html


def test_freeze_full_is_frozen_on_purpose(tiny_train: tuple[str, ...]) -> None:
    cfg = load_config(None, [*tiny_train, "model.freeze=full"])
    parts, why = frozen_parts(cfg)
    assert parts == ("backbone_layer4",) and "model.freeze is full" in why
    assert frozen_parts(load_config(None, tiny_train)) == ((), None)
    zero = pd.DataFrame({"batch_idx": range(20), "overall": 1.0, "backbone_layer4": 0.0, "mlp_head": 1.0})
    assert any("frozen or its gradients are vanishing" in w for w in gradient_warnings(zero))
    assert gradient_warnings(zero, parts) == []
    assert "did not take effect" in gradient_warnings(zero.assign(backbone_layer4=0.5), parts)[0]


def test_no_tags_at_all_is_said_as_such(evaluated: dict) -> None:
    notes = evaluated["notes"]
    assert any("the data has no semantic tags" in n for n in notes), notes
    assert not any("no semantic tag with at least" in n for n in notes)
    assert not any("the data has no challenges" in n for n in notes)  # challenges are there


def test_groups_with_too_few_images_keep_their_own_note(tmp_path: Path) -> None:
    df = pd.DataFrame({"image_id": [1, 2, 3], "pred_mean": [5.0, 6.0, 4.0], "gt_mean": [5.5, 6.1, 3.9]})
    sp = SplitData(
        "val",
        "best_model.pt, epoch 0, no TTA",
        df,
        {"mae": 0.2},
        labels={
            1: {"tags": [7, 0], "challenge": 0},
            2: {"tags": [0, 0], "challenge": 0},
            3: {"tags": [0, 0], "challenge": 0},
        },
    )
    c = H.Collector(tmp_path)
    H.groups_section(c, _group_tables([sp], {"tags": {}, "challenge": {}}, 5), 5)
    assert c.notes == [
        "val: best_model.pt, epoch 0, no TTA: no semantic tag with at least 5 images "
        "(1 of 3 images have one)",
        "val: best_model.pt, epoch 0, no TTA: the data has no challenges "
        "(every image's challenge id is 0 or absent)",
    ]


def test_epoch_lines_sit_at_the_first_optimizer_step(trained_run: Path) -> None:
    history = load_history(trained_run)
    grads, _ = read_telemetry(trained_run)
    starts = epoch_start_steps(history)
    assert starts == [history[0]["steps"]]  # epoch 1 begins after epoch 0's steps
    first_recorded = int(grads.loc[grads["epoch"] == 1, "batch_idx"].min())
    assert first_recorded != starts[0]  # the fixture collects every 2nd step: the old line was off
    ax = Figure().subplots()
    label = _step_axis(ax, grads, starts)
    assert [line.get_xdata()[0] for line in ax.lines] == starts and label.endswith("epoch starts")
    assert epoch_start_steps([{"epoch": 0}]) is None  # an old history without step counts


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("shard", "Worker processes. [default: (all cores)]"),
        ("features", "Feature cache folder. [default: (data.features, else features)]"),
        ("evaluate", "Shards folder. [default: (the run's data.shards)]"),
        ("evaluate", "Images per forward pass. [default: (the run's batch size)]"),
        ("report", "Shards for labels and thumbnails. [default: (the run's data.shards)]"),
        ("export", "Shards for the checks. [default: (the run's data.shards)]"),
    ],
)
def test_help_shows_every_default(command: str, shown: str) -> None:
    result = runner.invoke(app, [command, "--help"], terminal_width=250)
    assert result.exit_code == 0
    text = re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", result.output))
    # a range column ([x>=1], [1<=x<=16384]) can land inside the wrapped help
    text = re.sub(r" \[(?:[\d.]+<=?)?x(?:[<>]=?[\d.]+)?\]", "", text)
    assert shown in text
    assert not re.search(r"\w \.(?!\w)", text), text  # no "Processes ." left by an eaten [default: ...]
