"""Issue 8, "validate" slice: values read back are checked like user config, and bad config shapes,
seeds, output folders, devices and batch sizes are one line (points 2, 5, 13, 14).

Crafted checkpoints are a real tiny checkpoint (`trained_run`) with one value changed; crafted
ONNX files are a real export of it with one metadata value changed.
"""

from __future__ import annotations

import copy
import math
import re
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.config import load_config
from avakit.errors import AvakitError
from avakit.inference.onnx_runtime import OnnxScorer, decode_metadata, encode_metadata
from avakit.inference.preprocess import PreprocessSpec
from avakit.training.checkpoint import (
    load_checkpoint,
    make_folder,
    model_from_checkpoint,
    new_run_dir,
    seed_everything,
)
from avakit.training.distributed import pick_device
from avakit.training.evaluate import evaluate_run

runner = CliRunner()


def _one_line(result, code: int = 2) -> str:  # noqa: ANN001 - click's Result
    """The CLI failed with `code`, one red line and no traceback; returns the output."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.output


def _flat(output: str) -> str:
    """Click's boxed usage error as one line of words."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", output).split())


def _config_error(overrides: list[str] = (), path: Path | None = None) -> str:  # type: ignore[assignment]
    with pytest.raises(AvakitError) as info:
        load_config(path, overrides)
    assert "\n" not in str(info.value)
    return str(info.value)


# --- point 5 (config part): non-finite numbers -------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("training.learning_rate=.inf", "training.learning_rate: must be a finite number (got inf)"),
        ("training.learning_rate=.nan", "training.learning_rate: must be a finite number (got nan)"),
        ("training.weight_decay=-.inf", "training.weight_decay: must be a finite number (got -inf)"),
        ("training.grad_clip=.inf", "training.grad_clip: must be a finite number (got inf)"),
        ("transform.normalize_mean=[0.5, .nan, 0.5]", "transform.normalize_mean[1]: must be a finite number"),
        (
            "transform.augmentation.color_jitter.brightness=1e400",
            "brightness: must be a finite number (got inf)",
        ),
        ("training.head_lr_multiplier=1" + "0" * 400, "multiplier: must be a finite number (got an integer"),
    ],
)
def test_non_finite_numbers_are_config_errors(override: str, expected: str) -> None:
    assert expected in _config_error([override])


def test_non_finite_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  learning_rate: .inf\n")
    result = runner.invoke(app, ["train", "--config", str(path)])
    assert "training.learning_rate: must be a finite number (got inf)" in _one_line(result)


# --- point 2: bounds where a huge value costs memory or time ------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("transform.resize_size=6000", "transform.resize_size: must be <= 2048 (got 6000)"),
        ("transform.crop_size=6000", "transform.crop_size: must be <= 2048 (got 6000)"),
        ("transform.normalize_std=[0.2, 0, 0.2]", "transform.normalize_std[1]: must be > 0.0 (got 0.0)"),
        ("model.mlp_hidden_dims=[100000]", "model.mlp_hidden_dims[0]: must be <= 65536 (got 100000)"),
        ("model.mlp_hidden_dims=[8,8,8,8,8,8,8,8,8]", "model.mlp_hidden_dims: at most 8 values, got 9"),
        ("training.batch_size=1000000000", "training.batch_size: must be <= 16384"),
        ("features.batch_size=1000000000", "features.batch_size: must be <= 16384"),
        ("data.num_workers=100000", "data.num_workers: must be <= 256"),
        ("data.shuffle_buffer=100000000", "data.shuffle_buffer: must be <= 100000"),
        ("name=../../elsewhere", "name: must be a plain folder name"),
        ("name=a/b", "name: must be a plain folder name"),
    ],
)
def test_upper_bounds(override: str, expected: str) -> None:
    assert expected in _config_error([override])


def test_bounds_keep_ordinary_values() -> None:
    cfg = load_config(
        None,
        [
            "transform.resize_size=2048",
            "transform.crop_size=2048",
            "seed=4294967295",
            "model.mlp_hidden_dims=[1024,512,256,128,64,32,16,8]",
            "name=my-run_2.v1",
        ],
    )
    assert cfg.transform.crop_size == 2048 and cfg.seed == 2**32 - 1 and len(cfg.model.mlp_hidden_dims) == 8


# --- point 13: seed, YAML shapes, non-UTF-8, alias bombs, output_dir -----------------------------


def test_seed_beyond_64_bits() -> None:
    assert "seed: must be <= 4294967295 (got 99999999999999999999999)" in _config_error(
        ["seed=99999999999999999999999"]
    )
    result = runner.invoke(app, ["train", "--set", "seed=99999999999999999999999"])
    assert "seed: must be <=" in _one_line(result)
    with pytest.raises(AvakitError, match="seed: must be an integer in 0..4294967295"):
        seed_everything(2**70)
    seed_everything(2**32 - 1)  # the largest allowed seed seeds every generator


def _billion_laughs() -> str:
    """A 9^9-value "billion laughs" under a real key (`name`), 391 bytes."""
    levels = ["&a [" + ",".join(['"lol"'] * 9) + "]"]
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"&{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "name: [" + ", ".join(levels) + "]\n"


def test_yaml_alias_bomb_fails_fast(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_billion_laughs())
    message = _config_error(path=path)
    assert message.startswith(f"config {path}: invalid YAML at line 1") and "too many YAML aliases" in message
    assert "too many YAML aliases" in _one_line(runner.invoke(app, ["train", "--config", str(path)]))


def test_yaml_aliases_within_budget_still_work(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        "transform:\n  normalize_mean: &m [0.5, 0.5, 0.5]\n  normalize_std: *m\n"
        "training: &t {batch_size: 8}\nfeatures: {<<: *t, layer: final}\n"
    )
    cfg = load_config(path)
    assert cfg.transform.normalize_std == [0.5, 0.5, 0.5] and cfg.features.batch_size == 8


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"name: caf\xe9\n", "not UTF-8 text (byte 0xe9 on line 1)"),
        (b"- a\n- b\n", "expected a mapping of keys, got list"),
        (b"just a string\n", "expected a mapping of keys, got str"),
        (b"training:\n\tbatch_size: 8\n", "invalid YAML at line 2, column 1"),
        (b"training:\n  batch_size: 8\n  batch_size: 16\n", "line 3, column 3: duplicate key 'batch_size'"),
        (b"model:\n  mlp_hidden_dims: &a [1, *a]\n", "recursive YAML alias *a"),
        (b"name: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested more than 64 levels deep"),
        (b"seed: " + b"9" * 5000 + b"\n", "integer of 5,000 digits is too long"),
        (b"name: !!python/object/apply:os.system [echo hi]\n", "invalid YAML"),
    ],
)
def test_bad_yaml_shapes_are_one_line(tmp_path: Path, text: bytes, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(text)
    message = _config_error(path=path)
    assert message.startswith(f"config {path}: ") and expected in message
    assert expected in _one_line(runner.invoke(app, ["train", "--config", str(path)]))


def test_huge_config_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as f:
        f.truncate(17 << 20)  # sparse: 17 MiB of NUL bytes
    assert "17 MiB is too large for a config file (at most 16 MiB)" in _config_error(path=path)


def test_override_value_uses_the_same_loader() -> None:
    assert "duplicate key 'a'" in _config_error(["data.shards={a: x, a: y}"])


def test_output_dir_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "taken"
    file.write_text("not a folder\n")
    missing_shards = f"data.shards={tmp_path / 'no-shards'}"  # would fail later: the folder check is first
    result = runner.invoke(app, ["train", "--set", missing_shards, "--output-dir", str(file)])
    assert f"output_dir {file}: is a file, not a folder" in _one_line(result)
    result = runner.invoke(app, ["train", "--set", missing_shards, "--set", f"output_dir={file / 'sub'}"])
    assert f"output_dir {file / 'sub'}: cannot be made: {file} is a file" in _one_line(result)
    assert file.read_text() == "not a folder\n" and sorted(tmp_path.iterdir()) == [file]
    cfg = load_config(None, ["name=r"])
    assert new_run_dir(cfg, tmp_path / "new" / "deeper").parent == tmp_path / "new" / "deeper"
    with pytest.raises(AvakitError, match=f"cannot create folder {re.escape(str(file / 'run'))}: ") as info:
        make_folder(file / "run")  # where train creates the run folder: an OS error is one line
    assert info.value.exit_code == 1


# --- point 14: --device and --batch-size ----------------------------------------------------------


def test_device_is_a_choice(tmp_path: Path) -> None:
    with pytest.raises(AvakitError, match="device: must be one of 'auto', 'cpu', 'cuda' \\(got 'tpu'\\)"):
        pick_device("tpu")
    assert pick_device("cpu") == torch.device("cpu")
    commands = (["evaluate", str(tmp_path)], ["predict", str(tmp_path), "--run", str(tmp_path)], ["features"])
    for args in commands:
        result = runner.invoke(app, [*args, "--device", "tpu"])
        assert result.exit_code == 2 and "'tpu' is not one of 'auto', 'cpu', 'cuda'" in _flat(result.output)


def test_batch_size_zero(tmp_path: Path) -> None:
    for args in (["evaluate", str(tmp_path)], ["predict", str(tmp_path), "--run", str(tmp_path)]):
        result = runner.invoke(app, [*args, "--batch-size", "0"])
        assert result.exit_code == 2
        assert "'--batch-size': Input should be greater than or equal to 1" in _flat(result.output)
    with pytest.raises(AvakitError, match="batch_size: must be > 0 \\(got 0\\)"):
        evaluate_run(tmp_path, batch_size=0)  # before the run folder is even looked at


# --- point 2: crafted checkpoints ----------------------------------------------------------------


@pytest.fixture(scope="module")
def real_ckpt(trained_run: Path) -> dict:
    """The fixture run's best checkpoint as torch.load returns it (no avakit validation)."""
    return torch.load(trained_run / "best_model.pt", map_location="cpu", weights_only=True)


def _crafted(real: dict, tmp_path: Path, edit) -> Path:  # noqa: ANN001 - a callable editing the dict
    ckpt = copy.deepcopy(real)
    ckpt = edit(ckpt) or ckpt
    path = tmp_path / "crafted" / "best_model.pt"
    path.parent.mkdir(exist_ok=True)
    torch.save(ckpt, path)
    return path


def _node(ckpt: dict, path: str | tuple[str, ...]) -> tuple[dict, str]:
    """(parent mapping, last key) of 'a.b.c' or of a tuple of keys (state-dict names hold dots)."""
    *parents, last = path.split(".") if isinstance(path, str) else path
    for key in parents:
        ckpt = ckpt[key]
    return ckpt, last


def _set(path: str | tuple[str, ...], value: object):  # noqa: ANN202
    def edit(ckpt: dict) -> None:
        parent, last = _node(ckpt, path)
        parent[last] = value

    return edit


def _delete(path: str | tuple[str, ...]):  # noqa: ANN202
    def edit(ckpt: dict) -> None:
        parent, last = _node(ckpt, path)
        del parent[last]

    return edit


BIAS = ("model_state_dict", "head.layers.0.bias")
CRAFTED = [
    (_set("config.transform.resize_size", 6000), "config.transform.resize_size: must be <= 2048 (got 6000)"),
    (_set("config.transform.crop_size", 6000), "config.transform.crop_size: must be <= 2048 (got 6000)"),
    (_set("config.transform.normalize_std", [0.0, 0.2, 0.2]), "transform.normalize_std[0]: must be > 0"),
    (_set("config.transform.normalize_mean", [math.nan, 0.4, 0.4]), "normalize_mean[0]: must be a finite"),
    (_set("preprocessing.quality", 1000), "preprocessing.quality must be an integer in 1..100, got 1000"),
    (_set("preprocessing.short_side", "256"), "preprocessing.short_side must be an integer"),
    (_set("config", "a string"), "config: expected a mapping, got str 'a string'"),
    (_delete("config.transform"), "config.transform: missing"),
    (_delete("config.transform.crop_size"), "config.transform.crop_size: missing"),
    (_set("config.model.mlp_hidden_dims", [10**9]), "config.model.mlp_hidden_dims[0]: must be <= 65536"),
    (_set("config.model.backbone", "evilnet"), "config.model.backbone: must be one of"),
    (_set("config.data.num_workers", 10**6), "config.data.num_workers: must be <= 256"),
    (_set("config.seed", 10**23), "config.seed: must be <= 4294967295"),
    (_set("config.transform.extra", 1), "unknown key 'config.transform.extra'"),
    (_set("epoch", "three"), "epoch must be a non-negative integer or null, got 'three'"),
    (_set("metrics", [1, 2]), "metrics must be a mapping or null, got list"),
    (_set("model_state_dict", [1, 2]), "model_state_dict must be a mapping, got list"),
    (_set(BIAS, "x"), "model_state_dict must map names to dense tensors (got str 'head.layers.0.bias': str)"),
    (_set(BIAS, torch.zeros(3)), "model_state_dict.head.layers.0.bias: torch.float32 [3] does not fit"),
    (_set(BIAS, torch.zeros(16, dtype=torch.int64)), "model_state_dict.head.layers.0.bias: torch.int64 [16]"),
    (_delete(BIAS), "weights do not fit its config: missing head.layers.0.bias"),
    (lambda ckpt: [ckpt], "not an avakit checkpoint (a list, not a mapping)"),
]


@pytest.mark.parametrize(("edit", "expected"), CRAFTED, ids=[e for _, e in CRAFTED])
def test_crafted_checkpoint_is_one_line(real_ckpt: dict, tmp_path: Path, edit, expected: str) -> None:  # noqa: ANN001
    path = _crafted(real_ckpt, tmp_path, edit)
    with pytest.raises(AvakitError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_crafted_checkpoint_through_the_cli(real_ckpt: dict, trained_run: Path, tmp_path: Path) -> None:
    path = _crafted(real_ckpt, tmp_path, _set("config.transform.resize_size", 6000))
    photo = next((trained_run.parent / "ava" / "images").glob("*.jpg"))
    expected = f"{path}: config.transform.resize_size: must be <= 2048 (got 6000)"
    assert expected in _one_line(runner.invoke(app, ["predict", str(photo), "--checkpoint", str(path)]))
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    shutil.copy(path, run / "best_model.pt")
    result = runner.invoke(app, ["evaluate", str(run)])
    assert f"{run / 'best_model.pt'}: config.transform.resize_size: must be <= 2048" in _one_line(result)
    result = runner.invoke(app, ["export", str(run), "--output", str(tmp_path / "m.onnx")])
    assert "config.transform.resize_size" in _one_line(result) and not (tmp_path / "m.onnx").exists()


def test_hand_built_checkpoint_dicts_are_validated_too(real_ckpt: dict) -> None:
    bad = copy.deepcopy(real_ckpt)
    bad["config"]["transform"]["crop_size"] = 6000
    with pytest.raises(AvakitError, match="checkpoint: config.transform.crop_size: must be <= 2048"):
        PreprocessSpec.from_checkpoint(bad)
    with pytest.raises(AvakitError, match="checkpoint: config.transform.crop_size: must be <= 2048"):
        model_from_checkpoint(bad)
    with pytest.raises(AvakitError, match="ckpt.pt: not an avakit checkpoint"):
        PreprocessSpec.from_checkpoint({"model_state_dict": {}}, "ckpt.pt")


def test_valid_checkpoint_loads_complete(trained_run: Path, real_ckpt: dict) -> None:
    ckpt = load_checkpoint(trained_run / "best_model.pt")
    assert ckpt["config"] == real_ckpt["config"] and ckpt["preprocessing"]["short_side"] == 48
    model, cfg = model_from_checkpoint(ckpt, "best_model.pt")
    assert cfg.transform.crop_size == 32 and not any(p.is_meta for p in model.parameters())


# --- point 2 and 13: crafted ONNX metadata, input_size mismatch ----------------------------------


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from avakit.inference.export import export_onnx

    run = tmp_path_factory.mktemp("validate-onnx") / "run"
    shutil.copytree(trained_run, run)
    return export_onnx(run, run.parent / "model.onnx", parity_images=4)["fp32"]


def _with_metadata(src: Path, dst: Path, **changes: object) -> Path:
    model = onnx.load(str(src))
    meta = decode_metadata({p.key: p.value for p in model.metadata_props})
    meta.update(changes)
    raw = encode_metadata(meta)
    for key, value in changes.items():
        if isinstance(value, str) and key not in ("output_mode",):  # a raw JSON text, as a crafter writes it
            raw[key] = value
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, raw)
    onnx.save(model, str(dst))
    return dst


ONNX_CRAFTED = [
    ({"input_size": 64, "resize_size": 64}, "metadata input_size 64 does not match the model's input shape"),
    ({"resize_size": 6000}, "metadata resize_size: must be <= 2048 (got 6000)"),
    ({"input_size": 4096, "resize_size": 4096}, "metadata resize_size: must be <= 2048 (got 4096)"),
    ({"input_size": 64}, "metadata input_size 64 must be <= resize_size (40)"),
    ({"input_size": "32.5"}, "metadata input_size: expected int, got float 32.5"),
    ({"normalize_std": [0.0, 0.2, 0.2]}, "metadata normalize_std[0]: must be > 0.0 (got 0.0)"),
    ({"normalize_mean": "[NaN, 0.4, 0.4]"}, "metadata normalize_mean[0]: must be a finite number (got nan)"),
    ({"normalize_std": "[Infinity, 0.2, 0.2]"}, "metadata normalize_std[0]: must be a finite number"),
    ({"normalize_mean": [0.4, 0.4]}, "metadata normalize_mean: expected 3 values, got 2"),
    ({"quality": 1000}, "metadata: quality must be an integer in 1..100, got 1000"),
    ({"short_side": 10**6}, "metadata: short_side must be an integer in 1..4096"),
    ({"short_side": "1" * 5000}, "metadata: short_side must be an integer in 1..4096"),
    ({"output_mode": "regression"}, "metadata output_mode regression does not match the model's output"),
]


@pytest.mark.parametrize(("changes", "expected"), ONNX_CRAFTED, ids=[e for _, e in ONNX_CRAFTED])
def test_crafted_onnx_metadata_is_one_line(
    exported: Path, tmp_path: Path, changes: dict, expected: str
) -> None:
    path = _with_metadata(exported, tmp_path / "crafted.onnx", **changes)
    with pytest.raises(AvakitError) as info:
        OnnxScorer(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_onnx_input_size_mismatch_through_predict(exported: Path, trained_run: Path, tmp_path: Path) -> None:
    path = _with_metadata(exported, tmp_path / "m.onnx", input_size=40)
    photo = next((trained_run.parent / "ava" / "images").glob("*.jpg"))
    result = runner.invoke(app, ["predict", str(photo), "--onnx", str(path)])
    assert "metadata input_size 40 does not match the model's input shape" in _one_line(result)
    assert OnnxScorer(exported).spec.crop_size == 32  # the untouched export loads


def test_model_from_checkpoint_leaves_the_state_dict_reusable(trained_run: Path) -> None:
    """torch's load_state_dict(assign=True) marks the dict's own `_metadata`; a later plain load of
    the same dict (train's resume) must still copy into the module's parameters, not swap them."""
    from avakit.config import config_from_dict
    from avakit.model.build import model_from_config

    ckpt = load_checkpoint(trained_run / "best_model.pt")
    model_from_checkpoint(ckpt, "best_model.pt")
    fresh = model_from_config(config_from_dict(ckpt["config"]), load_weights=False)
    before = [id(p) for p in fresh.parameters()]
    fresh.load_state_dict(ckpt["model_state_dict"])
    assert [id(p) for p in fresh.parameters()] == before
    assert fresh.head.layers[0].bias.data_ptr() != ckpt["model_state_dict"]["head.layers.0.bias"].data_ptr()
