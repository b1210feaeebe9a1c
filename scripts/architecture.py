"""The package's structure, measured from its source: layers, cycles, imports inside functions, sizes.

    python scripts/architecture.py            # a report
    python scripts/architecture.py --check    # exit 1 when a rule of DESIGN.md's layout is broken

Rules (tests/test_architecture.py holds the package to them):
- the layers of LAYERS, each importing only its own layer and those below, imports inside functions
  included; no cycle;
- an import inside a function is only for an optional or heavy dependency, with a comment on its line
  (or just above) saying why; only the command line imports ssal modules that way (a command's module
  when it runs, so that a recipe typo is answered before torch loads);
- no class longer than 250 lines, no function longer than 60 lines, save the declarative tables in TABLES.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ssal"
MAX_CLASS, MAX_FUNCTION = 250, 60
LAYERS = [  # bottom to top: a package's layer, by the longest matching module prefix
    ["ssal", "ssal.errors", "ssal.rng", "ssal.registry", "ssal.checks", "ssal.faults", "ssal.files", "ssal.blocks"],
    ["ssal.models"], ["ssal.data"], ["ssal.semi"], ["ssal.pretrain"], ["ssal.engine"], ["ssal.select"],
    ["ssal.run"], ["ssal.label"], ["ssal.recipe"], ["ssal.experiment"], ["ssal.cli", "ssal.__main__"],
]
LAZY_COMMANDS = {"ssal.cli"}  # imports a command's module when the command runs (a recipe typo: no torch)
TABLES: set[str] = set()  # "module:qualname" of functions that are declarative tables (none today)


@dataclass
class Module:
    name: str
    path: Path
    imports: dict[str, list[tuple[int, bool]]] = field(default_factory=dict)  # target -> [(line, in function)]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(mod: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".")
    is_pkg = False
    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def read_modules() -> dict[str, Module]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        modules[module_name(path)] = Module(module_name(path), path)
    for m in modules.values():
        tree = ast.parse(m.path.read_text())
        _collect(m, tree, modules, in_function=False)
    return modules


def _target(name: str, modules: dict[str, Module]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _collect(m: Module, node: ast.AST, modules: dict[str, Module], in_function: bool) -> None:
    for child in ast.iter_child_nodes(node):
        inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(child, ast.Import):
            for alias in child.names:
                _add(m, alias.name, child.lineno, in_function, modules)
        elif isinstance(child, ast.ImportFrom):
            base = _resolve(m.name if not m.path.name == "__init__.py" else m.name + ".x", child)
            for alias in child.names:
                _add(m, f"{base}.{alias.name}", child.lineno, in_function, modules, fallback=base)
        elif isinstance(child, ast.If) and _is_type_checking(child):
            continue
        _collect(m, child, modules, inside)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _add(m: Module, name: str, line: int, in_function: bool, modules: dict[str, Module],
         fallback: str | None = None) -> None:
    if not name.startswith("ssal"):
        if in_function:
            m.imports.setdefault(name.split(".")[0], []).append((line, True))
        return
    target = _target(name, modules) or (fallback and _target(fallback, modules))
    if target and target != m.name:
        m.imports.setdefault(target, []).append((line, in_function))


def layer_of(module: str) -> int:
    best, found = -1, 0
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), i
    return found


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) where the imported module lies in a higher layer."""
    return sorted((a, b) for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def internal_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    return {m.name: {t for t in m.imports if t in modules} for m in modules.values()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def function_imports(modules: dict[str, Module]) -> list[tuple[str, int, str, str]]:
    """(module, line, imported, the line's comment) of every import inside a function."""
    found = []
    for m in modules.values():
        lines = m.path.read_text().splitlines()
        for target, uses in m.imports.items():
            for line, inside in uses:
                if inside:
                    comment = _reason(lines, line)
                    found.append((m.name, line, target, comment))
    return sorted(found)


def _reason(lines: list[str], line: int) -> str:
    """The comment on an import's line, or the comment lines right above it."""
    text = lines[line - 1]
    if "#" in text:
        return text.split("#", 1)[1].strip()
    above = []
    i = line - 2
    while i >= 0 and re.match(r"\s*(from \S+ )?import ", lines[i]):  # a block of imports shares one reason
        i -= 1
    while i >= 0 and lines[i].strip().startswith("#"):
        above.insert(0, lines[i].strip().lstrip("# "))
        i -= 1
    return " ".join(above)


def sizes(modules: dict[str, Module]) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(qualname, lines) of classes over MAX_CLASS and of functions over MAX_FUNCTION."""
    classes, functions = [], []
    for m in modules.values():
        tree = ast.parse(m.path.read_text())

        def walk(node: ast.AST, prefix: str, m: Module = m) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = f"{prefix}{child.name}"
                    start = min([d.lineno for d in child.decorator_list] + [child.lineno])
                    n = child.end_lineno - start + 1
                    qual = f"{m.name}:{name}"
                    if isinstance(child, ast.ClassDef) and n > MAX_CLASS:
                        classes.append((qual, n))
                    if not isinstance(child, ast.ClassDef) and n > MAX_FUNCTION and qual not in TABLES:
                        functions.append((qual, n))
                    walk(child, name + ".", m)

        walk(tree, "")
    return sorted(classes), sorted(functions)


def layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """Floor of each module: 1 + the highest floor it imports (cycles collapsed to one floor)."""
    floor: dict[str, int] = {}

    def f(v: str, seen: frozenset) -> int:
        if v in floor:
            return floor[v]
        below = [f(w, seen | {v}) for w in graph[v] if w not in seen]
        floor[v] = 1 + max(below, default=0)
        return floor[v]

    for v in graph:
        f(v, frozenset())
    return floor


def main(argv: list[str]) -> int:
    modules = read_modules()
    graph = internal_graph(modules)
    found_cycles = cycles(graph)
    fimports = function_imports(modules)
    internal = [f for f in fimports if f[2].startswith("ssal") and f[0] not in LAZY_COMMANDS]
    uncommented = [f for f in fimports if not f[3]]
    big_classes, big_functions = sizes(modules)
    floor = layers(graph)
    if "--check" not in argv:
        for name in sorted(floor, key=lambda n: (-floor[n], n)):
            print(f"floor {floor[name]:2d}  {name}")
    print(f"{len(modules)} modules, {sum(map(len, graph.values()))} import edges, {max(floor.values())} floors")
    print(f"cycles: {len(found_cycles)}" + "".join(f"\n  {' -> '.join(c)}" for c in found_cycles))
    print(f"imports inside functions: {len(fimports)} ({len(internal)} of ssal modules, {len(uncommented)} "
          "without a reason)")
    for mod, line, target, comment in fimports:
        print(f"  {mod}:{line} {target}  # {comment}")
    print(f"classes over {MAX_CLASS} lines: " + (", ".join(f"{q} ({n})" for q, n in big_classes) or "none"))
    print(f"functions over {MAX_FUNCTION} lines: " + (", ".join(f"{q} ({n})" for q, n in big_functions) or "none"))
    up = upward(graph)
    print(f"imports of a higher layer: {len(up)}" + "".join(f"\n  {a} -> {b}" for a, b in up))
    broken = found_cycles or up or internal or uncommented or big_classes or big_functions
    return 1 if "--check" in argv and broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
