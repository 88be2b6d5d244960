"""Plain JSON values from the numpy / pathlib values that provenance, metadata and reports carry.

One converter for every JSON file the package writes (dataset and TFRecord metadata, reports, ``inspect``), so
they all agree: numpy scalars and arrays become Python numbers and lists, paths and bytes become strings, sets
become sorted lists, and non-finite floats become ``null`` (strict JSON has no NaN or infinity).
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np

__all__ = ["jsonable", "portable_path"]


def jsonable(value, *, drop_private: bool = False):
    """``value`` with every part turned into a plain JSON value (recursively).

    Parameters
    ----------
    value
        Any mix of dicts, lists, tuples, sets, numpy arrays and scalars, paths, bytes, numbers and strings.
    drop_private
        Leave out dict keys starting with ``_`` (internal working values of a report).

    Returns
    -------
    object
        Made of dict (str keys), list, str, int, float (finite), bool and None only.
    """
    if isinstance(value, dict):
        return {
            str(k): jsonable(v, drop_private=drop_private)
            for k, v in value.items()
            if not (drop_private and str(k).startswith("_"))
        }
    if isinstance(value, (set, frozenset)):
        return sorted(jsonable(v, drop_private=drop_private) for v in value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v, drop_private=drop_private) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), drop_private=drop_private)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def portable_path(path, packages: tuple[str, ...] = ("kikuchipy", "ebsd_keras")) -> str:
    """How a file is named in files the package writes: never an absolute path of this machine.

    A file inside an installed package (the EMsoft Ni files that ship in kikuchipy's wheel, ebsd_keras's own
    assets) becomes ``"<package>:<path inside the package>"``; any other absolute path becomes its file name; a
    relative path (as the user typed it) stays as it is.

    Parameters
    ----------
    path
        A file path (str or path-like).
    packages
        Installed packages whose files are named by package.

    Returns
    -------
    str
    """
    p = Path(os.fspath(path))
    if not p.is_absolute():
        return p.as_posix()
    resolved = p.resolve()
    for name in packages:
        spec = importlib.util.find_spec(name)
        roots = list(spec.submodule_search_locations or []) if spec is not None else []
        for root in roots:
            try:
                return f"{name}:{resolved.relative_to(Path(root).resolve()).as_posix()}"
            except ValueError:
                continue
    return p.name
