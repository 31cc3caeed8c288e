"""Checkpoints and run folders: atomic save, `weights_only` load, RNG states, a run's model and config.

Everything stored is tensors and plain Python containers, so checkpoints load with
`torch.load(path, weights_only=True)`.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avakit.config import Config, config_from_dict, load_config
from avakit.errors import AvakitError
from avakit.fileio import atomic_write


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
    """torch.load(weights_only=True) on CPU; a missing or foreign file is a user error."""
    path = Path(path)
    if not path.is_file():
        raise AvakitError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not our checkpoint"
        raise AvakitError(f"{path}: not a readable avakit checkpoint ({e.__class__.__name__})") from None
    if not isinstance(ckpt, dict) or "model_state_dict" not in ckpt or "config" not in ckpt:
        raise AvakitError(f"{path}: not an avakit checkpoint (no model_state_dict/config)")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> tuple[Any, Config]:
    """Rebuild the model (random init, no download) and load its trained weights."""
    from avakit.model import model_from_config

    cfg = config_from_dict(ckpt["config"])
    with torch.device("meta"):  # no random init: the weights come from the checkpoint
        model = model_from_config(cfg, load_weights=False)
    try:
        model.load_state_dict(ckpt["model_state_dict"], assign=True)
    except RuntimeError as e:
        raise AvakitError(f"checkpoint weights do not fit its config: {str(e).splitlines()[0]}") from None
    return model.eval(), cfg


def run_checkpoint(run_dir: Path, which: str = "best") -> Path:
    """The path of a run folder's best_model.pt or last.pt."""
    names = {"best": "best_model.pt", "last": "last.pt"}
    if which not in names:
        raise AvakitError(f"--checkpoint must be 'best' or 'last', got {which!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AvakitError(f"{run_dir}: run folder not found")
    return run_dir / names[which]


def _absolute(path: str) -> str:
    """A local path made absolute; URLs (scheme://) and `pipe:` commands are left as they are."""
    if "://" in path or path.startswith("pipe:"):
        return path
    return str(Path(path).expanduser().resolve())


def with_absolute_paths(cfg: Config) -> Config:
    """The config with data.shards / data.features / model.weights_path made absolute.

    A run folder's config.yaml then works from any directory (report, evaluate, predict).
    """
    shards = cfg.data.shards
    if isinstance(shards, str):
        shards = _absolute(shards)
    else:
        shards = {k: _absolute(v) if isinstance(v, str) else [_absolute(x) for x in v]
                  for k, v in shards.items()}
    data = replace(cfg.data, shards=shards,
                               features=_absolute(cfg.data.features) if cfg.data.features else None)
    weights = _absolute(cfg.model.weights_path) if cfg.model.weights_path else None
    return replace(cfg, data=data, model=replace(cfg.model, weights_path=weights))


def run_config(run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config a run was started with (its config.yaml), plus `--set` overrides."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise AvakitError(f"{path}: not found (is {run_dir} a run folder?)")
    return load_config(path, overrides)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def new_run_dir(cfg: Config, output_dir: Path | None) -> Path:
    """outputs/{name}-{timestamp}, made unique if two runs start in the same second."""
    base = Path(output_dir or cfg.output_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir, n = base / f"{cfg.name}-{stamp}", 1
    while run_dir.exists():
        n += 1
        run_dir = base / f"{cfg.name}-{stamp}-{n}"
    return run_dir
