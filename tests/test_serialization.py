"""One JSON converter for every file the package writes (metadata, reports, inspect)."""

import json
import math
from pathlib import Path

import numpy as np

from ebsd_keras.serialization import jsonable


def test_numpy_paths_bytes_sets_and_non_finite_values_become_strict_json():
    value = {
        "a": np.float32(1.5),
        "b": np.arange(3, dtype=np.int64),
        "c": (Path("x") / "y.h5", b"bytes"),
        "d": {3, 1, 2},
        "e": [float("nan"), np.float64("inf"), -1.0],
        5: np.bool_(True),
    }
    out = jsonable(value)
    text = json.dumps(out, allow_nan=False)  # raises on NaN/inf, on numpy types and on paths
    back = json.loads(text)
    assert back == {
        "a": 1.5,
        "b": [0, 1, 2],
        "c": [str(Path("x") / "y.h5"), "bytes"],
        "d": [1, 2, 3],
        "e": [None, None, -1.0],
        "5": True,
    }
    assert type(out["b"][0]) is int and not any(isinstance(v, float) and math.isnan(v) for v in out["e"] if v)


def test_private_keys_are_dropped_only_when_asked():
    value = {"_work": [1], "kept": {"_inner": 2, "x": 3}}
    assert jsonable(value) == value
    assert jsonable(value, drop_private=True) == {"kept": {"x": 3}}


def test_paths_written_into_files_are_never_absolute_paths_of_this_machine(tmp_path):
    import kikuchipy

    from ebsd_keras.serialization import portable_path

    inside = Path(kikuchipy.__file__).parent / "data" / "some" / "file.h5"
    assert portable_path(inside) == "kikuchipy:data/some/file.h5"
    assert portable_path(tmp_path / "mine" / "ds.h5") == "ds.h5"
    assert portable_path(Path("rel") / "ds.h5") == "rel/ds.h5"
