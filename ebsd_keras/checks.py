"""Validation of physical inputs shared by the readers, the dataset builder and generation.

Each check raises :class:`~ebsd_keras.errors.EBSDInputError` naming the file and field, rather than letting a bad
value flow silently into training.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ebsd_keras.errors import EBSDInputError

__all__ = [
    "VOLTAGE_RANGE_KV",
    "check_voltage_kv",
    "check_pattern_shape",
    "check_finite",
    "check_input_file",
    "check_keras_file",
    "constant_pattern_count",
]

#: Accelerating voltages accepted anywhere, in kV. SEM-based EBSD runs at about 5-30 kV; EMsoft master patterns are
#: computed up to ~40 kV. A value outside this band is a unit error (V instead of kV, or keV mixed up with eV).
VOLTAGE_RANGE_KV = (1.0, 60.0)


def check_finite(values, path=None, field: str | None = None, what: str = "values") -> np.ndarray:
    """Return ``values`` as float64, raising if any entry is NaN or infinite."""
    arr = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0]) if arr.ndim else 0
        raise EBSDInputError(f"{int(bad.sum())} non-finite {what} (NaN or Inf), first at entry {first}", path, field)
    return arr


def check_voltage_kv(voltage_kv, path=None, field: str | None = "voltage_kv") -> np.ndarray:
    """Validate accelerating voltages in kV; returns a float64 array (scalar input gives a 0-d array)."""
    v = check_finite(voltage_kv, path, field, what="voltages")
    lo, hi = VOLTAGE_RANGE_KV
    if v.size and (v.min() < lo or v.max() > hi):
        raise EBSDInputError(
            f"voltage out of range [{lo:g}, {hi:g}] kV (got min {v.min():g}, max {v.max():g}); "
            "voltages are in kV, e.g. 20 for 20 kV",
            path,
            field,
        )
    return v


def check_pattern_shape(shape, expected, path=None, field: str | None = "EBSDPatterns") -> None:
    """Raise if a pattern shape (H, W) differs from the expected one."""
    shape, expected = tuple(int(s) for s in shape), tuple(int(s) for s in expected)
    if shape != expected:
        raise EBSDInputError(
            f"pattern size {shape[0]}x{shape[1]} does not match the expected {expected[0]}x{expected[1]} (rows x cols)",
            path,
            field,
        )


def check_input_file(path, field: str | None = None, what: str = "file") -> Path:
    """An existing local input file: a missing path and a directory each get their own one-line message.

    URLs (``gs://...``) are returned unchecked (they are read through ``tf.io.gfile``).

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    EBSDInputError
        ``path`` is a directory.
    """
    if "://" in str(path):
        return path
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file ({what}{', ' + field if field else ''})")
    if p.is_dir():
        raise EBSDInputError(f"is a directory, expected a {what}", p, field)
    return p


def check_keras_file(path, field: str | None = "model") -> Path:
    """An existing ``.keras`` file that is at least a zip archive (what every Keras 3 model file is).

    Keras itself reports a file that is not a zip as "File not found", which misleads when the file is right there.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    EBSDInputError
        A directory, or a file that is not a zip archive (empty, truncated, another format).
    """
    p = check_input_file(path, field, "model file (.keras)")
    if "://" in str(p):
        return p
    if not zipfile.is_zipfile(p):
        size = p.stat().st_size
        raise EBSDInputError(
            f"not a Keras model file ({'empty' if size == 0 else f'{size} bytes, not a zip archive'}: truncated, or "
            "another format?)",
            p,
            field,
        )
    return p


def constant_pattern_count(patterns) -> int:
    """How many patterns (N, H, W) have every pixel equal (e.g. all zero: a detector or simulation failure)."""
    p = np.asarray(patterns)
    if p.ndim < 3 or p.shape[0] == 0:
        return 0
    flat = p.reshape(p.shape[0], -1)
    return int(np.count_nonzero(flat.min(axis=1) == flat.max(axis=1)))
