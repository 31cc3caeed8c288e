"""What is learned from a sample, one module per task (`score`, `pairwise`).

Each task defines its sample decoder and batch collation, how a batch becomes a loss, the
evaluation pass, its metrics and its predictions tables; the trainer, run folder, telemetry and
report machinery are shared. `get_task(name)` returns a task by the config's `task` key; the
data's label kind decides which task it needs (`avakit.scores.TASKS`).
"""

from __future__ import annotations

from avakit.errors import AvakitError
from avakit.scores import TASK_NAMES, Scale
from avakit.tasks.base import Task


def get_task(name: str) -> Task:
    """The task called `name` ("score", "pairwise" or "clip")."""
    if name == "score":
        from avakit.tasks.score import SCORE

        return SCORE
    if name == "pairwise":
        from avakit.tasks.pairwise import PAIRWISE

        return PAIRWISE
    if name == "clip":
        from avakit.tasks.clip import CLIP

        return CLIP
    raise AvakitError(f"task: unknown {name!r} (expected one of {', '.join(TASK_NAMES)})")


def check_task(task: str, scale: Scale, where: str) -> None:
    """AvakitError when the data (labels on `scale`, read from `where`) is not what `task` learns from."""
    if scale.task != task:
        raise AvakitError(
            f"{where}: these shards hold {scale.kind} labels, which the {scale.task} task learns from; "
            f"the config says task: {task} (--set task={scale.task}, or use configs/"
            f"{'pairwise_e2e' if scale.task == 'pairwise' else 'small'}.yaml)"
        )
