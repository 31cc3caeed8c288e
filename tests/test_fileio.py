"""avakit.fileio: atomic writes leave the old file or the whole new one, and a full disk is one error."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from avakit import fileio
from avakit.errors import AvakitError


class _FullDisk:
    """A binary file whose writes fail with ENOSPC once `room` bytes were written."""

    def __init__(self, path: Path, mode: str, room: int, **kwargs) -> None:
        self.f = open(path, mode, **kwargs)  # noqa: SIM115 - closed in close()
        self.room = room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def close(self) -> None:
        self.f.close()


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")
    fileio.write_json_atomic(target, {"k": [1, 2]})
    assert json.loads(target.read_text()) == {"k": [1, 2]}
    assert not list(tmp_path.glob("*.tmp"))


def test_failure_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(ZeroDivisionError), fileio.atomic_write(target, "w") as f:
        f.write("half")
        1 / 0  # noqa: B018 - a bug in the writer: re-raised as it is, not as a user error
    assert target.read_text() == "old"
    assert not list(tmp_path.glob("*.tmp"))


def test_disk_full_is_one_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileio, "_open", lambda p, m, **kw: _FullDisk(p, m, 10, **kw))
    target = tmp_path / "big.bin"
    with pytest.raises(AvakitError) as info:
        fileio.write_bytes_atomic(target, b"x" * 100)
    assert str(info.value) == f"no space left on device while writing {target}"
    assert info.value.exit_code == 1
    assert list(tmp_path.iterdir()) == []


def test_disk_full_seen_through_wrapping_exceptions() -> None:
    inner = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise inner
        except OSError as e:
            raise RuntimeError("writer failed") from e
    except RuntimeError as wrapped:
        assert fileio.is_disk_full(wrapped)
    assert not fileio.is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_atomic_path_for_writers_taking_a_name(tmp_path: Path) -> None:
    target = tmp_path / "m.onnx"
    with fileio.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"model")
    assert target.read_bytes() == b"model"
    with pytest.raises(AvakitError, match="cannot write"), fileio.atomic_path(tmp_path / "x") as tmp:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp))
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob("*.tmp"))
