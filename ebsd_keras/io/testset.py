"""Held-out test sets: patterns with their orientations, voltages and provenance, from a dataset file or folder.

:func:`load_test_set` reads an EMsoft-layout EMEBSD HDF5 file (what ``ebsd-keras dataset`` writes, or a user's own
EMsoft file), a dataset folder holding ``<split>.h5``, or a TFRecord dataset folder (``metadata.json``), and returns a
:class:`TestSet`. Evaluation, indexing and refinement all take their patterns from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ebsd_keras.errors import EBSDInputError

__all__ = ["TestSet", "load_test_set"]


@dataclass
class TestSet:
    """Held-out patterns with their orientations, voltages and provenance.

    Attributes
    ----------
    patterns
        (n, H, W) uint8 as stored (after the dataset's preprocessing).
    quaternion
        (n, 4) float64 orientations, q0 >= 0, passive, EMsoft P = +1.
    voltage_kv
        (n,) float64 accelerating voltage, kV.
    index
        (n,) int64 position of each pattern in its split (file row order).
    metadata
        Provenance used to rebuild the simulation: ``detector``, ``preprocessing``, ``source.per_voltage``.
    description
        Where the patterns came from: ``path``, ``format``, ``split``, ``n_total``, ``n``, ``seed``.
    training_semi_edge_steps
        Cubochoric density of the training split (the default dictionary density), if recorded.
    """

    __test__ = False  # not a pytest test class

    patterns: np.ndarray
    quaternion: np.ndarray
    voltage_kv: np.ndarray
    index: np.ndarray
    metadata: dict
    description: dict = field(default_factory=dict)
    training_semi_edge_steps: int | None = None

    def __len__(self) -> int:
        return int(len(self.patterns))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.patterns.shape[1:])

    def subset(self, rows) -> TestSet:
        """A test set of the given rows (same provenance)."""
        rows = np.asarray(rows)
        return TestSet(
            self.patterns[rows],
            self.quaternion[rows],
            self.voltage_kv[rows],
            self.index[rows],
            self.metadata,
            {**self.description, "n": int(len(rows))},
            self.training_semi_edge_steps,
        )


def _choose(n_total: int, n: int | None, seed: int) -> np.ndarray:
    """Sorted row selection: all rows, or a seeded random subset of n."""
    if n is not None and (isinstance(n, bool) or int(n) != n or n < 1):
        raise EBSDInputError(f"number of test patterns must be a positive integer, got {n!r}", None, "n")
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=int(n), replace=False))


def _cubochoric_steps(sampling) -> int | None:
    if isinstance(sampling, dict) and sampling.get("method") == "cubochoric" and sampling.get("semi_edge_steps"):
        return int(sampling["semi_edge_steps"])
    return None


def _load_h5(path: Path, n, seed, split) -> TestSet:
    from ebsd_keras.io.emsoft import iter_emebsd, read_emebsd_info

    info = read_emebsd_info(path)
    meta = dict(info.metadata or {})
    if not isinstance(meta.get("detector"), dict) and info.detector is not None:
        meta["detector"] = info.detector
    rows = _choose(info.n_patterns, n, seed)
    keep = np.zeros(info.n_patterns, dtype=bool)
    keep[rows] = True
    parts = {"patterns": [], "quaternion": [], "voltage_kv": []}
    for chunk in iter_emebsd(path):
        sel = keep[chunk.start : chunk.start + len(chunk.patterns)]
        if sel.any():
            parts["patterns"].append(chunk.patterns[sel])
            parts["quaternion"].append(chunk.quaternion[sel])
            parts["voltage_kv"].append(chunk.voltage_kv[sel])
    training = None
    summary = path.parent / "dataset.json"
    if summary.exists():  # a directory made by the dataset builder records every split's sampling
        try:
            training = _cubochoric_steps(json.loads(summary.read_text())["splits"]["train"]["sampling"])
        except (KeyError, TypeError, ValueError):
            training = None
    return TestSet(
        np.concatenate(parts["patterns"]),
        np.concatenate(parts["quaternion"]),
        np.concatenate(parts["voltage_kv"]),
        rows.astype(np.int64),
        meta,
        {
            "path": str(path),
            "format": "emsoft-h5",
            "split": meta.get("split", split),
            "n_total": info.n_patterns,
            "n": int(len(rows)),
            "seed": int(seed),
        },
        training,
    )


def _merge_provenance(sources: list[dict], top_preprocessing, path) -> dict:
    """One provenance for the test split's TFRecord sources: same detector everywhere, all master patterns listed."""
    provs = [dict(s.get("provenance") or {}) for s in sources]
    dets = [p.get("detector") or s.get("detector") for p, s in zip(provs, sources, strict=True)]
    if any(d != dets[0] for d in dets[1:]):
        raise EBSDInputError("the test split's source files use different detectors", path, "sources/detector")
    per_voltage = []
    for p in provs:
        per_voltage += list(((p.get("source") or {}).get("per_voltage")) or [])
    kinds = {(p.get("source") or {}).get("kind") for p in provs}
    return {
        "detector": dets[0],
        "preprocessing": top_preprocessing,
        "source": {"kind": kinds.pop() if len(kinds) == 1 else sorted(map(str, kinds)), "per_voltage": per_voltage},
        "sampling": provs[0].get("sampling"),
    }


def _load_tfrecord(directory: Path, n, seed, split) -> TestSet:
    from ebsd_keras.data.pipeline import make_dataset
    from ebsd_keras.data.preprocess import rescale_to_uint8
    from ebsd_keras.io.tfrecord import read_metadata, shard_paths, verify_shards

    meta = read_metadata(directory)
    shard_paths(directory, split, meta)  # names the available splits when this one is missing
    verify_shards(directory, (split,), meta)  # a damaged shard: one line naming it, before any work
    n_total = int(meta["count"][split])
    rows = _choose(n_total, n, seed)
    keep = np.zeros(n_total, dtype=bool)
    keep[rows] = True
    parts = {"patterns": [], "quaternion": [], "voltage_kv": []}
    start = 0
    for batch in make_dataset(directory, split=split, batch_size=4096, shuffle=False):
        m = int(batch["pattern"].shape[0])
        sel = keep[start : start + m]
        start += m
        if sel.any():
            x = batch["pattern"].numpy()[sel, ..., 0]
            parts["patterns"].append(rescale_to_uint8(x, 0.0, 1.0))  # exact: stored as uint8 / 255
            parts["quaternion"].append(batch["quaternion"].numpy()[sel].astype(np.float64))
            parts["voltage_kv"].append(batch["voltage_kv"].numpy()[sel].astype(np.float64))
    sources = [s for s in meta.get("sources", []) if s.get("split") == split]
    if not sources:
        raise EBSDInputError(f"no source files recorded for split {split!r}", directory, "sources")
    train = [s for s in meta.get("sources", []) if s.get("split") == "train"]
    training = _cubochoric_steps((train[0].get("provenance") or {}).get("sampling")) if train else None
    q = np.concatenate(parts["quaternion"])
    q /= np.linalg.norm(q, axis=1, keepdims=True)  # stored as float32
    return TestSet(
        np.concatenate(parts["patterns"]),
        q,
        np.concatenate(parts["voltage_kv"]),
        rows.astype(np.int64),
        _merge_provenance(sources, meta.get("preprocessing"), directory),
        {
            "path": str(directory),
            "format": "tfrecord",
            "split": split,
            "n_total": n_total,
            "n": int(len(rows)),
            "seed": int(seed),
        },
        training,
    )


def load_test_set(test_source, n: int | None = 1000, seed: int = 0, split: str = "test") -> TestSet:
    """Read (a seeded random subset of) a held-out split.

    Parameters
    ----------
    test_source
        An EMsoft-layout HDF5 file, a dataset directory made by the builder (``<split>.h5`` is read) or a TFRecord
        dataset directory (``metadata.json``; ``split`` is read).
    n
        Number of patterns (a random subset, kept in file order); ``None`` or more than available: all.
    seed
        Seed of the subset.
    split
        Split of a directory source.

    Returns
    -------
    TestSet

    Raises
    ------
    FileNotFoundError
        When ``test_source`` does not exist.
    EBSDInputError
        For anything that is not a readable dataset, or a missing split.
    """
    path = Path(test_source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "metadata.json").exists():
            return _load_tfrecord(path, n, seed, split)
        if (path / f"{split}.h5").exists():
            return _load_h5(path / f"{split}.h5", n, seed, split)
        raise EBSDInputError(
            f"neither a TFRecord dataset (metadata.json) nor a dataset directory with {split}.h5", path, "test"
        )
    return _load_h5(path, n, seed, split)
