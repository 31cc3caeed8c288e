"""Shared fixtures: every test builds its own small data with avakit's synthetic generator."""

from __future__ import annotations

from pathlib import Path

import pytest

from avakit.synthetic import SyntheticAva, make_synthetic_ava


@pytest.fixture
def tiny_ava(tmp_path: Path) -> SyntheticAva:
    """40 small synthetic images (long side 64-160 px) in the AVA release layout."""
    return make_synthetic_ava(tmp_path / "ava", n=40, seed=1, long_side=(64, 160))


@pytest.fixture(scope="session")
def shared_ava(tmp_path_factory: pytest.TempPathFactory) -> SyntheticAva:
    """A read-only synthetic set shared by the tests that only read it."""
    return make_synthetic_ava(tmp_path_factory.mktemp("ava"), n=60, seed=2, long_side=(64, 160))
