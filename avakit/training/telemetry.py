"""Gradient-norm and learning-rate CSV telemetry for training runs.

`Telemetry` writes two files under `run_dir/telemetry/`:

* `gradient_norms.csv`: `batch_idx,epoch,overall,backbone_layer4,mlp_head,mlp_layer_0,...`,
  the L2 norm of the current gradients of all parameters, of the last CNN stage
  (`model.last_stage()`), of the whole MLP head and of each head Linear (weight + bias).
* `learning_rates.csv`: `batch_idx,epoch,lr_group_0,...`, the current lr of each optimizer
  param group.

`batch_idx` is the global optimizer-step counter. A part without gradients (frozen, or not
reached yet) is written as 0.0. Only the process that writes the run directory (rank 0 under
DDP) creates a `Telemetry`; DDP has already all-reduced the gradients when it is called, so
rank 0 sees the global ones. `read_telemetry` loads both files back for the report.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from avakit.fileio import AppendFile, write_text_atomic
from avakit.training.rundir import GRAD_FILE, LR_FILE, TELEMETRY_DIR

if TYPE_CHECKING:  # torch is imported where it is used: `read_telemetry` (report) stays light
    import torch
    from torch import nn

    from avakit.model.network import AestheticModel

log = logging.getLogger("avakit.training.fit")  # its lines go to training.log


def _unwrap(model: nn.Module) -> AestheticModel:
    """The AestheticModel inside a DDP (`.module`) or torch.compile (`._orig_mod`) wrapper."""
    from torch import nn

    from avakit.model.network import AestheticModel

    for _ in range(4):
        if isinstance(model, AestheticModel):
            break
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model  # type: ignore[return-value]


def _rewrite_before(path: Path, header: list[str], resume_step: int) -> None:
    """Keep the header and the well-formed rows of `path` with batch_idx < resume_step."""
    kept: list[list[str]] = [header]
    if path.is_file():
        try:
            with path.open(newline="", encoding="utf-8", errors="replace") as fh:
                rows = list(csv.reader(fh))
        except csv.Error:  # not a CSV file (damaged): nothing of it can be kept
            rows = [["(unreadable)"]]
        if rows and rows[0] != header:
            log.warning("%s has columns %.200s, expected %s; starting it afresh", path, rows[0], header)
            rows = []
        for row in rows[1:]:
            if len(row) != len(header):  # e.g. a line cut short by the crash
                continue
            try:
                if int(row[0]) < resume_step:
                    kept.append(row)
            except ValueError:
                continue
    write_text_atomic(path, _csv_lines(kept))


def _csv_lines(rows: list[list[Any]]) -> str:
    """CSV text of `rows` (csv's default dialect: comma-separated, CRLF line ends)."""
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


class Telemetry:
    """Collects gradient norms and learning rates every `collect_every_n` optimizer steps.

    Call `maybe_collect(step, epoch)` after `loss.backward()` (after `scaler.unscale_` under
    AMP, before any gradient clipping to see the raw norms) and before `optimizer.step()`.
    Create it on rank 0 only. With `enabled=False` nothing is written and `maybe_collect`
    returns at once. `resume_step` keeps the existing files minus the rows with
    batch_idx >= resume_step and appends after them; without it the files are recreated.
    Usable as a context manager; `close()` is idempotent.
    """

    def __init__(
        self,
        run_dir: Path,
        model: AestheticModel,
        optimizer: torch.optim.Optimizer,
        enabled: bool = True,
        collect_every_n: int = 10,
        resume_step: int | None = None,
    ) -> None:
        if collect_every_n < 1:
            raise ValueError(f"collect_every_n must be >= 1, got {collect_every_n}")
        self.enabled = enabled
        self.collect_every_n = int(collect_every_n)
        self.optimizer = optimizer
        self._files: list[AppendFile] = []
        if not enabled:
            return
        model = _unwrap(model)
        self._params = list(model.parameters())
        index = {id(p): i for i, p in enumerate(self._params)}
        layers = list(model.head.layers)
        parts: list[list[nn.Parameter]] = [
            list(model.last_stage().parameters()),
            list(model.head.parameters()),
            *(list(layer.parameters()) for layer in layers),
        ]
        self._part_index = [[index[id(p)] for p in part] for part in parts]
        self._n_groups = len(optimizer.param_groups)
        self._membership: dict[tuple[int, ...], torch.Tensor] = {}
        self._warned_groups = False

        grad_header = ["batch_idx", "epoch", "overall", "backbone_layer4", "mlp_head"]
        grad_header += [f"mlp_layer_{i}" for i in range(len(layers))]
        lr_header = ["batch_idx", "epoch"] + [f"lr_group_{i}" for i in range(self._n_groups)]
        out_dir = Path(run_dir) / TELEMETRY_DIR
        from avakit.training.checkpoint import make_folder  # torch: report imports this module torch-free

        make_folder(out_dir)
        self.grad_path, self.lr_path = out_dir / GRAD_FILE, out_dir / LR_FILE
        self._grad_file = self._open(self.grad_path, grad_header, resume_step)
        self._lr_file = self._open(self.lr_path, lr_header, resume_step)

    def _open(self, path: Path, header: list[str], resume_step: int | None) -> AppendFile:
        """Write (or trim, on resume) `path` atomically, then open it for appending whole rows.

        A row that cannot be written whole (disk full) is cut off again and stops the run with
        one AvakitError naming the file, so the file stays well-formed for `--resume`.
        """
        if resume_step is None:
            write_text_atomic(path, _csv_lines([header]))
        else:
            _rewrite_before(path, header, int(resume_step))
        fh = AppendFile(path)
        self._files.append(fh)
        return fh

    def _membership_matrix(self, present: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """[n_parts, n_present] 0/1 matrix: which present grads belong to which part."""
        import torch

        if present not in self._membership:
            col = {p: j for j, p in enumerate(present)}
            mat = torch.zeros(len(self._part_index), len(present), dtype=torch.float32)
            for i, part in enumerate(self._part_index):
                for p in part:
                    if p in col:
                        mat[i, col[p]] = 1.0
            self._membership[present] = mat.to(device)
        return self._membership[present]

    def _grad_norms(self) -> list[float]:
        """[overall, backbone_layer4, mlp_head, mlp_layer_0, ...] with one host sync."""
        import torch

        present = tuple(i for i, p in enumerate(self._params) if p.grad is not None)
        n_parts = len(self._part_index)
        if not present:
            return [0.0] * (1 + n_parts)
        grads = [self._params[i].grad for i in present]
        try:
            norms = torch._foreach_norm(grads, 2.0, dtype=torch.float32)
        except (RuntimeError, TypeError, AttributeError):  # private API: per-tensor fallback
            norms = [torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]
        device = norms[0].device
        squares = torch.stack([n.to(device) for n in norms]).square()
        # elementwise product + sum, not a matmul: TF32 matmuls would cost precision
        parts = (self._membership_matrix(present, device) * squares).sum(dim=1).sqrt()
        overall = squares.sum().sqrt().unsqueeze(0)
        return torch.cat([overall, parts]).tolist()

    def maybe_collect(self, step: int, epoch: int) -> None:
        """Record one row in each file when `step % collect_every_n == 0`."""
        if not self.enabled or not self._files or step % self.collect_every_n:
            return
        norms = self._grad_norms()
        lrs = [float(group["lr"]) for group in self.optimizer.param_groups]
        if len(lrs) != self._n_groups and not self._warned_groups:
            self._warned_groups = True
            log.warning("optimizer now has %d param groups, telemetry records %d", len(lrs), self._n_groups)
        lrs = (lrs + [float("nan")] * self._n_groups)[: self._n_groups]
        self._grad_file.write(_csv_lines([[step, epoch, *(f"{v:.7g}" for v in norms)]]))
        self._lr_file.write(_csv_lines([[step, epoch, *(f"{v:.7g}" for v in lrs)]]))

    def close(self) -> None:
        """Close both files; later `maybe_collect` calls do nothing."""
        for fh in self._files:
            fh.close()
        self._files = []

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
