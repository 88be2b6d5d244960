"""EMsoft HDF5 and text files: EBSD pattern files (EMEBSD layout), master patterns and Euler-angle lists.

Only h5py and numpy are used here, so the core never needs kikuchipy; the files this module writes open with
``kikuchipy.load``.

Layout of an EMsoft pattern file (EMEBSD output, and what :class:`EMEBSDWriter` writes)::

    EMData/EBSD/EBSDPatterns        (N, H, W)  uint8 ('8bit'), int32 ('NNbit') or float32 ('float')
    EMData/EBSD/EulerAngles         (N, 3)     Bunge (phi1, Phi, phi2), radians (EMsoft 4/5)
    EMData/EBSD/numangles           (1,)       N
    EMData/EBSD/AcceleratingVoltage (N,)       kV, optional (the authors' multi-voltage layout)
    EMData/EBSD/xtalname            (1,)       crystal structure file name
    EMheader/EBSD/ProgramName       (1,)       'EMEBSD.f90' (kikuchipy checks it)
    NMLparameters/EBSDNameList/*               energymax (kV), numsx, numsy, delta (um), binning, thetac (deg),
                                               xpc, ypc (px, EMsoft v5 sign), L (um), bitdepth, eulerconvention...
    CrystalData/*                              lattice (nm, deg), space group, atoms
    ebsd_keras (group)                         attrs: 'metadata' (JSON provenance), 'detector' (JSON, Bruker PC)

Conventions
-----------
- Euler angles are radians in the file. An array with any |angle| > 2 pi holds degrees (some EMsoft 6 programs):
  it is refused unless the caller asks for ``degrees="convert"``; nothing is converted silently.
- ``eulerconvention = 'hkl'``: EMsoft added 90 deg to phi1 when it read the angle file, so the reader subtracts
  pi/2 from phi1 (result wrapped into [0, 2 pi)) to return the orientation in the TSL/EMsoft convention used everywhere
  else in ebsd_keras.
- Patterns are returned as uint8. uint8 files are passed through unchanged; integer and float files (EMsoft
  'NNbit' / 'float') are rescaled linearly with the minimum and maximum of the *whole file*, so that relative
  intensities between patterns are kept and nothing wraps around.
- Voltages are in kV.
- Pattern centres: ``detector`` dictionaries are Bruker (PCx, PCy, PCz) fractions; the NML list holds EMsoft v5
  (xpc, ypc) in unbinned pixels from the detector centre and L in um (EMsoft 4 flips the sign of xpc).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from ebsd_keras import __version__
from ebsd_keras._atomic import atomic_path
from ebsd_keras.checks import check_finite, check_voltage_kv
from ebsd_keras.data.preprocess import rescale_to_uint8
from ebsd_keras.errors import EBSDInputError
from ebsd_keras.orientation import check_euler_radians, euler_to_quaternion, normalize_quaternions
from ebsd_keras.serialization import jsonable

__all__ = [
    "PATTERNS",
    "EULER",
    "NUMANGLES",
    "VOLTAGE",
    "NML",
    "DEFAULT_DETECTOR",
    "NICKEL_CRYSTAL",
    "EMEBSDInfo",
    "PatternChunk",
    "MasterPatternFile",
    "read_emebsd_info",
    "iter_emebsd",
    "pattern_intensity_range",
    "read_master_pattern",
    "read_angle_file",
    "write_angle_file",
    "EMEBSDWriter",
    "write_emebsd",
    "bruker_pc_to_emsoft",
    "emsoft_pc_to_bruker",
]

logger = logging.getLogger(__name__)

PATTERNS = "EMData/EBSD/EBSDPatterns"
EULER = "EMData/EBSD/EulerAngles"
NUMANGLES = "EMData/EBSD/numangles"
VOLTAGE = "EMData/EBSD/AcceleratingVoltage"
XTALNAME = "EMData/EBSD/xtalname"
NML = "NMLparameters/EBSDNameList"
HEADER = "EMheader/EBSD"
OWN_GROUP = "ebsd_keras"

_MASTER = "EMData/EBSDmaster"
_MASTER_NML = "NMLparameters/EBSDMasterNameList"

#: HDF5 chunk cache per open file: large enough that reading a stored chunk in several smaller slices does not
#: decompress it again for every slice.
_CACHE_BYTES = 32 * 1024**2
#: Upper bound on one stored pattern chunk; (256, H, W) unless the patterns are large.
_MAX_CHUNK_BYTES = 8 * 1024**2

#: Detector used when a writer is given none (Bruker PC; tilts in degrees; pixel size in um, unbinned).
DEFAULT_DETECTOR = {
    "pc": (0.5, 0.5, 0.5),
    "tilt_deg": 10.0,
    "sample_tilt_deg": 70.0,
    "px_size_um": 50.0,
    "binning": 1,
}

#: Nickel (fcc, Fm-3m, a = 0.35236 nm) as in the EMsoft files shipped with kikuchipy; the writer's default crystal.
NICKEL_CRYSTAL = {
    "lattice_parameters": (0.35236, 0.35236, 0.35236, 90.0, 90.0, 90.0),
    "space_group": 225,
    "space_group_setting": 1,
    "atom_types": (28,),
    # rows: x, y, z (fractional), site occupation, Debye-Waller factor (nm^2); one column per atom type
    "atom_data": ((0.0,), (0.0,), (0.0,), (1.0,), (0.0035,)),
}


# ----------------------------------------------------------------------------------------------------------------
# Data classes
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EMEBSDInfo:
    """What an EMsoft pattern file holds, read without loading the patterns.

    Attributes
    ----------
    path
        The file.
    n_patterns
        Number of patterns N.
    pattern_shape
        (rows, columns) of one pattern.
    dtype
        numpy dtype name of ``EMData/EBSD/EBSDPatterns`` as stored ('uint8', 'int32', 'float32', ...).
    bitdepth
        NML ``bitdepth`` ('8bit', 'NNbit', 'float') or None when absent.
    has_voltage
        Whether the per-pattern ``EMData/EBSD/AcceleratingVoltage`` (kV) dataset is present.
    voltage_kv
        Per-file voltage in kV from NML ``energymax`` when there is no per-pattern dataset, else None.
    nml
        ``NMLparameters/EBSDNameList`` values: bytes decoded to str, 1-element arrays to scalars, longer arrays to
        lists.
    metadata
        ebsd_keras provenance (JSON attribute ``metadata`` of group ``ebsd_keras``), or {}.
    euler_convention
        'tsl' or 'hkl' (NML ``eulerconvention``; 'tsl' when absent).
    n_orientations
        Rows of ``EulerAngles``: N, or N / n_blocks for the authors' layout of consecutive voltage blocks over one
        orientation list (pattern i then has orientation i mod n_orientations).
    detector
        Bruker-convention detector dict (``pc``, ``shape``, ``tilt_deg``, ``px_size_um``, ``binning``, ...) from the
        ``ebsd_keras`` group, else derived from the NML pattern-centre fields, else None.
    """

    path: str
    n_patterns: int
    pattern_shape: tuple[int, int]
    dtype: str
    bitdepth: str | None
    has_voltage: bool
    voltage_kv: float | None
    nml: dict
    metadata: dict
    euler_convention: str
    n_orientations: int = 0
    detector: dict | None = None


@dataclass
class PatternChunk:
    """Consecutive patterns ``start .. start + n - 1`` of a file.

    Attributes
    ----------
    start
        Index of the first pattern in the file.
    patterns
        (n, H, W) uint8.
    euler
        (n, 3) float64 Bunge Euler angles, radians (TSL convention; 'hkl' files corrected).
    quaternion
        (n, 4) float64 unit quaternions, q0 >= 0.
    voltage_kv
        (n,) float64 accelerating voltage, kV.
    """

    start: int
    patterns: np.ndarray
    euler: np.ndarray
    quaternion: np.ndarray
    voltage_kv: np.ndarray


@dataclass
class MasterPatternFile:
    """An EMsoft EBSD master pattern (EMEBSDmaster output), square Lambert projection.

    Attributes
    ----------
    north, south
        float32 (n_energies, 2 npx + 1, 2 npx + 1) hemispheres (``mLPNH``, ``mLPSH``) in stored (C) order; several
        asymmetric sites (``numset`` > 1) are summed, as kikuchipy does.
    energies_kev
        (n_energies,) float64 energy of each bin, keV (``EkeVs``).
    npx
        Half side length: the side is 2 npx + 1 pixels.
    lattice_parameters
        (a, b, c, alpha, beta, gamma) in nm and degrees.
    space_group
        International space group number.
    program_name
        ``EMheader/EBSDmaster/ProgramName`` (e.g. 'EMEBSDmaster.f90'), or None.
    path
        The file.
    sample_tilt_deg
        Monte Carlo sample tilt ``MCCLNameList/sig`` in degrees, or None.
    crystal
        CrystalData as a dict accepted by :class:`EMEBSDWriter` (``crystal=``).
    """

    north: np.ndarray
    south: np.ndarray
    energies_kev: np.ndarray
    npx: int
    lattice_parameters: tuple
    space_group: int
    program_name: str | None
    path: str
    sample_tilt_deg: float | None = None
    crystal: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _open(path):
    """Open an HDF5 file for reading; corrupt or truncated files become EBSDInputError naming the path."""
    from ebsd_keras.checks import check_input_file

    p = check_input_file(path, None, "file")
    if p.stat().st_size == 0:
        raise EBSDInputError("empty file (0 bytes), not HDF5", path)
    try:
        f = h5py.File(p, "r", rdcc_nbytes=_CACHE_BYTES)
    except OSError as exc:
        raise EBSDInputError(f"cannot be read as HDF5 (truncated or corrupt file?): {exc}", path) from None
    try:
        yield f
    finally:
        f.close()


def _read(dset, sel, path, name: str) -> np.ndarray:
    """Read ``dset[sel]``; an HDF5 read error (truncated file, broken chunk) becomes EBSDInputError."""
    try:
        return dset[sel]
    except OSError as exc:
        raise EBSDInputError(f"cannot read (truncated or corrupt file?): {exc}", path, name) from None


def _dataset(f: h5py.File, name: str, path) -> h5py.Dataset:
    """The dataset ``name``; raise naming it when it is missing or a group."""
    try:
        obj = f.get(name)
    except (OSError, KeyError, ValueError) as exc:  # a broken object header
        raise EBSDInputError(f"cannot be read (truncated or corrupt file?): {exc}", path, name) from None
    if obj is None:
        raise EBSDInputError("missing dataset", path, name)
    if not isinstance(obj, h5py.Dataset):
        raise EBSDInputError("expected a dataset, found a group", path, name)
    return obj


def _decode(value):
    """EMsoft stores strings as 1-element byte arrays, padded with blanks or NULs."""
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = value.decode("latin-1")
        return text.rstrip("\x00 ").strip()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _plain(value):
    """1-element arrays to scalars, bytes to str, other arrays to lists (JSON-friendly)."""
    if isinstance(value, np.ndarray):
        if value.size == 1:
            return _decode(value.reshape(-1)[0])
        return [_plain(v) for v in value.tolist()] if value.dtype.kind in "OS" else value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return _decode(value)


def _group_dict(f: h5py.File, name: str, path) -> dict:
    """Datasets of group ``name`` (not recursive) as plain Python values; {} when the group is absent."""
    group = f.get(name)
    if not isinstance(group, h5py.Group):
        return {}
    out = {}
    for key, obj in group.items():
        if isinstance(obj, h5py.Dataset):
            out[key.strip()] = _plain(_read(obj, (), path, f"{name}/{key}"))
    return out


def _to_json(obj, what: str) -> str:
    try:
        return json.dumps(jsonable(obj), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable: {exc}") from None


def _pattern_kind(dtype: np.dtype, path) -> str:
    """'uint8' (kept as is), 'int' or 'float' (rescaled per file); anything else cannot be interpreted."""
    if dtype == np.uint8:
        return "uint8"
    if dtype.kind == "u" or (dtype.kind == "i" and dtype.itemsize >= 2):
        return "int"
    if dtype.kind == "f":
        return "float"
    hint = " (int8 is ambiguous: probably uint8 stored as signed, with wrapped values)" if dtype == np.int8 else ""
    raise EBSDInputError(
        f"pattern dtype {dtype} cannot be interpreted as intensities{hint}; expected uint8, an integer type or float",
        path,
        PATTERNS,
    )


def _slices(n: int, chunk_size: int):
    for start in range(0, n, chunk_size):
        yield start, min(start + chunk_size, n)


# ----------------------------------------------------------------------------------------------------------------
# Pattern centre
# ----------------------------------------------------------------------------------------------------------------


def bruker_pc_to_emsoft(pc, shape, px_size_um: float, binning: int = 1, version: int = 5) -> tuple[float, float, float]:
    """Bruker (PCx, PCy, PCz) to EMsoft (xpc, ypc, L).

    xpc = (1/2 - PCx) W b,  ypc = (1/2 - PCy) H b,  L = PCz H b delta,  and xpc -> -xpc for EMsoft 4.

    Parameters
    ----------
    pc
        Bruker PC: fractions of the pattern width (PCx), height (PCy, from the top) and height (PCz).
    shape
        Pattern (H, W) in (binned) pixels.
    px_size_um
        Unbinned detector pixel size delta, um.
    binning
        Detector binning b.
    version
        EMsoft convention: 5 (default) or 4.

    Returns
    -------
    tuple
        xpc, ypc in unbinned pixels from the detector centre; L in um.
    """
    pcx, pcy, pcz = (float(v) for v in pc)
    h, w = (int(s) for s in shape)
    xpc = (0.5 - pcx) * w * binning
    if version < 5:
        xpc = -xpc
    return xpc, (0.5 - pcy) * h * binning, pcz * h * binning * float(px_size_um)


def emsoft_pc_to_bruker(xpc, ypc, L, shape, px_size_um: float, binning: int = 1, version: int = 5):
    """EMsoft (xpc px, ypc px, L um) to Bruker (PCx, PCy, PCz); the inverse of :func:`bruker_pc_to_emsoft`."""
    h, w = (int(s) for s in shape)
    xpc = float(xpc)
    if version < 5:
        xpc = -xpc
    return 0.5 - xpc / (w * binning), 0.5 - float(ypc) / (h * binning), float(L) / (h * binning * float(px_size_um))


def _detector_from_nml(nml: dict, shape, version: int) -> dict | None:
    needed = ("xpc", "ypc", "L", "delta")
    if not all(isinstance(nml.get(k), (int, float)) for k in needed) or float(nml["delta"]) <= 0:
        return None
    binning = int(nml.get("binning", 1) or 1)
    pc = emsoft_pc_to_bruker(nml["xpc"], nml["ypc"], nml["L"], shape, nml["delta"], binning, version)
    det = {
        "pc": list(pc),
        "shape": list(shape),
        "px_size_um": float(nml["delta"]),
        "binning": binning,
        "emsoft_version": version,
    }
    if isinstance(nml.get("thetac"), (int, float)):
        det["tilt_deg"] = float(nml["thetac"])
    return det


# ----------------------------------------------------------------------------------------------------------------
# Reading pattern files
# ----------------------------------------------------------------------------------------------------------------


def _emsoft_version(f: h5py.File) -> int:
    """4 for EMsoft 4.x files (xpc sign flipped), else 5."""
    try:
        version = str(_plain(f[f"{HEADER}/Version"][()]))
    except (KeyError, OSError):
        return 5
    return 4 if version.startswith("4") else 5


def _check_shape_against_nml(shape, nml: dict, path) -> None:
    """Catch transposed or mislabelled data: (H, W) must be (numsy, numsx), possibly divided by binning."""
    sx, sy = nml.get("numsx"), nml.get("numsy")
    if not isinstance(sx, int) or not isinstance(sy, int):
        return
    b = nml.get("binning", 1)
    b = b if isinstance(b, int) and b > 0 else 1
    if tuple(shape) not in {(sy, sx), (sy // b, sx // b)}:
        raise EBSDInputError(
            f"pattern size {shape[0]}x{shape[1]} (rows x cols) does not match numsy x numsx = {sy}x{sx} "
            f"(binning {b}) in {NML}",
            path,
            PATTERNS,
        )


def _scan(f: h5py.File, path) -> tuple[EMEBSDInfo, np.ndarray | None]:
    """Validate the structure of an open pattern file; return its info and the per-pattern voltages (or None)."""
    pats = _dataset(f, PATTERNS, path)
    if pats.ndim != 3:
        raise EBSDInputError(f"expected (N, H, W) patterns, got shape {pats.shape}", path, PATTERNS)
    n, h, w = (int(s) for s in pats.shape)
    if n == 0 or h == 0 or w == 0:
        raise EBSDInputError(f"empty pattern dataset (shape {pats.shape})", path, PATTERNS)
    _pattern_kind(pats.dtype, path)

    eul = _dataset(f, EULER, path)
    if eul.ndim != 2 or eul.shape[1] != 3 or eul.shape[0] == 0:
        raise EBSDInputError(f"expected (N, 3) Euler angles, got shape {eul.shape}", path, EULER)
    if eul.dtype.kind not in "fiu":
        raise EBSDInputError(f"Euler angles must be numbers, got dtype {eul.dtype}", path, EULER)
    m = int(eul.shape[0])

    nml = _group_dict(f, NML, path)
    _check_shape_against_nml((h, w), nml, path)
    if NUMANGLES in f:
        numangles = _plain(_read(_dataset(f, NUMANGLES, path), (), path, NUMANGLES))
        if not isinstance(numangles, int) or numangles != m:
            raise EBSDInputError(f"numangles = {numangles} but EulerAngles has {m} rows", path, NUMANGLES)

    volts = None
    if VOLTAGE in f:
        vds = _dataset(f, VOLTAGE, path)
        if vds.shape != (n,):
            raise EBSDInputError(f"expected ({n},) voltages (one per pattern), got shape {vds.shape}", path, VOLTAGE)
        volts = check_voltage_kv(_read(vds, (), path, VOLTAGE), path, VOLTAGE)
    _check_orientation_count(n, m, volts, path)

    convention = str(nml.get("eulerconvention", "tsl") or "tsl").strip().lower()
    if convention not in ("tsl", "hkl"):
        raise EBSDInputError(
            f"unknown eulerconvention {convention!r} (expected 'tsl' or 'hkl')", path, f"{NML}/eulerconvention"
        )
    energymax = nml.get("energymax")
    per_file = float(energymax) if volts is None and isinstance(energymax, (int, float)) else None
    bitdepth = nml.get("bitdepth")

    metadata, detector = {}, None
    own = f.get(OWN_GROUP)
    if isinstance(own, h5py.Group):
        metadata = _json_attr(own, "metadata", path) or {}
        detector = _json_attr(own, "detector", path)
    if detector is None:
        detector = _detector_from_nml(nml, (h, w), _emsoft_version(f))

    info = EMEBSDInfo(
        path=str(path),
        n_patterns=n,
        pattern_shape=(h, w),
        dtype=pats.dtype.name,
        bitdepth=None if bitdepth is None else str(bitdepth),
        has_voltage=volts is not None,
        voltage_kv=per_file,
        nml=nml,
        metadata=metadata,
        euler_convention=convention,
        n_orientations=m,
        detector=detector,
    )
    return info, volts


def _json_attr(group: h5py.Group, name: str, path):
    if name not in group.attrs:
        return None
    raw = _plain(group.attrs[name])
    try:
        return json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise EBSDInputError(f"attribute is not valid JSON: {exc}", path, f"{OWN_GROUP}/{name}") from None


def _check_orientation_count(n: int, m: int, volts, path) -> None:
    """N Euler rows for N patterns, or the authors' layout: N / m voltage blocks over one list of m orientations."""
    if m == n:
        return
    if volts is not None and m < n and n % m == 0:
        blocks = volts.reshape(n // m, m)
        if np.all(blocks.max(axis=1) - blocks.min(axis=1) <= 1e-6 * np.abs(blocks).max(axis=1)):
            return
        raise EBSDInputError(
            f"{m} orientations for {n} patterns, but the voltages are not constant in blocks of {m} "
            "(expected consecutive voltage blocks over one orientation list)",
            path,
            VOLTAGE,
        )
    raise EBSDInputError(f"{m} Euler angle rows for {n} patterns", path, EULER)


def read_emebsd_info(path) -> EMEBSDInfo:
    """Validate an EMsoft pattern file and describe it, without reading the patterns.

    Parameters
    ----------
    path
        EMsoft EMEBSD-layout HDF5 file.

    Returns
    -------
    EMEBSDInfo

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    EBSDInputError
        Naming the file and the field: not HDF5 or truncated, missing datasets, no patterns, an uninterpretable
        pattern dtype, counts that disagree (patterns, Euler rows, numangles, voltages), voltages outside
        :data:`ebsd_keras.checks.VOLTAGE_RANGE_KV`, unknown ``eulerconvention``.
    """
    with _open(path) as f:
        info, _ = _scan(f, path)
    return info


def pattern_intensity_range(path, chunk_size: int = 4096) -> tuple[float, float]:
    """Minimum and maximum intensity over all patterns of a file, streaming ``chunk_size`` patterns at a time.

    Returns
    -------
    tuple of float
        (lo, hi) in the stored units.

    Raises
    ------
    EBSDInputError
        On NaN or infinite intensities (field ``EMData/EBSD/EBSDPatterns``), or an uninterpretable file.
    """
    chunk_size = _check_chunk_size(chunk_size)
    with _open(path) as f:
        pats = _dataset(f, PATTERNS, path)
        if pats.ndim != 3 or pats.shape[0] == 0:
            raise EBSDInputError(f"expected (N, H, W) patterns with N > 0, got shape {pats.shape}", path, PATTERNS)
        _pattern_kind(pats.dtype, path)
        return _intensity_range(pats, path, chunk_size)


def _intensity_range(pats: h5py.Dataset, path, chunk_size: int) -> tuple[float, float]:
    lo, hi = np.inf, -np.inf
    for start, stop in _slices(pats.shape[0], chunk_size):
        block = _read(pats, np.s_[start:stop], path, PATTERNS)
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            bad = int(np.flatnonzero(~np.isfinite(block).reshape(len(block), -1).all(axis=1))[0]) + start
            raise EBSDInputError(f"non-finite intensities (NaN or Inf), first in pattern {bad}", path, PATTERNS)
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    return lo, hi


def _check_chunk_size(chunk_size) -> int:
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return int(chunk_size)


def _euler_radians(euler: np.ndarray, path, degrees: str, convention: str) -> np.ndarray:
    """Validated (M, 3) radians in the TSL convention; degrees only converted when asked for."""
    euler = check_finite(euler, path, EULER, what="Euler angles")
    try:
        euler = check_euler_radians(euler, path, EULER)
    except EBSDInputError:
        if degrees != "convert":
            raise
        logger.warning(
            "%s: %s holds angles up to %.4g: read as DEGREES and converted to radians (degrees='convert')",
            path,
            EULER,
            float(np.abs(euler).max()),
        )
        euler = check_euler_radians(np.deg2rad(euler), path, EULER)
    else:
        if degrees == "convert":
            logger.warning("%s: degrees='convert' given, but all Euler angles are within 2*pi: read as radians", path)
    euler = np.array(euler, dtype=np.float64)
    if convention == "hkl":
        # EMsoft added 90 deg to phi1 for the 'hkl' convention; undo it to get the TSL orientation.
        euler[:, 0] = np.mod(euler[:, 0] - 0.5 * np.pi, 2 * np.pi)
    return euler


def iter_emebsd(path, chunk_size: int = 4096, voltage_kv=None, degrees: str = "refuse") -> Iterator[PatternChunk]:
    """Stream an EMsoft pattern file as uint8 pattern chunks with orientations and voltages.

    The file is validated and, for non-uint8 patterns, its intensity range is computed *before* this returns, so
    bad input raises here rather than half-way through a conversion. The patterns are never read all at once:
    each chunk reads ``chunk_size`` rows (two passes over the file for int/float patterns).
    The Euler angles and voltages (a few numbers per pattern) are read whole.

    Parameters
    ----------
    path
        EMsoft EMEBSD-layout HDF5 file.
    chunk_size
        Patterns per chunk.
    voltage_kv
        Accelerating voltage in kV for all patterns, used when the file has no per-pattern
        ``EMData/EBSD/AcceleratingVoltage`` (which always wins, with a warning if it disagrees); else NML
        ``energymax`` is used.
    degrees
        ``"refuse"`` (default): Euler angles that look like degrees (any |angle| > 2 pi) raise.
        ``"convert"``: such angles are converted from degrees, with a logged warning.

    Yields
    ------
    PatternChunk
        uint8 patterns (rescaled with the file's min/max unless stored as uint8), Euler angles (radians, 'hkl'
        corrected), quaternions and voltages (kV).

    Raises
    ------
    EBSDInputError
        As :func:`read_emebsd_info`, and for degrees, NaN angles or intensities, or no usable voltage.
    """
    if degrees not in ("refuse", "convert"):
        raise ValueError(f"degrees must be 'refuse' or 'convert', got {degrees!r}")
    chunk_size = _check_chunk_size(chunk_size)
    with _open(path) as f:
        info, volts = _scan(f, path)
        euler = _euler_radians(_read(f[EULER], (), path, EULER), path, degrees, info.euler_convention)
        volts = _voltages(info, volts, voltage_kv, path)
        pats = f[PATTERNS]
        lo_hi = None if pats.dtype == np.uint8 else _intensity_range(pats, path, chunk_size)
    if lo_hi is not None:
        logger.info("%s: %s patterns rescaled to uint8 from the file range [%g, %g]", path, info.dtype, *lo_hi)
    quats = euler_to_quaternion(euler)
    return _chunks(path, info, euler, quats, volts, lo_hi, chunk_size)


def _voltages(info: EMEBSDInfo, volts, voltage_kv, path) -> np.ndarray:
    """(N,) kV: per-pattern dataset, else the argument, else NML energymax."""
    n = info.n_patterns
    if volts is not None:
        if voltage_kv is not None and not np.allclose(volts, float(voltage_kv)):
            logger.warning(
                "%s: voltage_kv=%g ignored: the file has per-pattern voltages (%s)", path, float(voltage_kv), VOLTAGE
            )
        return volts
    if voltage_kv is not None:
        v = check_voltage_kv(voltage_kv, path, "voltage_kv")
        if v.ndim != 0:
            raise EBSDInputError(f"expected one voltage for the file, got shape {v.shape}", path, "voltage_kv")
        return np.full(n, float(v))
    if info.voltage_kv is None:
        raise EBSDInputError(
            "no accelerating voltage: the file has neither per-pattern voltages nor energymax; give voltage_kv",
            path,
            f"{NML}/energymax",
        )
    v = check_voltage_kv(info.voltage_kv, path, f"{NML}/energymax")
    return np.full(n, float(v))


def _chunks(path, info, euler, quats, volts, lo_hi, chunk_size) -> Iterator[PatternChunk]:
    m = info.n_orientations
    with _open(path) as f:
        pats = f[PATTERNS]
        for start, stop in _slices(info.n_patterns, chunk_size):
            block = _read(pats, np.s_[start:stop], path, PATTERNS)
            if lo_hi is not None:
                if block.dtype.kind == "f" and not np.isfinite(block).all():  # the file changed since the range pass
                    raise EBSDInputError("non-finite intensities (NaN or Inf)", path, PATTERNS)
                block = rescale_to_uint8(block, *lo_hi)
            idx = np.arange(start, stop) % m
            yield PatternChunk(
                start=start,
                patterns=block,
                euler=euler[idx],
                quaternion=quats[idx],
                voltage_kv=volts[start:stop].astype(np.float64),
            )


# ----------------------------------------------------------------------------------------------------------------
# Master patterns
# ----------------------------------------------------------------------------------------------------------------


def _hemisphere(f: h5py.File, name: str, path) -> np.ndarray:
    ds = _dataset(f, f"{_MASTER}/{name}", path)
    field_name = f"{_MASTER}/{name}"
    if ds.dtype.kind not in "fiu" or ds.ndim not in (3, 4) or ds.shape[-1] != ds.shape[-2]:
        raise EBSDInputError(
            f"expected (numset, n_energies, S, S) or (n_energies, S, S) real values, got {ds.shape} {ds.dtype}",
            path,
            field_name,
        )
    data = _read(ds, (), path, field_name).astype(np.float32)
    if data.ndim == 4:
        # several asymmetric sites are summed (what kikuchipy does); with one site this just drops the axis
        data = data[0] if data.shape[0] == 1 else data.sum(axis=0, dtype=np.float32)
    check_finite(data.reshape(data.shape[0], -1), path, field_name, what="master pattern values")
    return data


def read_master_pattern(path) -> MasterPatternFile:
    """Read an EMsoft EBSD master pattern file (square Lambert hemispheres ``mLPNH`` / ``mLPSH``).

    Parameters
    ----------
    path
        EMEBSDmaster output HDF5 file.

    Returns
    -------
    MasterPatternFile
        float32 hemispheres (n_energies, S, S), energies in keV, crystal data.

    Raises
    ------
    EBSDInputError
        Corrupt file, missing hemispheres or energies, inconsistent shapes, non-finite values.
    """
    with _open(path) as f:
        north = _hemisphere(f, "mLPNH", path)
        south = _hemisphere(f, "mLPSH", path)
        if north.shape != south.shape:
            raise EBSDInputError(f"hemisphere shapes differ: {north.shape} vs {south.shape}", path, f"{_MASTER}/mLPSH")
        ekevs = f"{_MASTER}/EkeVs"
        energies = np.atleast_1d(_read(_dataset(f, ekevs, path), (), path, ekevs)).astype(np.float64).reshape(-1)
        if energies.shape[0] != north.shape[0]:
            raise EBSDInputError(
                f"{energies.shape[0]} energies for {north.shape[0]} master-pattern energy bins", path, ekevs
            )
        check_finite(energies, path, ekevs, what="energies")
        side = north.shape[-1]
        npx = _group_dict(f, _MASTER_NML, path).get("npx", (side - 1) // 2)
        if not isinstance(npx, int) or 2 * npx + 1 != side:
            raise EBSDInputError(
                f"npx = {npx} but the master pattern side is {side} (expected 2 npx + 1)", path, f"{_MASTER_NML}/npx"
            )
        crystal = _crystal_from_file(f, path)
        program = _plain(f["EMheader/EBSDmaster/ProgramName"][()]) if "EMheader/EBSDmaster/ProgramName" in f else None
        sig = _group_dict(f, "NMLparameters/MCCLNameList", path).get("sig")
    return MasterPatternFile(
        north=north,
        south=south,
        energies_kev=energies,
        npx=int(npx),
        lattice_parameters=tuple(crystal.get("lattice_parameters", ())),
        space_group=int(crystal.get("space_group", 0)),
        program_name=None if program is None else str(program),
        path=str(path),
        sample_tilt_deg=float(sig) if isinstance(sig, (int, float)) else None,
        crystal=crystal,
    )


def _crystal_from_file(f: h5py.File, path) -> dict:
    cd = _group_dict(f, "CrystalData", path)
    if "LatticeParameters" not in cd or "SpaceGroupNumber" not in cd:
        raise EBSDInputError("missing LatticeParameters or SpaceGroupNumber", path, "CrystalData")
    crystal = {
        "lattice_parameters": tuple(float(v) for v in cd["LatticeParameters"]),
        "space_group": int(cd["SpaceGroupNumber"]),
        "space_group_setting": int(cd.get("SpaceGroupSetting", 1)),
    }
    if "Atomtypes" in cd and "AtomData" in cd:
        types = cd["Atomtypes"]
        crystal["atom_types"] = tuple(int(t) for t in (types if isinstance(types, list) else [types]))
        crystal["atom_data"] = tuple(tuple(float(v) for v in row) for row in np.asarray(cd["AtomData"]).reshape(5, -1))
    return crystal


# ----------------------------------------------------------------------------------------------------------------
# Euler-angle text files (EMEBSD input)
# ----------------------------------------------------------------------------------------------------------------


def read_angle_file(path) -> np.ndarray:
    """Read an EMsoft angle file: line 1 ``eu`` (Bunge Euler, degrees) or ``qu`` (quaternions), line 2 the count,
    then one entry per line (blank- or comma-separated).

    Returns
    -------
    numpy.ndarray
        (N, 4) float64 unit quaternions, q0 >= 0.

    Raises
    ------
    EBSDInputError
        Unknown type line, bad or wrong count, malformed rows, NaN, non-unit quaternions.
    """
    from ebsd_keras.checks import check_input_file

    lines = [ln.strip() for ln in check_input_file(path, None, "angle file").read_text(errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise EBSDInputError("empty angle file", path, "line 1")
    kind = lines[0].split()[0].lower()
    if kind not in ("eu", "qu"):
        raise EBSDInputError(f"first line must be 'eu' or 'qu', got {lines[0][:40]!r}", path, "line 1")
    try:
        count = int(lines[1].split()[0]) if len(lines) > 1 else -1
    except ValueError:
        raise EBSDInputError(
            f"second line must be the number of entries, got {lines[1][:40]!r}", path, "line 2"
        ) from None
    width = 3 if kind == "eu" else 4
    rows = lines[2:]
    if count < 1 or count != len(rows):
        raise EBSDInputError(f"line 2 says {count} entries, the file has {len(rows)}", path, "line 2")
    values = np.empty((count, width))
    for i, row in enumerate(rows):
        parts = row.replace(",", " ").split()
        try:
            if len(parts) != width:
                raise ValueError
            values[i] = [float(p) for p in parts]
        except ValueError:
            raise EBSDInputError(f"expected {width} numbers, got {row[:60]!r}", path, f"line {i + 3}") from None
    check_finite(values, path, f"{kind} angles", what="values")
    if kind == "eu":
        if np.abs(values).max() <= 2 * np.pi and np.abs(values).max() > 0:
            logger.warning("%s: all 'eu' angles are within 2*pi; they are read as degrees, as EMsoft does", path)
        return euler_to_quaternion(values, degrees=True)
    norm = np.linalg.norm(values, axis=1)
    if np.any(np.abs(norm - 1.0) > 1e-3):
        i = int(np.flatnonzero(np.abs(norm - 1.0) > 1e-3)[0])
        raise EBSDInputError(f"quaternion of norm {norm[i]:.6g} is not a unit quaternion", path, f"line {i + 3}")
    return normalize_quaternions(values)


def write_angle_file(path, euler_radians) -> None:
    """Write an EMsoft ``eu`` angle file (Bunge Euler angles in degrees), atomically.

    Parameters
    ----------
    path
        Output text file.
    euler_radians
        (N, 3) Bunge Euler angles in **radians** (converted to degrees in the file, as EMsoft expects).
    """
    euler = check_euler_radians(euler_radians, path, "euler_radians")
    lines = ["eu", str(len(euler))] + [" ".join(f"{v:.8f}" for v in row) for row in np.rad2deg(euler)]
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# Writing pattern files
# ----------------------------------------------------------------------------------------------------------------


def _crystal_system(space_group: int) -> int:
    """EMsoft crystal system number: 1 cubic, 2 tetragonal, 3 orthorhombic, 4 hexagonal, 5 trigonal, 6 monoclinic,
    7 triclinic."""
    for first, system in ((195, 1), (168, 4), (143, 5), (75, 2), (16, 3), (3, 6), (1, 7)):
        if space_group >= first:
            return system
    raise ValueError(f"space group must be 1..230, got {space_group}")


def _normalize_detector(detector: dict | None, pattern_shape) -> dict:
    det = dict(DEFAULT_DETECTOR)
    det.update(detector or {})
    shape = tuple(int(s) for s in det.get("shape", pattern_shape))
    if shape != tuple(pattern_shape):
        raise ValueError(f"detector shape {shape} differs from the pattern shape {tuple(pattern_shape)}")
    pc = tuple(float(v) for v in det["pc"])
    if len(pc) != 3 or not np.all(np.isfinite(pc)) or pc[2] <= 0:
        raise ValueError(f"detector pc must be finite Bruker (PCx, PCy, PCz) with PCz > 0, got {det['pc']}")
    binning = int(det["binning"])
    px = float(det["px_size_um"])
    if binning < 1 or not px > 0:
        raise ValueError(f"detector binning must be >= 1 and px_size_um > 0, got {binning}, {px}")
    det.update(
        pc=list(pc),
        shape=list(shape),
        binning=binning,
        px_size_um=px,
        tilt_deg=float(det["tilt_deg"]),
        sample_tilt_deg=float(det["sample_tilt_deg"]),
    )
    return det


def _put_str(group: h5py.Group, name: str, value: str) -> None:
    # fixed-length 1-element byte arrays, as EMsoft writes and kikuchipy decodes
    group.create_dataset(name, data=np.array([str(value).encode("utf-8")]))


def _put_num(group: h5py.Group, name: str, value, dtype) -> None:
    group.create_dataset(name, data=np.array([value], dtype=dtype))


class _GuardedFile:
    """The binary file HDF5 writes through (h5py's Python file-object driver) that never lets a write error reach
    HDF5: a failed write (full disk, file size limit) is kept and later writes are dropped, so the library closes
    its file cleanly and the writer raises one ``OSError`` afterwards. An error inside HDF5 itself leaves file ids
    that fail again when Python frees them and crash the interpreter at exit."""

    def __init__(self, path):
        self._f = open(path, "w+b", buffering=0)  # noqa: SIM115 - closed by close()
        self.error: OSError | None = None

    def write(self, data) -> int:
        if self.error is None:
            try:
                view = memoryview(data)
                while view.nbytes:  # raw writes may be partial
                    view = view[self._f.write(view) :]
            except OSError as exc:
                self.error = exc
        return len(memoryview(data).cast("B"))

    def read(self, size: int = -1) -> bytes:
        return self._f.read(size)

    def readinto(self, buffer) -> int:
        return self._f.readinto(buffer)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self._f.truncate(size)
            except OSError as exc:
                self.error = exc
        return self._f.tell() if size is None else size

    def flush(self) -> None:
        pass  # unbuffered: every write already reached the kernel (and its error, if any, was kept)

    def close(self) -> None:
        self._f.close()


class EMEBSDWriter:
    """Stream patterns into an EMsoft EMEBSD-layout HDF5 file that kikuchipy (and :func:`iter_emebsd`) can read.

    The file is written under a temporary name beside ``path`` and renamed only when the ``with`` block ends without
    error *and* every row was written; otherwise the temporary file is removed and nothing appears at ``path``.

    Parameters
    ----------
    path
        Output file.
    n_patterns
        Number of patterns N.
    pattern_shape
        (H, W) of one pattern.
    detector
        Bruker-convention detector: ``pc`` (PCx, PCy, PCz), ``shape`` (H, W), ``tilt_deg``, ``sample_tilt_deg``,
        ``px_size_um`` (unbinned pixel size delta) and ``binning``; missing keys from :data:`DEFAULT_DETECTOR`.
        Written as EMsoft v5 xpc, ypc (px), L (um), numsx = W b, numsy = H b (EMsoft's unbinned detector size;
        kikuchipy's reader assumes binning 1 there).
    voltage_kv
        Accelerating voltage for the whole file, kV (NML energymax/energymin). Required unless
        ``per_pattern_voltage``; with it, the default for :meth:`write` calls that give no voltage.
    per_pattern_voltage
        Also write ``EMData/EBSD/AcceleratingVoltage`` (N,) kV; energymax/energymin become its max/min.
    metadata
        JSON-serialisable provenance stored as attribute ``metadata`` of group ``ebsd_keras``.
    xtalname
        Crystal file name written to ``EMData/EBSD/xtalname`` (kikuchipy names the phase after it).
    crystal
        CrystalData: ``lattice_parameters`` (nm, deg), ``space_group``, ``atom_types`` (Z per type),
        ``atom_data`` (5 x n_types: x, y, z, occupation, Debye-Waller nm^2), ``space_group_setting``; default
        :data:`NICKEL_CRYSTAL`. ``MasterPatternFile.crystal`` fits here.
    overwrite
        Whether an existing ``path`` may be replaced (checked on entering the ``with`` block).
    nml_extra
        Further ``EBSDNameList`` entries (str, int or float), e.g. ``{"masterfile": "Ni-master-20kV.h5"}``.
    """

    def __init__(
        self,
        path,
        n_patterns: int,
        pattern_shape,
        detector: dict | None = None,
        voltage_kv: float | None = None,
        per_pattern_voltage: bool = False,
        metadata: dict | None = None,
        xtalname: str = "Ni.xtal",
        crystal: dict | None = None,
        overwrite: bool = True,
        nml_extra: dict | None = None,
    ):
        self.path = Path(path)
        if int(n_patterns) != n_patterns or n_patterns < 1:
            raise ValueError(f"n_patterns must be a positive integer, got {n_patterns!r}")
        self.n_patterns = int(n_patterns)
        self.pattern_shape = tuple(int(s) for s in pattern_shape)
        if len(self.pattern_shape) != 2 or min(self.pattern_shape) < 1:
            raise ValueError(f"pattern_shape must be (H, W) with H, W >= 1, got {pattern_shape!r}")
        self.detector = _normalize_detector(detector, self.pattern_shape)
        self.per_pattern_voltage = bool(per_pattern_voltage)
        if voltage_kv is None and not self.per_pattern_voltage:
            raise ValueError("give voltage_kv (per file) or per_pattern_voltage=True: EMsoft files need energymax")
        self.voltage_kv = None if voltage_kv is None else float(check_voltage_kv(voltage_kv, path, "voltage_kv"))
        self._metadata_json = _to_json(metadata or {}, "metadata")
        self._detector_json = _to_json(self.detector, "detector")
        self.xtalname = str(xtalname)
        self.crystal = dict(NICKEL_CRYSTAL if crystal is None else crystal)
        _crystal_system(int(self.crystal["space_group"]))
        self.overwrite = overwrite
        self.nml_extra = dict(nml_extra or {})
        self._written = np.zeros(self.n_patterns, dtype=bool)
        self._file: h5py.File | None = None
        self._raw: _GuardedFile | None = None
        self._atomic = None

    # -- context management ---------------------------------------------------------------------------------------

    def __enter__(self) -> EMEBSDWriter:
        self._atomic = atomic_path(self.path, overwrite=self.overwrite)
        tmp = self._atomic.__enter__()
        try:
            self._raw = _GuardedFile(tmp)
            self._file = h5py.File(self._raw, "w")
            self._create_layout(self._file)
            self._raise_write_error()
        except BaseException as exc:
            self._close_file()
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._finish()
                # Flush explicitly: a write error (full disk) must fail here, not be swallowed by close() and
                # leave a truncated file under the final name.
                self._flush_or_raise()
                self._close_file()
                self._raise_write_error()
            except BaseException as err:
                self._close_file()
                self._atomic.__exit__(type(err), err, err.__traceback__)
                raise
            self._atomic.__exit__(None, None, None)
        else:
            self._close_file()
            self._atomic.__exit__(exc_type, exc, tb)  # removes the temporary file
        return False

    def _flush_or_raise(self) -> None:
        try:
            self._file.flush()
        except (OSError, RuntimeError) as exc:
            code = errno.ENOSPC if "No space" in str(exc) else errno.EFBIG if "too large" in str(exc) else errno.EIO
            raise OSError(code, f"cannot write the HDF5 file ({os.strerror(code)})", str(self.path)) from None

    def _raise_write_error(self) -> None:
        """One ``OSError`` naming the output for a write that failed (HDF5 itself never saw it)."""
        err = self._raw.error if self._raw is not None else None
        if err is not None:
            code = err.errno if err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else errno.EIO
            raise OSError(code, f"cannot write the HDF5 file ({os.strerror(code)})", str(self.path))

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        if self._raw is not None:
            with contextlib.suppress(Exception):
                self._raw.close()

    # -- layout ---------------------------------------------------------------------------------------------------

    def _chunk_rows(self) -> int:
        h, w = self.pattern_shape
        return max(1, min(self.n_patterns, 256, _MAX_CHUNK_BYTES // (h * w)))

    def _create_layout(self, f: h5py.File) -> None:
        n, (h, w) = self.n_patterns, self.pattern_shape
        ebsd = f.create_group("EMData/EBSD")
        ebsd.attrs["HDF_FileVersion"] = np.array([b"4.1"])
        ebsd.create_dataset(
            "EBSDPatterns",
            shape=(n, h, w),
            dtype=np.uint8,
            chunks=(self._chunk_rows(), h, w),
            compression="gzip",
            compression_opts=4,
        )
        # NaN fill: a row that was never written cannot pass as a valid orientation
        ebsd.create_dataset("EulerAngles", shape=(n, 3), dtype=np.float32, fillvalue=np.nan)
        _put_num(ebsd, "numangles", n, np.int32)
        _put_str(ebsd, "xtalname", self.xtalname)
        if self.per_pattern_voltage:
            ebsd.create_dataset("AcceleratingVoltage", shape=(n,), dtype=np.float32, fillvalue=np.nan)
            ebsd["AcceleratingVoltage"].attrs["units"] = "kV"

        header = f.create_group(HEADER)
        _put_str(header, "ProgramName", "EMEBSD.f90")  # kikuchipy identifies the format by it
        _put_str(header, "Version", f"ebsd_keras {__version__} (EMsoft 5 layout)")
        now = datetime.now(timezone.utc)
        _put_str(header, "Date", now.strftime("%b %d %Y"))
        _put_str(header, "StartTime", now.isoformat(timespec="seconds"))

        self._write_nml(f.create_group(NML))
        self._write_crystal(f.create_group("CrystalData"))

        own = f.create_group(OWN_GROUP)
        own.attrs["metadata"] = self._metadata_json
        own.attrs["detector"] = self._detector_json
        own.attrs["writer"] = f"ebsd_keras {__version__}"

    def _write_nml(self, nml: h5py.Group) -> None:
        det = self.detector
        (h, w), b = self.pattern_shape, det["binning"]
        xpc, ypc, L = bruker_pc_to_emsoft(det["pc"], (h, w), det["px_size_um"], b, version=5)
        volt = self.voltage_kv if self.voltage_kv is not None else np.nan  # per-pattern: set in _finish
        for name, value in (
            ("energymax", volt),
            ("energymin", volt),
            ("delta", det["px_size_um"]),
            ("thetac", det["tilt_deg"]),
            ("xpc", xpc),
            ("ypc", ypc),
            ("L", L),
            ("gammavalue", 1.0),
        ):
            _put_num(nml, name, value, np.float32)
        for name, value in (("numsx", w * b), ("numsy", h * b), ("binning", b)):
            _put_num(nml, name, value, np.int32)
        for name, value in (
            ("bitdepth", "8bit"),
            ("eulerconvention", "tsl"),
            ("scalingmode", "not"),
            ("anglefiletype", "orientations"),
        ):
            _put_str(nml, name, value)
        for name, value in self.nml_extra.items():
            if name in nml:
                del nml[name]
            if isinstance(value, str):
                _put_str(nml, name, value)
            elif isinstance(value, (bool, int, np.integer)):
                _put_num(nml, name, int(value), np.int32)
            else:
                _put_num(nml, name, float(value), np.float64)

    def _write_crystal(self, cd: h5py.Group) -> None:
        c = self.crystal
        atom_types = np.asarray(c.get("atom_types", NICKEL_CRYSTAL["atom_types"]), dtype=np.int32).reshape(-1)
        atom_data = np.asarray(c.get("atom_data", NICKEL_CRYSTAL["atom_data"]), dtype=np.float32).reshape(5, -1)
        if atom_data.shape[1] != atom_types.size:
            raise ValueError(f"crystal atom_data has {atom_data.shape[1]} columns for {atom_types.size} atom types")
        cd.create_dataset("LatticeParameters", data=np.asarray(c["lattice_parameters"], dtype=np.float64))
        _put_num(cd, "SpaceGroupNumber", int(c["space_group"]), np.int32)
        _put_num(cd, "SpaceGroupSetting", int(c.get("space_group_setting", 1)), np.int32)
        _put_num(cd, "CrystalSystem", _crystal_system(int(c["space_group"])), np.int32)
        _put_num(cd, "Natomtypes", atom_types.size, np.int32)
        cd.create_dataset("Atomtypes", data=atom_types)
        cd.create_dataset("AtomData", data=atom_data)
        _put_str(cd, "ProgramName", f"ebsd_keras {__version__}")

    # -- writing --------------------------------------------------------------------------------------------------

    def write(self, start: int, patterns, euler, voltage_kv=None) -> None:
        """Write rows ``start .. start + n - 1``.

        Parameters
        ----------
        start
            First row.
        patterns
            (n, H, W) uint8 (other dtypes are refused rather than cast).
        euler
            (n, 3) Bunge Euler angles, radians.
        voltage_kv
            kV: scalar or (n,). Needed with ``per_pattern_voltage`` unless the writer has a per-file voltage;
            otherwise it must equal the per-file voltage if given.
        """
        if self._file is None:
            raise RuntimeError("EMEBSDWriter.write must be called inside its 'with' block")
        patterns = np.asarray(patterns)
        if patterns.dtype != np.uint8:
            raise EBSDInputError(f"patterns must be uint8, got {patterns.dtype}; rescale first", self.path, PATTERNS)
        if patterns.ndim != 3 or patterns.shape[1:] != self.pattern_shape:
            raise EBSDInputError(
                f"expected (n, {self.pattern_shape[0]}, {self.pattern_shape[1]}) patterns, got {patterns.shape}",
                self.path,
                PATTERNS,
            )
        n = patterns.shape[0]
        if int(start) != start or start < 0 or start + n > self.n_patterns:
            raise EBSDInputError(f"rows {start}..{start + n - 1} outside 0..{self.n_patterns - 1}", self.path, PATTERNS)
        start = int(start)
        euler = check_euler_radians(euler, self.path, EULER)
        if euler.shape[0] != n:
            raise EBSDInputError(f"{euler.shape[0]} Euler angle rows for {n} patterns", self.path, EULER)
        volts = self._row_voltages(voltage_kv, n)
        self._file[PATTERNS][start : start + n] = patterns
        self._file[EULER][start : start + n] = euler.astype(np.float32)
        if volts is not None:
            self._file[VOLTAGE][start : start + n] = volts.astype(np.float32)
        self._written[start : start + n] = True
        self._raise_write_error()  # a full disk stops the work at this batch, not after the last one

    def _row_voltages(self, voltage_kv, n: int) -> np.ndarray | None:
        if voltage_kv is None:
            if self.per_pattern_voltage and self.voltage_kv is None:
                raise EBSDInputError("per_pattern_voltage=True: give voltage_kv to write()", self.path, VOLTAGE)
            return np.full(n, self.voltage_kv) if self.per_pattern_voltage else None
        v = check_voltage_kv(voltage_kv, self.path, VOLTAGE)
        v = np.broadcast_to(v, (n,)) if v.ndim == 0 else v
        if v.shape != (n,):
            raise EBSDInputError(f"expected {n} voltages, got shape {v.shape}", self.path, VOLTAGE)
        if not self.per_pattern_voltage:
            if not np.allclose(v, self.voltage_kv):
                raise EBSDInputError(
                    f"voltages differ from the file's {self.voltage_kv:g} kV; use per_pattern_voltage=True",
                    self.path,
                    VOLTAGE,
                )
            return None
        return v

    def _finish(self) -> None:
        missing = np.flatnonzero(~self._written)
        if missing.size:
            raise EBSDInputError(
                f"{missing.size} of {self.n_patterns} patterns were never written (first: row "
                f"{int(missing[0])}); the file was not kept",
                self.path,
                PATTERNS,
            )
        if self.per_pattern_voltage:
            v = self._file[VOLTAGE][()]
            nml = self._file[NML]
            nml["energymax"][0] = np.float32(v.max())
            nml["energymin"][0] = np.float32(v.min())
        self._file[HEADER].create_dataset(
            "StopTime", data=np.array([datetime.now(timezone.utc).isoformat(timespec="seconds").encode()])
        )


def write_emebsd(path, patterns, euler, voltage_kv=None, detector=None, metadata=None, **kw) -> None:
    """Write patterns held in memory to an EMsoft-layout file in one go (see :class:`EMEBSDWriter`).

    Parameters
    ----------
    path
        Output file.
    patterns
        (N, H, W) uint8.
    euler
        (N, 3) Bunge Euler angles, radians.
    voltage_kv
        kV: a scalar (per-file voltage) or an (N,) array (per-pattern ``AcceleratingVoltage``).
    detector, metadata, **kw
        Passed to :class:`EMEBSDWriter` (``xtalname``, ``crystal``, ``overwrite``, ``nml_extra``).
    """
    patterns = np.asarray(patterns)
    if patterns.ndim != 3:
        raise EBSDInputError(f"expected (N, H, W) patterns, got shape {patterns.shape}", path, PATTERNS)
    per_pattern = voltage_kv is not None and np.ndim(voltage_kv) > 0
    with EMEBSDWriter(
        path,
        patterns.shape[0],
        patterns.shape[1:],
        detector=detector,
        voltage_kv=None if per_pattern else voltage_kv,
        per_pattern_voltage=per_pattern,
        metadata=metadata,
        **kw,
    ) as writer:
        writer.write(0, patterns, euler, voltage_kv=voltage_kv if per_pattern else None)
