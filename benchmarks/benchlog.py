"""What every benchmark writes beside its printed table: benchmarks/results/<name>.json.

The file holds the measured figures, the ratios judged against the targets with PASS/FAIL, the
README line (`measured`, `target`) that `benchmarks/readme_table.py` turns into README's speed
table, the machine (CPUs, torch), the load average before and after, and the date.
`save` returns the exit status: 1 when any check FAILed, so `make bench` stops there.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Check:
    """One judged figure: `value` against `target` (a bound, `at_least` or at most)."""

    name: str
    value: float
    target: float
    at_least: bool = True
    unit: str = ""

    @property
    def passed(self) -> bool:
        """Whether the value meets the target."""
        return self.value >= self.target if self.at_least else self.value <= self.target

    def line(self) -> str:
        """`name: value (target >= x) PASS`, as printed."""
        sign = ">=" if self.at_least else "<="
        scale = 100 if self.unit == "%" else 1  # a "%" check holds a fraction
        return (
            f"{self.name}: {self.value * scale:.3g}{self.unit} (target {sign} {self.target * scale:g}"
            f"{self.unit}) {'PASS' if self.passed else 'FAIL'}"
        )


def machine() -> dict[str, Any]:
    """CPU count, torch and Python versions, platform."""
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:  # pragma: no cover - every benchmark has torch
        torch_version = None
    return {
        "cpu_count": os.cpu_count(),
        "torch": torch_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def command_line() -> str:
    """How this benchmark was started: `benchmarks/bench_x.py` and its arguments."""
    return " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def save(
    name: str,
    *,
    command: str,
    what: str,
    measured: str,
    target: str,
    checks: list[Check],
    figures: dict[str, Any],
    load_before: list[float],
    options: dict[str, Any] | None = None,
) -> int:
    """Write results/<name>.json, print the path; 1 when any check FAILed, else 0."""
    verdict = "n/a" if not checks else "PASS" if all(c.passed for c in checks) else "FAIL"
    record = {
        "benchmark": name,
        "command": command,
        "what": what,
        "measured": measured,
        "target": target,
        "verdict": verdict,
        "checks": [{**asdict(c), "verdict": "PASS" if c.passed else "FAIL"} for c in checks],
        "figures": figures,
        "options": options or {},
        "machine": machine(),
        "load": {"before": load_before, "after": load()},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"figures written to {path.relative_to(RESULTS.parent.parent)}: {verdict}")
    return 1 if verdict == "FAIL" else 0
