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
