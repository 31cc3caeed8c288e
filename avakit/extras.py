"""Optional dependencies: one check, one line naming the extra to install.

`export` needs onnx and onnxruntime, `predict --onnx` needs onnxruntime; both come with
`pip install 'avakit[export]'` (pyproject's optional-dependencies). Commands call `require`
before doing any work, so a missing package is one clear line, not an exporter's traceback
half-way through.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from avakit.errors import AvakitError

EXPORT_EXTRA = "export"


def require(purpose: str, modules: Sequence[str], extra: str = EXPORT_EXTRA) -> None:
    """Import each of `modules`; AvakitError naming `purpose` and the extra when one cannot be imported.

    `modules` may name submodules (`onnxruntime.quantization`); the message names the top-level
    packages, e.g. "export needs onnx and onnxruntime: pip install 'avakit[export]' (cannot import onnx)".
    """
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        packages = list(dict.fromkeys(m.split(".")[0] for m in modules))
        raise AvakitError(
            f"{purpose} needs {' and '.join(packages)}: pip install 'avakit[{extra}]' "
            f"(cannot import {', '.join(missing)})"
        )
