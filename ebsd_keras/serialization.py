"""Plain JSON values from the numpy / pathlib values that provenance, metadata and reports carry.

One converter for every JSON file the package writes (dataset and TFRecord metadata, reports, ``inspect``), so
they all agree: numpy scalars and arrays become Python numbers and lists, paths and bytes become strings, sets
become sorted lists, and non-finite floats become ``null`` (strict JSON has no NaN or infinity).
"""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = ["jsonable"]


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
