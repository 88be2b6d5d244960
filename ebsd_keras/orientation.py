"""Orientation maths: Bunge Euler angles, unit quaternions and the cubic (m-3m) disorientation.

Conventions (the same as EMsoft with P = +1, and as orix):

- Orientations are **passive** rotations from the sample frame to the crystal frame.
- Bunge Euler angles (phi1, Phi, phi2), ZXZ, in **radians** unless ``degrees=True``.
- Quaternions are (q0, q1, q2, q3) with the scalar first, normalised, and q0 >= 0 (q and -q are one rotation).
- Crystal symmetry acts on the **left**: S * q describes the same crystal orientation for each of the 24 proper
  rotations S of the cubic point group 432 (the rotational part of m-3m).
- Disorientation angles are returned in **degrees**.

The numpy functions are for data handling and evaluation (float64). :func:`disorientation_loss` and
:func:`disorientation_angle` are written with ``keras.ops`` for training losses and metrics: differentiable, with a
finite gradient at 0 degrees, invariant to q -> -q and accepting non-normalised predictions.
"""

from __future__ import annotations

import numpy as np

from ebsd_keras.checks import check_finite
from ebsd_keras.errors import EBSDInputError

__all__ = [
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


def _cubic_max_scalar(delta: np.ndarray) -> np.ndarray:
    """max over the 24 cubic operators S of |(S * delta)_0|, by the closed form on sorted |components|."""
    a, b, c, d = np.moveaxis(-np.sort(-np.abs(delta), axis=-1), -1, 0)
    return np.maximum(np.maximum(a, (a + b + c + d) / 2.0), (a + b) * _C)


def disorientation(q1, q2) -> np.ndarray:
    """Cubic (m-3m) disorientation angle between orientations, in **degrees**.

    Parameters
    ----------
    q1, q2
        (N, 4) or (4,) quaternions (normalised here), broadcast against each other.

    Returns
    -------
    numpy.ndarray
        (N,) angles in degrees, in [0, 62.8].
    """
    delta = quaternion_multiply(normalize_quaternions(q1), quaternion_conjugate(normalize_quaternions(q2)))
    t = np.clip(_cubic_max_scalar(delta), -1.0, 1.0)
    return np.rad2deg(2.0 * np.arccos(t))


def reduce_to_fundamental_zone(quaternion) -> np.ndarray:
    """Map orientations to the cubic fundamental zone: the symmetry-equivalent S * q of smallest rotation angle.

    Returns
    -------
    numpy.ndarray
        (N, 4) quaternions with q0 >= 0, each inside the 432 Rodrigues fundamental zone.
    """
    q = normalize_quaternions(quaternion)
    candidates = quaternion_multiply(CUBIC_SYMMETRY[None, :, :], q[:, None, :])  # (N, 24, 4)
    best = np.argmax(np.abs(candidates[..., 0]), axis=1)
    return _positive_scalar(candidates[np.arange(len(q)), best])


# --------------------------------------------------------------------------------------------------------------
# keras.ops versions for training (eq 9 of paper-method.md)
# --------------------------------------------------------------------------------------------------------------


def _left_multiplication_matrices() -> np.ndarray:
    """(4, 96) matrix M such that (delta @ M).reshape(24, 4)[k] = CUBIC_SYMMETRY[k] * delta (Hamilton product)."""
    mats = []
    for s0, s1, s2, s3 in CUBIC_SYMMETRY:
        # rows: components of S * delta; columns: components of delta
        mats.append(
            np.array([[s0, -s1, -s2, -s3], [s1, s0, -s3, s2], [s2, s3, s0, -s1], [s3, -s2, s1, s0]], dtype=np.float64).T
        )
    return np.concatenate(mats, axis=1)


_LEFT_SYMMETRY = _left_multiplication_matrices()


def _cubic_equivalents(q_true, q_pred):
    """All 24 symmetry-equivalent misorientations S * (q_true * conj(q_pred)), shape (..., 24, 4) (``keras.ops``).

    The 24 Hamilton products become one (4, 96) matrix product: cheap and differentiable.
    """
    from keras import ops

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
    full = ops.matmul(delta, ops.convert_to_tensor(_LEFT_SYMMETRY, dtype=delta.dtype))
    return ops.reshape(full, (*ops.shape(delta)[:-1], 24, 4))


def disorientation_loss(q_true, q_pred):
    """Differentiable cubic disorientation loss ``1 - cos(theta / 2)`` per sample (``keras.ops``).

    Zero for identical (or symmetry-equivalent, or sign-flipped) orientations, with a finite (zero) gradient there,
    monotonic in the disorientation angle theta, bounded by 1 - cos(31.4 deg) ~ 0.146. ``q_pred`` need not be
    normalised. Near 0 it behaves like theta^2 / 8 (theta in radians). Used for eq 9 of paper-method.md.
    """
    from keras import ops

    return 1.0 - ops.max(ops.abs(_cubic_equivalents(q_true, q_pred)[..., 0]), axis=-1)


def disorientation_angle(q_true, q_pred):
    """Cubic disorientation angle in **degrees** per sample (``keras.ops``), for metrics.

    Computed as 2 atan2(|v|, |w|) of the closest symmetry equivalent, which keeps float32 accurate near 0 degrees
    (arccos of a value near 1 would not), with a finite gradient at 0.
    """
    from keras import ops

    full = _cubic_equivalents(q_true, q_pred)
    w = ops.abs(full[..., 0])
    mask = ops.one_hot(ops.argmax(w, axis=-1), 24, dtype=full.dtype)
    w_best = ops.sum(w * mask, axis=-1)
    v2_best = ops.sum(ops.sum(ops.square(full[..., 1:]), axis=-1) * mask, axis=-1)
    return 2.0 * ops.arctan2(ops.sqrt(v2_best + 1e-30), w_best) * (180.0 / np.pi)
