"""Generate EBSD patterns with a trained model: orientations (and voltages) in, patterns out.

The Python side of ``ebsd-keras generate``::

    import ebsd_keras

    result = ebsd_keras.generate(euler=[[2.094, 0.785, 1.047]], voltage_kv=20.0)   # the shipped Ni model
    result.patterns            # (1, 60, 60) float32 in [0, 1]
    ebsd_keras.generate(angles="my_angles.txt", output="generated.h5")               # EMsoft-layout HDF5

Inputs are Bunge Euler angles (radians unless ``degrees=True``), quaternions (q0, q1, q2, q3), or the angles of an
EMsoft angle file (``eu`` degrees / ``qu``) or EMEBSD HDF5 file (its voltages too). Each orientation gives one
pattern on the deterministic path (z = 0, the prior mean; the default) or ``samples`` prior samples z ~ N(0, I),
drawn from ``numpy.random.default_rng(seed)`` so that the same request gives the same patterns at any batch size.

Outputs, chosen by the suffix of ``output``: ``.h5`` / ``.hdf5`` (EMsoft EMEBSD layout: uint8 patterns, Euler
angles in radians, voltages; opens with ``kikuchipy.load`` and :func:`ebsd_keras.io.emsoft.iter_emebsd`), ``.npy``
(float32 (M, H, W) in [0, 1]), ``.npz`` (``patterns``, ``euler``, ``quaternion``, ``voltage_kv``) or ``.png`` (a
grid). Every file is written atomically: a failed or interrupted request leaves nothing behind.

Voltages: each model has a trained voltage range (:func:`trained_voltage_range`): the knots of a physics voltage
model's master pattern, the voltage of a single-voltage model (20 kV for the shipped Ni model), or what the model
card (``model_card.json`` beside the model) records. Requests outside it warn, or raise with ``strict=True``.
A single-voltage model ignores the voltage input: its patterns are (and are recorded as) that voltage's.

Only numpy is imported with this module; TensorFlow and Keras are imported when a model is loaded.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.serving.models import (
    SINGLE_VOLTAGE_DEFAULT_KV,
    default_model_path,
    describe_model,
    inspect_model_file,
    load_generator,
)

__all__ = [
    "OUTPUT_SUFFIXES",
    "WRITERS",
    "GenerationRequest",
    "GenerationResult",
    "Orientations",
    "PatternWriter",
    "VoltageRangeWarning",
    "generate",
    "read_orientations",
    "unit_quaternions",
    "to_uint8",
]

logger = logging.getLogger(__name__)

#: Quaternions within this of unit length are passed on bit for bit (the models normalise them again), so the
#: Keras model and its SavedModel see identical float32 inputs.
UNIT_TOLERANCE = 1e-5
#: More patterns than this cannot go into one PNG grid.
PNG_MAX_PATTERNS = 1024
#: Pixels per model call at most (256 patterns of 60 x 60 fit; 6 of 480 x 640).
MAX_BATCH_PIXELS = 2_000_000


class VoltageRangeWarning(UserWarning):
    """A requested voltage lies outside the model's trained range (the patterns are extrapolations)."""


# ----------------------------------------------------------------------------------------------------------------
# Orientations
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Orientations:
    """Validated orientations of a request.

    Attributes
    ----------
    quaternion
        (N, 4) float32, unit length, as given to the model.
    euler
        (N, 3) float64 Bunge Euler angles, radians (as given, or from the quaternions).
    voltage_kv
        (N,) float64 kV from the source file, or None.
    source
        What they came from ("euler", "quaternion", or the file path).
    """

    quaternion: np.ndarray
    euler: np.ndarray
    voltage_kv: np.ndarray | None = None
    source: str = ""

    def __len__(self) -> int:
        return int(len(self.quaternion))


def unit_quaternions(quaternion, path=None, field: str | None = "quaternion") -> np.ndarray:
    """(N, 4) float32 unit quaternions: those already within 1e-5 of unit length are kept bit for bit, others are
    normalised (the SavedModel signatures apply the same rule in the graph).

    Raises
    ------
    EBSDInputError
        For a wrong shape, NaN / Inf or zero-length quaternions.
    """
    from ebsd_keras.checks import check_finite

    q = np.asarray(quaternion, dtype=np.float32)
    if q.ndim == 1 and q.size == 4:
        q = q[None]
    if q.ndim != 2 or q.shape[1] != 4 or len(q) == 0:
        raise EBSDInputError(f"expected (N, 4) quaternions with N >= 1, got shape {np.shape(quaternion)}", path, field)
    check_finite(q, path, field, what="quaternion components")
    norm = np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)
    if np.any(norm < 1e-12):
        raise EBSDInputError(f"zero-length quaternion at entry {int(np.flatnonzero(norm < 1e-12)[0])}", path, field)
    fix = np.abs(norm - 1.0) > UNIT_TOLERANCE
    if fix.any():
        q = np.where(fix, q.astype(np.float64) / norm, q).astype(np.float32)
    return q


def _euler_array(euler, degrees: bool, path, field) -> np.ndarray:
    from ebsd_keras.checks import check_finite
    from ebsd_keras.orientation import check_euler_radians

    e = np.asarray(euler, dtype=np.float64)
    if e.ndim == 1 and e.size % 3 == 0 and e.size > 0:
        e = e.reshape(-1, 3)
    if e.ndim != 2 or e.shape[1] != 3 or len(e) == 0:
        raise EBSDInputError(
            f"expected Euler angles in triples (phi1, Phi, phi2), got {np.size(euler)} values, shape {np.shape(euler)}",
            path,
            field,
        )
    check_finite(e, path, field, what="Euler angles")
    if not degrees and np.abs(e).max() > 2 * np.pi + 1e-4:
        # generate's own flag in the hint (the shared check names convert's option)
        raise EBSDInputError(
            f"Euler angles up to {np.abs(e).max():.4g} exceed 2*pi: these look like degrees, but radians are "
            "expected; pass --degrees (Python: degrees=True) if they are degrees",
            path,
            field,
        )
    return check_euler_radians(np.deg2rad(e) if degrees else e, path, field)


def _read_h5_orientations(path: Path) -> Orientations:
    from ebsd_keras.io.emsoft import iter_emebsd

    parts = {"euler": [], "quaternion": [], "voltage_kv": []}
    for chunk in iter_emebsd(path):  # validated reader: degrees refused, 'hkl' corrected, voltages per pattern
        parts["euler"].append(chunk.euler)
        parts["quaternion"].append(chunk.quaternion)
        parts["voltage_kv"].append(chunk.voltage_kv)
    q = np.concatenate(parts["quaternion"])
    return Orientations(
        unit_quaternions(q, path, "EMData/EBSD/EulerAngles"),
        np.concatenate(parts["euler"]),
        np.concatenate(parts["voltage_kv"]),
        str(path),
    )


def read_orientations(euler=None, quaternion=None, angles=None, degrees: bool = False) -> Orientations:
    """Validate exactly one orientation source.

    Parameters
    ----------
    euler
        (N, 3) Bunge Euler angles (or a flat list of triples), radians unless ``degrees``.
    quaternion
        (N, 4) quaternions (q0, q1, q2, q3), normalised if needed.
    angles
        An EMsoft angle file (``eu`` in degrees, or ``qu``) or an EMEBSD-layout HDF5 file (``.h5``/``.hdf5``;
        its per-pattern or per-file voltages come along).
    degrees
        ``euler`` is in degrees.

    Raises
    ------
    EBSDInputError
        None or several sources, NaN / Inf, angles over 2 pi given as radians ("looks like degrees"), wrong counts.
    FileNotFoundError
        A missing ``angles`` file.
    """
    from ebsd_keras.orientation import euler_to_quaternion, quaternion_to_euler

    given = [n for n, v in (("euler", euler), ("quaternion", quaternion), ("angles", angles)) if v is not None]
    if len(given) != 1:
        raise EBSDInputError(
            f"give exactly one of euler, quaternion or angles (got {', '.join(given) or 'none'})", None, "orientations"
        )
    if euler is not None:
        e = _euler_array(euler, degrees, None, "euler")
        return Orientations(unit_quaternions(euler_to_quaternion(e), None, "euler"), e, None, "euler")
    if quaternion is not None:
        q = unit_quaternions(quaternion, None, "quaternion")
        return Orientations(q, quaternion_to_euler(q.astype(np.float64)), None, "quaternion")
    from ebsd_keras.checks import check_input_file

    path = check_input_file(angles, "--angles", "angle file")  # a directory says so
    if path.suffix.lower() in (".h5", ".hdf5"):
        return _read_h5_orientations(path)
    from ebsd_keras.io.emsoft import read_angle_file

    q = read_angle_file(path)
    return Orientations(unit_quaternions(q, path, "angles"), quaternion_to_euler(q), None, str(path))


def _requested_voltages(voltage_kv, orientations: Orientations):
    """(N,) float64 kV asked for (argument, else the source file's), validated (count, finite, 1-60 kV) before any
    model is loaded; None when neither gives one."""
    from ebsd_keras.checks import check_voltage_kv

    n = len(orientations)
    if voltage_kv is None:
        if orientations.voltage_kv is None:
            return None
        return check_voltage_kv(orientations.voltage_kv, orientations.source, "voltages")
    v = np.atleast_1d(np.asarray(voltage_kv, dtype=np.float64)).reshape(-1)
    if v.size not in (1, n):
        raise EBSDInputError(
            f"{v.size} voltages for {n} orientations: give one, or one per orientation", None, "voltage_kv"
        )
    return check_voltage_kv(np.broadcast_to(v, (n,)).copy(), None, "voltage_kv")


def _voltages(requested, n: int, vrange, use_voltage: bool, strict: bool) -> np.ndarray:
    """(N,) float64 kV of the patterns, checked against the trained range (warn, or raise with ``strict``)."""
    field = "voltage_kv"
    if requested is None:
        lo, hi = vrange
        nominal = SINGLE_VOLTAGE_DEFAULT_KV if lo <= SINGLE_VOLTAGE_DEFAULT_KV <= hi else 0.5 * (lo + hi)
        requested = np.full(n, nominal)
    v = requested
    lo, hi = vrange
    outside = (v < lo - 1e-6) | (v > hi + 1e-6)
    if outside.any():
        rng = f"{lo:g} kV" if lo == hi else f"{lo:g}-{hi:g} kV"
        bad = np.unique(v[outside])
        what = ", ".join(f"{x:g}" for x in bad[:5]) + (" ..." if len(bad) > 5 else "")
        consequence = (
            f"this single-voltage model ignores the voltage: the patterns are {lo:g} kV patterns "
            "and are recorded as such"
            if not use_voltage
            else "the patterns are extrapolations"
        )
        message = f"{int(outside.sum())} voltage(s) ({what} kV) outside the model's trained range {rng}: {consequence}"
        if strict:
            raise EBSDInputError(message + " (refused: strict)", None, field)
        warnings.warn(message, VoltageRangeWarning, stacklevel=3)
    if not use_voltage:
        v = np.full(n, vrange[0])  # what the patterns really are
    return v


# ----------------------------------------------------------------------------------------------------------------
# Outputs: one writer per format
# ----------------------------------------------------------------------------------------------------------------


def to_uint8(patterns) -> np.ndarray:
    """[0, 1] floats to uint8 grey levels (rounded), as the datasets store patterns."""
    from ebsd_keras.data.preprocess import rescale_to_uint8

    return rescale_to_uint8(np.clip(np.asarray(patterns, dtype=np.float32), 0.0, 1.0), lo=0.0, hi=1.0)


@dataclass(frozen=True)
class OutputPlan:
    """What a writer needs to know before the first batch.

    Attributes
    ----------
    path
        The output file.
    n, shape
        Number of patterns and (H, W).
    voltage_kv
        (n,) kV of every pattern.
    samples
        Prior samples per orientation (1 on the deterministic path): PNG rows group them.
    metadata
        Provenance recorded in the file (HDF5: the ``ebsd_keras`` group).
    detector
        The patterns' :class:`~ebsd_keras.simulations.geometry.DetectorGeometry`.
    overwrite
        Replace an existing file.
    """

    path: Path
    n: int
    shape: tuple
    voltage_kv: np.ndarray
    samples: int
    metadata: dict
    detector: object
    overwrite: bool


class PatternWriter:
    """Receives generated batches in order and writes the output file atomically.

    Subclasses stream (``write``) or write everything at the end (``finish``, from the kept patterns);
    ``needs_patterns`` says whether the patterns must be kept in memory for that.
    """

    needs_patterns = False

    def __init__(self, plan: OutputPlan):
        self.plan = plan

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return False

    def write(self, start: int, patterns, euler, voltage_kv) -> None:
        """Stream one batch (rows ``start:start + len(patterns)``)."""

    def finish(self, result: GenerationResult) -> None:
        """Write what needs every pattern (called after the last batch, inside the context)."""


class H5Writer(PatternWriter):
    """EMsoft EMEBSD layout: uint8 patterns, Euler angles (radians), voltages; streamed."""

    def __init__(self, plan: OutputPlan):
        super().__init__(plan)
        from ebsd_keras.io.emsoft import EMEBSDWriter

        volts = plan.voltage_kv
        self.per_pattern = not np.allclose(volts, volts[0])
        self.writer = EMEBSDWriter(
            plan.path,
            plan.n,
            plan.shape,
            detector=_detector_dict(plan.detector),
            voltage_kv=None if self.per_pattern else float(volts[0]),
            per_pattern_voltage=self.per_pattern,
            metadata=plan.metadata,
            overwrite=plan.overwrite,
        )

    def __enter__(self):
        self.writer.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        return self.writer.__exit__(exc_type, exc, tb)

    def write(self, start, patterns, euler, voltage_kv):
        self.writer.write(start, to_uint8(patterns), euler, voltage_kv=voltage_kv if self.per_pattern else None)


class NpyWriter(PatternWriter):
    """float32 (M, H, W) written block by block into a temporary file (:func:`ebsd_keras._atomic.atomic_npy`),
    renamed when complete. No memory map: on a full disk a map dies with SIGBUS, plain writes raise ENOSPC."""

    def __enter__(self):
        from ebsd_keras._atomic import atomic_npy

        self._atomic = atomic_npy(self.plan.path, (self.plan.n, *self.plan.shape), np.float32, self.plan.overwrite)
        self.array = self._atomic.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        return self._atomic.__exit__(exc_type, exc, tb)

    def write(self, start, patterns, euler, voltage_kv):
        self.array.write(start, patterns)


class NpzWriter(PatternWriter):
    """``patterns``, ``euler``, ``quaternion``, ``voltage_kv``, ``orientation_index``, ``sample_index``."""

    needs_patterns = True

    def finish(self, result):
        from ebsd_keras._atomic import atomic_path

        with atomic_path(self.plan.path, overwrite=self.plan.overwrite) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                patterns=result.patterns,
                euler=result.euler.astype(np.float32),
                quaternion=result.quaternion,
                voltage_kv=result.voltage_kv.astype(np.float32),
                orientation_index=result.orientation_index,
                sample_index=result.sample_index,
            )


def euler_label(euler_rad, voltage_kv=None) -> str:
    """A pattern's label: Bunge Euler angles in degrees (with the unit) and, if given, the voltage."""
    deg = np.rad2deg(np.asarray(euler_rad, dtype=np.float64))
    text = f"({deg[0]:.0f}°, {deg[1]:.0f}°, {deg[2]:.0f}°)"
    return text if voltage_kv is None else f"{text} {float(voltage_kv):g} kV"


class PngWriter(PatternWriter):
    """A grid: one row per orientation when sampling (K columns), else rows of up to 8 patterns; each pattern
    titled by its Euler angles in degrees (the unit written out) and voltage."""

    needs_patterns = True
    columns = 8

    def finish(self, result):
        from ebsd_keras.serving.pattern_grid import save_pattern_grid

        p, k = result.patterns, self.plan.samples
        label = [euler_label(e, v) for e, v in zip(result.euler, result.voltage_kv, strict=True)]
        if k > 1:  # row labels carry the row number: the same orientation may be requested twice
            rows = {f"{i + 1}: {label[i * k]}": p[i * k : (i + 1) * k] for i in range(len(p) // k)}
            titles = [f"sample {j + 1}" for j in range(k)]
        else:
            cols = min(self.columns, len(p))
            pad = -len(p) % cols
            padded = np.concatenate([p, np.ones((pad, *p.shape[1:]), np.float32)]) if pad else p
            rows = {
                _row_label(r * cols, min((r + 1) * cols, len(p))): padded[r * cols : (r + 1) * cols]
                for r in range(len(padded) // cols)
            }
            titles = label if len(p) <= cols else None
        save_pattern_grid(self.plan.path, rows, titles=titles)


def _row_label(start: int, stop: int) -> str:
    """1-based pattern numbers of a grid row: "pattern 3" or "patterns 1-8"."""
    return f"pattern {start + 1}" if stop - start == 1 else f"patterns {start + 1}-{stop}"


#: The writer of each output suffix (lower case).
WRITERS: dict[str, type[PatternWriter]] = {
    ".h5": H5Writer,
    ".hdf5": H5Writer,
    ".npy": NpyWriter,
    ".npz": NpzWriter,
    ".png": PngWriter,
}
#: Output kinds by file suffix.
OUTPUT_SUFFIXES = {suffix: cls.__name__.removesuffix("Writer").lower() for suffix, cls in WRITERS.items()}


def writer_for(output) -> type[PatternWriter]:
    """The writer class of an output file's suffix; an unknown suffix raises :class:`EBSDInputError`."""
    suffix = Path(output).suffix.lower()
    if suffix not in WRITERS:
        raise EBSDInputError(
            f"unknown output suffix {suffix or '(none)'!r}; use one of {', '.join(sorted(WRITERS))}",
            output,
            "output",
        )
    return WRITERS[suffix]


def model_detector(model_config):
    """The :class:`~ebsd_keras.simulations.geometry.DetectorGeometry` of a model's patterns (the physics and field
    decoders' own; the dataset default else)."""
    from ebsd_keras.serving.detector import model_geometry

    return model_geometry(model_config)


def describe_detector(geometry, model_config) -> str:
    """One line: the detector and contrast patterns are generated for."""
    cfg = model_config
    pc = ", ".join(f"{p:.4g}" for p in geometry.pc)
    contrast = {"clahe": "CLAHE", "rescale": "raw (min-max rescaled)"}.get(cfg.physics_contrast, cfg.physics_contrast)
    if cfg.physics_contrast == "clahe":
        contrast += (
            f" (clip {cfg.physics_clahe_clip_limit:g}, {cfg.physics_clahe_tiles[0]}x{cfg.physics_clahe_tiles[1]} tiles)"
        )
    return (
        f"detector {geometry.shape[0]}x{geometry.shape[1]}, PC ({pc}), tilt {geometry.tilt_deg:g} deg, "
        f"sample tilt {geometry.sample_tilt_deg:g} deg, {contrast}"
    )


def _detector_dict(geometry) -> dict:
    """The Bruker-convention detector dict the EMEBSD writer records."""
    d = geometry.to_dict()
    return {"pc": d["pc"], "shape": d["shape"], "tilt_deg": d["tilt_deg"], "sample_tilt_deg": d["sample_tilt_deg"]}


def _preprocessing(model_config):
    cfg = model_config
    if cfg.decoder in ("physics", "field") and cfg.physics_contrast == "clahe":
        from ebsd_keras.data.preprocess import CLAHEConfig

        return CLAHEConfig(cfg.physics_clahe_clip_limit, tuple(cfg.physics_clahe_tiles)).to_dict()
    if cfg.decoder in ("physics", "field") and cfg.physics_contrast == "rescale":
        return "raw: per-pattern min-max rescale of the projected intensities, no CLAHE"
    return "as learned by the model"


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class GenerationResult:
    """Generated patterns and what they were generated for (rows orientation-major: orientation i's samples are
    consecutive).

    Attributes
    ----------
    patterns
        (M, H, W) float32 in [0, 1]; None when written to ``output`` without ``keep_patterns``.
    quaternion
        (M, 4) float32 orientations as given to the model.
    euler
        (M, 3) float64 Bunge Euler angles, radians.
    voltage_kv
        (M,) float64 kV of the patterns.
    orientation_index, sample_index
        (M,) int64: which input orientation and which prior sample (0 on the deterministic path) each row is.
    output
        The written file, or None.
    info
        Model path, trained voltage range, path (deterministic / samples), seed, timing.
    """

    patterns: np.ndarray | None
    quaternion: np.ndarray
    euler: np.ndarray
    voltage_kv: np.ndarray
    orientation_index: np.ndarray
    sample_index: np.ndarray
    output: Path | None = None
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.quaternion))

    def to_uint8(self) -> np.ndarray:
        """The patterns as uint8 grey levels (M, H, W)."""
        if self.patterns is None:
            raise ValueError("the patterns were written to a file and not kept (keep_patterns=False)")
        return to_uint8(self.patterns)


def _generator_fn(model):
    """A compiled ``fn(q (B, 4), v (B,), z (B, D) or None) -> (B, H, W)`` on the model's decoder (no XLA: runs
    everywhere, and the SavedModel export traces the same ops). Kept on the model, so later requests skip tracing."""
    cached = getattr(model, "_ebsd_keras_generator_fn", None)
    if cached is None:
        cached = _make_generator_fn(model)
        object.__setattr__(model, "_ebsd_keras_generator_fn", cached)
    return cached


def _make_generator_fn(model):
    import tensorflow as tf

    use_voltage = bool(model.model_config.use_voltage)

    def attrs(q, v):
        return {"quaternion": q, "voltage_kv": v} if use_voltage else {"quaternion": q}

    @tf.function(reduce_retracing=True)
    def deterministic(q, v):
        return model.generate(attrs(q, v))[..., 0]

    @tf.function(reduce_retracing=True)
    def with_latent(q, v, z):
        return model.generate(attrs(q, v), z=z)[..., 0]

    def fn(q, v, z=None):
        out = deterministic(q, v) if z is None else with_latent(q, v, z)
        return np.asarray(out, dtype=np.float32)

    return fn


def _latent(latent, n: int, dim: int) -> np.ndarray:
    from ebsd_keras.checks import check_finite

    z = np.asarray(latent, dtype=np.float32)
    if z.shape != (n, dim):
        raise EBSDInputError(f"expected ({n}, {dim}) latent vectors, got shape {z.shape}", None, "latent")
    check_finite(z, None, "latent", what="latent values")
    return z


def _progress(total: int, enabled, desc: str):
    from tqdm.auto import tqdm

    disable = (total < 2048) if enabled is None else not enabled
    return tqdm(total=total, unit="pattern", desc=desc, disable=disable, dynamic_ncols=True, leave=False)


@dataclass(frozen=True, eq=False)
class GenerationRequest:
    """What to generate and where to put it (the keywords of :func:`generate`).

    Attributes
    ----------
    euler, quaternion, angles, degrees
        Exactly one orientation source; see :func:`read_orientations`. Euler angles are radians unless ``degrees``.
    voltage_kv
        kV: one value, or one per orientation. Default: the source file's voltages, else 20 kV (or the middle of
        the model's trained range when 20 kV is outside it).
    samples
        None (default): the deterministic path z = 0, one pattern per orientation. K >= 1: K prior samples
        z ~ N(0, I) per orientation.
    seed
        Seed of the prior samples (``numpy.random.default_rng``; the batch size does not change them).
    latent
        Explicit latent vectors (N, latent_dim), one per orientation, instead of ``samples`` (the SavedModel's
        ``with_latent`` signature).
    batch_size
        Patterns per model call.
    strict
        Refuse voltages outside the model's trained range instead of warning.
    output
        File to write (a suffix of :data:`WRITERS`: ``.h5``/``.hdf5``, ``.npy``, ``.npz``, ``.png``), atomically;
        None to only return patterns.
    overwrite
        Replace an existing ``output``.
    keep_patterns
        Also return the patterns when writing ``output`` (default: only without ``output``, or for ``.npz`` / PNG).
    progress
        Progress bar on stderr (default: for 2,048 patterns or more).
    detector
        Generate for another detector (models that project: physics and field decoders): a
        :class:`~ebsd_keras.serving.detector.DetectorSettings` (shape, binning, pattern centre, tilts, a file's
        detector), a :class:`~ebsd_keras.simulations.geometry.DetectorGeometry` or its dict, a kikuchipy
        ``EBSDDetector`` or a pattern file whose detector kikuchipy reads. None: the model's own detector.
    contrast
        "model" (the model's own; CLAHE tiles scale with the pattern), "clahe" or "raw" (per-pattern min-max
        rescale of the projection, no CLAHE). Ignored when ``detector`` is a DetectorSettings (it has its own).

    Raises
    ------
    EBSDInputError
        Bad ``samples`` / ``batch_size``, both ``samples`` and ``latent``, an unknown output suffix.
    """

    euler: object = None
    quaternion: object = None
    angles: object = None
    voltage_kv: object = None
    degrees: bool = False
    samples: int | None = None
    seed: int = 0
    latent: object = None
    batch_size: int = 256
    strict: bool = False
    output: object = None
    overwrite: bool = True
    keep_patterns: bool | None = None
    progress: bool | None = None
    detector: object = None
    contrast: Literal["model", "clahe", "raw"] = "model"

    def __post_init__(self):
        s = self.samples
        if s is not None and (isinstance(s, bool) or int(s) != s or s < 1):
            raise EBSDInputError(f"samples must be a positive integer, got {s!r}", None, "samples")
        b = self.batch_size
        if isinstance(b, bool) or int(b) != b or b < 1:
            raise EBSDInputError(f"batch size must be a positive integer, got {b!r}", None, "batch_size")
        if s is not None and self.latent is not None:
            raise EBSDInputError("give samples or latent vectors, not both", None, "latent")
        if self.output is not None:
            writer_for(self.output)
        if self.contrast not in ("model", "clahe", "raw"):
            raise EBSDInputError(f"contrast must be model, clahe or raw, got {self.contrast!r}", None, "contrast")

    def detector_settings(self):
        """The :class:`~ebsd_keras.serving.detector.DetectorSettings` of the request."""
        from ebsd_keras.serving.detector import DetectorSettings

        if isinstance(self.detector, DetectorSettings):
            return self.detector
        return DetectorSettings(source=self.detector, contrast=self.contrast)

    @property
    def samples_per_orientation(self) -> int:
        return 1 if self.samples is None else int(self.samples)

    def path_text(self) -> str:
        if self.samples is not None:
            return "prior samples z ~ N(0, I)"
        return "given latent vectors" if self.latent is not None else "deterministic (z = 0)"


def generate(model=None, request: GenerationRequest | None = None, **keywords) -> GenerationResult:
    """Generate patterns for orientations (and voltages) with a trained model.

    ``generate(model, euler=..., voltage_kv=..., output=...)`` and ``generate(model, GenerationRequest(...))`` are
    the same call: the keywords are those of :class:`GenerationRequest`.

    Parameters
    ----------
    model
        A ``CVAEGAN``, a ``.keras`` path or model folder (loaded with Keras' safe mode), or None for the shipped
        defaults, chosen per pattern: each pattern's voltage alone picks its model
        (:func:`~ebsd_keras.serving.models.default_model_path` of that voltage: the narrowest-range shipped model
        covering it, so ``ni20-physics`` at 20 kV and ``ni-voltage-physics`` at other voltages). A pattern never
        depends on the other voltages of the request; ``info["models"]`` lists each model with the voltages it
        served and ``info["model_line"]`` says the same in one line.
    request
        A :class:`GenerationRequest`; or give its fields as keywords.

    Returns
    -------
    GenerationResult
        ``info["model"]`` is the model's identity (name, version, SHA-256 of the file, data kind), never a path;
        ``info["model_line"]`` the one-line description printed by the CLI.

    Raises
    ------
    EBSDInputError
        Bad orientations (NaN, degrees given as radians, wrong counts), voltages outside 1-60 kV (or outside the
        trained range with ``strict``), a model file that is not an ebsd_keras model, a bad ``output`` suffix,
        bad ``samples`` / ``batch_size``. Nothing is written then.
    FileExistsError
        ``output`` exists and ``overwrite`` is False.
    """
    if request is not None and keywords:
        raise TypeError("give a GenerationRequest or keywords, not both")
    req = request if request is not None else GenerationRequest(**keywords)
    output = None if req.output is None else Path(req.output)
    if output is not None:  # a file or directory in the way, an unwritable place: before any work
        from ebsd_keras._atomic import check_writable

        check_writable(output, "file", req.overwrite, "-o/--output")
    orientations = read_orientations(euler=req.euler, quaternion=req.quaternion, angles=req.angles, degrees=req.degrees)
    requested = _requested_voltages(req.voltage_kv, orientations)
    n, k = len(orientations), req.samples_per_orientation
    m = n * k
    writer_cls = None if output is None else writer_for(output)
    if writer_cls is PngWriter and m > PNG_MAX_PATTERNS:
        raise EBSDInputError(
            f"{m} patterns are too many for one PNG grid (at most {PNG_MAX_PATTERNS}); write .h5 or .npy",
            output,
            "output",
        )
    parts = _model_parts(model, requested, n)
    settings = req.detector_settings()
    if not settings.is_default:
        from ebsd_keras.serving.detector import for_detector

        for part in parts:
            part.model = for_detector(part.model, settings, path=part.info.get("path"))
    volts = np.empty(n, dtype=np.float64)
    for part in parts:  # each model checks the voltages it serves against its own trained range
        idx = part.orientations
        sub = None if requested is None else requested[idx]
        cfg_p = part.model.model_config
        volts[idx] = _voltages(sub, len(idx), part.info["voltage_range_kv"], bool(cfg_p.use_voltage), req.strict)
    shapes = {tuple(int(s) for s in p.model.model_config.image_shape) for p in parts}
    if len(shapes) > 1:
        raise EBSDInputError(
            f"the default models for these voltages make patterns of different sizes {sorted(shapes)}; "
            "request one model with --model",
            None,
            "model",
        )
    cfg = parts[0].model.model_config
    rows = np.repeat(np.arange(n), k)
    which = np.empty(n, dtype=np.int64)
    for i, part in enumerate(parts):
        which[part.orientations] = i
    which = which[rows]
    result = GenerationResult(
        None,
        orientations.quaternion[rows],
        orientations.euler[rows],
        volts[rows],
        rows.astype(np.int64),
        np.tile(np.arange(k), n).astype(np.int64),
        output,
        {
            "model": parts[0].info["identity"],
            "model_name": cfg.name,
            "models": [
                {
                    "model": p.info["identity"],
                    "voltages_kv": sorted({float(v) for v in volts[p.orientations]}),
                    "patterns": int(len(p.orientations) * k),
                }
                for p in parts
            ],
            "model_line": _models_line(parts, volts),
            "voltage_range_kv": list(parts[0].info["voltage_range_kv"]),
            "path": req.path_text(),
            "samples_per_orientation": k,
            "seed": None if req.samples is None else int(req.seed),
            "orientation_source": orientations.source,
        },
    )
    logger.info(result.info["model_line"])  # the CLI prints it; the Python API logs it
    if len(parts) > 1 and req.latent is not None and len({int(p.model.model_config.latent_dim) for p in parts}) > 1:
        raise EBSDInputError("the default models for these voltages have different latent sizes", None, "latent")
    z = _latents(req, cfg, n, m)
    keep = writer_cls is None or writer_cls.needs_patterns or bool(req.keep_patterns)
    detector = model_detector(cfg)
    if not settings.is_default:
        result.info["detector"] = {"detector": detector.to_dict(), "contrast": settings.contrast}
        result.info["model_line"] += "; " + describe_detector(detector, cfg)
    metadata = {
        "source": {"kind": "generated", **{k_: v for k_, v in result.info.items() if k_ != "model_line"}},
        "preprocessing": _preprocessing(cfg),
        "detector": _detector_dict(detector),
    }
    shape = tuple(int(s) for s in cfg.image_shape)
    writer = (writer_cls or PatternWriter)(
        OutputPlan(output, m, shape, result.voltage_kv, k, metadata, detector, req.overwrite)
    )
    kept = np.empty((m, *shape), dtype=np.float32) if keep else None
    fns = [_generator_fn(p.model) for p in parts]
    q, v32 = result.quaternion, result.voltage_kv.astype(np.float32)
    # a large detector (480 x 640) holds 85x the pixels of 60 x 60: bound the pixels per model call, not the count
    # (a neural field holds (pixels, hidden units) activations: 8x fewer pixels per call)
    limit = MAX_BATCH_PIXELS // (8 if cfg.decoder == "field" else 1)
    step = max(1, min(int(req.batch_size), limit // (shape[0] * shape[1])))
    t0 = time.perf_counter()
    with writer, _progress(m, req.progress, "generating") as bar:
        for start in range(0, m, step):
            stop = min(start + step, m)
            if len(fns) == 1:
                batch = fns[0](q[start:stop], v32[start:stop], None if z is None else z[start:stop])
            else:  # each pattern from the model of its own voltage
                batch = np.empty((stop - start, *shape), dtype=np.float32)
                for i, fn in enumerate(fns):
                    sel = np.flatnonzero(which[start:stop] == i)
                    if len(sel):
                        at = start + sel
                        batch[sel] = fn(q[at], v32[at], None if z is None else z[at])
            writer.write(start, batch, result.euler[start:stop], result.voltage_kv[start:stop])
            if kept is not None:
                kept[start:stop] = batch
            bar.update(stop - start)
        result.info["generation_seconds"] = time.perf_counter() - t0
        result.patterns = kept
        writer.finish(result)
    if not keep:
        result.patterns = None
    return result


@dataclass
class _ModelPart:
    """One model of a request and the orientations (indices) it generates."""

    model: object
    info: dict
    orientations: np.ndarray


def _model_parts(model, requested, n: int) -> list[_ModelPart]:
    """The model(s) of a request: the given one for every pattern, or (model None) the shipped default of each
    pattern's own voltage (:func:`~ebsd_keras.serving.models.default_model_path` of that voltage alone), so a
    pattern never depends on the other voltages of the request. A foreign file is refused before TensorFlow
    starts."""
    if model is not None:
        if isinstance(model, (str, os.PathLike)):
            inspect_model_file(model)
        loaded, info = load_generator(model)
        return [_ModelPart(loaded, info, np.arange(n))]
    if requested is None:
        loaded, info = load_generator(default_model_path(None))
        return [_ModelPart(loaded, info, np.arange(n))]
    by_path: dict = {}
    for v in np.unique(requested):
        by_path.setdefault(default_model_path(float(v)), []).append(float(v))
    parts = []
    for path, voltages in by_path.items():
        loaded, info = load_generator(path)
        parts.append(_ModelPart(loaded, info, np.flatnonzero(np.isin(requested, voltages))))
    return sorted(parts, key=lambda p: int(p.orientations[0]))


def _models_line(parts, volts) -> str:
    """One line: each model, the voltages it serves in this request, and what data it learned from."""
    if len(parts) == 1:
        return describe_model(parts[0].info)
    pieces = []
    for p in parts:
        served = ", ".join(f"{v:g}" for v in sorted({float(x) for x in volts[p.orientations]}))
        pieces.append(describe_model(p.info) + f" (here: {served} kV)")
    return "; ".join(pieces)


def _latents(req: GenerationRequest, cfg, n: int, m: int):
    """(m, latent_dim) latent vectors, or None for the deterministic path."""
    if req.samples is not None:
        return np.random.default_rng(req.seed).standard_normal((m, int(cfg.latent_dim))).astype(np.float32)
    if req.latent is not None:
        return _latent(req.latent, n, int(cfg.latent_dim))
    return None
