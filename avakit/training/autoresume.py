"""`avakit train --resume auto`: continue the newest unfinished run of a config's name, or start one.

A run folder is `{name}-YYYYmmdd-HHMMSS[-N]` (checkpoint.new_run_dir) under the output dir; it is
unfinished while it holds config.yaml and no results.json. A requeued slurm job runs the same
command again and goes on where the preempted one stopped. Finding the folder is torch-free;
`train_target` also agrees on it across DDP ranks.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from avakit.config import Config, load_config
from avakit.errors import AvakitError

log = logging.getLogger("avakit.training.fit")

AUTO = "auto"


def _stamp(folder: Path, name: str) -> tuple[str, str, int] | None:
    """(date, time, N) of a run folder of `name`; None for any other folder name."""
    match = re.fullmatch(re.escape(name) + r"-(\d{8})-(\d{6})(?:-(\d+))?", folder.name)
    if match is None:
        return None
    return match.group(1), match.group(2), int(match.group(3) or 1)


def newest_unfinished(base: Path, name: str) -> Path | None:
    """The newest run folder of `name` under `base` with config.yaml and no results.json (by the
    timestamp in its name, then -N); None when there is none (or no `base`)."""
    if not base.is_dir():
        return None
    found = []
    for folder in base.iterdir():
        stamp = _stamp(folder, name)
        if stamp is None or not folder.is_dir():
            continue
        if (folder / "config.yaml").is_file() and not (folder / "results.json").exists():
            found.append((stamp, folder))
    return max(found)[1] if found else None


def _resolve(cfg: Config, output_dir: Path | None) -> Path | None:
    """Rank 0 looks for the run, every rank gets its answer (other ranks may see rank 0's new folder)."""
    from avakit.training.distributed import broadcast_object, init_distributed

    ddp, _ = init_distributed(cfg.device)
    base = Path(output_dir or cfg.output_dir).expanduser().absolute()
    found = newest_unfinished(base, cfg.name) if ddp.is_main else None
    found = broadcast_object(None if found is None else str(found), ddp)
    if found is None:
        log.info("--resume auto: no unfinished run named %s under %s; starting a new one", cfg.name, base)
        return None
    log.info("--resume auto: continuing %s", found)
    return Path(found)


def train_target(
    config: Path | None,
    overrides: list[str],
    output_dir: Path | None,
    resume: str | None,
    load: Callable[[Path | None, Sequence[str]], Config] | None = None,
) -> tuple[Config, Path | None, Path | None]:
    """(config, run folder to resume or None, output dir) of `avakit train`'s options.

    `--resume RUN` uses RUN's config.yaml plus `--set`; `--resume auto` reads `--config` (with
    `--set`) only for the run's name and output dir, then resumes the run found like `--resume RUN`.
    `load` builds the config of `--config` and `--set` (default load_config; a sweep run's adds
    its line's overrides and name).
    """
    from avakit.training.checkpoint import run_config

    load = load or load_config
    if resume is None:
        return load(config, overrides), None, output_dir
    if resume != AUTO:
        if config is not None:
            raise AvakitError("--resume uses the run's own config.yaml; change keys with --set, not --config")
        if output_dir is not None:
            raise AvakitError(f"--output-dir: a resumed run goes on in its own folder ({resume})")
        return run_config(Path(resume), overrides), Path(resume), None
    if config is None:
        raise AvakitError(
            "--resume auto needs --config: its name and output_dir say which runs to look at "
            "(to continue one run folder: --resume RUN_DIR)"
        )
    cfg = load(config, overrides)
    found = _resolve(cfg, output_dir)
    if found is None:
        return cfg, None, output_dir
    return run_config(found, overrides), found, None
