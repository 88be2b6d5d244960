"""EBSD detector geometry in numpy (float64): pattern centre, tilts and the direction of every detector pixel.

Conventions (Britton et al. 2016, "Tutorial: Crystal orientations and EBSD — Or which way is up?", and the Bruker
pattern centre that kikuchipy uses):

- The detector frame CSd has X_d to the right on the screen (as displayed, row 0 at the top), Y_d upwards and Z_d
  along the screen normal, pointing from the beam spot on the sample towards the screen, so every pixel is seen
  along a direction with a component +PCz on Z_d. Lengths are in units of the detector **height**.
- Bruker PC = (PCx, PCy, PCz): PCx is the PC's distance from the left edge as a fraction of the detector width,
  PCy its distance from the top edge as a fraction of the height, PCz the source-to-screen distance as a fraction
  of the height.
- The centre of pixel (row r, column c) of an H x W detector, seen from the source point, is the detector-frame
  vector ``(a * ((c + 0.5) / W - PCx), PCy - (r + 0.5) / H, PCz)`` with ``a = W / H``: the gnomonic coordinates
  times PCz (kikuchipy ``EBSDDetector.x_min`` ... ``y_max`` bounds, sampled at pixel centres).
- The detector frame is obtained from the sample frame CSs by rotating the basis (X_d, Y_d, Z_d) = (y_s, z_s, x_s)
  about the current X_d by -sample_tilt, then about X_d by +detector tilt, about Y_d by -azimuthal and about Z_d
  by -twist (the order and signs of kikuchipy's ``EBSDDetector.sample_to_detector``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ebsd_keras.errors import EBSDInputError

__all__ = [
    "DetectorGeometry",
    "detector_to_sample_matrix",
    "sample_to_detector_matrix",
    "pixel_centres",
    "detector_vectors",
    "direction_cosines",
]


@dataclass(frozen=True)
class DetectorGeometry:
    """A flat EBSD detector seen from the beam spot.

    Parameters
    ----------
    shape
        Detector size (rows, cols) in pixels.
    pc
        Bruker pattern centre (PCx, PCy, PCz) as fractions of the width, height and height (dimensionless).
    tilt_deg
        Detector tilt about X_d, degrees (positive: features move up on the screen).
    sample_tilt_deg
        Sample tilt about the sample x axis, degrees (70 for usual EBSD).
    azimuthal_deg
        Detector rotation about Y_d, degrees.
    twist_deg
        Detector rotation about Z_d (in the screen plane), degrees.
    """

    shape: tuple[int, int] = (60, 60)
    pc: tuple[float, float, float] = (0.5, 0.5, 0.6)
    tilt_deg: float = 10.0
    sample_tilt_deg: float = 70.0
    azimuthal_deg: float = 0.0
    twist_deg: float = 0.0

    def __post_init__(self):
        shape = tuple(self.shape)
        if len(shape) != 2 or any(int(s) != s or int(s) < 1 for s in shape):
            raise EBSDInputError(
                f"detector shape must be two positive integers (rows, cols), got {self.shape!r}", field="shape"
            )
        pc = tuple(float(p) for p in np.asarray(self.pc, dtype=np.float64).ravel())
        if len(pc) != 3 or not all(math.isfinite(p) for p in pc):
            raise EBSDInputError(
                f"pattern centre must be three finite numbers (PCx, PCy, PCz), got {self.pc!r}", field="pc"
            )
        if pc[2] <= 0:
            raise EBSDInputError(
                f"PCz must be > 0 (source-to-screen distance / detector height), got {pc[2]:g}", field="pc"
            )
        # Frozen dataclass: normalise the stored types once so equality and to_dict are plain Python values.
        object.__setattr__(self, "shape", tuple(int(s) for s in shape))
        object.__setattr__(self, "pc", pc)
        for name in ("tilt_deg", "sample_tilt_deg", "azimuthal_deg", "twist_deg"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise EBSDInputError(f"angle must be finite (degrees), got {value}", field=name)
            object.__setattr__(self, name, value)

    @property
    def nrows(self) -> int:
        """Number of detector rows H."""
        return self.shape[0]

    @property
    def ncols(self) -> int:
        """Number of detector columns W."""
        return self.shape[1]

    @property
    def size(self) -> int:
        """Number of pixels H * W."""
        return self.shape[0] * self.shape[1]

    @property
    def aspect_ratio(self) -> float:
        """Width over height, W / H (square pixels)."""
        return self.shape[1] / self.shape[0]

    def with_pc(self, pc) -> DetectorGeometry:
        """The same detector with another Bruker pattern centre."""
        d = self.to_dict()
        d["pc"] = tuple(float(p) for p in pc)
        return DetectorGeometry.from_dict(d)

    def to_dict(self) -> dict:
        """JSON-friendly dict (lists, floats); inverse of :meth:`from_dict`."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["pc"] = list(self.pc)
        return d

    @classmethod
    def from_dict(cls, d: dict, path=None) -> DetectorGeometry:
        """Build from :meth:`to_dict` output; unknown keys raise :class:`EBSDInputError`."""
        known = {"shape", "pc", "tilt_deg", "sample_tilt_deg", "azimuthal_deg", "twist_deg"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise EBSDInputError(
                f"unknown detector geometry keys {unknown}; expected some of {sorted(known)}", path, "detector"
            )
        kw = dict(d)
        if "shape" in kw:
            kw["shape"] = tuple(kw["shape"])
        if "pc" in kw:
            kw["pc"] = tuple(kw["pc"])
        try:
            return cls(**kw)
        except EBSDInputError as err:
            raise EBSDInputError(err.message, path, f"detector/{err.field}") from None


def _axis_angle_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    """Active rotation matrix about a unit ``axis`` by ``angle`` radians (Rodrigues)."""
    x, y, z = axis / np.linalg.norm(axis)
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def sample_to_detector_matrix(geometry: DetectorGeometry) -> np.ndarray:
    """Rotation matrix M with ``v_detector = M @ v_sample`` (columns), float64 (3, 3).

    Its rows are the detector axes (X_d, Y_d, Z_d) written in sample coordinates.
    """
    g = geometry
    # Rows: detector axes in sample coordinates before any tilt (X_d = y_s, Y_d = z_s, Z_d = x_s).
    basis = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    steps = (
        (0, -math.radians(g.sample_tilt_deg)),
        (0, math.radians(g.tilt_deg)),
        (1, -math.radians(g.azimuthal_deg)),
        (2, -math.radians(g.twist_deg)),
    )
    for row, angle in steps:
        # Each step turns the whole detector basis about one of its own current axes.
        rot = _axis_angle_matrix(basis[row].copy(), angle)
        basis = basis @ rot.T
    return basis


def detector_to_sample_matrix(geometry: DetectorGeometry) -> np.ndarray:
    """Rotation matrix with ``v_sample = M @ v_detector`` (columns), float64 (3, 3); the transpose of
    :func:`sample_to_detector_matrix`."""
    return sample_to_detector_matrix(geometry).T


def pixel_centres(geometry: DetectorGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Fractional pixel-centre positions ``u = (c + 0.5) / W`` (W,) and ``v = (r + 0.5) / H`` (H,), dimensionless."""
    h, w = geometry.shape
    return (np.arange(w, dtype=np.float64) + 0.5) / w, (np.arange(h, dtype=np.float64) + 0.5) / h


def detector_vectors(geometry: DetectorGeometry) -> np.ndarray:
    """Source-to-pixel vectors in the detector frame, (H*W, 3) float64, units of detector height, row-major."""
    pcx, pcy, pcz = geometry.pc
    u, v = pixel_centres(geometry)
    xx, yy = np.meshgrid(geometry.aspect_ratio * (u - pcx), pcy - v)  # (H, W) each, rows vary along axis 0
    return np.stack([xx.ravel(), yy.ravel(), np.full(geometry.size, pcz)], axis=-1)


def direction_cosines(geometry: DetectorGeometry) -> np.ndarray:
    """Unit vectors from the beam spot to every detector pixel centre, in the SAMPLE frame.

    Returns
    -------
    numpy.ndarray
        (H*W, 3) float64, pixels in row-major order (row 0 is the top of the screen). Equal to kikuchipy's
        ``_get_direction_cosines_from_detector(EBSDDetector(shape, pc=pc, tilt, azimuthal, twist, sample_tilt))``.
    """
    vec = detector_vectors(geometry) @ detector_to_sample_matrix(geometry).T
    return vec / np.linalg.norm(vec, axis=-1, keepdims=True)
