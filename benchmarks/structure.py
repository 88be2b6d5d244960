"""Structure figures of the package: import graph, cycles, function lengths, parameter counts.

Reads the source with ``ast`` only (nothing is imported), so it runs in a second on any checkout.

Usage::

    python benchmarks/structure.py [--root ebsd_keras] [--json out.json] [--edges]

Figures printed:

- modules, module -> module import edges (inside the package), and every import cycle (strongly connected
  components of more than one module; a module importing itself through a package ``__init__`` counts);
- functions longer than 60 lines (count) and the five longest;
- functions with more than 10 parameters (``self``/``cls`` not counted).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

LONG_FUNCTION_LINES = 60
MANY_PARAMETERS = 10


def module_name(path: Path, root: Path) -> str:
    """Dotted module name of ``path`` inside the package at ``root``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """Absolute dotted name of a (possibly relative) ``from ... import`` target."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, root: Path, modules: set[str]) -> set[str]:
    """Package modules imported by the file at ``path`` (any nesting: lazy imports inside functions count)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path, root)
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def nearest(name: str) -> str | None:
        # ``from ebsd_keras.models import physics`` names a module; ``from ebsd_keras.models.physics import X``
        # names a symbol: take the longest dotted prefix that is a module.
        while name:
            if name in modules:
                return name
            name = name.rpartition(".")[0]
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                hit = nearest(alias.name)
                if hit:
                    found.add(hit)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(me, is_package, node)
            for alias in node.names:
                hit = nearest(f"{target}.{alias.name}") or nearest(target)
                if hit:
                    found.add(hit)
    found.discard(me)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def private_imports(path: Path, root: Path, modules: set[str]) -> list[str]:
    """``module -> other.module._name`` for every private name taken from another package module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path, root)
    is_package = path.name == "__init__.py"
    rows = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(me, is_package, node)
            if target in modules and target != me:
                rows += [
                    f"{me} -> {target}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            # ``module._name`` on an imported module alias (e.g. ``physics._minmax_unit``)
            if isinstance(node.value, ast.Name) and node.value.id not in ("self", "cls"):
                for alias in _module_aliases(tree, me, is_package, modules):
                    if alias[0] == node.value.id and alias[1] != me:
                        rows.append(f"{me} -> {alias[1]}.{node.attr}")
    return sorted(set(rows))


def _module_aliases(tree, me, is_package, modules):
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(me, is_package, node)
            for a in node.names:
                full = f"{target}.{a.name}"
                if full in modules:
                    out.append((a.asname or a.name, full))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in modules and a.asname:
                    out.append((a.asname, a.name))
    return out


def functions(path: Path, root: Path):
    """(qualified name, lines, parameter count) of every function and method in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path, root)
    rows = []

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = child.args
                params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
                params = [p for p in params if p not in ("self", "cls")]
                n = len(params) + (a.vararg is not None) + (a.kwarg is not None)
                lines = child.end_lineno - child.lineno + 1
                rows.append((f"{me}:{prefix}{child.name}", lines, n))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")

    walk(tree, "")
    return rows


def measure(root: Path) -> dict:
    """All structure figures of the package at ``root`` as a JSON-ready dict."""
    files = sorted(root.rglob("*.py"))
    modules = {module_name(f, root) for f in files}
    graph = {module_name(f, root): imports_of(f, root, modules) for f in files}
    # A package's __init__ importing its own submodules is how packages work, not a circle.
    graph_no_init = {m: {t for t in deps if not t.startswith(m + ".")} for m, deps in graph.items()}
    pkg = root.name
    below = [m for m in graph_no_init if not (m.startswith(f"{pkg}.evaluation") or m.startswith(f"{pkg}.cli"))]
    into_eval = sorted(f"{m} -> {d}" for m in below for d in graph_no_init[m] if d.startswith(f"{pkg}.evaluation"))
    private = [row for f in files for row in private_imports(f, root, modules)]
    funcs = [row for f in files for row in functions(f, root)]
    long_funcs = sorted((r for r in funcs if r[1] > LONG_FUNCTION_LINES), key=lambda r: -r[1])
    many = sorted((r for r in funcs if r[2] > MANY_PARAMETERS), key=lambda r: -r[2])
    return {
        "modules": len(modules),
        "import_edges": sum(len(v) for v in graph_no_init.values()),
        "cycles": cycles(graph_no_init),
        "imports_of_evaluation_from_below": into_eval,
        "private_names_across_modules": private,
        "functions": len(funcs),
        f"functions_over_{LONG_FUNCTION_LINES}_lines": len(long_funcs),
        "longest_5": [{"function": n, "lines": k} for n, k, _ in long_funcs[:5]],
        f"functions_over_{MANY_PARAMETERS}_parameters": len(many),
        "most_parameters": [{"function": n, "parameters": p} for n, _, p in many],
        "edges": {m: sorted(v) for m, v in sorted(graph_no_init.items())},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1] / "ebsd_keras"))
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--edges", action="store_true", help="print every module -> module edge")
    args = parser.parse_args(argv)
    figures = measure(Path(args.root))
    print(f"modules: {figures['modules']}  import edges: {figures['import_edges']}")
    print(f"import cycles: {len(figures['cycles'])}")
    for comp in figures["cycles"]:
        print("  cycle: " + " <-> ".join(comp))
    print(f"imports of evaluation from outside evaluation/cli: {len(figures['imports_of_evaluation_from_below'])}")
    for row in figures["imports_of_evaluation_from_below"]:
        print(f"  {row}")
    print(f"private names taken across modules: {len(figures['private_names_across_modules'])}")
    for row in figures["private_names_across_modules"]:
        print(f"  {row}")
    print(
        f"functions: {figures['functions']}  over {LONG_FUNCTION_LINES} lines: "
        f"{figures[f'functions_over_{LONG_FUNCTION_LINES}_lines']}"
    )
    for row in figures["longest_5"]:
        print(f"  {row['lines']:5d}  {row['function']}")
    print(f"functions with > {MANY_PARAMETERS} parameters: {figures[f'functions_over_{MANY_PARAMETERS}_parameters']}")
    for row in figures["most_parameters"]:
        print(f"  {row['parameters']:5d}  {row['function']}")
    if args.edges:
        for m, deps in figures["edges"].items():
            for d in deps:
                print(f"  {m} -> {d}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
