"""EBSD patterns projected from master patterns with kikuchipy (GPL ``emsoft`` extra).

Two master-pattern sources, recorded in every dataset's metadata and never mixed silently:

- ``"emsoft-dynamical"``: an EMsoft EMEBSDmaster file (square Lambert, both hemispheres) at one of its energies. The
  default is the real EMsoft 5 Ni 20 kV master pattern embedded in the kikuchipy wheel (401 x 401 per hemisphere,
  uint8; no network needed).
- ``"kinematical"``: kikuchipy's kinematical simulator with Bragg angles computed at the requested voltage, for
  voltages without a dynamical master pattern: Ni (fcc, a = 3.5236 Angstrom, the hand-picked families
  :data:`NICKEL_REFLECTORS`) by default, or any phase (``phase=``: a CIF file, a shipped material name or an orix
  ``Phase``, see :mod:`ebsd_keras.crystal`) with reflectors chosen from its structure factors.

Every master pattern records its crystal (``phase``: name, space group, point and Laue group, lattice, atoms).

Geometry: Bruker pattern centre (PCx, PCy, PCz) as fractions of the detector width/height, detector tilt and sample
tilt in degrees, pixel size in um (unbinned). The defaults are those of the fidelity evaluation: 60 x 60 pixels,
PC (0.5, 0.5, 0.6), detector tilt 10 deg, sample tilt 70 deg, 50 um pixels, binning 1.

Intensities: each projected pattern is rescaled on its own, linearly from its minimum and maximum to [0, 255], and
rounded to uint8 (:func:`project_patterns`). kikuchipy's ``get_patterns(dtype_out=uint8)`` would *not* rescale when the
master pattern is already uint8 (it only truncates the interpolated values), so patterns are requested as float32
and rescaled here, which gives the same result for uint8 and float32 master patterns.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ebsd_keras.checks import check_finite, check_voltage_kv
from ebsd_keras.errors import EBSDInputError
from ebsd_keras.serialization import portable_path

__all__ = [
    "DEFAULT_DETECTOR",
    "NICKEL_LATTICE_ANGSTROM",
    "NICKEL_REFLECTORS",
    "embedded_master_pattern_path",
    "master_pattern_laue_group",
    "load_master_pattern",
    "kinematical_master_pattern",
    "KINEMATICAL_HALF_SIZE",
    "ebsdsim_master_pattern",
    "master_pattern_source",
    "make_detector",
    "detector_to_dict",
    "rescale_per_pattern",
    "project_patterns",
]

#: Detector used unless told otherwise: Bruker PC fractions, degrees, um (the evaluation's geometry).
DEFAULT_DETECTOR = {
    "shape": (60, 60),
    "pc": (0.5, 0.5, 0.6),
    "tilt_deg": 10.0,
    "sample_tilt_deg": 70.0,
    "px_size_um": 50.0,
    "binning": 1,
}

#: Ni lattice parameter in Angstrom (EMsoft's Ni.xtal, 0.35236 nm).
NICKEL_LATTICE_ANGSTROM = 3.5236

#: Kikuchi band families of the kinematical Ni master pattern (the four strongest fcc families and 222).
NICKEL_REFLECTORS = ((1, 1, 1), (2, 0, 0), (2, 2, 0), (3, 1, 1), (2, 2, 2))

#: Energies of a master-pattern file closer than this (kV) to the requested voltage count as equal.
ENERGY_TOLERANCE_KV = 0.01

_EMBEDDED = "emsoft_ebsd_master_pattern/ni_mc_mp_20kv_uint8_gzip_opts9.h5"
_SOURCE_KEY = "EBSDKeras.source_json"


# ----------------------------------------------------------------------------------------------------------------
# Master patterns
# ----------------------------------------------------------------------------------------------------------------


def embedded_master_pattern_path() -> Path:
    """Path of the EMsoft 5 Ni 20 kV dynamical master pattern shipped inside the kikuchipy wheel."""
    import kikuchipy.data

    return Path(kikuchipy.data.__file__).parent / _EMBEDDED


def _set_source(mp, source: dict) -> None:
    # hyperspy metadata keeps the record with the signal; JSON keeps nested values intact through copies
    mp.metadata.set_item(_SOURCE_KEY, json.dumps(source, sort_keys=True))


def master_pattern_source(master_pattern) -> dict:
    """Provenance of a master pattern made by :func:`load_master_pattern` or :func:`kinematical_master_pattern`.

    Returns
    -------
    dict
        ``kind`` ("emsoft-dynamical", "kinematical" or "ebsdsim-dynamical"), ``file``, ``energy_kv``, ``space_group``,
        ``lattice_parameters_nm``, ``crystal`` (for the EMsoft writer) and source-specific details.

    Raises
    ------
    EBSDInputError
        When the master pattern was not made by this module (its source is unknown).
    """
    raw = master_pattern.metadata.get_item(_SOURCE_KEY, None) if master_pattern is not None else None
    if raw is None:
        raise EBSDInputError(
            "master pattern of unknown source: create it with load_master_pattern() or kinematical_master_pattern()",
            None,
            "master_pattern",
        )
    return json.loads(raw)


def master_pattern_laue_group(mp, path=None) -> str:
    """Laue group of a kikuchipy master pattern's phase (its point group's), e.g. "m-3m" for the Ni file.

    Raises
    ------
    EBSDInputError
        When the master pattern has no point group (``CrystalData/SpaceGroupNumber`` missing or unknown).
    """
    from ebsd_keras.orientation import laue_group

    name = getattr(getattr(getattr(mp, "phase", None), "point_group", None), "name", None)
    if name is None:
        raise EBSDInputError("master pattern without a crystal point group", path, "CrystalData/SpaceGroupNumber")
    return laue_group(name)


def _file_phase_record(phase, lattice_parameters_nm):
    """Phase record of an EMsoft file's crystal, lattice from its CrystalData (kikuchipy keeps EMsoft's nm)."""
    from ebsd_keras.crystal import phase_record

    try:
        rec = phase_record(phase)
    except Exception:  # a file's phase may lack atoms or a space group: the record is then only what is known
        return None
    nm = [float(v) for v in lattice_parameters_nm]
    rec["lattice_parameters_angstrom"] = [round(10 * v, 6) for v in nm[:3]] + nm[3:]
    return rec


def load_master_pattern(path=None, energy_kv: float = 20.0):
    """Load an EMsoft dynamical master pattern (square Lambert, both hemispheres) at one energy.

    Parameters
    ----------
    path
        EMsoft EMEBSDmaster HDF5 file; ``None`` for the Ni 20 kV master pattern embedded in kikuchipy.
    energy_kv
        Accelerating voltage in kV; must be one of the file's energy bins (``EkeVs``) within 0.01 kV.

    Returns
    -------
    kikuchipy.signals.EBSDMasterPattern
        Lambert projection, shape (2, S, S) (upper, lower hemisphere), source recorded (see
        :func:`master_pattern_source`).

    Raises
    ------
    EBSDInputError
        Unreadable or non-master-pattern file, energy not in the file, a crystal without a point group.
    FileNotFoundError
        When ``path`` does not exist.
    """
    import kikuchipy as kp

    from ebsd_keras.io.emsoft import read_master_pattern

    embedded = path is None
    path = embedded_master_pattern_path() if embedded else Path(path)
    energy = float(check_voltage_kv(energy_kv, path, "energy_kv"))
    info = read_master_pattern(path)  # validates the file; raises EBSDInputError naming the field
    energies = np.asarray(info.energies_kev, dtype=np.float64)
    if np.min(np.abs(energies - energy)) > ENERGY_TOLERANCE_KV:
        listed = ", ".join(f"{e:g}" for e in energies)
        hint = " (the embedded master pattern is 20 kV only; use the kinematical source or a master-pattern file)"
        raise EBSDInputError(
            f"{energy:g} kV is not among the master pattern's energies ({listed} kV)" + (hint if embedded else ""),
            path,
            "EMData/EBSDmaster/EkeVs",
        )
    try:
        mp = kp.load(path, projection="lambert", hemisphere="both", energy=energy)
    except (OSError, KeyError, ValueError, IndexError, TypeError) as exc:
        raise EBSDInputError(f"kikuchipy cannot load it as an EMsoft EBSD master pattern: {exc}", path) from None
    laue = master_pattern_laue_group(mp, path)
    if mp.data.ndim != 3 or mp.data.shape[0] != 2:
        raise EBSDInputError(f"expected two hemispheres of one energy, got shape {mp.data.shape}", path)
    _set_source(
        mp,
        {
            "kind": "emsoft-dynamical",
            "file": portable_path(path),
            "embedded": embedded,
            "program": info.program_name,
            "energy_kv": energy,
            "npx": int(info.npx),
            "space_group": int(info.space_group),
            "lattice_parameters_nm": list(info.lattice_parameters),
            "crystal": info.crystal,
            "laue_group": laue,
            "phase": _file_phase_record(mp.phase, info.lattice_parameters),
        },
    )
    return mp


def _nickel_phase():
    from diffpy.structure import Atom, Lattice, Structure
    from orix.crystal_map import Phase

    a = NICKEL_LATTICE_ANGSTROM
    structure = Structure(lattice=Lattice(a, a, a, 90, 90, 90), atoms=[Atom("Ni", [0, 0, 0])])
    return Phase(name="ni", space_group=225, structure=structure)


#: Default half side of kinematical master patterns. Their bands have hard edges, which snap to the master-pattern
#: grid: projected onto 60 x 60 px, 2 * 200 + 1 px master patterns are NCC 0.984 raw / 0.956 CLAHE'd to 2 * 1000 + 1
#: px ones and {200} band widths move by up to 5 % from 2 theta_B; at 1000 the widths are within 0.7 % (13-16 s per
#: voltage on 2 CPU cores).
KINEMATICAL_HALF_SIZE = 1000


def kinematical_master_pattern(
    energy_kv: float,
    half_size: int = KINEMATICAL_HALF_SIZE,
    progress: bool = False,
    phase=None,
    reflectors=None,
):
    """Kinematical master pattern of a phase at one voltage (kikuchipy ``KikuchiPatternSimulator``); default Ni.

    Bands are the reflector families (all symmetry equivalents), intensities linear in the structure factor |F|,
    band half-widths the (relativistic) Bragg angles at ``energy_kv`` (so bands narrow as the voltage rises). For Ni
    (``phase=None``) the families are :data:`NICKEL_REFLECTORS`; for other phases the strongest families by structure
    factor (:func:`ebsd_keras.crystal.select_reflectors`) unless ``reflectors`` lists them.

    Parameters
    ----------
    energy_kv
        Accelerating voltage, kV.
    half_size
        Half side of the master pattern: (2 half_size + 1) pixels per side and hemisphere.
    progress
        Show kikuchipy's progress bars.
    phase
        ``None`` (Ni), a CIF path, a shipped material name ("fe", "ti", "tio2", "al2o3", ...) or an orix ``Phase``.
    reflectors
        (n, 3) hkl families to use instead of the automatic selection (non-Ni phases).

    Returns
    -------
    kikuchipy.signals.EBSDMasterPattern
        Square Lambert projection, both hemispheres, float32, shape (2, S, S), source ``"kinematical"``.
    """
    import kikuchipy as kp
    from diffsims.crystallography import ReciprocalLatticeVector

    from ebsd_keras.crystal import emsoft_crystal, families, load_phase, phase_record, select_reflectors
    from ebsd_keras.io.emsoft import NICKEL_CRYSTAL

    energy = float(check_voltage_kv(energy_kv, None, "energy_kv"))
    if int(half_size) != half_size or half_size < 10:
        raise EBSDInputError(f"half_size must be an integer >= 10, got {half_size!r}", None, "half_size")
    if phase is None:
        crystal_phase = _nickel_phase()
        ref = ReciprocalLatticeVector(crystal_phase, hkl=np.array(NICKEL_REFLECTORS)).symmetrise()
        ref.sanitise_phase()
        ref.calculate_structure_factor()
        ref.calculate_theta(energy * 1e3)  # volts
        crystal, hkl_families = NICKEL_CRYSTAL, [list(r) for r in NICKEL_REFLECTORS]
    else:
        crystal_phase = load_phase(phase)
        ref = select_reflectors(crystal_phase, energy, hkl=reflectors)
        crystal, hkl_families = emsoft_crystal(crystal_phase), families(ref)
    record = phase_record(crystal_phase)
    simulator = kp.simulations.KikuchiPatternSimulator(ref)
    # the simulator always draws a tqdm bar on stderr; swallow it unless asked for
    quiet = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
    with quiet:
        stereo = simulator.calculate_master_pattern(half_size=int(half_size), hemisphere="both")
        mp = stereo.as_lambert(show_progressbar=progress)
    _set_source(
        mp,
        {
            "kind": "kinematical",
            "file": None,
            "energy_kv": energy,
            "half_size": int(half_size),
            "reflectors": hkl_families,
            "scaling": "linear",
            "space_group": record["space_group"],
            "lattice_parameters_nm": [v / 10 for v in record["lattice_parameters_angstrom"][:3]]
            + record["lattice_parameters_angstrom"][3:],
            "crystal": crystal,
            "laue_group": record["laue_group"],
            "phase": record,
        },
    )
    return mp


def ebsdsim_master_pattern(energy_kv: float, half_size: int = 60, progress: bool = False, **options):
    """Dynamical Ni master pattern at one voltage from the optional ``ebsdsim`` package (Bloch-wave + Monte Carlo).

    ``ebsdsim`` (``pip install ebsdsim``, MIT) runs on WebGPU: a GPU, or on a machine without one a Vulkan software
    driver (Debian ``mesa-vulkan-drivers``). Ni is built as EMsoft's Ni.xtal (fcc, a = 3.5236 Angstrom, space group
    225), sample tilt 70 deg; the energy-integrated (Monte-Carlo weighted) pattern is used, as EMsoft's EMEBSD does.

    Parameters
    ----------
    energy_kv
        Accelerating voltage, kV.
    half_size
        Lambert half side (``halfw``): (2 half_size + 1)^2 pixels per hemisphere (60 -> 121 x 121, minutes on a CPU).
    progress
        ebsdsim's own progress output.
    **options
        Passed to ``ebsdsim.master_pattern`` (e.g. ``dmin``, ``sigma_deg``).

    Returns
    -------
    kikuchipy.signals.EBSDMasterPattern
        Square Lambert, both hemispheres, float32 (2, S, S), source ``"ebsdsim-dynamical"``.

    Raises
    ------
    EBSDInputError
        ebsdsim is not installed or finds no usable (Vulkan / WebGPU) device.
    """
    import kikuchipy as kp

    from ebsd_keras.io.emsoft import NICKEL_CRYSTAL

    energy = float(check_voltage_kv(energy_kv, None, "energy_kv"))
    kwargs = {"sigma_deg": 70.0, "verbosity": 1 if progress else 0, **options}
    try:  # say so here, before a process is spawned, when the optional package is missing
        import ebsdsim  # noqa: F401
    except ImportError:
        raise EBSDInputError(
            "the ebsdsim source needs the optional 'ebsdsim' package (pip install ebsdsim) and a Vulkan/WebGPU "
            "device (on a CPU-only machine: apt-get install mesa-vulkan-drivers)",
            None,
            "source",
        ) from None
    # ebsdsim runs in a fresh process: the Vulkan software driver loads its own LLVM, and numba (kikuchipy, orix)
    # compiling in the same process afterwards segfaults. A spawned child imports neither.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        outcome = pool.submit(_ebsdsim_in_child, energy, int(half_size), kwargs, bool(progress)).result()
    if isinstance(outcome, str):
        raise EBSDInputError(outcome, None, "source")
    data, version = outcome  # (E, S, H, side, side); index 0 = energy/site integrated
    hemis = data[0, 0]
    if hemis.shape[0] == 1:  # centrosymmetric crystals: ebsdsim stores the north only
        hemis = np.concatenate([hemis, hemis])
    mp = kp.signals.EBSDMasterPattern(
        hemis,
        phase=_nickel_phase(),
        hemisphere="both",
        projection="lambert",
    )
    _set_source(
        mp,
        {
            "kind": "ebsdsim-dynamical",
            "file": None,
            "energy_kv": energy,
            "half_size": int(half_size),
            "program": f"ebsdsim {version}",
            "options": {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool))},
            "space_group": 225,
            "lattice_parameters_nm": [NICKEL_LATTICE_ANGSTROM / 10] * 3 + [90.0] * 3,
            "crystal": NICKEL_CRYSTAL,
        },
    )
    return mp


def _ebsdsim_in_child(energy: float, half_size: int, kwargs: dict, progress: bool):
    """Run ebsdsim (Ni) in a spawned process; returns (data float32, version) or a one-line error message."""
    import tempfile

    # wgpu wants a runtime directory; CI and containers often have none
    if not os.environ.get("XDG_RUNTIME_DIR"):
        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="ebsdsim-xdg-")
    try:
        import ebsdsim
    except ImportError:
        return (
            "the ebsdsim source needs the optional 'ebsdsim' package (pip install ebsdsim) and a Vulkan/WebGPU "
            "device (on a CPU-only machine: apt-get install mesa-vulkan-drivers)"
        )
    a = NICKEL_LATTICE_ANGSTROM
    material = ebsdsim.Material(
        cell=ebsdsim.Cell(a, a, a, 90.0, 90.0, 90.0, space_group=225),
        atoms=[ebsdsim.Atom("Ni", 0.0, 0.0, 0.0)],
        name="Ni",
    )
    quiet = contextlib.nullcontext() if progress else contextlib.redirect_stdout(io.StringIO())
    try:
        with quiet:
            result = ebsdsim.master_pattern(material, voltage_kv=energy, halfw=half_size, **kwargs)
    except Exception as exc:  # wgpu raises its own types when no adapter / device exists
        return (
            f"ebsdsim could not simulate {energy:g} kV ({type(exc).__name__}: {exc}); it needs a Vulkan/WebGPU device "
            "(CPU-only: apt-get install mesa-vulkan-drivers)"
        )
    return np.asarray(result.data, dtype=np.float32), getattr(ebsdsim, "__version__", "?")


# ----------------------------------------------------------------------------------------------------------------
# Detector
# ----------------------------------------------------------------------------------------------------------------


def make_detector(
    shape=(60, 60),
    pc=(0.5, 0.5, 0.6),
    tilt_deg: float = 10.0,
    sample_tilt_deg: float = 70.0,
    px_size_um: float = 50.0,
    binning: int = 1,
):
    """A kikuchipy ``EBSDDetector`` with a Bruker pattern centre.

    Parameters
    ----------
    shape
        Pattern (rows, columns) in (binned) pixels; default 60 x 60.
    pc
        Bruker (PCx, PCy, PCz): PCx, PCy from the left / top as fractions of the width / height; PCz (detector
        distance) as a fraction of the height. Default (0.5, 0.5, 0.6).
    tilt_deg
        Detector tilt about the detector X axis, degrees (default 10).
    sample_tilt_deg
        Sample tilt about RD, degrees (default 70).
    px_size_um
        Unbinned detector pixel size, um (default 50); only used for EMsoft's (xpc, ypc, L) in the files.
    binning
        Detector binning (default 1).

    Returns
    -------
    kikuchipy.detectors.EBSDDetector
    """
    import kikuchipy as kp

    shape = tuple(int(s) for s in np.atleast_1d(shape))
    if len(shape) != 2 or min(shape) < 2:
        raise EBSDInputError(f"detector shape must be (rows, columns) >= 2, got {shape}", None, "detector_shape")
    pc = check_finite(pc, None, "pc", what="pattern-centre values").reshape(-1)
    if pc.shape != (3,) or pc[2] <= 0:
        raise EBSDInputError(
            f"pattern centre must be Bruker (PCx, PCy, PCz) with PCz > 0, got {pc.tolist()}", None, "pc"
        )
    if np.any(np.abs(pc[:2] - 0.5) > 2.0) or pc[2] > 10:
        raise EBSDInputError(
            f"pattern centre {pc.tolist()} is not in Bruker fractions of the detector size", None, "pc"
        )
    angles = check_finite([tilt_deg, sample_tilt_deg], None, "tilt", what="tilt angles")
    if np.any(np.abs(angles) > 90):
        raise EBSDInputError(f"tilts must be degrees within [-90, 90], got {angles.tolist()}", None, "tilt")
    if not px_size_um > 0 or int(binning) != binning or binning < 1:
        raise EBSDInputError(
            f"px_size_um must be > 0 and binning an integer >= 1 (got {px_size_um}, {binning})", None, "detector"
        )
    return kp.detectors.EBSDDetector(
        shape=shape,
        pc=tuple(float(v) for v in pc),
        tilt=float(angles[0]),
        sample_tilt=float(angles[1]),
        px_size=float(px_size_um),
        binning=int(binning),
        convention="bruker",
    )


def detector_to_dict(detector) -> dict:
    """The package's detector dictionary (Bruker PC, degrees, um) of a kikuchipy ``EBSDDetector`` with one PC."""
    pc = np.asarray(detector.pc, dtype=np.float64).reshape(-1, 3)
    if len(pc) != 1:
        raise EBSDInputError(f"expected one pattern centre, the detector has {len(pc)}", None, "detector")
    return {
        "pc": [float(v) for v in pc[0]],
        "shape": [int(s) for s in detector.shape],
        "tilt_deg": float(detector.tilt),
        "sample_tilt_deg": float(detector.sample_tilt),
        "px_size_um": float(detector.px_size),
        "binning": int(detector.binning),
        "convention": "bruker",
    }


# ----------------------------------------------------------------------------------------------------------------
# Projection
# ----------------------------------------------------------------------------------------------------------------


def rescale_per_pattern(patterns: np.ndarray) -> np.ndarray:
    """Rescale each pattern of (N, H, W) linearly from its own [min, max] to [0, 255] and round to uint8.

    A constant pattern becomes all zeros.
    """
    x = np.asarray(patterns, dtype=np.float32)
    lo = x.min(axis=(1, 2), keepdims=True)
    hi = x.max(axis=(1, 2), keepdims=True)
    span = hi - lo
    scale = np.divide(255.0, span, out=np.zeros_like(span), where=span > 0)
    return np.clip(np.rint((x - lo) * scale), 0, 255).astype(np.uint8)


def project_patterns(
    master_pattern,
    quaternions,
    detector,
    energy_kv: float | None = None,
    batch_size: int = 2048,
    progress: bool = True,
    desc: str = "projecting",
) -> Iterator[tuple[int, np.ndarray]]:
    """Project patterns for many orientations, batch by batch (memory stays at one batch).

    Parameters
    ----------
    master_pattern
        kikuchipy ``EBSDMasterPattern`` in the Lambert projection, both hemispheres (from :func:`load_master_pattern`
        or :func:`kinematical_master_pattern`).
    quaternions
        (N, 4) unit quaternions (q0, q1, q2, q3), passive sample -> crystal, EMsoft P = +1 (as orix).
    detector
        kikuchipy ``EBSDDetector`` with one pattern centre (:func:`make_detector`).
    energy_kv
        Voltage in kV; if given it must match the master pattern's recorded energy (nothing is mixed silently).
    batch_size
        Patterns per batch.
    progress
        Show a tqdm progress bar.
    desc
        Progress bar label.

    Yields
    ------
    tuple
        ``(start, patterns)``: index of the batch's first orientation and (n, H, W) uint8 patterns, each rescaled on
        its own to [0, 255] (no CLAHE here).
    """
    from orix.quaternion import Rotation
    from tqdm.auto import tqdm

    q = check_finite(quaternions, None, "quaternions", what="quaternion values")
    if q.ndim != 2 or q.shape[1] != 4:
        raise EBSDInputError(f"expected (N, 4) quaternions, got shape {q.shape}", None, "quaternions")
    if int(batch_size) != batch_size or batch_size < 1:
        raise EBSDInputError(f"batch_size must be a positive integer, got {batch_size!r}", None, "batch_size")
    batch_size = int(batch_size)
    source = master_pattern_source(master_pattern) if _has_source(master_pattern) else None
    if energy_kv is not None and source is not None and source.get("energy_kv") is not None:
        if abs(float(source["energy_kv"]) - float(energy_kv)) > ENERGY_TOLERANCE_KV:
            raise EBSDInputError(
                f"master pattern is for {source['energy_kv']:g} kV, asked to project at {float(energy_kv):g} kV",
                source.get("file"),
                "energy_kv",
            )
    # One dask chunk per core: kikuchipy's projection is numba code that releases the GIL.
    n_threads = max(1, os.cpu_count() or 1)
    with tqdm(total=len(q), unit="pattern", desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(q), batch_size):
            batch = q[start : start + batch_size]
            chunk = max(16, math.ceil(len(batch) / n_threads))
            sim = master_pattern.get_patterns(
                Rotation(batch),
                detector,
                energy=energy_kv,
                dtype_out=np.float32,
                compute=True,
                show_progressbar=False,
                chunk_shape=chunk,
            )
            data = np.asarray(sim.data).reshape((len(batch),) + tuple(detector.shape))
            # The EBSD signal (hyperspy) sits in reference cycles: without a young-generation collection each batch's
            # float32 array lingers until a full collection and memory grows with the dataset (~1 ms per batch).
            del sim
            gc.collect(1)
            bar.update(len(batch))
            yield start, rescale_per_pattern(data)


def _has_source(master_pattern) -> bool:
    return master_pattern.metadata.has_item(_SOURCE_KEY)
