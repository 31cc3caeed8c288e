"""README's speed table, generated from the benchmarks' JSON files (benchmarks/results/*.json).

    python benchmarks/readme_table.py           # print the markdown table
    python benchmarks/readme_table.py --check   # exit 1 when README.md's table differs
    python benchmarks/readme_table.py --write   # replace README.md's table with it

The table is the block of `|` lines that starts with the header below, in README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
ORDER = (
    "bench_shard",
    "bench_loader",
    "bench_train",
    "bench_predict",
    "bench_features",
    "bench_export",
    "bench_small_data",
)
HEADER = ["| benchmark (command) | measured | target | verdict (load, date) |", "| --- | --- | --- | --- |"]


def load_results(folder: Path = RESULTS) -> list[dict]:
    """The JSON records, in ORDER first, then any others by name."""
    records = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("bench_*.json"))}
    names = [n for n in ORDER if n in records] + sorted(n for n in records if n not in ORDER)
    return [records[n] for n in names]


def row(record: dict) -> str:
    """One table line: command and what it measures, the README text, the target, the verdict."""
    verdict = record["verdict"]
    shown = f"**{verdict}**" if verdict == "FAIL" else verdict
    when = f"load {record['load']['before'][0]:.1f}, {record['date'][:10]}"
    return (
        f"| `{record['command']}`: {record['what']} | {record['measured']} | {record['target']} "
        f"| {shown} ({when}) |"
    )


def table(folder: Path = RESULTS) -> list[str]:
    """The whole markdown table, header included."""
    return [*HEADER, *(row(r) for r in load_results(folder))]


def readme_table(text: str) -> tuple[int, int]:
    """(first, end) line indexes of the table in README's text; SystemExit when it has none."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| benchmark (command) |"):
            end = i
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            return i, end
    raise SystemExit(f"{README}: no line starting with '| benchmark (command) |'")


def main(argv: list[str] | None = None) -> int:
    """Print, check or write the table; 1 when --check finds README's table different."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 when README.md's table differs")
    mode.add_argument("--write", action="store_true", help="replace README.md's table")
    args = parser.parse_args(argv)
    new = table()
    if not (args.check or args.write):
        print("\n".join(new))
        return 0
    text = README.read_text(encoding="utf-8")
    first, end = readme_table(text)
    lines = text.splitlines()
    if args.check:
        if lines[first:end] != new:
            print(
                "README.md's speed table differs from benchmarks/results/*.json; "
                "run `python benchmarks/readme_table.py --write`",
                file=sys.stderr,
            )
            return 1
        return 0
    README.write_text("\n".join([*lines[:first], *new, *lines[end:]]) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
