"""README's speed table matches the committed benchmark JSON files (no benchmark is run here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
KEYS = {
    "benchmark",
    "command",
    "what",
    "measured",
    "target",
    "verdict",
    "checks",
    "figures",
    "machine",
    "load",
    "date",
}


def readme_table() -> ModuleType:
    """benchmarks/readme_table.py, imported by path (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("readme_table", BENCHMARKS / "readme_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_has_a_committed_json_file() -> None:
    scripts = {p.stem for p in BENCHMARKS.glob("bench_*.py")}
    results = {p.stem for p in (BENCHMARKS / "results").glob("bench_*.json")}
    assert scripts == results


@pytest.mark.parametrize("path", sorted((BENCHMARKS / "results").glob("bench_*.json")), ids=lambda p: p.stem)
def test_json_records_are_complete_and_their_verdict_follows_the_checks(path: Path) -> None:
    record = json.loads(path.read_text())
    assert set(record) >= KEYS and record["benchmark"] == path.stem
    assert record["command"].startswith(f"benchmarks/{path.stem}.py")
    assert {"cpu_count", "torch"} <= set(record["machine"]) and len(record["load"]["before"]) == 3
    verdicts = [c["verdict"] for c in record["checks"]]
    expected = "n/a" if not verdicts else "FAIL" if "FAIL" in verdicts else "PASS"
    assert record["verdict"] == expected
    for check in record["checks"]:
        met = check["value"] >= check["target"] if check["at_least"] else check["value"] <= check["target"]
        assert check["verdict"] == ("PASS" if met else "FAIL"), check


def test_readme_speed_table_matches_the_json_files() -> None:
    module = readme_table()
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    first, end = module.readme_table("\n".join(lines))
    assert lines[first:end] == module.table(), "run `python benchmarks/readme_table.py --write`"
    assert module.main(["--check"]) == 0
