"""The package's structure holds DESIGN.md's rules: layers import downward only, no cycle, an import inside
a function only for a heavy or optional dependency (with its reason), small classes and functions.

scripts/architecture.py measures the source; these tests fail with what broke the rule."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def arch():
    spec = importlib.util.spec_from_file_location("architecture", ROOT / "scripts" / "architecture.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["architecture"] = module
    spec.loader.exec_module(module)
    modules = module.read_modules()
    return module, modules, module.internal_graph(modules)


def test_the_import_graph_has_no_cycle(arch):
    module, _, graph = arch
    assert module.cycles(graph) == []


def test_no_module_imports_a_layer_above_its_own(arch):
    module, modules, graph = arch
    assert all(any(m == n or m.startswith(n + ".") for layer in module.LAYERS for n in layer) for m in modules), \
        "a module outside every layer of LAYERS: give its package a layer"
    assert module.upward(graph) == []


def test_imports_inside_functions_are_heavy_dependencies_with_a_reason(arch):
    module, modules, _ = arch
    found = module.function_imports(modules)
    assert [f for f in found if not f[3]] == []  # (module, line, imported, reason)
    assert [f for f in found if f[2].startswith("ssal") and f[0] not in module.LAZY_COMMANDS] == []


def test_classes_and_functions_stay_small(arch):
    module, modules, _ = arch
    classes, functions = module.sizes(modules)
    assert classes == [] and functions == []


def test_the_checks_catch_what_they_look_for(arch, tmp_path):
    """The measures themselves: a cycle, an upward import and a bare import inside a function are seen."""
    module, _, _ = arch
    assert module.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert module.upward({"ssal.data.pool": {"ssal.run.store"}, "ssal.run.store": {"ssal.data.pool"}}) == \
        [("ssal.data.pool", "ssal.run.store")]
    lines = ["def f():", "    # heavy: only plots need it", "    import matplotlib", "    import json"]
    assert module._reason(lines, 3) == "heavy: only plots need it" and module._reason(lines, 4) == \
        "heavy: only plots need it"
    assert module._reason(["def f():", "    import json"], 2) == ""
