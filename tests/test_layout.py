"""The package layout is a contract: stages import only downward, no import circles, and the
torch-free stages stay torch-free (ARCHITECTURE.md explains the layers)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import avakit

ROOT = Path(avakit.__file__).parent
# Lowest first: a module may import from its own layer or a lower one, never a higher one.
LAYERS = ["shared", "dataset", "model", "tasks", "training", "report", "inference", "demo", "cli", "__main__"]
TORCH_FREE = [
    "dataset",
    "report",
    "inference.onnx_runtime",
    "inference.scorer",
    "inference.preprocess",
    "cli.app",
]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else "shared"
    return LAYERS.index(part) if part in LAYERS else 0


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The avakit modules `path` imports, at module level or lazily inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name.startswith("avakit.") or name == "avakit":
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    # a package's __init__ is not a dependency of its modules: `from avakit.x import y` loads it
    return {
        m: {d for d in _imports(p, modules) if d != m and modules[d].stem != "__init__"}
        for m, p in modules.items()
    }


def test_every_module_sits_in_a_known_layer() -> None:
    for module in _modules():
        part = module.split(".")[1] if "." in module else None
        assert part is None or part in LAYERS or (ROOT / f"{part}.py").exists(), module


def test_imports_only_go_downward() -> None:
    upward = [
        f"{m} (layer {LAYERS[_layer(m)]}) imports {d} (layer {LAYERS[_layer(d)]})"
        for m, deps in _graph().items()
        for d in deps
        if _layer(d) > _layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_layout_check_sees_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """The walker itself can fail: a planted lazy import is found."""
    modules = {"avakit.dataset.a": tmp_path / "a.py", "avakit.training.b": tmp_path / "b.py"}
    modules["avakit.dataset.a"].write_text("def f():\n    from avakit.training.b import g\n")
    modules["avakit.training.b"].write_text("from avakit.dataset import a\n")
    assert _imports(modules["avakit.dataset.a"], modules) == {"avakit.training.b"}
    assert _imports(modules["avakit.training.b"], modules) == {"avakit.dataset.a"}
    assert _layer("avakit.training.b") > _layer("avakit.dataset.a")


@pytest.mark.parametrize("target", TORCH_FREE)
def test_torch_free_stages_do_not_import_torch(target: str) -> None:
    names = sorted(m for m in _modules() if m == f"avakit.{target}" or m.startswith(f"avakit.{target}."))
    assert names, target
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in names)
        + "bad = [m for m in ('torch', 'torchvision', 'webdataset') if m in sys.modules]\n"
        + "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_no_module_or_function_is_too_long() -> None:
    long = []
    for module, path in _modules().items():
        text = path.read_text()
        if (n := len(text.splitlines())) > MAX_MODULE_LINES:
            long.append(f"{module}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:
                long.append(f"{module}.{node.name}: {n} lines")
    assert not long, "\n".join(long)
