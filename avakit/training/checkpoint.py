"""Checkpoints and run folders: atomic save, `weights_only` load, RNG states, a run's model and config.

Everything stored is tensors and plain Python containers, so checkpoints load with
`torch.load(path, weights_only=True)`.
"""

from __future__ import annotations

import copy
import os
import random
from collections import OrderedDict
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avakit.config import CHECKPOINTS, MAX_SEED, Config, config_from_dict, config_to_dict, load_config
from avakit.dataset.images import check_preprocessing
from avakit.errors import AvakitError
from avakit.fileio import atomic_write
from avakit.scores import AVA, Scale, stored_scale


def rng_state() -> dict:
    """Python, numpy and torch RNG states as weights_only-safe values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured."""
    version, internal, *rest = state["python"]
    random.setstate((version, tuple(internal), *rest))
    name, keys, *np_rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *np_rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict) -> None:
    """torch.save through fileio.atomic_write: a crash or a full disk never leaves half a checkpoint."""
    with atomic_write(Path(path)) as f:
        torch.save(payload, f)


def load_checkpoint(path: Path) -> dict:
    """torch.load(weights_only=True) on CPU, then `check_checkpoint`; a bad file is a user error."""
    path = Path(path)
    return check_checkpoint(read_torch_file(path, "avakit checkpoint"), str(path))


def read_torch_file(path: Path, what: str) -> Any:
    """torch.load(weights_only=True) on CPU: no code runs; a missing or foreign file is one AvakitError."""
    path = Path(path)
    if not path.is_file():
        raise AvakitError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not our file"
        raise AvakitError(f"{path}: not a readable {what} ({e.__class__.__name__})") from None


def check_checkpoint(ckpt: Any, where: str = "checkpoint", weights: bool = True) -> dict:
    """A checkpoint's contents validated like user input; AvakitError naming `where` and the key.

    `config` must build with `config_from_dict` (same types and bounds as a user's config),
    `model_state_dict` map names to tensors, `epoch` be an int or None, `metrics` a mapping,
    `preprocessing` pass `check_preprocessing`; with `weights`, the state's names, shapes and
    dtypes must fit the config's model (built on the meta device: no memory). Returns the
    checkpoint with `config` and `preprocessing` replaced by their validated, complete forms.
    """
    if not isinstance(ckpt, dict):
        raise AvakitError(f"{where}: not an avakit checkpoint (a {type(ckpt).__name__}, not a mapping)")
    missing = [k for k in ("model_state_dict", "config") if k not in ckpt]
    if missing:
        raise AvakitError(f"{where}: not an avakit checkpoint (no {'/'.join(missing)})")
    cfg = config_from_dict(ckpt["config"], where)
    scale = stored_scale(ckpt, where)
    state = ckpt["model_state_dict"]
    if not isinstance(state, dict):
        raise AvakitError(f"{where}: model_state_dict must be a mapping, got {type(state).__name__}")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            raise AvakitError(
                f"{where}: model_state_dict must map names to dense tensors "
                f"(got {type(name).__name__} {str(name)[:60]!r}: {type(value).__name__})"
            )
    if weights:
        check_weights(cfg, state, where, scale)
    epoch = ckpt.get("epoch")
    if epoch is not None and (type(epoch) is not int or epoch < 0):
        raise AvakitError(f"{where}: epoch must be a non-negative integer or null, got {str(epoch)[:60]!r}")
    for key, kind in (("metrics", dict), ("manifest_sha256", str), ("avakit_version", str)):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], kind):
            raise AvakitError(
                f"{where}: {key} must be a {'mapping' if kind is dict else 'string'} or null, "
                f"got {type(ckpt[key]).__name__}"
            )
    preprocessing = check_preprocessing(ckpt.get("preprocessing"), where)
    return {**ckpt, "config": config_to_dict(cfg), "preprocessing": preprocessing, "labels": scale.as_dict()}


def checkpoint_scale(ckpt: dict) -> Scale:
    """What a checked checkpoint's scores mean (its `labels`): scale, K, direction, threshold."""
    return stored_scale(ckpt, "checkpoint")


def check_weights(cfg: Config, state: dict, where: str, scale: Scale = AVA) -> Any:
    """The config's model on the meta device (no memory, no init), with `state`'s names, shapes
    and dtypes checked against it, and its float weights finite; the weights are not changed."""
    from avakit.model.build import model_from_config

    with torch.device("meta"):
        model = model_from_config(cfg, scale=scale, load_weights=False)
    check_state(state, model.state_dict(), where)
    return model


def check_state(state: Any, expected: dict, where: str, key: str = "model_state_dict") -> None:
    """`state` against `expected` (a module's state_dict): the same names, shapes and dtypes, and
    finite float weights. AvakitError naming `where` and the tensor; nothing is loaded."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AvakitError(f"{where}: {key} must map names to tensors")
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        kind, names = ("missing", missing) if missing else ("unexpected", unexpected)
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        raise AvakitError(f"{where}: weights do not fit its config: {kind} {', '.join(names[:3])}{more}")
    for name, want in expected.items():
        got = state[name]
        if got.dtype != want.dtype or got.shape != want.shape:
            raise AvakitError(
                f"{where}: {key}.{name}: {got.dtype} {list(got.shape)} does not fit "
                f"its config's model ({want.dtype} {list(want.shape)})"
            )
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise AvakitError(
                f"{where}: {key}.{name}: holds NaN or infinite values (every score would be NaN)", exit_code=1
            )


def model_from_checkpoint(ckpt: dict, where: str = "checkpoint") -> tuple[Any, Config]:
    """Rebuild the model (no init, no download) and load its trained weights.

    The checkpoint is validated (`check_checkpoint`), so a hand-built dict is held to the same
    rules as a loaded file.
    """
    ckpt = check_checkpoint(ckpt, where, weights=False)
    cfg = config_from_dict(ckpt["config"])
    model = check_weights(cfg, ckpt["model_state_dict"], where, checkpoint_scale(ckpt))
    model.load_state_dict(_unshared(ckpt["model_state_dict"]), assign=True)  # checked: cannot fail
    return model.eval(), cfg


def _unshared(state: dict) -> OrderedDict:
    """`state` with its own copy of the `_metadata` torch keeps on a saved state dict.

    `load_state_dict(assign=True)` writes `assign_to_params_buffers` into that metadata in
    place, so any later plain `load_state_dict` of the same dict would also swap the module's
    parameters for the dict's tensors (silently detaching them from an optimizer).
    """
    out = OrderedDict(state)
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        out._metadata = copy.deepcopy(metadata)  # type: ignore[attr-defined]
    return out


def run_checkpoint(run_dir: Path, which: str = "best") -> Path:
    """The path of a run folder's best_model.pt or last.pt."""
    names = dict(zip(CHECKPOINTS, ("best_model.pt", "last.pt"), strict=True))
    if which not in names:
        raise AvakitError(f"checkpoint must be 'best' or 'last', got {which!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AvakitError(f"{run_dir}: run folder not found")
    return run_dir / names[which]


def _absolute(path: str) -> str:
    """A local path made absolute; a URL or `pipe:` command the user wrote is kept as written."""
    from avakit.dataset.sources import has_scheme

    if has_scheme(path):
        return path
    return str(Path(path).expanduser().resolve())


def with_absolute_paths(cfg: Config) -> Config:
    """The config with data.shards / data.features / model.weights_path made absolute.

    A run folder's config.yaml then works from any directory (report, evaluate, predict). URLs
    stay as the user wrote them; read back later (`run_config`), they are refused unless given again.
    """
    shards = cfg.data.shards
    if isinstance(shards, str):
        shards = _absolute(shards)
    else:
        shards = {
            k: _absolute(v) if isinstance(v, str) else [_absolute(x) for x in v] for k, v in shards.items()
        }
    data = replace(
        cfg.data, shards=shards, features=_absolute(cfg.data.features) if cfg.data.features else None
    )
    weights = _absolute(cfg.model.weights_path) if cfg.model.weights_path else None
    return replace(cfg, data=data, model=replace(cfg.model, weights_path=weights))


def _overridden(key: str, overrides: list[str] | tuple[str, ...]) -> bool:
    """True if a `--set` override of this command sets `key` (or a section holding it)."""
    for item in overrides:
        name = item.partition("=")[0].strip()
        if key == name or key.startswith(name + "."):
            return True
    return False


def data_paths(cfg: Config) -> list[tuple[str, str]]:
    """(key, value) of every path the config opens: data.shards (each pattern), features, weights."""
    shards = cfg.data.shards
    if isinstance(shards, str):
        found = [("data.shards", shards)]
    else:
        found = [
            (f"data.shards.{split}", v)
            for split, values in shards.items()
            for v in ([values] if isinstance(values, str) else values)
        ]
    found += [("data.features", cfg.data.features), ("model.weights_path", cfg.model.weights_path)]
    return [(k, v) for k, v in found if v]


def require_plain_paths(cfg: Config, origin: str, overrides: list[str] | tuple[str, ...] = ()) -> None:
    """Refuse a URL or `pipe:` command read from `origin`, unless this command's `--set` gave it."""
    from avakit.dataset.sources import require_plain

    for key, value in data_paths(cfg):
        if not _overridden(key, overrides):
            require_plain(value, key, origin)


def run_config(run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config a run was started with (its config.yaml), plus `--set` overrides.

    config.yaml is read back from disk, so its data paths must be plain paths: a URL or `pipe:`
    source runs again only when this command's `--set` gives it (e.g. --set data.shards.train=...).
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise AvakitError(f"{path}: not found (is {run_dir} a run folder?)")
    cfg = load_config(path, overrides)
    require_plain_paths(cfg, str(path), overrides)
    return cfg


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (`seed` in 0..config.MAX_SEED, as the config allows)."""
    if type(seed) is not int or not 0 <= seed <= MAX_SEED:
        raise AvakitError(f"seed: must be an integer in 0..{MAX_SEED} (got {str(seed)[:60]})")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_parent(base: Path, key: str) -> None:
    """`base` is, or can become, a writable folder: its nearest existing ancestor is a folder."""
    for folder in (base, *base.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                what = "is a file, not a folder" if folder == base else f"cannot be made: {folder} is a file"
                raise AvakitError(f"{key} {base}: {what}")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise AvakitError(f"{key} {base}: {folder} is not writable")
            return


def new_run_dir(cfg: Config, output_dir: Path | None) -> Path:
    """outputs/{name}-{timestamp}, made unique if two runs start in the same second.

    Nothing is created yet, but an output folder that is a file (or lies under one, or is not
    writable) is one line here, before any work.
    """
    base = Path(output_dir or cfg.output_dir)
    _check_parent(base, "output_dir")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir, n = base / f"{cfg.name}-{stamp}", 1
    while run_dir.exists():
        n += 1
        run_dir = base / f"{cfg.name}-{stamp}-{n}"
    return run_dir


def make_folder(path: Path) -> None:
    """mkdir -p `path`; an OS error (a file in the way, no permission, disk full) is one line."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AvakitError(f"cannot create folder {path}: {exc.strerror or exc}", exit_code=1) from None
