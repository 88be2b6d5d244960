"""Sharded TFRecord datasets of EBSD patterns: versioned schema, atomic streaming writer, vectorised parser.

A dataset is a directory holding shards ``{split}-{shard:05d}.tfrecord`` (``.tfrecord.gz`` when GZIP-compressed) and
``metadata.json`` (see :func:`write_tfrecords`). Each record is one ``tf.train.Example`` per pattern:

============  =========================  ============================================================
feature       type                       meaning
============  =========================  ============================================================
pattern       bytes                      raw uint8 pattern, row-major, H*W bytes (H, W in metadata)
quaternion    float x 4                  (q0, q1, q2, q3), passive sample -> crystal, EMsoft P = +1, q0 >= 0
euler         float x 3                  Bunge (phi1, Phi, phi2), radians
voltage_kv    float x 1                  accelerating voltage, kV
source        int64 x 1                  index into ``metadata["sources"]``
index         int64 x 1                  row of the pattern in that source file
============  =========================  ============================================================

All TFRecord and metadata paths go through ``tf.io.gfile`` so a dataset can live on cloud storage (``gs://...``).
Local output directories are written under a temporary name and renamed into place; remote ones (no atomic directory
rename exists there) are written in place with ``metadata.json`` last, so an interrupted conversion is never mistaken
for a dataset, and are removed on error.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re

import numpy as np

from ebsd_keras import __version__
from ebsd_keras.checks import check_finite, check_pattern_shape, check_voltage_kv
from ebsd_keras.errors import EBSDInputError, SchemaError
from ebsd_keras.serialization import jsonable, portable_path

__all__ = [
    "SCHEMA_VERSION",
    "METADATA_FILE",
    "write_tfrecords",
    "read_metadata",
    "verify_checksums",
    "verify_shards",
    "shard_paths",
    "feature_spec",
    "parse_batch",
    "serialize_example",
]

log = logging.getLogger(__name__)

#: Version of the record layout and of ``metadata.json``; bump on any incompatible change.
SCHEMA_VERSION = 1
#: Name of the metadata file inside a dataset directory.
METADATA_FILE = "metadata.json"
FORMAT_NAME = "ebsd_keras-tfrecord"

_FEATURE_DOC = {
    "pattern": "bytes: raw uint8 pattern, row-major H*W",
    "quaternion": "float32[4]: (q0, q1, q2, q3), passive sample->crystal, EMsoft P=+1, q0 >= 0",
    "euler": "float32[3]: Bunge (phi1, Phi, phi2), radians",
    "voltage_kv": "float32[1]: accelerating voltage, kV",
    "source": "int64: index into sources",
    "index": "int64: row in the source file",
}
_REQUIRED_KEYS = (
    "schema_version",
    "pattern_shape",
    "dtype",
    "count",
    "shards",
    "compression",
    "preprocessing",
    "sources",
    "voltages_kv",
    "created_by",
)
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_]+$")
_COMPRESSIONS = (None, "GZIP")
_HASH_BLOCK = 1 << 22


# --------------------------------------------------------------------------------------------------------------------
# Record encoding. tf.train.Example built in Python costs ~40 us per pattern, which would make conversion slower than
# simulation; the layout is fixed, so the protobuf wire format is written directly (bit-identical to what the
# protobuf library parses; tests check it against tf.train.Example).


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_delimited(field: int, payload: bytes) -> bytes:
    return _varint((field << 3) | 2) + _varint(len(payload)) + payload


def _map_entry_prefix(key: str, feature_len: int) -> bytes:
    """Bytes of a ``Features.feature`` map entry up to its Feature payload (which has ``feature_len`` bytes)."""
    k = _len_delimited(1, key.encode())
    entry_len = len(k) + 1 + len(_varint(feature_len)) + feature_len
    return b"\x0a" + _varint(entry_len) + k + b"\x12" + _varint(feature_len)


def _fixed_feature_prefix(key: str, kind: int, payload_len: int) -> bytes:
    """Prefix for a feature whose list payload has a fixed byte length (kind 1 bytes, 2 float, 3 int64)."""
    # BytesList{value: payload} and packed FloatList/Int64List{value: payload} share the layout: field 1, length.
    lst_prefix = b"\x0a" + _varint(payload_len)
    inner = len(lst_prefix) + payload_len
    feature_len = 1 + len(_varint(inner)) + inner
    return _map_entry_prefix(key, feature_len) + bytes([(kind << 3) | 2]) + _varint(inner) + lst_prefix


def _int64_entry(key: str, value: int) -> bytes:
    packed = _varint(int(value) & 0xFFFFFFFFFFFFFFFF)
    return _fixed_feature_prefix(key, 3, len(packed)) + packed


class _RecordEncoder:
    """Serialises patterns of one shape into ``tf.train.Example`` bytes, a chunk at a time."""

    def __init__(self, pattern_shape):
        self.npix = int(pattern_shape[0]) * int(pattern_shape[1])
        self._pattern = _fixed_feature_prefix("pattern", 1, self.npix)
        self._quat = _fixed_feature_prefix("quaternion", 2, 16)
        self._euler = _fixed_feature_prefix("euler", 2, 12)
        self._volt = _fixed_feature_prefix("voltage_kv", 2, 4)
        # Only the varint length of the index varies between records: precompute its prefixes (1-10 bytes).
        self._index = {k: _fixed_feature_prefix("index", 3, k) for k in range(1, 11)}
        self._outer: dict[int, bytes] = {}

    def encode_chunk(self, patterns, quaternion, euler, voltage_kv, source: int, first_index: int):
        """Yield serialised records for a chunk; ``patterns`` uint8 (n, H, W), angles radians, voltage kV."""
        n = patterns.shape[0]
        pix = np.ascontiguousarray(patterns, dtype=np.uint8).tobytes()
        qb = np.ascontiguousarray(quaternion, dtype="<f4").tobytes()
        eb = np.ascontiguousarray(euler, dtype="<f4").tobytes()
        vb = np.ascontiguousarray(voltage_kv, dtype="<f4").tobytes()
        src = _int64_entry("source", source)
        npix, pat, quat, eul, volt = self.npix, self._pattern, self._quat, self._euler, self._volt
        index_prefix, outer = self._index, self._outer
        for i in range(n):
            idx = _varint(first_index + i)
            body = b"".join(
                (
                    pat, pix[i * npix : (i + 1) * npix],
                    quat, qb[16 * i : 16 * i + 16],
                    eul, eb[12 * i : 12 * i + 12],
                    volt, vb[4 * i : 4 * i + 4],
                    src, index_prefix[len(idx)], idx,
                )
            )  # fmt: skip
            head = outer.get(len(body))
            if head is None:
                head = outer[len(body)] = b"\x0a" + _varint(len(body))
            yield head + body


def serialize_example(pattern, quaternion, euler, voltage_kv: float, source: int, index: int) -> bytes:
    """Serialise one pattern as a ``tf.train.Example`` (schema :data:`SCHEMA_VERSION`).

    Parameters
    ----------
    pattern
        uint8 (H, W) pattern.
    quaternion
        (4,) unit quaternion (q0 >= 0).
    euler
        (3,) Bunge Euler angles in radians.
    voltage_kv
        Accelerating voltage in kV.
    source, index
        Source-file index in the metadata and row in that file.
    """
    pattern = np.asarray(pattern)
    enc = _RecordEncoder(pattern.shape)
    return next(
        enc.encode_chunk(
            pattern[None], np.reshape(quaternion, (1, 4)), np.reshape(euler, (1, 3)), [voltage_kv], source, index
        )
    )


# --------------------------------------------------------------------------------------------------------------------
# Paths (local or gfile URLs).


def _is_remote(path) -> bool:
    return "://" in str(path)


def _join(directory, name: str) -> str:
    directory = str(directory)
    return directory.rstrip("/") + "/" + name if _is_remote(directory) else os.path.join(directory, name)


def _shard_name(split: str, shard: int, compression) -> str:
    return f"{split}-{shard:05d}.tfrecord" + (".gz" if compression == "GZIP" else "")


def _sha256(path: str) -> str:
    import tensorflow as tf

    h = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while True:
            block = f.read(_HASH_BLOCK)
            if not block:
                return h.hexdigest()
            h.update(block)


# --------------------------------------------------------------------------------------------------------------------
# Writer.


class _ShardWriter:
    """Writes the records of one split into shards of at most ``shard_size`` records."""

    def __init__(self, directory: str, split: str, shard_size: int, compression):
        self.directory, self.split, self.shard_size, self.compression = directory, split, shard_size, compression
        self.shards: list[dict] = []
        self._writer = None
        self._count = 0
        self._name = None

    def write(self, record: bytes) -> None:
        if self._writer is None:
            self._open()
        self._writer.write(record)
        self._count += 1
        if self._count >= self.shard_size:
            self.close()

    def _open(self) -> None:
        import tensorflow as tf

        self._name = _shard_name(self.split, len(self.shards), self.compression)
        options = tf.io.TFRecordOptions(compression_type=self.compression or "")
        self._writer = tf.io.TFRecordWriter(_join(self.directory, self._name), options)
        self._count = 0

    def close(self) -> None:
        """Finish the current shard and record its name, record count and SHA-256."""
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        sha = _sha256(_join(self.directory, self._name))
        self.shards.append({"file": self._name, "count": self._count, "sha256": sha})

    def abort(self) -> None:
        """Release the file handle after an error (the caller removes the directory)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


_NOT_APPLIED = (None, False, "", "none", "no", "false", "off")


def _is_clahe(preprocessing) -> bool:
    """Whether a provenance ``preprocessing`` entry records CLAHE as applied.

    Accepts the forms written by this package and by hand: ``"clahe"``, ``CLAHEConfig.to_dict()`` (``method:
    'clahe-opencv'``), ``{"clahe": {...}}`` or ``{"rescale": ..., "clahe": "none"}`` (not applied).
    """
    if isinstance(preprocessing, str):
        return "clahe" in preprocessing.lower()
    if isinstance(preprocessing, dict):
        for key, value in preprocessing.items():
            if "clahe" in str(key).lower():
                off = value in _NOT_APPLIED or (isinstance(value, str) and value.strip().lower() in _NOT_APPLIED)
                if not off:
                    return True
            elif _is_clahe(value):
                return True
        return False
    if isinstance(preprocessing, (list, tuple)):
        return any(_is_clahe(v) for v in preprocessing)
    return False


def _source_kind(metadata: dict):
    """Short description of where a file's patterns came from ('emsoft-dynamical', 'kinematical', ...), or None."""
    src = metadata.get("source")
    if isinstance(src, str):
        return src
    if isinstance(src, dict):
        for key in ("kind", "type", "method", "simulation"):
            if isinstance(src.get(key), str):
                return src[key]
    return None


def _normalise_inputs(inputs) -> list[tuple[str, str]]:
    if isinstance(inputs, (str, os.PathLike)):
        raise TypeError("inputs must be a list of (split, path) pairs, e.g. [('train', 'train.h5')]")
    pairs = []
    seen = {}
    for item in inputs:
        split, path = item
        split = str(split)
        if not _SPLIT_RE.match(split):
            raise EBSDInputError(f"split name {split!r} must be letters, digits or '_'", path, "split")
        key = os.path.realpath(path) if not _is_remote(path) else str(path)
        if key in seen:
            # The same patterns in two splits (or twice in one) would leak training data into validation/test.
            raise EBSDInputError(f"file listed twice (as {seen[key]!r} and {split!r})", path, "inputs")
        seen[key] = split
        pairs.append((split, str(path)))
    if not pairs:
        raise EBSDInputError("no input files given", None, "inputs")
    return pairs


def _resolve_phase(infos, pairs):
    """The crystal of all files (their ``phase`` provenance); refuse files of different phases.

    Files without a phase record (written before phases were recorded, or by other programs) count as Ni; ``None``
    when no file records one.
    """
    from ebsd_keras.crystal import check_same_phase

    records = [(info.metadata or {}).get("phase") if info.metadata else None for info in infos]
    if all(r is None for r in records):
        return None
    first = records[0]
    for (_, path), rec in zip(pairs[1:], records[1:], strict=True):
        check_same_phase([first, rec], path, "phase")  # one clear line naming the file that differs
    return jsonable(next(r for r in records if r is not None))


def _resolve_preprocessing(infos, preprocess, pairs):
    """Decide the dataset's preprocessing record; refuse CLAHE twice and mixed preprocessing."""
    recorded = [info.metadata.get("preprocessing", "unknown") if info.metadata else "unknown" for info in infos]
    if preprocess is not None:
        for (_, path), prep in zip(pairs, recorded, strict=True):
            if _is_clahe(prep):
                raise EBSDInputError(
                    f"CLAHE was already applied when this file was made ({json.dumps(jsonable(prep))}); "
                    "applying it again would distort the patterns — drop --clahe",
                    path,
                    "preprocessing",
                )
        return {**preprocess.to_dict(), "applied_by": "ebsd-keras convert"}
    first = jsonable(recorded[0])
    for (_, path), prep in zip(pairs[1:], recorded[1:], strict=True):
        if jsonable(prep) != first:
            # Training on a mix of CLAHE'd and raw patterns is silently wrong; make the user choose.
            raise EBSDInputError(
                f"preprocessing {json.dumps(jsonable(prep))} differs from {json.dumps(first)} in {pairs[0][1]}; "
                "convert files with the same preprocessing together",
                path,
                "preprocessing",
            )
    return first


def write_tfrecords(
    inputs,
    out_dir,
    shard_size: int = 10000,
    compression: str | None = None,
    overwrite: bool = False,
    preprocess=None,
    voltage_kv: float | None = None,
    degrees: str = "refuse",
    progress: bool = True,
    chunk_size: int = 4096,
) -> dict:
    """Convert EMsoft-layout HDF5 pattern files into a sharded TFRecord dataset.

    Files are streamed ``chunk_size`` patterns at a time (memory does not grow with the dataset), written into a
    temporary directory and moved to ``out_dir`` only when everything succeeded.

    Parameters
    ----------
    inputs
        List of ``(split, path)`` pairs, e.g. ``[("train", "train.h5"), ("val", "val.h5")]``. Several files may share a
        split; one file may not appear twice. All files must have the same pattern shape.
    out_dir
        Output directory (local or a ``tf.io.gfile`` URL). Must not exist unless ``overwrite``.
    shard_size
        Maximum number of records per shard file.
    compression
        None or ``"GZIP"``.
    overwrite
        Replace an existing ``out_dir`` (only after the new dataset is complete, for local paths).
    preprocess
        Optional :class:`~ebsd_keras.data.preprocess.CLAHEConfig` to apply now. Refused for files whose provenance
        says CLAHE was already applied.
    voltage_kv
        Accelerating voltage in kV for files without a per-pattern ``AcceleratingVoltage`` dataset (passed to
        ``iter_emebsd``).
    degrees
        ``"refuse"`` (default) or ``"convert"``: what to do with Euler angles that look like degrees.
    progress
        Show a progress bar on stderr.
    chunk_size
        Patterns read per HDF5 chunk.

    Returns
    -------
    dict
        The metadata written to ``metadata.json``: ``schema_version``, ``format``, ``pattern_shape`` [H, W],
        ``dtype`` ('uint8'), ``count`` {split: n}, ``count_by_voltage`` {split: {kV: n}}, ``shards`` {split: [{file,
        count, sha256}]}, ``compression``, ``shard_size``, ``preprocessing``, ``sources`` [{path, split, n,
        pattern_shape, dtype, bitdepth, voltage, kind, masterfile, euler_convention, detector, degrees, provenance}],
        ``voltages_kv`` (sorted unique, kV), ``features``, ``created_by`` and ``created_at``.

    Raises
    ------
    EBSDInputError
        No inputs, an empty or unreadable file, differing pattern shapes (field ``EBSDPatterns``), bad angles or
        voltages, CLAHE requested twice; nothing is left at ``out_dir`` then.
    FileExistsError
        ``out_dir`` exists and ``overwrite`` is False (the existing data is untouched).
    """
    if compression not in _COMPRESSIONS:
        raise ValueError(f"compression must be None or 'GZIP', got {compression!r}")
    if int(shard_size) < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if degrees not in ("refuse", "convert"):
        raise ValueError(f"degrees must be 'refuse' or 'convert', got {degrees!r}")
    if voltage_kv is not None:
        voltage_kv = float(check_voltage_kv(voltage_kv, None, "voltage_kv"))
    pairs = _normalise_inputs(inputs)
    _check_target(out_dir, overwrite)

    # Validate every file's header before writing anything: shape mismatches and CLAHE-twice fail fast.
    from ebsd_keras.io.emsoft import read_emebsd_info

    infos = [read_emebsd_info(path) for _, path in pairs]
    shape = tuple(int(s) for s in infos[0].pattern_shape)
    for (_, path), info in zip(pairs, infos, strict=True):
        if int(info.n_patterns) == 0:
            raise EBSDInputError("file contains no patterns", path, "EBSDPatterns")
        check_pattern_shape(info.pattern_shape, shape, path, "EBSDPatterns")
    preprocessing = _resolve_preprocessing(infos, preprocess, pairs)
    phase = _resolve_phase(infos, pairs)

    def build(directory: str) -> dict:
        return _write_all(
            directory, pairs, infos, shape, int(shard_size), compression, preprocess, preprocessing,
            voltage_kv, degrees, progress, int(chunk_size), phase,
        )  # fmt: skip

    if _is_remote(out_dir):
        metadata = _write_remote(str(out_dir), overwrite, build)
    else:
        from ebsd_keras._atomic import atomic_dir

        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            metadata = build(str(tmp))
    log.info("wrote %d patterns %s to %s", sum(metadata["count"].values()), metadata["count"], out_dir)
    return metadata


def _check_target(out_dir, overwrite: bool) -> None:
    import tensorflow as tf

    if not _is_remote(out_dir):  # a file in the way, an unwritable parent: fail before reading any input
        from ebsd_keras._atomic import check_writable

        check_writable(out_dir, "dir", overwrite, "-o/--output")

    if not overwrite and tf.io.gfile.exists(str(out_dir)):
        raise FileExistsError(f"{out_dir}: already exists (use --overwrite to replace it)")


def _write_remote(out_dir: str, overwrite: bool, build) -> dict:
    """Write to object storage: no atomic rename, so metadata.json goes last and failures remove the directory."""
    import tensorflow as tf

    if tf.io.gfile.exists(out_dir):
        if not overwrite:
            raise FileExistsError(f"{out_dir}: already exists (use --overwrite to replace it)")
        tf.io.gfile.rmtree(out_dir)
    tf.io.gfile.makedirs(out_dir)
    try:
        return build(out_dir)
    except BaseException:
        tf.io.gfile.rmtree(out_dir)
        raise


def _write_all(
    directory, pairs, infos, shape, shard_size, compression, preprocess, preprocessing, voltage_kv, degrees,
    progress, chunk_size, phase=None,
) -> dict:  # fmt: skip
    import tensorflow as tf
    from tqdm.auto import tqdm

    encoder = _RecordEncoder(shape)
    writers: dict[str, _ShardWriter] = {}
    counts: dict[str, int] = {}
    by_voltage: dict[str, dict[float, int]] = {}
    sources = []
    bar = tqdm(total=sum(int(i.n_patterns) for i in infos), unit="pattern", disable=not progress, desc="convert")
    try:
        for source_id, ((split, path), info) in enumerate(zip(pairs, infos, strict=True)):
            if split not in writers:
                writers[split] = _ShardWriter(directory, split, shard_size, compression)
            read = dict(chunk_size=chunk_size, voltage_kv=voltage_kv, degrees=degrees)
            n, volts = _write_source(writers[split], encoder, path, info, source_id, shape, preprocess, read, bar)
            counts[split] = counts.get(split, 0) + n
            split_volts = by_voltage.setdefault(split, {})
            for v, c in volts.items():
                split_volts[v] = split_volts.get(v, 0) + c
            sources.append(_source_entry(split, path, info, n, sorted(volts), voltage_kv, degrees))
        for w in writers.values():
            w.close()
    finally:
        bar.close()
        for w in writers.values():
            w.abort()  # no-op after success; on error, releases handles so the temporary directory can go
    metadata = {
        "schema_version": SCHEMA_VERSION,
        "format": FORMAT_NAME,
        "pattern_shape": list(shape),
        "dtype": "uint8",
        "features": _FEATURE_DOC,
        "count": counts,
        "count_by_voltage": {s: {f"{v:g}": c for v, c in sorted(d.items())} for s, d in by_voltage.items()},
        "shards": {s: w.shards for s, w in writers.items()},
        "compression": compression,
        "shard_size": shard_size,
        "preprocessing": jsonable(preprocessing),
        "phase": phase,
        "sources": sources,
        "voltages_kv": sorted({v for d in by_voltage.values() for v in d}),
        "created_by": {"package": "ebsd_keras", "version": __version__, "tensorflow": tf.__version__},
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    # Written last: on object storage a directory without metadata.json is never taken for a dataset.
    with tf.io.gfile.GFile(_join(directory, METADATA_FILE), "w") as f:
        f.write(json.dumps(metadata, indent=2) + "\n")
    return metadata


def _write_source(writer, encoder, path, info, source_id, shape, preprocess, read: dict, bar):
    """Stream one file into ``writer``; returns (patterns written, {kV: count})."""
    from ebsd_keras.checks import constant_pattern_count
    from ebsd_keras.io.emsoft import iter_emebsd

    volts: dict[float, int] = {}
    n = constant = 0
    for chunk in iter_emebsd(path, **read):
        patterns = _check_chunk(chunk, shape, path)
        constant += constant_pattern_count(patterns)  # before CLAHE, which maps a flat pattern to a flat pattern
        if preprocess is not None:
            from ebsd_keras.data.preprocess import clahe

            patterns = clahe(patterns, preprocess)
        start = int(chunk.start)
        for record in encoder.encode_chunk(patterns, chunk.quaternion, chunk.euler, chunk.voltage_kv, source_id, start):
            writer.write(record)
        # Key voltages by their float32 value, as stored in the records and compared by the pipeline's filter.
        v32 = np.asarray(chunk.voltage_kv, dtype=np.float32).astype(np.float64)
        for v, c in zip(*np.unique(np.round(v32, 6), return_counts=True), strict=True):
            volts[float(v)] = volts.get(float(v), 0) + int(c)
        n += patterns.shape[0]
        bar.update(patterns.shape[0])
    if n != int(info.n_patterns):
        raise EBSDInputError(f"read {n} patterns but the file declares {info.n_patterns}", path, "EBSDPatterns")
    _check_constant(constant, n, path)
    return n, volts


def _check_constant(constant: int, n: int, path) -> None:
    """Refuse a file whose patterns are all constant (e.g. all zero); warn when some are."""
    if n and constant == n:
        raise EBSDInputError(
            f"all {n} patterns are constant (every pixel equal, e.g. all zero): nothing to learn from; check the "
            "simulation or the detector read-out",
            path,
            "EBSDPatterns",
        )
    if constant:
        log.warning("%s: %d of %d patterns are constant (every pixel equal, e.g. all zero)", path, constant, n)


def _check_chunk(chunk, shape, path) -> np.ndarray:
    """Cheap guards on a chunk from the reader: shape, dtype, finite angles and voltages."""
    patterns = np.asarray(chunk.patterns)
    if patterns.dtype != np.uint8:
        raise EBSDInputError(f"reader returned {patterns.dtype} patterns, expected uint8", path, "EBSDPatterns")
    check_pattern_shape(patterns.shape[1:], shape, path, "EBSDPatterns")
    check_finite(chunk.euler, path, "EulerAngles", what="Euler angles")
    check_finite(chunk.quaternion, path, "EulerAngles", what="quaternions")
    check_voltage_kv(chunk.voltage_kv, path, "AcceleratingVoltage")
    return patterns


def _source_entry(split, path, info, n, volts, voltage_kv, degrees) -> dict:
    meta = jsonable(dict(info.metadata or {}))
    return {
        "path": portable_path(path),
        "split": split,
        "n": n,
        "pattern_shape": [int(s) for s in info.pattern_shape],
        "dtype": str(np.dtype(info.dtype)) if info.dtype is not None else None,
        "bitdepth": jsonable(info.bitdepth),
        "voltage": {
            "per_pattern": bool(info.has_voltage),
            "file_kv": jsonable(info.voltage_kv),
            "override_kv": voltage_kv,
            "values_kv": volts,
        },
        "kind": _source_kind(meta),
        "masterfile": jsonable((info.nml or {}).get("masterfile")),  # EMsoft's record of the master pattern used
        "euler_convention": jsonable(info.euler_convention),
        "detector": jsonable(getattr(info, "detector", None)),
        "degrees": degrees,
        "provenance": meta,
    }


# --------------------------------------------------------------------------------------------------------------------
# Reading.


def read_metadata(data_dir) -> dict:
    """Read and validate ``metadata.json`` of a TFRecord dataset directory.

    Raises
    ------
    EBSDInputError
        ``metadata.json`` is missing (not a dataset directory).
    SchemaError
        Unparseable JSON, a different ``schema_version`` (field ``schema_version``), a missing required key, or shard
        counts that do not add up.
    """
    import tensorflow as tf

    path = _join(data_dir, METADATA_FILE)
    if not tf.io.gfile.exists(path):
        raise EBSDInputError(
            "missing: not an ebsd_keras TFRecord dataset directory (make one with `ebsd-keras convert`)", path
        )
    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"not valid JSON ({exc})", path) from exc
    if not isinstance(meta, dict) or "schema_version" not in meta:
        raise SchemaError("no schema_version: not written by ebsd_keras", path, "schema_version")
    if meta["schema_version"] != SCHEMA_VERSION:
        raise SchemaError(
            f"schema_version {meta['schema_version']!r} is not supported by ebsd_keras {__version__} (reads "
            f"{SCHEMA_VERSION}); re-run `ebsd-keras convert` or use the matching ebsd_keras version",
            path,
            "schema_version",
        )
    for key in _REQUIRED_KEYS:
        if key not in meta:
            raise SchemaError("required key missing", path, key)
    if meta["dtype"] != "uint8" or len(meta["pattern_shape"]) != 2:
        raise SchemaError(f"unsupported dtype/pattern_shape {meta['dtype']!r} {meta['pattern_shape']!r}", path, "dtype")
    for split, shards in meta["shards"].items():
        if sum(int(s["count"]) for s in shards) != int(meta["count"].get(split, -1)):
            raise SchemaError(f"shard record counts do not add up to count[{split!r}]", path, "shards")
    return meta


def shard_paths(data_dir, split: str, metadata: dict | None = None) -> list[str]:
    """Full paths of the shard files of ``split`` (raises EBSDInputError naming the available splits)."""
    meta = metadata if metadata is not None else read_metadata(data_dir)
    if split not in meta["shards"]:
        raise EBSDInputError(
            f"no split {split!r} in this dataset (available: {', '.join(sorted(meta['shards'])) or 'none'})",
            data_dir,
            "split",
        )
    return [_join(data_dir, s["file"]) for s in meta["shards"][split]]


def verify_checksums(data_dir) -> int:
    """Check every shard of every split against ``metadata.json`` (:func:`verify_shards` with all splits).

    Returns
    -------
    int
        Number of shard files verified.

    Raises
    ------
    EBSDInputError
        Naming the first missing or corrupt shard and how many are bad (field ``sha256`` or ``count``).
    """
    return verify_shards(data_dir)


def verify_shards(data_dir, splits=None, metadata: dict | None = None) -> int:
    """Check, before training or evaluating, that every shard of ``splits`` is whole: present, with the SHA-256 and
    (for metadata without checksums) the record count ``metadata.json`` recorded when it was written.

    A truncated, emptied or bit-flipped shard would otherwise be read silently (fewer records) or fail with a
    DataLossError after the model is built; a missing one with a NotFoundError.

    Parameters
    ----------
    data_dir
        TFRecord dataset directory (local or URL).
    splits
        Split names to check (those absent from the dataset are skipped); None: every split.
    metadata
        The dataset's metadata if already read.

    Returns
    -------
    int
        Number of shard files verified.

    Raises
    ------
    EBSDInputError
        Naming the first bad shard file (path) and how many are bad, field ``sha256`` (or ``count``).
    """
    import tensorflow as tf

    meta = metadata if metadata is not None else read_metadata(data_dir)
    names = list(meta["shards"]) if splits is None else [s for s in splits if s in meta["shards"]]
    bad, n, field = [], 0, "sha256"
    for split in names:
        for s in meta["shards"][split]:
            path = _join(data_dir, s["file"])
            n += 1
            if not tf.io.gfile.exists(path):
                bad.append((path, "missing"))
            elif s.get("sha256"):
                key = _file_key(path, s["sha256"])
                if key is not None and key in _VERIFIED:
                    continue  # hashed by this process already, unchanged since (train() after the CLI's check)
                if _sha256(path) != s["sha256"]:
                    bad.append((path, "checksum mismatch: the shard is damaged (truncated or modified)"))
                elif key is not None:
                    _VERIFIED.add(key)
            else:
                count = _count_records(path, meta.get("compression"))
                if count != int(s["count"]):
                    bad.append((path, f"{count} records, metadata.json says {s['count']}: the shard is damaged"))
                    field = "count"
    if bad:
        path, why = bad[0]
        more = f" ({len(bad)} of {n} shards bad)" if len(bad) > 1 else ""
        raise EBSDInputError(f"{why}{more}; re-create the dataset with `ebsd-keras convert`", path, field)
    return n


#: Local shards this process found intact: (path, size, mtime_ns, sha256).
_VERIFIED: set = set()


def _file_key(path: str, sha: str):
    if _is_remote(path):
        return None
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns, sha)


def _count_records(path: str, compression) -> int | None:
    import tensorflow as tf

    try:
        return sum(1 for _ in tf.data.TFRecordDataset(path, compression_type=compression or ""))
    except tf.errors.OpError:
        return None


def feature_spec() -> dict:
    """``tf.io.parse_example`` feature specification of schema :data:`SCHEMA_VERSION`."""
    import tensorflow as tf

    return {
        "pattern": tf.io.FixedLenFeature([], tf.string),
        "quaternion": tf.io.FixedLenFeature([4], tf.float32),
        "euler": tf.io.FixedLenFeature([3], tf.float32),
        "voltage_kv": tf.io.FixedLenFeature([], tf.float32),
        "source": tf.io.FixedLenFeature([], tf.int64),
        "index": tf.io.FixedLenFeature([], tf.int64),
    }


def parse_batch(serialized, pattern_shape) -> dict:
    """Parse a batch of serialised records in one vectorised op (much faster than per-record parsing).

    Parameters
    ----------
    serialized
        1-D string tensor of records.
    pattern_shape
        (H, W) from the metadata.

    Returns
    -------
    dict
        ``pattern`` uint8 (B, H, W); ``quaternion`` float32 (B, 4); ``euler`` float32 (B, 3) radians;
        ``voltage_kv`` float32 (B,) kV; ``source`` and ``index`` int64 (B,).
    """
    import tensorflow as tf

    h, w = (int(s) for s in pattern_shape)
    feats = tf.io.parse_example(serialized, feature_spec())
    feats["pattern"] = tf.reshape(tf.io.decode_raw(feats["pattern"], tf.uint8), [-1, h, w])
    return feats
