"""``ebsd-keras inspect``: summarise an EMsoft-layout HDF5 pattern file or a TFRecord dataset directory."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.serialization import jsonable

DESCRIPTION = """\
Print a summary of PATH:
  - an EMsoft-layout HDF5 file (EMEBSD output or `ebsd-keras dataset`): number of patterns, pattern size, dtype and
    bit depth, accelerating voltage(s) in kV, Euler-angle range in degrees (converted from the radians stored in the
    file), pattern centre (EMsoft xpc/ypc in px, L and delta in um, and as Bruker PCx, PCy, PCz fractions) and the
    ebsd_keras provenance (preprocessing, source, sampling, detector);
  - a TFRecord dataset directory (`ebsd-keras convert` output): schema version, pattern shape, patterns per split
    and per voltage, shards, compression, preprocessing and sources; --verify re-computes every shard's SHA-256.

Exit status 2 if PATH cannot be read or (with --verify) a shard is missing or corrupt.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="summarise an EMsoft HDF5 file or a TFRecord dataset",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH", help="EMsoft HDF5 file or TFRecord dataset directory")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    p.add_argument("--verify", action="store_true", help="TFRecord datasets: verify shard checksums")
    p.set_defaults(func=run)


def _is_tfrecord_dir(path: str) -> bool:
    from ebsd_keras.io.tfrecord import METADATA_FILE

    if "://" in path:
        import tensorflow as tf

        return tf.io.gfile.exists(path.rstrip("/") + "/" + METADATA_FILE)
    return os.path.isdir(path)


def _euler_range_deg(path: str, chunk_size: int = 65536) -> dict | None:
    """Per-angle min/max of the stored Euler angles in degrees (reads only the angle dataset)."""
    import h5py

    from ebsd_keras.io.emsoft import EULER

    with h5py.File(path, "r") as f:
        if EULER not in f:
            return None
        dset = f[EULER]
        lo = np.full(3, np.inf)
        hi = np.full(3, -np.inf)
        finite = True
        for i in range(0, dset.shape[0], chunk_size):
            e = np.asarray(dset[i : i + chunk_size], dtype=np.float64).reshape(-1, 3)
            finite &= bool(np.isfinite(e).all())
            e = np.where(np.isfinite(e), e, np.nan)
            if e.size:
                lo = np.fmin(lo, np.nanmin(e, axis=0))
                hi = np.fmax(hi, np.nanmax(e, axis=0))
    stored_degrees = bool(np.nanmax(np.abs(np.concatenate([lo, hi]))) > 2 * np.pi + 1e-4)
    scale = 1.0 if stored_degrees else 180.0 / np.pi
    names = ("phi1", "Phi", "phi2")
    return {
        "stored_unit": "degrees (looks like degrees!)" if stored_degrees else "radians",
        "all_finite": finite,
        **{n: [float(lo[k] * scale), float(hi[k] * scale)] for k, n in enumerate(names)},
    }


def _voltage_counts(path: str) -> dict | None:
    """{kV: count} of the per-pattern AcceleratingVoltage dataset (None when the file has none)."""
    import h5py

    from ebsd_keras.io.emsoft import VOLTAGE

    with h5py.File(path, "r") as f:
        if VOLTAGE not in f:
            return None
        values, counts = np.unique(np.asarray(f[VOLTAGE][()], dtype=np.float64), return_counts=True)
    return {f"{v:g}": int(c) for v, c in zip(values, counts, strict=True)}


def summarise_h5(path: str) -> dict:
    """Summary of an EMsoft-layout HDF5 file as a JSON-serialisable dict."""
    from ebsd_keras.io.emsoft import read_emebsd_info

    info = read_emebsd_info(path)
    nml = dict(info.nml or {})
    pc_keys = ("xpc", "ypc", "L", "delta", "numsx", "numsy", "binning", "thetac")
    return jsonable(
        {
            "kind": "emsoft-hdf5",
            "path": str(path),
            "n_patterns": int(info.n_patterns),
            "pattern_shape": [int(s) for s in info.pattern_shape],
            "dtype": str(info.dtype),
            "bitdepth": info.bitdepth,
            "voltage_kv": {
                "per_pattern": bool(info.has_voltage),
                "values": _voltage_counts(path) if info.has_voltage else info.voltage_kv,
            },
            "euler_range_deg": _euler_range_deg(path),
            "euler_convention": info.euler_convention,
            "pattern_centre_emsoft": {k: nml[k] for k in pc_keys if k in nml},
            "detector_bruker": info.detector,
            "energy_kv": {k: nml[k] for k in ("energymin", "energymax") if k in nml},
            "provenance": info.metadata or {},
        }
    )


def summarise_tfrecords(path: str, verify: bool = False) -> dict:
    """Summary of a TFRecord dataset directory; ``verify`` checks every shard's SHA-256."""
    from ebsd_keras.io.tfrecord import read_metadata, verify_checksums

    meta = read_metadata(path)
    out = {
        "kind": "tfrecord-dataset",
        "path": str(path),
        "schema_version": meta["schema_version"],
        "pattern_shape": meta["pattern_shape"],
        "dtype": meta["dtype"],
        "count": meta["count"],
        "count_by_voltage": meta.get("count_by_voltage"),
        "voltages_kv": meta["voltages_kv"],
        "shards": {s: len(v) for s, v in meta["shards"].items()},
        "compression": meta["compression"],
        "preprocessing": meta["preprocessing"],
        "sources": [
            {k: s.get(k) for k in ("path", "split", "n", "kind", "masterfile")}
            | {"voltages_kv": s.get("voltage", {}).get("values_kv")}
            for s in meta["sources"]
        ],
        "created_by": meta["created_by"],
        "created_at": meta.get("created_at"),
    }
    if verify:
        out["verified_shards"] = verify_checksums(path)
    return out


def _compact(value) -> str:
    """One-line rendering: floats to 6 significant digits, lists inline."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_compact(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_compact(v)}" for k, v in value.items()) + "}"
    return "none" if value is None else str(value)


def _text_lines(summary: dict, indent: int = 0) -> list[str]:
    """Nested dicts as indented 'key: value' lines; dicts of lists (shards, sources) stay one line per entry."""
    lines = []
    for key, value in summary.items():
        pad = "  " * indent
        if isinstance(value, dict) and value and len(_compact(value)) > 100:
            lines.append(f"{pad}{key}:")
            lines.extend(_text_lines(value, indent + 1))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{key}:")
            lines.extend(f"{pad}  - {_compact(v)}" for v in value)
        else:
            lines.append(f"{pad}{key}: {_compact(value)}")
    return lines


def run(args) -> int:
    path = str(args.path)
    if _is_tfrecord_dir(path):
        summary = summarise_tfrecords(path, verify=args.verify)
    else:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file or directory")
        if os.path.isdir(path):
            raise EBSDInputError(
                "a directory without metadata.json: neither an EMsoft HDF5 file nor a TFRecord dataset directory", path
            )
        summary = summarise_h5(path)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print("\n".join(_text_lines(summary)))
    return 0
