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

import json
import logging
import os
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ebsd_keras.errors import EBSDInputError

__all__ = [
    "OUTPUT_SUFFIXES",
    "DEFAULT_MODEL_NAME",
    "GenerationResult",
    "Orientations",
    "VoltageRangeWarning",
    "generate",
    "load_generator",
    "inspect_model_file",
    "trained_voltage_range",
    "shipped_models",
    "default_model_path",
    "read_orientations",
    "unit_quaternions",
]

logger = logging.getLogger(__name__)

#: Output kinds by file suffix.
OUTPUT_SUFFIXES = {".h5": "h5", ".hdf5": "h5", ".npy": "npy", ".npz": "npz", ".png": "png"}
#: The shipped model trained on the embedded EMsoft Ni 20 kV master pattern (first among equal candidates).
DEFAULT_MODEL_NAME = "ni20-physics"
#: Voltage of a single-voltage model whose card does not say otherwise: the embedded EMsoft Ni master pattern's.
SINGLE_VOLTAGE_DEFAULT_KV = 20.0
#: Quaternions within this of unit length are passed on bit for bit (the models normalise them again), so the
#: Keras model and its SavedModel see identical float32 inputs.
UNIT_TOLERANCE = 1e-5
#: More patterns than this cannot go into one PNG grid.
PNG_MAX_PATTERNS = 1024
_MODEL_CARD = "model_card.json"


class VoltageRangeWarning(UserWarning):
    """A requested voltage lies outside the model's trained range (the patterns are extrapolations)."""


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


def _models_dir() -> Path:
    """``saved_models/`` of the source tree (or ``$EBSD_KERAS_MODELS``)."""
    env = os.environ.get("EBSD_KERAS_MODELS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "saved_models"


def inspect_model_file(path) -> dict:
    """Read a ``.keras`` archive's model config without TensorFlow, checking that it is an ebsd_keras CVAEGAN.

    Parameters
    ----------
    path
        A ``.keras`` file.

    Returns
    -------
    dict
        ``model_config`` (the :class:`~ebsd_keras.models.presets.ModelConfig` dict), ``class_name``,
        ``card`` (the folder's ``model_card.json``, or {}).

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    EBSDInputError
        When it is not a Keras archive, or holds some other model (field "model").
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise EBSDInputError(
            f"not a Keras .keras archive with a config.json ({type(exc).__name__}: {exc})", path, "model"
        ) from None
    registered = str(config.get("registered_name") or "")
    if not isinstance(config, dict) or registered != "ebsd_keras>CVAEGAN":
        name = config.get("class_name") if isinstance(config, dict) else type(config).__name__
        raise EBSDInputError(
            f"holds a {name!r} model, not an ebsd_keras CVAEGAN (registered name 'ebsd_keras>CVAEGAN')", path, "model"
        )
    model_config = (config.get("config") or {}).get("config")
    if not isinstance(model_config, dict):
        raise EBSDInputError("the CVAEGAN config has no ModelConfig", path, "config.json/config/config")
    return {"model_config": model_config, "class_name": config.get("class_name"), "card": _read_card(path)}


def _read_card(model_path: Path) -> dict:
    card = Path(model_path).parent / _MODEL_CARD
    if not card.is_file():
        return {}
    try:
        data = json.loads(card.read_text())
    except ValueError as exc:
        raise EBSDInputError(f"not valid JSON: {exc}", card, None) from None
    return data if isinstance(data, dict) else {}


def trained_voltage_range(model_config, card: dict | None = None) -> tuple[float, float]:
    """The voltages (kV) a model was trained for, as (low, high); low == high for a single-voltage model.

    Parameters
    ----------
    model_config
        :class:`~ebsd_keras.models.presets.ModelConfig` or its dict.
    card
        The model card dict; its ``trained_voltage_kv`` ([low, high] or one number) wins when present.

    Returns
    -------
    tuple of float
        From, in order: the card; a physics voltage model's master-pattern knots (it clamps outside them); a CNN
        voltage model's ``voltage_norm_kv`` centre +- scale; 20 kV for single-voltage models (the embedded EMsoft
        Ni master pattern, the package's only single-voltage source).
    """
    cfg = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    recorded = (card or {}).get("trained_voltage_kv")
    if recorded is not None:
        values = [float(v) for v in np.atleast_1d(recorded)]
        return (min(values), max(values))
    if not cfg.get("use_voltage"):
        return (SINGLE_VOLTAGE_DEFAULT_KV, SINGLE_VOLTAGE_DEFAULT_KV)
    if cfg.get("decoder") == "physics":
        knots = [float(k) for k in cfg.get("physics_voltage_knots_kv", (20.0,))]
        return (min(knots), max(knots))
    center, scale = (float(v) for v in cfg.get("voltage_norm_kv", (20.0, 10.0)))
    return (center - scale, center + scale)


def shipped_models() -> list[dict]:
    """The models under ``saved_models/*/model.keras`` (read without TensorFlow).

    Returns
    -------
    list of dict
        ``name``, ``path``, ``use_voltage``, ``voltage_range_kv``, sorted with ``ni20-physics`` first, then
        voltage-aware models, then by name. Folders that do not hold an ebsd_keras model are skipped.
    """
    out = []
    root = _models_dir()
    for path in sorted(root.glob("*/model.keras")) if root.is_dir() else []:
        try:
            info = inspect_model_file(path)
        except EBSDInputError as exc:
            logger.debug("skipping %s: %s", path, exc)
            continue
        cfg = info["model_config"]
        out.append(
            {
                "name": path.parent.name,
                "path": path,
                "use_voltage": bool(cfg.get("use_voltage")),
                "voltage_range_kv": trained_voltage_range(cfg, info["card"]),
            }
        )
    return sorted(out, key=lambda m: (m["name"] != DEFAULT_MODEL_NAME, not m["use_voltage"], m["name"]))


def default_model_path(voltage_kv=None) -> Path:
    """The shipped model to use when none is given: the one made for the requested voltages.

    Among the shipped models whose trained voltage range covers every requested voltage, the narrowest range wins:
    a model trained on exactly these voltages (``ni20-physics``: EMsoft dynamical 20 kV patterns) is more faithful
    than a wider one (``ni-voltage-physics``: kinematical 10-30 kV). When none covers them all, the model with the
    widest range is returned (generation then warns about the voltages outside it).

    Parameters
    ----------
    voltage_kv
        Requested voltages, kV (scalar or array); None means 20 kV, the default of :func:`generate`.

    Raises
    ------
    FileNotFoundError
        When no shipped model is found (e.g. an installed wheel without the source tree's ``saved_models/``; set
        ``$EBSD_KERAS_MODELS`` or pass a model path).
    """
    models = shipped_models()
    if not models:
        raise FileNotFoundError(
            f"{_models_dir()}: no shipped model (saved_models/*/model.keras); "
            "pass a model path or set EBSD_KERAS_MODELS"
        )
    v = np.atleast_1d(np.asarray(SINGLE_VOLTAGE_DEFAULT_KV if voltage_kv is None else voltage_kv, dtype=np.float64))
    lo, hi = float(v.min()), float(v.max())

    def width(m):
        a, b = m["voltage_range_kv"]
        return float(b) - float(a)

    covering = [m for m in models if m["voltage_range_kv"][0] - 1e-6 <= lo and hi <= m["voltage_range_kv"][1] + 1e-6]
    if covering:
        return Path(min(covering, key=width)["path"])  # min() keeps shipped_models' order among ties
    return Path(max(models, key=width)["path"])


def load_generator(model=None):
    """A loaded ``CVAEGAN`` and its description, from a path (safe mode on), a model, or None (shipped default).

    Returns
    -------
    model, info
        ``info``: ``path`` (or None), ``voltage_range_kv``, ``card``.

    Raises
    ------
    FileNotFoundError, EBSDInputError
        See :func:`inspect_model_file`; also when Keras cannot load the archive.
    """
    if model is not None and not isinstance(model, (str, os.PathLike)):
        if not hasattr(model, "generate") or not hasattr(model, "model_config"):
            raise EBSDInputError(f"{type(model).__name__} is not an ebsd_keras CVAEGAN", None, "model")
        return model, {"path": None, "card": {}, "voltage_range_kv": trained_voltage_range(model.model_config)}
    path = default_model_path() if model is None else Path(model)
    info = inspect_model_file(path)  # refuses foreign files before Keras deserialises anything
    from ebsd_keras.evaluation.report import load_model

    loaded = load_model(path)  # keras.saving.load_model, safe_mode on
    return loaded, {
        "path": str(path),
        "card": info["card"],
        "voltage_range_kv": trained_voltage_range(loaded.model_config, info["card"]),
    }


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
    path = Path(angles)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
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
# Outputs
# ----------------------------------------------------------------------------------------------------------------


def _output_kind(output) -> str:
    suffix = Path(output).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise EBSDInputError(
            f"unknown output suffix {suffix or '(none)'!r}; use one of {', '.join(sorted(OUTPUT_SUFFIXES))}",
            output,
            "output",
        )
    return OUTPUT_SUFFIXES[suffix]


def _detector(model_config) -> dict:
    """Bruker-convention detector of the model's patterns (the physics decoder's own; the dataset default else)."""
    from ebsd_keras.simulations.geometry import DetectorGeometry

    cfg = model_config
    if cfg.decoder == "physics":
        pc, tilt, sample_tilt = cfg.physics_detector_pc, cfg.physics_detector_tilt_deg, cfg.physics_sample_tilt_deg
    else:
        g = DetectorGeometry()
        pc, tilt, sample_tilt = g.pc, g.tilt_deg, g.sample_tilt_deg
    return {
        "pc": [float(x) for x in pc],
        "shape": [int(s) for s in cfg.image_shape],
        "tilt_deg": float(tilt),
        "sample_tilt_deg": float(sample_tilt),
    }


def _preprocessing(model_config):
    cfg = model_config
    if cfg.decoder == "physics" and cfg.physics_contrast == "clahe":
        from ebsd_keras.data.preprocess import CLAHEConfig

        return CLAHEConfig(cfg.physics_clahe_clip_limit, tuple(cfg.physics_clahe_tiles)).to_dict()
    return "as learned by the model"


def to_uint8(patterns) -> np.ndarray:
    """[0, 1] floats to uint8 grey levels (rounded), as the datasets store patterns."""
    return np.rint(np.clip(np.asarray(patterns, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


class _Sink:
    """Receives generated batches in order; writes atomically (subclasses) or keeps them in memory."""

    def __init__(self, n: int, shape, keep: bool):
        self.patterns = np.empty((n, *shape), dtype=np.float32) if keep else None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return False

    def write(self, start: int, patterns, euler, voltage_kv) -> None:
        if self.patterns is not None:
            self.patterns[start : start + len(patterns)] = patterns


class _H5Sink(_Sink):
    def __init__(self, path, n, shape, keep, voltages, metadata, detector, overwrite):
        super().__init__(n, shape, keep)
        from ebsd_keras.io.emsoft import EMEBSDWriter

        per_pattern = not np.allclose(voltages, voltages[0])
        self.per_pattern = per_pattern
        self.writer = EMEBSDWriter(
            path,
            n,
            shape,
            detector=detector,
            voltage_kv=None if per_pattern else float(voltages[0]),
            per_pattern_voltage=per_pattern,
            metadata=metadata,
            overwrite=overwrite,
        )

    def __enter__(self):
        self.writer.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        return self.writer.__exit__(exc_type, exc, tb)

    def write(self, start, patterns, euler, voltage_kv):
        super().write(start, patterns, euler, voltage_kv)
        self.writer.write(start, to_uint8(patterns), euler, voltage_kv=voltage_kv if self.per_pattern else None)


class _NpySink(_Sink):
    """float32 (M, H, W) written through a memory map into a temporary file, renamed when complete."""

    def __init__(self, path, n, shape, keep, overwrite):
        super().__init__(n, shape, keep)
        self.path, self.n, self.shape, self.overwrite = Path(path), n, tuple(shape), overwrite

    def __enter__(self):
        from ebsd_keras._atomic import atomic_path

        self._atomic = atomic_path(self.path, overwrite=self.overwrite)
        tmp = self._atomic.__enter__()
        try:
            self.array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(self.n, *self.shape))
        except BaseException as exc:
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.array.flush()
        del self.array  # closes the map before the rename (or the removal)
        return self._atomic.__exit__(exc_type, exc, tb)

    def write(self, start, patterns, euler, voltage_kv):
        super().write(start, patterns, euler, voltage_kv)
        self.array[start : start + len(patterns)] = patterns


def _save_npz(path, result, overwrite):
    from ebsd_keras._atomic import atomic_path

    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            patterns=result.patterns,
            euler=result.euler.astype(np.float32),
            quaternion=result.quaternion,
            voltage_kv=result.voltage_kv.astype(np.float32),
            orientation_index=result.orientation_index,
            sample_index=result.sample_index,
        )


def _save_png(path, result, samples: int, overwrite: bool):
    """One row per orientation when sampling (K columns), else rows of up to 8 patterns; titled by Euler (deg)."""
    from ebsd_keras.evaluation.figures import save_pattern_grid

    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (use --overwrite to replace it)")
    p = result.patterns
    deg = np.rad2deg(result.euler)
    label = [f"({e[0]:.0f}, {e[1]:.0f}, {e[2]:.0f}) {v:g} kV" for e, v in zip(deg, result.voltage_kv, strict=True)]
    if samples > 1:  # row labels carry the row number: the same orientation may be requested twice
        rows = {f"{i}: {label[i * samples]}": p[i * samples : (i + 1) * samples] for i in range(len(p) // samples)}
        titles = [f"sample {k}" for k in range(samples)]
    else:
        cols = min(8, len(p))
        pad = -len(p) % cols
        padded = np.concatenate([p, np.ones((pad, *p.shape[1:]), np.float32)]) if pad else p
        rows = {
            f"{r * cols}-{min((r + 1) * cols, len(p)) - 1}": padded[r * cols : (r + 1) * cols]
            for r in range(len(padded) // cols)
        }
        titles = label if len(p) <= cols else None
    save_pattern_grid(path, rows, titles=titles)


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


def generate(
    model=None,
    *,
    euler=None,
    quaternion=None,
    angles=None,
    voltage_kv=None,
    degrees: bool = False,
    samples: int | None = None,
    seed: int = 0,
    latent=None,
    batch_size: int = 256,
    strict: bool = False,
    output=None,
    overwrite: bool = True,
    keep_patterns: bool | None = None,
    progress: bool | None = None,
) -> GenerationResult:
    """Generate patterns for orientations (and voltages) with a trained model.

    Parameters
    ----------
    model
        A ``CVAEGAN``, a ``.keras`` path (loaded with Keras' safe mode), or None for the shipped default
        (:func:`default_model_path`: the narrowest-range shipped model that covers the requested voltages, so
        ``ni20-physics`` at 20 kV and ``ni-voltage-physics`` at other voltages).
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
        File to write (``.h5``/``.hdf5``, ``.npy``, ``.npz``, ``.png``), atomically; None to only return patterns.
    overwrite
        Replace an existing ``output``.
    keep_patterns
        Also return the patterns when writing ``output`` (default: only without ``output``, or for ``.npz`` / PNG).
    progress
        Progress bar on stderr (default: for 2,048 patterns or more).

    Returns
    -------
    GenerationResult

    Raises
    ------
    EBSDInputError
        Bad orientations (NaN, degrees given as radians, wrong counts), voltages outside 1-60 kV (or outside the
        trained range with ``strict``), a model file that is not an ebsd_keras model, a bad ``output`` suffix,
        bad ``samples`` / ``batch_size``. Nothing is written then.
    FileExistsError
        ``output`` exists and ``overwrite`` is False.
    """
    kind = _output_kind(output) if output is not None else None
    if output is not None and Path(output).exists() and not overwrite:
        raise FileExistsError(f"{output}: already exists (use --overwrite to replace it)")
    if samples is not None and (isinstance(samples, bool) or int(samples) != samples or samples < 1):
        raise EBSDInputError(f"samples must be a positive integer, got {samples!r}", None, "samples")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise EBSDInputError(f"batch size must be a positive integer, got {batch_size!r}", None, "batch_size")
    if samples is not None and latent is not None:
        raise EBSDInputError("give samples or latent vectors, not both", None, "latent")
    orientations = read_orientations(euler=euler, quaternion=quaternion, angles=angles, degrees=degrees)
    requested = _requested_voltages(voltage_kv, orientations)
    if isinstance(model, (str, os.PathLike)):
        inspect_model_file(model)  # a foreign file is refused before TensorFlow starts
    elif model is None:
        model = default_model_path(requested)
    model, minfo = load_generator(model)
    cfg = model.model_config
    volts = _voltages(requested, len(orientations), minfo["voltage_range_kv"], bool(cfg.use_voltage), strict)

    k = 1 if samples is None else int(samples)
    n = len(orientations)
    m = n * k
    if kind == "png" and m > PNG_MAX_PATTERNS:
        raise EBSDInputError(
            f"{m} patterns are too many for one PNG grid (at most {PNG_MAX_PATTERNS}); write .h5 or .npy",
            output,
            "output",
        )
    rows = np.repeat(np.arange(n), k)
    q = orientations.quaternion[rows]
    v32 = volts[rows].astype(np.float32)
    euler_rows = orientations.euler[rows]
    z = None
    if samples is not None:
        z = np.random.default_rng(seed).standard_normal((m, int(cfg.latent_dim))).astype(np.float32)
    elif latent is not None:
        z = _latent(latent, n, int(cfg.latent_dim))
    result = GenerationResult(
        None,
        q,
        euler_rows,
        volts[rows],
        rows.astype(np.int64),
        np.tile(np.arange(k), n).astype(np.int64),
        None if output is None else Path(output),
        {
            "model": minfo["path"],
            "model_name": cfg.name,
            "voltage_range_kv": list(minfo["voltage_range_kv"]),
            "path": (
                "prior samples z ~ N(0, I)"
                if samples is not None
                else ("given latent vectors" if latent is not None else "deterministic (z = 0)")
            ),
            "samples_per_orientation": k,
            "seed": None if samples is None else int(seed),
            "orientation_source": orientations.source,
        },
    )
    keep = output is None or kind in ("png", "npz") or bool(keep_patterns)
    shape = tuple(int(s) for s in cfg.image_shape)
    metadata = {
        "source": {"kind": "generated", **result.info},
        "preprocessing": _preprocessing(cfg),
        "detector": _detector(cfg),
    }
    if kind == "h5":
        sink = _H5Sink(output, m, shape, keep, result.voltage_kv, metadata, _detector(cfg), overwrite)
    elif kind == "npy":
        sink = _NpySink(output, m, shape, keep, overwrite)
    else:
        sink = _Sink(m, shape, keep)
    fn = _generator_fn(model)
    t0 = time.perf_counter()
    with sink, _progress(m, progress, "generating") as bar:
        for start in range(0, m, int(batch_size)):
            stop = min(start + int(batch_size), m)
            batch = fn(q[start:stop], v32[start:stop], None if z is None else z[start:stop])
            sink.write(start, batch, euler_rows[start:stop], result.voltage_kv[start:stop])
            bar.update(stop - start)
    result.info["generation_seconds"] = time.perf_counter() - t0
    result.patterns = sink.patterns
    if kind == "npz":
        _save_npz(output, result, overwrite)
    elif kind == "png":
        _save_png(output, result, k, overwrite)
    if not keep:
        result.patterns = None
    return result
