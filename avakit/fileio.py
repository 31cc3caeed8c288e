"""Writing files safely: every file avakit writes appears whole or not at all.

`atomic_write(path)` opens a temporary file beside `path` (same folder, so the final rename
is atomic), yields it, and renames it into place only when the block finished without an
error. On any failure the temporary file is removed, so no half-written checkpoint, parquet,
CSV or shard is ever left behind; a full disk (or quota) becomes one `AvakitError`:
`no space left on device while writing PATH` (exit 1). Writers that need a file name rather
than a file object (onnx, torch.onnx.export, ShardWriter's opener) use `atomic_path`.

torch.save, DataFrame.to_parquet, np.save, PIL's save, matplotlib's savefig and onnx.save
all accept the yielded binary file object.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from avakit.errors import AvakitError

# errno values that mean "the disk (or the user's quota) is full"
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "file write failed")


def tmp_path(path: Path) -> Path:
    """The temporary name a write of `path` uses: hidden-ish, unique per process, same folder."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc` (or what it wraps) says the disk or quota is full.

    Some writers (torch.save's C++ zip writer, pyarrow) re-raise the OSError as their own
    type with the system's message in the text, so the text is checked too.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return True
        if any(text in str(exc) for text in _DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def write_error(exc: BaseException, path: Path) -> AvakitError:
    """The one-line user error for a failed write of `path` (disk full, permission, no folder)."""
    if is_disk_full(exc):
        return AvakitError(f"no space left on device while writing {path}", exit_code=1)
    if isinstance(exc, OSError):
        return AvakitError(f"cannot write {path}: {exc.strerror or exc}", exit_code=1)
    return AvakitError(f"cannot write {path}: {exc}", exit_code=1)


# Tests replace this to simulate a full disk: it opens the temporary file.
_open: Callable[[Path, str], IO[Any]] = open


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` when the block succeeds.

    For writers that take a file name. The temporary file is removed on any failure, and a
    disk-full or other OS error becomes an AvakitError naming `path`.
    """
    path = Path(path)
    tmp = tmp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except AvakitError:
        tmp.unlink(missing_ok=True)
        raise
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) or is_disk_full(exc):
            raise write_error(exc, path) from None
        raise


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing; rename it into place on success.

    `mode` is "wb" (default) or "w" (text, UTF-8 unless `encoding` says otherwise).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    with atomic_path(path) as tmp:
        kwargs = {} if mode == "wb" else {"encoding": encoding or "utf-8", "newline": ""}
        f = _open(tmp, mode, **kwargs)
        try:
            yield f
        finally:
            f.close()  # a buffered write can fail here: still inside atomic_path's guard


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_write(path) as f:
        f.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json_atomic(path: Path, data: Any, default: Callable[[Any], Any] | None = None) -> None:
    """Write `data` as indented JSON (plus a newline) to `path` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, default=default) + "\n")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
