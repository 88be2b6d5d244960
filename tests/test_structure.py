"""The package's layering, measured by benchmarks/structure.py: no import circle, and arrows point down."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _figures():
    spec = importlib.util.spec_from_file_location("structure", ROOT / "benchmarks" / "structure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.measure(ROOT / "ebsd_keras")


def test_no_import_cycle():
    assert _figures()["cycles"] == []


def test_models_import_nothing_above_them():
    edges = _figures()["edges"]
    above = ("ebsd_keras.evaluation", "ebsd_keras.indexing", "ebsd_keras.serving", "ebsd_keras.cli")
    bad = [
        f"{m} -> {d}"
        for m, deps in edges.items()
        if m.startswith(("ebsd_keras.models", "ebsd_keras.simulations"))
        for d in deps
        if d.startswith(above)
    ]
    assert bad == []


def test_nothing_below_evaluation_imports_it():
    assert _figures()["imports_of_evaluation_from_below"] == []


def test_upper_floors_take_no_private_names_from_other_modules():
    upper = ("ebsd_keras.evaluation", "ebsd_keras.indexing", "ebsd_keras.serving", "ebsd_keras.simulations")
    rows = [r for r in _figures()["private_names_across_modules"] if r.startswith(upper)]
    assert rows == []


def test_no_module_imports_a_private_name_of_another():
    """Names starting with one underscore are a module's own: another module that needs one gets a public API."""
    import ast

    offenders = []
    package = ROOT / "ebsd_keras"
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ebsd_keras"):
                offenders += [
                    f"{path.relative_to(ROOT)}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert offenders == []
