"""Writing files safely: every file avakit writes appears whole or not at all.

`atomic_write(path)` opens a temporary file beside `path` (same folder, so the final rename
is atomic), yields it, and renames it into place only when the block finished without an
error. On any failure the temporary file is removed, so no half-written checkpoint, parquet,
CSV or shard is ever left behind; a full disk (or quota) becomes one `AvakitError`:
`no space left on device while writing PATH` (exit 1). A writer that needs a file name rather
than a file object (the shard tar) uses `atomic_path`; one that manages its own files
(onnxruntime's quantiser) runs inside `write_errors` for the same one-line error. Files that
grow during a run (training.log, the telemetry CSVs) use `AppendFile`: a record that cannot be
written whole is cut off again, so they always end with a whole line. A target that is a
symlink keeps its link (the file it points to is replaced); a device or pipe (/dev/stdout) is
written directly. `clear_stale_tmp` removes what a killed process left behind.

torch.save, DataFrame.to_parquet, np.save, PIL's save, matplotlib's savefig and onnx.save
all accept the yielded binary file object. Every file is opened through `_open`, the one hook
tests replace to simulate a full disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from avakit.errors import AvakitError

# errno values that mean "the disk (or the user's quota) is full"
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# the system's messages for them, for libraries that re-raise an OSError as their own type
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")
_TMP_NAME = re.compile(r"\.(\d+)\.tmp$")


def tmp_path(path: Path) -> Path:
    """The temporary name a write of `path` uses: hidden-ish, unique per process, same folder."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc` (or an exception it was raised from or while handling) is a full disk.

    torch.save into a file object whose write raises OSError(ENOSPC) raises
    `RuntimeError("[enforce fail at inline_container.cc:...] . unexpected pos N vs M")` with
    that OSError as `__context__` (measured with torch 2.x), so the chain is walked; with a
    buffered file the close() that follows raises the OSError itself. Libraries that copy
    the system's message into their own exception type are matched by its text.
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


# Tests replace this to simulate a full disk: every file avakit writes is opened through it,
# as `_open(path, mode, **open_kwargs)` with mode "wb", "w" or "ab".
_open: Callable[..., IO[Any]] = open


@contextlib.contextmanager
def write_errors(path: Path) -> Iterator[None]:
    """Turn a failed write of `path` into one AvakitError naming it.

    An OSError, or a library's own exception that wraps a full disk, becomes `write_error`;
    anything else (a bug) passes unchanged.
    """
    try:
        yield
    except AvakitError:
        raise
    except BaseException as exc:
        if isinstance(exc, OSError) or is_disk_full(exc):
            raise write_error(exc, Path(path)) from None
        raise


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` when the block succeeds.

    For writers that take a file name. The temporary file is removed on any failure, and a
    disk-full or other OS error becomes an AvakitError naming `path`.
    """
    path = Path(path)
    target = path.resolve() if path.is_symlink() else path  # replace the file, keep the link
    tmp = tmp_path(target)
    with write_errors(path):
        try:
            yield tmp
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing; rename it into place on success.

    `mode` is "wb" (default) or "w" (text, UTF-8 unless `encoding` says otherwise).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    kwargs = {} if mode == "wb" else {"encoding": encoding or "utf-8", "newline": ""}
    if _is_special(Path(path)):  # /dev/stdout, a named pipe: no temporary file, no rename
        with write_errors(path), _open(path, mode, **kwargs) as f:
            yield f
        return
    with atomic_path(path) as tmp:
        f = _open(tmp, mode, **kwargs)
        try:
            yield f
        except BaseException:
            with contextlib.suppress(OSError):  # the block's own error is the one to report
                f.close()
            raise
        f.close()  # a buffered write can fail here: still inside atomic_path's guard


def _is_special(path: Path) -> bool:
    """True where renaming a new file into place cannot stand in for writing: a device or pipe,
    and /dev/stdout, /dev/fd/N, /proc/self/fd/N (a rename would replace the link, not the stream)."""
    if os.path.abspath(path).startswith(("/dev/", "/proc/")):
        return True
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_write(path) as f:
        f.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def load_json(path: Path) -> Any:
    """A JSON file's value; AvakitError naming the file (and line) when it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_bytes())
    except json.JSONDecodeError as e:
        raise AvakitError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    except (ValueError, RecursionError) as e:  # not UTF-8, a 5000-digit number, deep nesting
        raise AvakitError(f"{path}: invalid JSON: {str(e).splitlines()[0][:200]}") from None
    except OSError as e:
        raise AvakitError(f"{path}: cannot read: {e.strerror or e}") from None


def write_json_atomic(path: Path, data: Any, default: Callable[[Any], Any] | None = None) -> None:
    """Write `data` as indented JSON (plus a newline) to `path` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, default=default) + "\n")


class AppendFile:
    """A file that grows by whole records (log lines, CSV rows) while a run goes on.

    Each `write` reaches the disk at once (no buffer); a record that cannot be written whole
    (disk full) is cut off again, so the file keeps ending with a whole record, and the
    failure is one AvakitError naming the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._f: IO[Any] | None = _open(self.path, "ab", buffering=0)
            self._size = os.path.getsize(self.path)
        except OSError as exc:
            raise write_error(exc, self.path) from None

    def write(self, text: str) -> None:
        """Append `text` (UTF-8) whole, or leave the file as it was and raise AvakitError."""
        if self._f is None:
            raise ValueError(f"{self.path}: write after close")
        encoded = text.encode("utf-8")
        data = memoryview(encoded)
        try:
            while data:
                n = self._f.write(data)
                if not n:
                    raise OSError(errno.EIO, "short write", str(self.path))
                data = data[n:]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.truncate(self.path, self._size)
            raise write_error(exc, self.path) from None
        self._size += len(encoded)

    def close(self) -> None:
        """Close the file; idempotent."""
        if self._f is not None:
            f, self._f = self._f, None
            f.close()


class LogFileHandler(logging.Handler):
    """A logging handler appending each record whole to a file (AppendFile).

    Unlike logging.FileHandler, a failed write is not printed as a "Logging error" traceback
    and ignored: it raises the AvakitError to the code that logged, which stops the run.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.file = AppendFile(path)

    def emit(self, record: logging.LogRecord) -> None:
        """Append the formatted record and a newline whole; a failed write raises AvakitError."""
        self.file.write(self.format(record) + "\n")

    def close(self) -> None:
        """Close the file, then the handler."""
        self.file.close()
        super().close()


def clear_stale_tmp(folder: Path, recursive: bool = False) -> list[Path]:
    """Remove temporary files (`NAME.PID.tmp`) left in `folder` by processes that are gone.

    A killed process cannot remove its temporary file; the next run does. Files of a process
    that is still running (another avakit writing into the folder) are left alone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for tmp in folder.rglob("*.tmp") if recursive else folder.glob("*.tmp"):
        match = _TMP_NAME.search(tmp.name)
        if match is None or not tmp.is_file() or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    """True when a process with this id may still be writing (this process's own files are stale)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or no process id we could have written: keep the file
    return True


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_parquet_atomic(path: Path, frame: Any) -> None:
    """Write a pandas DataFrame to `path` as parquet (no index column), atomically."""
    with atomic_write(path) as f:
        frame.to_parquet(f, index=False)
