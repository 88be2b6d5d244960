"""Experimental EBSD maps in, through kikuchipy (the ``data`` extra): patterns, detector, map layout and the
preprocessing done to them, recorded as provenance.

Everything kikuchipy reads comes in (``kikuchipy.load``: its own h5ebsd, EDAX / Oxford / Bruker h5ebsd, NORDIF,
EMsoft EMEBSD, Oxford binary, ...) with the usual preprocessing, in this order, each step optional
(:class:`ExperimentalSettings`):

1. **static background removal**: subtract the file's static background (``"file"``; a file without one is
   refused) or the map's mean pattern (``"mean"``), kikuchipy ``remove_static_background``;
2. **dynamic background removal**: subtract a Gaussian-blurred copy of each pattern (standard deviation
   ``dynamic_std`` pixels, default kikuchipy's 1/8 of the pattern width), ``remove_dynamic_background``;
3. **neighbour averaging**: average each pattern with its map neighbours in a ``window`` of ``average`` x
   ``average`` patterns (``average_neighbour_patterns``).

The result, :class:`ExperimentalMap`, holds the patterns as float32 (N, H, W) in [0, 1] (each rescaled by its own
minimum and maximum, as kikuchipy rescales to its dtype range), the map shape and step sizes, the detector
(:class:`~ebsd_keras.simulations.geometry.DetectorGeometry`, the kikuchipy ``EBSDDetector`` too), the beam energy
and ``provenance``: the file name (not a path), its reader and every step with its settings.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from ebsd_keras.errors import EBSDInputError

__all__ = ["ExperimentalSettings", "ExperimentalMap", "read_experimental", "detector_from_kikuchipy"]


@dataclass(frozen=True)
class ExperimentalSettings:
    """Preprocessing of an experimental map (see the module docstring).

    Attributes
    ----------
    static_background
        "file" (the file's static background; refused when it has none), "mean" (the map's mean pattern) or "none".
    dynamic_background
        "gaussian" (subtract a Gaussian blur of each pattern) or "none".
    dynamic_std
        Standard deviation of that blur, pixels (None: kikuchipy's default, 1/8 of the pattern width).
    average
        Neighbour averaging window side in patterns (0 or 1: none; 3: a 3 x 3 window).
    window
        Averaging window kind ("circular", "rectangular" or "gaussian", kikuchipy's ``Window``).
    pc, tilt_deg, sample_tilt_deg
        Override the file's detector (Bruker pattern centre; degrees).
    """

    static_background: Literal["file", "mean", "none"] = "file"
    dynamic_background: Literal["gaussian", "none"] = "gaussian"
    dynamic_std: float | None = None
    average: int = 0
    window: Literal["circular", "rectangular", "gaussian"] = "circular"
    pc: tuple | None = None
    tilt_deg: float | None = None
    sample_tilt_deg: float | None = None

    def __post_init__(self):
        if self.static_background not in ("file", "mean", "none"):
            raise EBSDInputError(
                f"static background must be file, mean or none, got {self.static_background!r}",
                None,
                "static_background",
            )
        if self.dynamic_background not in ("gaussian", "none"):
            raise EBSDInputError(
                f"dynamic background must be gaussian or none, got {self.dynamic_background!r}",
                None,
                "dynamic_background",
            )
        if self.dynamic_std is not None and not float(self.dynamic_std) > 0:
            raise EBSDInputError(f"must be > 0 pixels, got {self.dynamic_std}", None, "dynamic_std")
        a = self.average
        if isinstance(a, bool) or int(a) != a or a < 0 or (a > 1 and a % 2 == 0):
            raise EBSDInputError(
                f"averaging window must be 0, 1 or an odd side (3, 5, ...), got {a!r}", None, "average"
            )
        if self.window not in ("circular", "rectangular", "gaussian"):
            raise EBSDInputError(
                f"window must be circular, rectangular or gaussian, got {self.window!r}", None, "window"
            )


@dataclass
class ExperimentalMap:
    """An experimental map, preprocessed.

    Attributes
    ----------
    patterns
        (N, H, W) float32 in [0, 1], row-major over the map.
    map_shape
        (rows, cols) of the map ((1, N) for a line, (1, 1) for one pattern).
    step
        (dy, dx) map step sizes in the file's units (``step_unit``).
    detector
        :class:`~ebsd_keras.simulations.geometry.DetectorGeometry` (mean pattern centre).
    kikuchipy_detector
        The ``EBSDDetector`` (per-pattern pattern centres where the file has them).
    voltage_kv
        Beam energy from the file, kV (None when the file has none).
    provenance
        File name, reader, preprocessing steps with their settings and seconds.
    """

    patterns: np.ndarray
    map_shape: tuple
    step: tuple
    step_unit: str
    detector: object
    kikuchipy_detector: object
    voltage_kv: float | None
    provenance: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.patterns))


def detector_from_kikuchipy(detector, path=None):
    """The :class:`~ebsd_keras.simulations.geometry.DetectorGeometry` of a kikuchipy ``EBSDDetector``: its pattern
    shape, mean Bruker pattern centre, tilts (degrees).

    Raises
    ------
    EBSDInputError
        A pattern centre with PCz <= 0 (e.g. an h5ebsd file that stores none) or an unusable detector.
    """
    from ebsd_keras.simulations.geometry import DetectorGeometry

    try:
        pc = np.asarray(detector.pc_average, dtype=np.float64).reshape(3)
        shape = tuple(int(s) for s in detector.shape)
        angles = {n: float(getattr(detector, n, 0.0)) for n in ("tilt", "sample_tilt", "azimuthal", "twist")}
    except (AttributeError, TypeError, ValueError) as exc:
        raise EBSDInputError(
            f"not a usable kikuchipy EBSDDetector ({type(exc).__name__}: {exc})", path, "detector"
        ) from None
    try:
        return DetectorGeometry(
            shape=shape,
            pc=tuple(pc),
            tilt_deg=angles["tilt"],
            sample_tilt_deg=angles["sample_tilt"],
            azimuthal_deg=angles["azimuthal"],
            twist_deg=angles["twist"],
        )
    except EBSDInputError as err:
        raise EBSDInputError(
            f"{err.message} (the file's detector has no usable pattern centre: give --pc)",
            path,
            f"detector/{err.field}",
        ) from None


def load_kikuchipy(path, lazy: bool = True):
    """``kikuchipy.load(path)``; a missing kikuchipy or an unreadable file is one :class:`EBSDInputError` line."""
    try:
        import kikuchipy as kp
    except ImportError:
        raise EBSDInputError(
            "reading experimental patterns needs kikuchipy: pip install 'ebsd_keras[data]'", path, "file"
        ) from None
    try:
        signal = kp.load(str(path), lazy=lazy)
    except Exception as exc:  # noqa: BLE001 - kikuchipy raises many types for files it cannot read
        raise EBSDInputError(f"kikuchipy cannot read this file ({type(exc).__name__}: {exc})", path, "file") from None
    if isinstance(signal, list):  # a file with several scans: the first
        signal = signal[0]
    if type(signal).__name__ not in ("EBSD", "LazyEBSD"):
        raise EBSDInputError(f"holds a {type(signal).__name__}, not EBSD patterns", path, "file")
    return signal


def read_experimental(path, settings: ExperimentalSettings | None = None, progress: bool = False) -> ExperimentalMap:
    """Read and preprocess an experimental map through kikuchipy (see the module docstring).

    Parameters
    ----------
    path
        Any pattern file kikuchipy reads.
    settings
        :class:`ExperimentalSettings` (default: the file's static background, Gaussian dynamic background, no
        averaging).
    progress
        kikuchipy's progress bars.

    Raises
    ------
    FileNotFoundError
        No such file.
    EBSDInputError
        kikuchipy cannot read it; "file" static background asked of a file without one; a detector without a
        usable pattern centre (give ``pc``).
    """
    from ebsd_keras.checks import check_input_file

    settings = settings or ExperimentalSettings()
    path = check_input_file(path, "patterns", "pattern file")
    t0 = time.perf_counter()
    s = load_kikuchipy(path, lazy=False)
    s.data = s.data  # materialise once
    steps = []
    nav = tuple(int(n) for n in s.axes_manager.navigation_shape[::-1])  # (rows, cols) numpy order
    map_shape = nav if len(nav) == 2 else ((1, nav[0]) if len(nav) == 1 else (1, 1))
    if settings.static_background == "file":
        if getattr(s, "static_background", None) is None:
            raise EBSDInputError(
                "the file has no static background: use --static-background mean or none", path, "static_background"
            )
        s.remove_static_background(show_progressbar=progress)
        steps.append({"step": "static background removal", "background": "the file's", "operation": "subtract"})
    elif settings.static_background == "mean":
        mean = np.asarray(s.data, dtype=np.float64).reshape(-1, *s.data.shape[-2:]).mean(axis=0)
        s.remove_static_background(static_bg=mean.astype(s.data.dtype), show_progressbar=progress)
        steps.append({"step": "static background removal", "background": "mean pattern", "operation": "subtract"})
    if settings.dynamic_background == "gaussian":
        kw = {} if settings.dynamic_std is None else {"std": float(settings.dynamic_std)}
        s.remove_dynamic_background(show_progressbar=progress, **kw)
        std = settings.dynamic_std if settings.dynamic_std is not None else s.data.shape[-1] / 8
        steps.append({"step": "dynamic background removal", "filter": "gaussian (frequency domain)", "std_px": std})
    if settings.average > 1:
        if len(nav) != 2:
            raise EBSDInputError("neighbour averaging needs a 2D map", path, "average")
        s.average_neighbour_patterns(
            window=settings.window, window_shape=(settings.average, settings.average), show_progressbar=progress
        )
        steps.append({"step": "neighbour averaging", "window": settings.window, "shape": [settings.average] * 2})
    data = np.asarray(s.data, dtype=np.float32).reshape(-1, *s.data.shape[-2:])
    lo = data.min(axis=(1, 2), keepdims=True)
    hi = data.max(axis=(1, 2), keepdims=True)
    patterns = (data - lo) / np.where(hi > lo, hi - lo, 1.0)
    steps.append({"step": "rescale", "to": "[0, 1] per pattern (min-max)"})
    detector = s.detector
    geometry = _detector(detector, settings, path)
    axes = [s.axes_manager.navigation_axes[i] for i in range(len(nav))][::-1] if nav else []
    step = tuple(float(a.scale) for a in axes) if len(axes) == 2 else (1.0, float(axes[0].scale) if axes else 1.0)
    unit = str(axes[0].units) if axes else "px"
    kv = None
    try:
        kv = float(s.metadata.Acquisition_instrument.SEM.beam_energy)
    except (AttributeError, TypeError, ValueError):
        kv = None
    if kv is not None and not kv > 0:  # kikuchipy's h5ebsd writer stores 0 when the energy is unknown
        kv = None
    provenance = {
        "file": path.name,
        "reader": f"kikuchipy {_kikuchipy_version()} ({type(s).__name__})",
        "map_shape": list(map_shape),
        "preprocessing": steps,
        "settings": asdict(settings),
        "seconds": time.perf_counter() - t0,
    }
    return ExperimentalMap(patterns, map_shape, step, unit, geometry, detector, kv, provenance)


def _detector(detector, settings: ExperimentalSettings, path):
    from ebsd_keras.simulations.geometry import DetectorGeometry

    if settings.pc is not None:
        d = {"shape": list(detector.shape), "pc": [float(p) for p in settings.pc]}
        d["tilt_deg"] = float(detector.tilt)
        d["sample_tilt_deg"] = float(detector.sample_tilt)
        base = DetectorGeometry.from_dict(d, path)
    else:
        base = detector_from_kikuchipy(detector, path)
    d = base.to_dict()
    if settings.tilt_deg is not None:
        d["tilt_deg"] = float(settings.tilt_deg)
    if settings.sample_tilt_deg is not None:
        d["sample_tilt_deg"] = float(settings.sample_tilt_deg)
    return DetectorGeometry.from_dict(d, path)


def _kikuchipy_version() -> str:
    import kikuchipy

    return str(kikuchipy.__version__)
