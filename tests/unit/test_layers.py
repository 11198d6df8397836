"""The package's layers import one way, and its subpackages form no cycle.

Every ``import`` of every module counts: module-level and function-local, absolute and relative
(a late import inside a function is still a dependency, only a hidden one). A component is a
subpackage (``mcore``) or a top-level module (``checkpoints``) of ``megatron_masklm``; each sits
on one row of ``LAYERS`` and may import only components on its own row or rows below it.
"""
import ast
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Set

PACKAGE = "megatron_masklm"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE
TOP = PACKAGE  # the component of the package's own __init__.py

LAYERS = (  # lowest first
    # the package's own __init__ and the leaf utilities, usable from anywhere (families: one
    # module per model family, read by architecture, so it imports none of the package)
    (TOP, "architecture", "checkpoints", "cli_errors", "cpu", "families", "fileio",
     "safe_pickle", "yamlfile"),
    ("masking",),  # N:M maths and mask file formats
    ("mcore", "hf"),  # Megatron-Core glue (model building, checkpoint loading); HF-side masks
    ("convert", "data"),  # HF <-> Megatron conversion and mask files; tokenizers and datasets
    ("evaluation", "oneshot", "training"),  # the jobs
    ("train",),  # the training entry point (tools/ are the others, outside the package)
)
NO_MEGATRON = ("masking", "hf", "architecture", "checkpoints", "cli_errors", "cpu", "families",
               "fileio", "safe_pickle", "yamlfile", TOP, "oneshot.config", "oneshot.pruning",
               "oneshot.statistics", "training.memory", "training.memory_stages",
               "training.distillation")
"""Components (all their modules) and modules that import no megatron nor Transformer Engine,
not even late or through another module of the package (their docstrings say so)."""
OUTSIDE = ("tools", "benchmarks", "tests", "examples")
"""The checkout's other folders: scripts on top of the package, never imported by it."""
MEGATRON = ("megatron", "transformer_engine")


class Import(NamedTuple):
    source: str  # importing module, dotted
    path: str  # its file, relative to the checkout
    line: int
    target: str  # imported module, dotted (an in-package name resolved to the module)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: Path) -> bool:
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    return (root / relative / "__init__.py").exists() or (root / relative).with_suffix(".py").exists()


def imports_of(source: str, module: str, *, is_package: bool, path: str = "",
               root: Path = ROOT) -> List[Import]:
    """Every import in ``source`` (the text of ``module``), at any depth of the syntax tree."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(module, path, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            for alias in node.names:  # "from . import mcore": the module mcore, not the package
                name = f"{base}.{alias.name}"
                in_package = name.split(".")[0] == root.name
                target = name if in_package and _is_module(name, root) else base
                found.append(Import(module, path, node.lineno, target))
    return list(dict.fromkeys(found))  # "from x import a, b": one import of x


def package_imports(root: Path = ROOT) -> List[Import]:
    found = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        found += imports_of(path.read_text(encoding="utf-8"), module,
                            is_package=path.name == "__init__.py",
                            path=str(path.relative_to(root.parent)), root=root)
    return found


def component(module: str) -> Optional[str]:
    """The component of an in-package module (None outside the package)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    return parts[1] if len(parts) > 1 else TOP


def _say(imp: Import) -> str:
    return f"{imp.path}:{imp.line}: {imp.source} imports {imp.target}"


def upward_imports(imports: Iterable[Import], layers=LAYERS) -> List[str]:
    """Each import from a component to one on a higher row of ``layers``, said as a line."""
    row = {name: index for index, names in enumerate(layers) for name in names}
    bad = []
    for imp in imports:
        source, target = component(imp.source), component(imp.target)
        if target is None or source == target:
            continue
        if source not in row or target not in row:
            bad.append(f"{_say(imp)}: {source if source not in row else target} is on no layer")
        elif row[target] > row[source]:
            bad.append(f"{_say(imp)}: {source} (layer {row[source]}) must not import {target} "
                       f"(layer {row[target]})")
    return bad


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """A cycle of ``graph`` (node -> the nodes it points at) as [a, b, ..., a]; None if none."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: every path from it explored
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def component_graph(imports: Iterable[Import]) -> Dict[str, Set[str]]:
    graph: Dict[str, Set[str]] = {}
    for imp in imports:
        source, target = component(imp.source), component(imp.target)
        if target is not None and source != target:
            graph.setdefault(source, set()).add(target)
    return graph


def _modules(root: Path = ROOT) -> Set[str]:
    return {_module_name(path, root) for path in root.rglob("*.py")}


def _loaded_with(module: str) -> List[str]:
    """``module`` and the packages Python runs first when importing it (a.b.c: a, a.b, a.b.c)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def megatron_imports(imports: Iterable[Import], modules: Iterable[str]) -> List[str]:
    """Each megatron / Transformer Engine import reachable from ``modules`` through the package's
    own imports (late ones too), said as a line with the chain that reaches it."""
    by_source: Dict[str, List[Import]] = {}
    for imp in imports:
        by_source.setdefault(imp.source, []).append(imp)
    via: Dict[str, Optional[Import]] = {}
    todo = []
    for module in modules:
        for loaded in _loaded_with(module):
            via.setdefault(loaded, None)
            todo.append(loaded)
    bad, said = [], set()
    while todo:
        for imp in by_source.get(todo.pop(), ()):
            if imp.target.split(".")[0] in MEGATRON and imp.source not in said:
                said.add(imp.source)  # the first megatron import of each module is enough
                chain, step = [], via[imp.source]
                while step is not None:
                    chain.append(_say(step))
                    step = via[step.source]
                bad.append(_say(imp) + "".join(f"\n    reached by {link}" for link in chain))
            elif component(imp.target) is not None:
                for loaded in _loaded_with(imp.target):
                    if loaded not in via:
                        via[loaded] = imp
                        todo.append(loaded)
    return bad


# --- the rules, on the package ---------------------------------------------------------------

def test_every_component_is_on_exactly_one_layer():
    placed = [name for names in LAYERS for name in names]
    assert len(placed) == len(set(placed)), "a component is on two layers"
    present = {component(module) for module in _modules()}
    assert present == set(placed), (
        f"not in LAYERS: {sorted(present - set(placed))}; in LAYERS but gone: "
        f"{sorted(set(placed) - present)}: place a new subpackage or module on its layer")


def test_no_component_imports_one_on_a_higher_layer():
    bad = upward_imports(package_imports())
    assert not bad, "imports against the layering (move the code down, not the import late):\n" + \
        "\n".join(bad)


def test_the_components_import_each_other_without_a_cycle():
    imports = package_imports()
    cycle = find_cycle(component_graph(imports))
    if cycle:
        edges = []
        for source, target in zip(cycle, cycle[1:]):
            first = next(imp for imp in imports
                         if component(imp.source) == source and component(imp.target) == target)
            edges.append(_say(first))
        raise AssertionError(f"import cycle {' -> '.join(cycle)}:\n" + "\n".join(edges))


def test_masking_and_the_leaf_modules_import_no_megatron():
    modules = sorted(_modules())
    named = {f"{PACKAGE}.{name}" for name in NO_MEGATRON if "." in name}
    assert named <= set(modules), f"NO_MEGATRON names modules that are gone: {named - set(modules)}"
    chosen = [module for module in modules
              if component(module) in NO_MEGATRON or module.split(".", 1)[-1] in NO_MEGATRON]
    bad = megatron_imports(package_imports(), chosen)
    assert not bad, "megatron imported where none may be:\n" + "\n".join(bad)


def test_the_package_imports_nothing_of_the_checkout_around_it():
    bad = [_say(imp) for imp in package_imports() if imp.target.split(".")[0] in OUTSIDE]
    assert not bad, "\n".join(bad)


# --- the checks themselves can fail ----------------------------------------------------------

def test_a_late_relative_import_up_the_layers_is_caught():
    source = ("from ..masking import parse_nm\n"
              "from .. import checkpoints as layout\n"
              "def load(path):\n"
              "    from ..convert.masks import read_global_masks  # late\n"
              "    import megatron_masklm.oneshot\n")
    imports = imports_of(source, f"{PACKAGE}.mcore.global_masks", is_package=False,
                         path="megatron_masklm/mcore/global_masks.py")
    assert [imp.target for imp in imports] == [
        f"{PACKAGE}.masking", f"{PACKAGE}.checkpoints", f"{PACKAGE}.convert.masks",
        f"{PACKAGE}.oneshot"]
    bad = upward_imports(imports)
    assert len(bad) == 2
    assert bad[0].startswith("megatron_masklm/mcore/global_masks.py:4: megatron_masklm.mcore."
                             "global_masks imports megatron_masklm.convert.masks: mcore (layer 2) "
                             "must not import convert (layer 3)")
    assert ":5: " in bad[1] and "must not import oneshot" in bad[1]


def test_the_cycle_finder_finds_cycles_and_only_cycles():
    assert find_cycle({"mcore": {"convert", "masking"}, "convert": {"mcore"}}) == [
        "convert", "mcore", "convert"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"d", "a"}, "d": set()}) == [
        "a", "b", "c", "a"]
    assert find_cycle({"x": {"a"}, "a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    diamond = {"top": {"left", "right"}, "left": {"base"}, "right": {"base"}, "base": set()}
    assert find_cycle(diamond) is None
    before = [Import(f"{PACKAGE}.mcore.global_masks", "g.py", 112, f"{PACKAGE}.convert.masks"),
              Import(f"{PACKAGE}.convert.megatron_to_hf", "m.py", 70, f"{PACKAGE}.mcore")]
    assert find_cycle(component_graph(before)) == ["convert", "mcore", "convert"]


def test_megatron_is_found_through_a_chain_of_late_imports():
    imports = [Import(f"{PACKAGE}.masking.nm", "nm.py", 3, f"{PACKAGE}.fileio"),
               Import(f"{PACKAGE}.fileio", "fileio.py", 9, f"{PACKAGE}.mcore.parallel"),
               Import(f"{PACKAGE}.mcore", "mcore/__init__.py", 2, "megatron.core")]
    bad = megatron_imports(imports, [f"{PACKAGE}.masking.nm"])
    assert bad == ["mcore/__init__.py:2: megatron_masklm.mcore imports megatron.core"
                   "\n    reached by fileio.py:9: megatron_masklm.fileio imports "
                   "megatron_masklm.mcore.parallel"
                   "\n    reached by nm.py:3: megatron_masklm.masking.nm imports "
                   "megatron_masklm.fileio"]
    assert megatron_imports(imports[:1], [f"{PACKAGE}.masking.nm"]) == []
