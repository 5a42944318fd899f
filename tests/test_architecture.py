"""The floor plan of moe_lib, checked: the import graph has no cycles, no module imports one of a higher layer,
only moe_lib/kernels/ launches kernels, and only moe_lib/teach/ draws.

The layers, lowest first (a module may import its own layer or lower ones):

    0 base      runtime, config, _alloc, _validate, testing; perf.timing, perf.floors, perf.power (plain
                arithmetic and measuring, no kernel)
    1 kernels   kernels.*: the Triton kernels and the one plan (depends on base only: the fast path imports
                nothing slower than itself)
    2 model     gate, reference, layer, checkpoint, model; parallel's core (shards, experts, simulation,
                launcher, distributed layer)
    3 tools     perf.bench, perf.tune, perf.compare; parallel.bench, parallel.run, parallel.golden: command lines
    4 teach     teach.*: figures, widgets, exercises
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "moe_lib"

LAYERS = {
    0: ["runtime", "config", "_alloc", "_validate", "testing", "perf.timing", "perf.floors", "perf.power"],
    1: ["kernels"],
    2: ["gate", "reference", "layer", "checkpoint", "model", "parallel"],
    3: ["perf", "parallel.bench", "parallel.run", "parallel.golden"],
    4: ["teach"],
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["moe_lib", *parts])


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer_of(module: str) -> int:
    """The layer of the longest matching prefix in LAYERS (``moe_lib`` itself, the facade, sits on top)."""
    best, found = -1, None
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            full = f"moe_lib.{prefix}"
            if (module == full or module.startswith(full + ".")) and len(full) > best:
                best, found = len(full), layer
    if module == "moe_lib":
        return max(LAYERS) + 1
    assert found is not None, f"{module} is in no layer of tests/test_architecture.py: add it"
    return found


def imports_of(module: str) -> set[str]:
    """The moe_lib modules a module imports, at module level or inside functions."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from pkg import name`: name is a module of pkg, or something defined in pkg
            names = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in MODULES else origin for a in node.names]
        else:
            continue
        found |= {n for n in names if n in MODULES and n != module}
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_from_a_higher_layer(module):
    mine = layer_of(module)
    upward = {other: layer_of(other) for other in GRAPH[module] if layer_of(other) > mine}
    assert not upward, f"{module} (layer {mine}) imports from higher layers: {upward}"


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(GRAPH[module]):
            if other in ("moe_lib",) or state.get(other) == 2:
                continue
            assert state.get(other) != 1, "import cycle: " + " -> ".join([*path, module, other])
            visit(other, [*path, module])
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [])


#: Launches the learner's own puzzle kernels (never a library kernel): the one exception.
LEARNER_KERNELS = ("moe_lib.teach.puzzles",)


def test_only_kernels_launch_kernels():
    for module, path in MODULES.items():
        if module.startswith("moe_lib.kernels") or module.startswith(LEARNER_KERNELS):
            continue
        text = path.read_text()
        assert "[grid](" not in text and "invoke_fused_moe_kernel(" not in text, f"{module} launches a kernel"
        defines = re.search(r"^\s*@triton\.jit", text, flags=re.M)
        assert not defines or module == "moe_lib.runtime", f"{module} defines a kernel"  # runtime: pdl_start


def test_only_teach_draws():
    for module, path in MODULES.items():
        if module.startswith("moe_lib.teach"):
            continue
        text = path.read_text()
        for lib in ("matplotlib", "ipywidgets"):
            assert f"import {lib}" not in text and f"from {lib}" not in text, f"{module} imports {lib}"


def test_the_checker_sees_the_edges_it_should():
    # A test that cannot fail is a defect: the graph holds known edges.
    assert "moe_lib.kernels.experts" in GRAPH["moe_lib.perf.bench"]
    assert "moe_lib.kernels.configs" in GRAPH["moe_lib.kernels.experts"]
    assert "moe_lib.runtime" in GRAPH["moe_lib.kernels.routing"]
    assert layer_of("moe_lib.perf.bench") == 3 and layer_of("moe_lib.perf.floors") == 0
