"""The checkout's scripts outside the package, imported as modules by tests that call their
functions in this process: ``tool("eval_ppl")`` is tools/eval_ppl.py, ``benchmark("sparse_speed")``
benchmarks/sparse_speed.py. Each is imported under its own name with its folder on ``sys.path``,
as ``python tools/eval_ppl.py`` finds its neighbours (and as tests/e2e import the tools), so a
module imported here and by a script is one module object."""
import importlib
import os
import sys
from types import ModuleType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import(folder: str, name: str) -> ModuleType:
    path = os.path.join(ROOT, folder)
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(name)


def tool(name: str) -> ModuleType:
    """tools/NAME.py (its ``main``, ``build_parser``, ...)."""
    return _import("tools", name)


def benchmark(name: str) -> ModuleType:
    """benchmarks/NAME.py."""
    return _import("benchmarks", name)
