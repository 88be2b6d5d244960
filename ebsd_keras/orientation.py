"""Orientation maths: Bunge Euler angles, unit quaternions, the 11 Laue groups and disorientations.

Conventions (the same as EMsoft with P = +1, and as orix):

- Orientations are **passive** rotations from the sample frame to the crystal frame.
- Bunge Euler angles (phi1, Phi, phi2), ZXZ, in **radians** unless ``degrees=True``.
- Quaternions are (q0, q1, q2, q3) with the scalar first, normalised, and q0 >= 0 (q and -q are one rotation).
- Crystal symmetry acts on the **left**: S * q describes the same crystal orientation for each proper rotation S of
  the crystal's Laue group (e.g. the 24 rotations of 432, the proper part of m-3m). Every function taking
  ``symmetry=`` accepts one of the 11 Laue groups (:data:`LAUE_GROUPS`) or any of the 32 point groups (mapped to its
  Laue group by :func:`laue_group`); the default "m-3m" is Ni, Fe, Al, Cu, Si...
- Axis settings are orix's (and EMsoft's): the n-fold main axis is z (|| c); the 2-fold axes of mmm, 4/mmm, -3m and
  6/mmm include x (|| a); 2/m has its 2-fold axis along z (orix's "112" setting); -3m is the "-3m1" setting (2-folds
  along a, as in alpha-Al2O3, R-3c); the cubic 3-fold axes are <111>.
- Disorientation angles are returned in **degrees**.

The numpy functions are for data handling and evaluation (float64). :func:`disorientation_loss` and
:func:`disorientation_angle` are written with ``keras.ops`` for training losses and metrics: differentiable, with a
finite gradient at 0 degrees, invariant to q -> -q and accepting non-normalised predictions.
"""

from __future__ import annotations

from functools import cache
from typing import Literal, get_args

import numpy as np

from ebsd_keras.checks import check_finite
from ebsd_keras.errors import EBSDInputError

__all__ = [
    "LaueGroup",
    "LAUE_GROUPS",
    "POINT_GROUP_TO_LAUE",
    "laue_group",
    "symmetry_operators",
    "symmetry_matrices",
    "CUBIC_SYMMETRY",
    "euler_to_quaternion",
    "quaternion_to_euler",
    "quaternion_multiply",
    "hamilton_terms",
    "quaternion_conjugate",
    "normalize_quaternions",
    "check_euler_radians",
    "disorientation",
    "reduce_to_fundamental_zone",
    "disorientation_loss",
    "disorientation_angle",
    "FOLD_REFERENCE",
    "fold_to_fundamental_sector",
]

_C = np.sqrt(0.5)

#: The 24 proper rotations of the cubic point group (432 = proper part of m-3m) as unit quaternions (q0 >= 0).
CUBIC_SYMMETRY = np.array(
    [
        [1, 0, 0, 0],
        # 180 deg about <100>
        [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1],
        # +-90 deg about <100>
        [_C, _C, 0, 0], [_C, -_C, 0, 0], [_C, 0, _C, 0], [_C, 0, -_C, 0], [_C, 0, 0, _C], [_C, 0, 0, -_C],
        # +-120 deg about <111>
        [0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, -0.5], [0.5, 0.5, -0.5, 0.5], [0.5, 0.5, -0.5, -0.5],
        [0.5, -0.5, 0.5, 0.5], [0.5, -0.5, 0.5, -0.5], [0.5, -0.5, -0.5, 0.5], [0.5, -0.5, -0.5, -0.5],
        # 180 deg about <110>
        [0, _C, _C, 0], [0, _C, -_C, 0], [0, _C, 0, _C], [0, _C, 0, -_C], [0, 0, _C, _C], [0, 0, _C, -_C],
    ],
    dtype=np.float64,
)  # fmt: skip

_TWO_PI_TOL = 2 * np.pi + 1e-4

#: The 11 Laue groups (centrosymmetric point groups; diffraction patterns have the symmetry of one of them).
LaueGroup = Literal["-1", "2/m", "mmm", "4/m", "4/mmm", "-3", "-3m", "6/m", "6/mmm", "m-3", "m-3m"]
LAUE_GROUPS: tuple[str, ...] = get_args(LaueGroup)

#: Laue group of each of the 32 crystallographic point groups (Hermann-Mauguin symbols, orix's spelling), plus
#: orix's names for other settings. Note: orix (and so this module) puts the monoclinic 2-fold axis along z for every
#: monoclinic space group and the -3m 2-folds along a, also for the P-31m-type settings.
POINT_GROUP_TO_LAUE = {
    "1": "-1", "-1": "-1",
    "2": "2/m", "m": "2/m", "2/m": "2/m",
    "222": "mmm", "mm2": "mmm", "mmm": "mmm",
    "4": "4/m", "-4": "4/m", "4/m": "4/m",
    "422": "4/mmm", "4mm": "4/mmm", "-42m": "4/mmm", "4/mmm": "4/mmm",
    "3": "-3", "-3": "-3",
    "32": "-3m", "3m": "-3m", "-3m": "-3m",
    "6": "6/m", "-6": "6/m", "6/m": "6/m",
    "622": "6/mmm", "6mm": "6/mmm", "-6m2": "6/mmm", "6/mmm": "6/mmm",
    "23": "m-3", "m-3": "m-3",
    "432": "m-3m", "-43m": "m-3m", "m-3m": "m-3m",
    # orix's names of other settings (the Laue group's operators here stay in the setting above: 2 || z, 2 || a)
    "211": "2/m", "121": "2/m", "112": "2/m", "m11": "2/m", "1m1": "2/m", "11m": "2/m", "321": "-3m", "312": "-3m",
}  # fmt: skip


def _axis_angle(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    half = np.deg2rad(degrees) / 2.0
    return np.concatenate([[np.cos(half)], np.sin(half) * axis / np.linalg.norm(axis)])


#: Generators (axis, angle in degrees) of each Laue group's proper rotation group; z || c, x || a (orix's setting).
_GENERATORS = {
    "-1": [],
    "2/m": [((0, 0, 1), 180)],
    "mmm": [((0, 0, 1), 180), ((1, 0, 0), 180)],
    "4/m": [((0, 0, 1), 90)],
    "4/mmm": [((0, 0, 1), 90), ((1, 0, 0), 180)],
    "-3": [((0, 0, 1), 120)],
    "-3m": [((0, 0, 1), 120), ((1, 0, 0), 180)],
    "6/m": [((0, 0, 1), 60)],
    "6/mmm": [((0, 0, 1), 60), ((1, 0, 0), 180)],
    "m-3": [((0, 0, 1), 180), ((1, 1, 1), 120)],
}


def laue_group(symmetry: str) -> str:
    """The Laue group of a point group (any of the 32, Hermann-Mauguin symbol as orix writes it, e.g. "6/mmm", "622").

    Raises
    ------
    EBSDInputError
        For an unknown symbol (field ``symmetry``).
    """
    name = str(symmetry).strip()
    if name not in POINT_GROUP_TO_LAUE:
        raise EBSDInputError(
            f"unknown point group {symmetry!r}; expected a Laue group ({', '.join(LAUE_GROUPS)}) or another of the "
            "32 point groups",
            None,
            "symmetry",
        )
    return POINT_GROUP_TO_LAUE[name]


def _canonical(q: np.ndarray) -> np.ndarray:
    """q or -q, whichever has its first non-zero component positive (q0 > 0 unless a 180-degree turn)."""
    return -q if q[np.flatnonzero(np.abs(q) > 1e-12)[0]] < 0 else q


def _close_group(generators) -> np.ndarray:
    """All products of the generator quaternions (the group they generate), q0 >= 0, identity first."""
    elements = [np.array([1.0, 0.0, 0.0, 0.0])]
    frontier = list(elements)
    while frontier:
        new = []
        for a in frontier:
            for g in generators:
                p = _canonical(np.asarray(quaternion_multiply(g, a)))
                if not any(abs(abs(float(p @ e)) - 1.0) < 1e-9 for e in elements):  # q and -q: one rotation
                    elements.append(p)
                    new.append(p)
        frontier = new
    out = np.array(elements)
    out[np.abs(out) < 1e-15] = 0.0
    return out


@cache
def _operators(group: str) -> np.ndarray:
    if group == "m-3m":
        ops_ = CUBIC_SYMMETRY.copy()
    else:
        ops_ = _close_group([_axis_angle(axis, angle) for axis, angle in _GENERATORS[group]])
    ops_.setflags(write=False)
    return ops_


def symmetry_operators(symmetry: str = "m-3m") -> np.ndarray:
    """Proper rotations of a Laue group as unit quaternions (the rotational part, e.g. 622 for 6/mmm).

    Parameters
    ----------
    symmetry
        A Laue group (:data:`LAUE_GROUPS`) or any point group (reduced to its Laue group).

    Returns
    -------
    numpy.ndarray
        (K, 4) float64, q0 >= 0, identity first; K = 1, 2, 4, 4, 8, 3, 6, 6, 12, 12, 24 for -1 ... m-3m. The same
        set (up to q -> -q) as orix's ``Symmetry.laue_proper_subgroup``. Read-only.
    """
    return _operators(laue_group(symmetry))


def symmetry_matrices(symmetry: str = "m-3m", inversion: bool = True) -> np.ndarray:
    """Rotation matrices of a Laue group acting on crystal-frame vectors, with the inversion by default.

    For folding crystal directions (e.g. Kikuchi sphere / master-pattern directions) into a fundamental sector:
    diffraction patterns have the full Laue symmetry, i.e. the proper rotations and their products with -1.

    Returns
    -------
    numpy.ndarray
        (2K, 3, 3) float64 (K proper rotations, then the same times -1) or (K, 3, 3) without ``inversion``.
    """
    q = symmetry_operators(symmetry)
    a, b, c, d = q.T
    rot = np.stack(
        [
            np.stack([a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)], axis=-1),
            np.stack([2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)], axis=-1),
            np.stack([2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d], axis=-1),
        ],
        axis=-2,
    )
    return np.concatenate([rot, -rot]) if inversion else rot


def _as_rows(x, width: int, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"{name} must have shape (N, {width}) or ({width},), got {np.shape(x)}")
    return arr


def check_euler_radians(euler, path=None, field: str | None = "EulerAngles") -> np.ndarray:
    """Validate Bunge Euler angles that should be in radians; returns them as (N, 3) float64.

    Raises
    ------
    EBSDInputError
        On NaN/Inf, or when any |angle| exceeds 2 pi: such a file almost certainly holds degrees (some EMsoft 6
        programs write degrees). Convert explicitly with ``np.deg2rad`` rather than letting it pass silently.
    """
    arr = check_finite(_as_rows(euler, 3, "euler"), path, field, what="Euler angles")
    big = np.abs(arr) > _TWO_PI_TOL
    if big.any():
        raise EBSDInputError(
            f"Euler angles up to {np.abs(arr).max():.4g} exceed 2*pi: these look like degrees, but radians are "
            "expected (EMsoft 4/5 convention); convert them explicitly (e.g. --degrees convert)",
            path,
            field,
        )
    return arr


def euler_to_quaternion(euler, degrees: bool = False) -> np.ndarray:
    """Bunge (phi1, Phi, phi2) Euler angles to unit quaternions (EMsoft eu2qu, P = +1).

    Parameters
    ----------
    euler
        (N, 3) or (3,) angles, radians unless ``degrees``.
    degrees
        Whether ``euler`` is in degrees.

    Returns
    -------
    numpy.ndarray
        (N, 4) float64 quaternions, q0 >= 0.
    """
    e = _as_rows(euler, 3, "euler")
    if degrees:
        e = np.deg2rad(e)
    phi1, Phi, phi2 = e.T
    sigma = 0.5 * (phi1 + phi2)
    delta = 0.5 * (phi1 - phi2)
    c, s = np.cos(0.5 * Phi), np.sin(0.5 * Phi)
    q = np.stack([c * np.cos(sigma), -s * np.cos(delta), -s * np.sin(delta), -c * np.sin(sigma)], axis=1)
    return _positive_scalar(q)


def quaternion_to_euler(quaternion, degrees: bool = False) -> np.ndarray:
    """Unit quaternions to Bunge Euler angles (EMsoft qu2eu, P = +1), phi1, phi2 in [0, 2 pi), Phi in [0, pi].

    Returns
    -------
    numpy.ndarray
        (N, 3) float64, radians unless ``degrees``.
    """
    q = normalize_quaternions(quaternion)
    q0, q1, q2, q3 = q.T
    q03 = q0**2 + q3**2
    q12 = q1**2 + q2**2
    chi = np.sqrt(q03 * q12)
    safe = np.where(chi > 1e-12, chi, 1.0)
    phi1 = np.arctan2((q1 * q3 - q0 * q2) / safe, (-q0 * q1 - q2 * q3) / safe)
    Phi = np.arctan2(2 * chi, q03 - q12)
    phi2 = np.arctan2((q0 * q2 + q1 * q3) / safe, (q2 * q3 - q0 * q1) / safe)
    # Degenerate cases (Phi = 0 or pi): only phi1 + phi2 (or phi1 - phi2) is defined; put it all in phi1.
    flat = chi <= 1e-12
    top = flat & (q12 <= 1e-12)
    bottom = flat & ~top
    phi1 = np.where(top, np.arctan2(-2 * q0 * q3, q0**2 - q3**2), phi1)
    phi1 = np.where(bottom, np.arctan2(2 * q1 * q2, q1**2 - q2**2), phi1)
    Phi = np.where(top, 0.0, np.where(bottom, np.pi, Phi))
    phi2 = np.where(flat, 0.0, phi2)
    e = np.stack([np.mod(phi1, 2 * np.pi), Phi, np.mod(phi2, 2 * np.pi)], axis=1)
    return np.rad2deg(e) if degrees else e


def _positive_scalar(q: np.ndarray) -> np.ndarray:
    return np.where(q[:, :1] < 0, -q, q)


def normalize_quaternions(quaternion) -> np.ndarray:
    """Return (N, 4) unit quaternions with q0 >= 0; raises on zero-length or non-finite input."""
    q = check_finite(_as_rows(quaternion, 4, "quaternion"), field="quaternion", what="quaternions")
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    if np.any(norm < 1e-12):
        raise EBSDInputError("zero-length quaternion", field="quaternion")
    return _positive_scalar(q / norm)


def quaternion_conjugate(q) -> np.ndarray:
    """Conjugate (inverse for unit quaternions) of (N, 4) quaternions."""
    q = _as_rows(q, 4, "q")
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def quaternion_multiply(a, b) -> np.ndarray:
    """Hamilton product a * b of (N, 4) (or broadcastable (..., 4)) quaternions."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.stack(hamilton_terms(np.moveaxis(a, -1, 0), np.moveaxis(b, -1, 0)), axis=-1)


def hamilton_terms(a, b) -> list:
    """The four components of the Hamilton product a * b from the components (a0..a3), (b0..b3) of each.

    Array-library agnostic (numpy arrays, tensors): callers split and stack in their own library.
    """
    a0, a1, a2, a3 = a
    b0, b1, b2, b3 = b
    return [
        a0 * b0 - a1 * b1 - a2 * b2 - a3 * b3,
        a0 * b1 + a1 * b0 + a2 * b3 - a3 * b2,
        a0 * b2 - a1 * b3 + a2 * b0 + a3 * b1,
        a0 * b3 + a1 * b2 - a2 * b1 + a3 * b0,
    ]


#: Rows per chunk of the general (any Laue group) numpy paths: bounds memory at ~ rows x 24 x 4 float64.
_CHUNK = 65536


def _scalar_matrix(ops_: np.ndarray) -> np.ndarray:
    """(4, K) W such that (delta @ W)[k] = (S_k * delta)_0 = s0 d0 - s . d."""
    return (ops_ * np.array([1.0, -1.0, -1.0, -1.0])).T


def disorientation(q1, q2, symmetry: str = "m-3m") -> np.ndarray:
    """Disorientation angle between orientations of one crystal, in **degrees**.

    The smallest rotation angle of S * q1 * conj(q2) over the proper rotations S of the Laue group (with the same
    symmetry on both sides this is the disorientation: conjugation does not change an angle).

    Parameters
    ----------
    q1, q2
        (N, 4) or (4,) quaternions (normalised here), broadcast against each other.
    symmetry
        Laue group (or point group) of the crystal, default "m-3m".

    Returns
    -------
    numpy.ndarray
        (N,) angles in degrees: [0, 62.8] for m-3m, [0, 180] for -1.
    """
    group = laue_group(symmetry)
    delta = quaternion_multiply(normalize_quaternions(q1), quaternion_conjugate(normalize_quaternions(q2)))
    best = _best_equivalents(delta, group)
    # atan2 of (|v|, |w|) of the closest equivalent stays accurate near 0 deg, where arccos(w) would not
    return np.rad2deg(2.0 * np.arctan2(np.linalg.norm(best[:, 1:], axis=1), np.abs(best[:, 0])))


def _best_equivalents(q: np.ndarray, group: str) -> np.ndarray:
    """S * q of largest |scalar part| (smallest rotation angle) over the group's proper rotations, chunked, (N, 4)."""
    ops_ = _operators(group)
    w = _scalar_matrix(ops_)
    out = np.empty_like(q)
    for start in range(0, len(q), _CHUNK):
        chunk = q[start : start + _CHUNK]
        k = np.argmax(np.abs(chunk @ w), axis=1)
        out[start : start + _CHUNK] = quaternion_multiply(ops_[k], chunk)
    return out


def reduce_to_fundamental_zone(quaternion, symmetry: str = "m-3m") -> np.ndarray:
    """Map orientations to the fundamental zone: the symmetry-equivalent S * q of smallest rotation angle.

    Parameters
    ----------
    quaternion
        (N, 4) or (4,) quaternions.
    symmetry
        Laue group (or point group) of the crystal, default "m-3m".

    Returns
    -------
    numpy.ndarray
        (N, 4) quaternions with q0 >= 0, each inside the Laue group's Rodrigues fundamental zone (orix's
        ``Orientation.reduce`` zone; for -1 every orientation is inside).
    """
    q = normalize_quaternions(quaternion)
    return _positive_scalar(_best_equivalents(q, laue_group(symmetry)))


# --------------------------------------------------------------------------------------------------------------
# keras.ops versions for training (eq 9 of paper-method.md)
# --------------------------------------------------------------------------------------------------------------


def _left_multiplication_matrices(ops_: np.ndarray = CUBIC_SYMMETRY) -> np.ndarray:
    """(4, 4K) matrix M such that (delta @ M).reshape(K, 4)[k] = ops_[k] * delta (Hamilton product)."""
    mats = []
    for s0, s1, s2, s3 in ops_:
        # rows: components of S * delta; columns: components of delta
        mats.append(
            np.array([[s0, -s1, -s2, -s3], [s1, s0, -s3, s2], [s2, s3, s0, -s1], [s3, -s2, s1, s0]], dtype=np.float64).T
        )
    return np.concatenate(mats, axis=1)


_LEFT_SYMMETRY = _left_multiplication_matrices()


@cache
def _left_symmetry(group: str) -> np.ndarray:
    return _LEFT_SYMMETRY if group == "m-3m" else _left_multiplication_matrices(_operators(group))


def _symmetry_equivalents(q_true, q_pred, symmetry: str = "m-3m"):
    """All K symmetry-equivalent misorientations S * (q_true * conj(q_pred)), shape (..., K, 4) (``keras.ops``).

    The K Hamilton products become one (4, 4K) matrix product: cheap and differentiable.
    """
    from keras import ops

    left = _left_symmetry(laue_group(symmetry))
    q_true = ops.convert_to_tensor(q_true)
    q_pred = ops.cast(ops.convert_to_tensor(q_pred), q_true.dtype)
    eps = 1e-12
    q_true = q_true / ops.sqrt(ops.sum(ops.square(q_true), axis=-1, keepdims=True) + eps)
    q_pred = q_pred / ops.sqrt(ops.sum(ops.square(q_pred), axis=-1, keepdims=True) + eps)
    t0, t1, t2, t3 = (q_true[..., i] for i in range(4))
    p0, p1, p2, p3 = (-q_pred[..., i] if i else q_pred[..., i] for i in range(4))  # conj(q_pred)
    delta = ops.stack(
        [
            t0 * p0 - t1 * p1 - t2 * p2 - t3 * p3,
            t0 * p1 + t1 * p0 + t2 * p3 - t3 * p2,
            t0 * p2 - t1 * p3 + t2 * p0 + t3 * p1,
            t0 * p3 + t1 * p2 - t2 * p1 + t3 * p0,
        ],
        axis=-1,
    )
    full = ops.matmul(delta, ops.convert_to_tensor(left, dtype=delta.dtype))
    return ops.reshape(full, (*ops.shape(delta)[:-1], left.shape[1] // 4, 4))


def _cubic_equivalents(q_true, q_pred):
    """The 24 cubic equivalents (kept for callers of the m-3m-only version)."""
    return _symmetry_equivalents(q_true, q_pred, "m-3m")


def disorientation_loss(q_true, q_pred, symmetry: str = "m-3m"):
    """Differentiable disorientation loss ``1 - cos(theta / 2)`` per sample (``keras.ops``), for any Laue group.

    Zero for identical (or symmetry-equivalent, or sign-flipped) orientations, with a finite (zero) gradient there,
    monotonic in the disorientation angle theta, bounded by 1 - cos(theta_max / 2) (0.146 for m-3m, 1 for -1).
    ``q_pred`` need not be normalised. Near 0 it behaves like theta^2 / 8 (theta in radians). Used for eq 9 of
    paper-method.md. ``symmetry``: Laue group (or point group) of the crystal, default "m-3m".
    """
    from keras import ops

    return 1.0 - ops.max(ops.abs(_symmetry_equivalents(q_true, q_pred, symmetry)[..., 0]), axis=-1)


def disorientation_angle(q_true, q_pred, symmetry: str = "m-3m"):
    """Disorientation angle in **degrees** per sample (``keras.ops``), for metrics, for any Laue group.

    Computed as 2 atan2(|v|, |w|) of the closest symmetry equivalent, which keeps float32 accurate near 0 degrees
    (arccos of a value near 1 would not), with a finite gradient at 0.
    """
    from keras import ops

    full = _symmetry_equivalents(q_true, q_pred, symmetry)
    w = ops.abs(full[..., 0])
    mask = ops.one_hot(ops.argmax(w, axis=-1), ops.shape(full)[-2], dtype=full.dtype)
    w_best = ops.sum(w * mask, axis=-1)
    v2_best = ops.sum(ops.sum(ops.square(full[..., 1:]), axis=-1) * mask, axis=-1)
    return 2.0 * ops.arctan2(ops.sqrt(v2_best + 1e-30), w_best) * (180.0 / np.pi)


# --------------------------------------------------------------------------------------------------------------
# Folding crystal directions by a Laue group (for symmetric master patterns / physics decoders)
# --------------------------------------------------------------------------------------------------------------

#: A direction inside each group's conventional sector (generic: on no mirror or rotation axis), used as the centre
#: of the fundamental sector. For the reflection groups (mmm, 4/mmm, 6/mmm, m-3m) the sector it selects is the
#: standard triangle containing it, e.g. 0 <= y <= x <= z for m-3m, as ``simulations.projection.fold_directions``.
FOLD_REFERENCE = (0.31, 0.17, 0.93)


def fold_to_fundamental_sector(x, y, z, symmetry: str = "m-3m", reference=FOLD_REFERENCE):
    """Map crystal-frame directions to their representative in a fundamental sector of the Laue group.

    Each direction v goes to the image g v (over the 2K operations: proper rotations and their products with the
    inversion, :func:`symmetry_matrices`) closest to ``reference``, i.e. maximising (g v) . reference: the Dirichlet
    sector around ``reference``. Works for any of the 11 Laue groups, on numpy arrays (float64) or ``keras.ops``
    tensors (differentiable almost everywhere: a selection of linear maps).

    Parameters
    ----------
    x, y, z
        Components of crystal-frame directions (unit or not; lengths are kept), matching shapes.
    symmetry
        Laue group (or point group), default "m-3m".
    reference
        Direction (3,) at the centre of the sector; any direction on no symmetry element.

    Returns
    -------
    tuple
        (x, y, z) folded, the same kind of arrays.
    """
    mats = symmetry_matrices(symmetry)  # (G, 3, 3)
    r = np.asarray(reference, dtype=np.float64)
    score_w = np.einsum("gij,i->gj", mats, r / np.linalg.norm(r))  # (G, 3): (g v) . r = v . (g^T r)
    if isinstance(x, np.ndarray) or np.isscalar(x):
        v = np.stack(np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float), np.asarray(z, float)), axis=-1)
        k = np.argmax(v @ score_w.T, axis=-1)
        out = np.einsum("...ij,...j->...i", mats[k], v)
        return out[..., 0], out[..., 1], out[..., 2]
    from keras import ops

    v = ops.stack([x, y, z], axis=-1)
    w = ops.convert_to_tensor(score_w.T, dtype=v.dtype)  # (3, G)
    mask = ops.one_hot(ops.argmax(ops.matmul(v, w), axis=-1), mats.shape[0], dtype=v.dtype)  # (..., G)
    flat = ops.convert_to_tensor(mats.reshape(-1, 3).T, dtype=v.dtype)  # (3, 3G): v @ flat = all images
    images = ops.reshape(ops.matmul(v, flat), (*ops.shape(v)[:-1], mats.shape[0], 3))
    out = ops.sum(images * mask[..., None], axis=-2)
    return out[..., 0], out[..., 1], out[..., 2]
