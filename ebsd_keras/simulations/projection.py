"""Differentiable master pattern -> detector projection written with ``keras.ops``.

The chain is the one EMsoft and kikuchipy use (``EBSDMasterPattern.get_patterns``):

1. gnomonic direction of every detector pixel from the pattern centre, in the sample frame
   (:func:`gnomonic_directions`, or the fixed :func:`~ebsd_keras.simulations.geometry.direction_cosines`);
2. rotation into the crystal frame by the orientation quaternion (:func:`rotate_to_crystal`);
3. square Lambert coordinates of the hemisphere the direction points into (:func:`lambert_coordinates`);
4. bilinear interpolation in the master-pattern texture of that hemisphere (:func:`sample_lambert`).

Every step is differentiable with respect to the master-pattern textures, the quaternion and the pattern centre
(the integer pixel indices carry no gradient; the bilinear weights do). The Lambert mapping is written so that the
pole x = y = 0 and the branch switch |x| = |y| give finite gradients.

Intensities are returned raw (no per-pattern rescaling); kikuchipy rescales each pattern to the output dtype range,
so compare with it by normalised cross-correlation.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.simulations.geometry import (
    DetectorGeometry,
    detector_to_sample_matrix,
    direction_cosines,
    pixel_centres,
)

__all__ = [
    "gnomonic_directions",
    "quaternion_to_matrix",
    "rotate_to_crystal",
    "lambert_coordinates",
    "sample_lambert",
    "LambertProjector",
    "rotate_components",
    "lambert_pixels",
    "bilinear_from_table",
    "fold_directions",
    "lambert_grid_directions",
    "resample_lambert",
    "lambert_pixels_numpy",
    "bilinear_numpy",
]

_SQRT_PI_OVER_2 = math.sqrt(math.pi) / 2.0  # sqrt(pi) / 2, not sqrt(pi / 2)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_SQRT_HALF_PI = math.sqrt(math.pi / 2.0)  # half side of the Lambert square
_ATAN_TAYLOR = tuple((-1.0) ** n / (2 * n + 1) for n in range(8))  # atan(u) = u * sum c_n u^(2n)


def _float_dtype(x) -> str:
    """The floating dtype to compute in: the input's if it is floating, else Keras' floatx."""
    dtype = keras.backend.standardize_dtype(x.dtype) if hasattr(x, "dtype") else None
    return dtype if dtype in ("float16", "bfloat16", "float32", "float64") else keras.config.floatx()


def _as_float(x):
    x = ops.convert_to_tensor(x)
    return ops.cast(x, _float_dtype(x))


def gnomonic_directions(pc, geometry: DetectorGeometry):
    """Sample-frame unit directions of the detector pixels for one pattern centre per pattern.

    Parameters
    ----------
    pc
        (B, 3) tensor of Bruker pattern centres (PCx, PCy, PCz), dimensionless. May be a trainable variable.
    geometry
        Supplies the detector shape and the fixed tilts (sample tilt, detector tilt, azimuthal, twist); its own
        ``pc`` is ignored.

    Returns
    -------
    tensor
        (B, H*W, 3) unit vectors, row-major pixels, differentiable with respect to ``pc``. For each row b it equals
        ``direction_cosines(geometry.with_pc(pc[b]))``.
    """
    pc = ops.reshape(_as_float(pc), (-1, 3))
    dtype = pc.dtype
    h, w = geometry.shape
    u, v = pixel_centres(geometry)
    u = ops.convert_to_tensor(u, dtype=dtype)  # (W,)
    v = ops.convert_to_tensor(v, dtype=dtype)  # (H,)
    m = ops.convert_to_tensor(detector_to_sample_matrix(geometry), dtype=dtype)  # v_s = m @ v_d

    pcx, pcy, pcz = pc[:, 0:1], pc[:, 1:2], pc[:, 2:3]  # (B, 1) each
    xd = geometry.aspect_ratio * (u[None, :] - pcx)  # (B, W)
    yd = pcy - v[None, :]  # (B, H)
    xd = ops.broadcast_to(xd[:, None, :], (ops.shape(pc)[0], h, w))
    yd = ops.broadcast_to(yd[:, :, None], (ops.shape(pc)[0], h, w))
    zd = ops.broadcast_to(pcz[:, :, None], (ops.shape(pc)[0], h, w))
    # v_s = xd * m[:, 0] + yd * m[:, 1] + zd * m[:, 2]: a linear map, so no (B, H*W, 3) matmul is needed.
    vec = xd[..., None] * m[:, 0] + yd[..., None] * m[:, 1] + zd[..., None] * m[:, 2]  # (B, H, W, 3)
    vec = ops.reshape(vec, (-1, h * w, 3))
    return vec / ops.sqrt(ops.sum(ops.square(vec), axis=-1, keepdims=True))


def quaternion_to_matrix(quaternion):
    """Active rotation matrices R(q) of quaternions (B, 4) (scalar first), normalised first: (B, 3, 3)."""
    q = _as_float(quaternion)
    q = q / ops.sqrt(ops.sum(ops.square(q), axis=-1, keepdims=True))
    a, b, c, d = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    rows = [
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
    ]
    return ops.stack([ops.stack(r, axis=-1) for r in rows], axis=-2)


def rotate_to_crystal(directions, quaternion):
    """Rotate sample-frame directions into the crystal frame: ``v_c = R(q) v_s``.

    This is the rotation kikuchipy's ``get_patterns`` applies (``rotate_vector(q, v)``, i.e. orix
    ``Rotation(q) * Vector3d(v)``) with the orientation quaternion of the project's convention (Bunge passive,
    EMsoft P = +1, the same numbers as ``orix.quaternion.Rotation.from_euler``).

    Parameters
    ----------
    directions
        (N, 3) directions shared by all patterns, or (B, N, 3) one set per pattern.
    quaternion
        (B, 4) orientation quaternions (q0, q1, q2, q3); normalised here, so an unconstrained 4-vector can be
        optimised.

    Returns
    -------
    tensor
        (B, N, 3) crystal-frame directions.
    """
    rot = quaternion_to_matrix(quaternion)
    directions = ops.cast(ops.convert_to_tensor(directions), rot.dtype)
    return ops.stack(rotate_components(directions, rot), axis=-1)


def rotate_components(directions, rot):
    """``R v`` as three (B, N) component arrays: a 3-wide last axis is slow on CPU, separate planes vectorise."""
    dx, dy, dz = directions[..., 0], directions[..., 1], directions[..., 2]  # (N,) or (B, N)
    if len(directions.shape) == 2:
        dx, dy, dz = dx[None], dy[None], dz[None]
    r = rot[:, :, :, None]  # (B, 3, 3, 1) broadcasts against (B or 1, N)
    return tuple(r[:, i, 0] * dx + r[:, i, 1] * dy + r[:, i, 2] * dz for i in range(3))


def lambert_coordinates(v, npx: int):
    """Square Lambert pixel coordinates of directions, as in EMsoft / kikuchipy.

    Parameters
    ----------
    v
        (..., 3) directions (normalised here).
    npx
        Half side of the master-pattern grid: the grid is (2 npx + 1) x (2 npx + 1) pixels per hemisphere.

    Returns
    -------
    row, col
        (...) float pixel coordinates in [0, 2 npx] (row i = npx * Y / sqrt(pi/2) + npx, column j from X).
    north
        (...) bool, True where z >= 0 (northern hemisphere, EMsoft ``mLPNH``, kikuchipy "upper").
    """
    v = _as_float(v)
    v = v / ops.sqrt(ops.sum(ops.square(v), axis=-1, keepdims=True))
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    row, col = lambert_pixels(x, y, z, npx)
    return row, col, z >= 0


def _arctan_unit(t, root):
    """atan(t) for |t| <= 1, given ``root = sqrt(1 + t^2)``.

    XLA's CPU atan is ~10x slower than the whole rest of the chain, so in float32 and below use
    atan(t) = 2 atan(u) with u = t / (1 + sqrt(1 + t^2)), |u| <= tan(pi/8), and the Taylor series of atan(u) to
    u^15: truncation error < 2 tan(pi/8)^17 / 17 ~ 4e-8 rad, under float32 rounding (~1e-5 Lambert pixels at
    npx = 200). float64 keeps the exact atan.
    """
    if keras.backend.standardize_dtype(t.dtype) == "float64":
        return ops.arctan(t)
    u = t / (1.0 + root)
    u2 = u * u
    poly = _ATAN_TAYLOR[-1]
    for coef in _ATAN_TAYLOR[-2::-1]:
        poly = poly * u2 + coef
    return 2.0 * u * poly


def lambert_pixels(x, y, z, npx: int):
    """(row, col) Lambert pixel coordinates of unit vectors given as component arrays."""
    # r / rho = sqrt(2 (1 - |z|)) / sqrt(x^2 + y^2) = sqrt(2 / (1 + |z|)) for unit v: avoids the 1 - |z|
    # cancellation near the pole and the infinite derivative of sqrt at 0.
    k = ops.sqrt(2.0 / (1.0 + ops.abs(z)))
    # EMsoft's two branches (|y| <= |x| and |y| > |x|) differ only by swapping x and y, so take the dominant
    # coordinate p and the other one q: with t = q / p in [-1, 1], sign(p) * r = p * k * sqrt(1 + t^2) and
    # sign(p) * r * atan(q / p) = p * k * sqrt(1 + t^2) * atan(t), smooth and 0 at the pole. The where-guard on p
    # (p = 0 only at the pole, where q = 0 too) keeps the division and its gradient finite.
    use_x = ops.abs(y) <= ops.abs(x)
    p = ops.where(use_x, x, y)
    q = ops.where(use_x, y, x)
    t = q / ops.where(p != 0, p, ops.ones_like(p))
    root = ops.sqrt(1.0 + t * t)
    rp = p * k * root
    along = rp * _SQRT_PI_OVER_2  # the Lambert coordinate along the dominant axis
    across = rp * _TWO_OVER_SQRT_PI * _arctan_unit(t, root)
    lam_x = ops.where(use_x, along, across)
    lam_y = ops.where(use_x, across, along)
    scale = float(npx) / _SQRT_HALF_PI
    return lam_y * scale + float(npx), lam_x * scale + float(npx)


def _check_textures(texture_north, texture_south):
    if tuple(texture_north.shape) != tuple(texture_south.shape):
        raise EBSDInputError(
            f"north and south master-pattern textures differ in shape: {tuple(texture_north.shape)} vs "
            f"{tuple(texture_south.shape)}",
            field="master_pattern",
        )
    shape = tuple(texture_north.shape)
    if len(shape) not in (2, 3) or shape[0] != shape[1] or shape[0] % 2 != 1:
        raise EBSDInputError(
            f"master-pattern texture must be (S, S) or (S, S, C) with odd S = 2 npx + 1, got {shape}",
            field="master_pattern",
        )


def sample_lambert(texture_north, texture_south, v):
    """Bilinear samples of a two-hemisphere square-Lambert master pattern at directions ``v``.

    Parameters
    ----------
    texture_north, texture_south
        (S, S) or (S, S, C) intensities, S = 2 npx + 1 (rows = Lambert Y, columns = Lambert X); any real dtype
        (uint8 is cast to float). Differentiable (they may be trainable variables).
    v
        (..., 3) crystal-frame directions; z >= 0 samples the north texture.

    Returns
    -------
    tensor
        (...) intensities, or (..., C) for channelled textures; differentiable with respect to the textures and v.
    """
    v = ops.convert_to_tensor(v)
    table, side, _ = _texture_table(texture_north, texture_south, _float_dtype(v))
    row, col, north = lambert_coordinates(v, (side - 1) // 2)
    return bilinear_from_table(table, side, row, col, north)


def _texture_table(texture_north, texture_south, dtype):
    """Validate the hemispheres and stack them into one gather table.

    Returns (table, S, squeeze): the table is (2 S^2,) for single-channel textures and (2 S^2, C) (channel-last,
    so one gather fetches C contiguous values) otherwise; entry h S^2 + i S + j is pixel (i, j) of hemisphere h
    (0 north, 1 south).
    """
    tn = ops.convert_to_tensor(texture_north)
    ts = ops.convert_to_tensor(texture_south)
    _check_textures(tn, ts)
    tn, ts = ops.cast(tn, dtype), ops.cast(ts, dtype)
    side = int(tn.shape[0])
    squeeze = len(tn.shape) == 2
    flat_shape = (2 * side * side,) if squeeze else (2 * side * side, int(tn.shape[2]))
    return ops.reshape(ops.stack([tn, ts], axis=0), flat_shape), side, squeeze


def bilinear_from_table(table, side: int, row, col, north):
    """Bilinear interpolation at float pixel coordinates: (...) -> (...) or (..., C) following the table.

    Four gathers from the flat table (measured ~3x faster under XLA on CPU than one gather of a precomputed
    4-corner table). The upper neighbour is clamped at the grid border as in kikuchipy (index + 1 -> index).
    """
    row, col = ops.cast(row, table.dtype), ops.cast(col, table.dtype)
    i0f = ops.clip(ops.floor(row), 0.0, side - 1.0)
    j0f = ops.clip(ops.floor(col), 0.0, side - 1.0)
    di = row - i0f  # weights measured from the (clamped) lower corner, as kikuchipy does
    dj = col - j0f
    if len(table.shape) == 2:
        di, dj = di[..., None], dj[..., None]
    i0, j0 = ops.cast(i0f, "int32"), ops.cast(j0f, "int32")
    i1, j1 = ops.minimum(i0 + 1, side - 1), ops.minimum(j0 + 1, side - 1)
    base = ops.where(north, 0, side * side)

    def corner(i, j):
        return ops.take(table, base + i * side + j, axis=0)

    c00, c10, c01, c11 = corner(i0, j0), corner(i1, j0), corner(i0, j1), corner(i1, j1)
    # Nested lerps: the same value as the four-weight sum with fewer multiplies.
    top = c00 + (c01 - c00) * dj
    bottom = c10 + (c11 - c10) * dj
    return top + (bottom - top) * di


class LambertProjector:
    """Project two-hemisphere square-Lambert master patterns onto a fixed detector.

    The detector's sample-frame direction cosines are computed once (float64 numpy, stored as a float32 constant);
    a per-pattern pattern centre can be given at call time instead.

    Parameters
    ----------
    geometry
        Detector shape, pattern centre and tilts.
    npx
        Half side of the master-pattern grid ((2 npx + 1)^2 pixels per hemisphere); textures are checked against it.

    Examples
    --------
    >>> proj = LambertProjector(DetectorGeometry(), npx=200)
    >>> patterns = proj(mp_north, mp_south, quaternions)  # (B, 60, 60) raw intensities
    """

    def __init__(self, geometry: DetectorGeometry | None = None, npx: int = 200):
        self.geometry = geometry if geometry is not None else DetectorGeometry()
        if int(npx) != npx or npx < 1:
            raise EBSDInputError(f"npx must be a positive integer, got {npx!r}", field="npx")
        self.npx = int(npx)
        self._directions64 = direction_cosines(self.geometry)  # (H*W, 3) float64
        self.directions = ops.convert_to_tensor(self._directions64.astype(np.float32))

    def __call__(self, texture_north, texture_south, quaternion, pc=None):
        """Patterns (B, H, W) (or (B, H, W, C) for channelled textures), raw intensities.

        Parameters
        ----------
        texture_north, texture_south
            (2 npx + 1, 2 npx + 1[, C]) master-pattern hemispheres.
        quaternion
            (B, 4) orientations (Bunge passive, EMsoft P = +1; see :func:`rotate_to_crystal`).
        pc
            Optional (B, 3) Bruker pattern centres overriding the geometry's (differentiable).
        """
        quaternion = _as_float(quaternion)
        dtype = quaternion.dtype
        table, side, _ = _texture_table(texture_north, texture_south, dtype)
        if side != 2 * self.npx + 1:
            raise EBSDInputError(
                f"master-pattern texture side {side} does not match npx={self.npx} (expected {2 * self.npx + 1})",
                field="master_pattern",
            )
        if pc is not None:
            directions = gnomonic_directions(ops.cast(ops.convert_to_tensor(pc), dtype), self.geometry)
        elif dtype == "float32":
            directions = self.directions
        else:  # float64 refinement keeps the float64 geometry
            directions = ops.convert_to_tensor(self._directions64, dtype=dtype)
        x, y, z = rotate_components(directions, quaternion_to_matrix(quaternion))
        row, col = lambert_pixels(x, y, z, self.npx)
        out = bilinear_from_table(table, side, row, col, z >= 0)
        h, w = self.geometry.shape
        return ops.reshape(out, (-1, h, w) + tuple(out.shape[2:]))


# ----------------------------------------------------------------------------------------------------------------
# Symmetry folding and Lambert grids (numpy for constants, keras.ops in the graph)
# ----------------------------------------------------------------------------------------------------------------


def fold_directions(x, y, z, symmetry: str):
    """Map direction components into the fundamental sector of ``symmetry`` (keras.ops or numpy arrays).

    Parameters
    ----------
    x, y, z
        Components of (unit) crystal-frame directions, any matching shapes.
    symmetry
        "m-3m": the 48 operations of the cubic holohedry are the signed permutations of (x, y, z), so sorting the
        absolute values (y = smallest, x = middle, z = largest) picks the representative in 0 <= y <= x <= z.
        "4/mmm": sign changes of all three and the x <-> y swap: (max(|x|, |y|), min(|x|, |y|), |z|).

    Returns
    -------
    tuple
        (x, y, z) folded, the same kind of arrays.
    """
    if symmetry not in ("m-3m", "4/mmm"):
        raise ValueError(f"cannot fold for symmetry {symmetry!r}; use 'm-3m' or '4/mmm'")
    xp = np if isinstance(x, np.ndarray) else ops
    ax, ay, az = xp.abs(x), xp.abs(y), xp.abs(z)
    hi_xy, lo_xy = xp.maximum(ax, ay), xp.minimum(ax, ay)
    if symmetry == "4/mmm":
        return hi_xy, lo_xy, az
    hi = xp.maximum(hi_xy, az)
    lo = xp.minimum(lo_xy, az)
    mid = xp.maximum(lo_xy, xp.minimum(hi_xy, az))  # the median of three, exact (no cancellation)
    return mid, lo, hi


def lambert_grid_directions(npx: int) -> np.ndarray:
    """Unit directions of the northern square-Lambert grid pixels (inverse of the EMsoft / kikuchipy mapping).

    Returns
    -------
    numpy.ndarray
        (2 npx + 1, 2 npx + 1, 3) float64, ``[i, j]`` = direction of row i (Lambert Y), column j (Lambert X), z >= 0.
        The southern pixel (i, j) is the same with z negated.
    """
    side = 2 * npx + 1
    coord = (np.arange(side, dtype=np.float64) - npx) / npx * _SQRT_HALF_PI
    lam_y, lam_x = np.meshgrid(coord, coord, indexing="ij")
    use_x = np.abs(lam_y) <= np.abs(lam_x)
    a = np.where(use_x, lam_x, lam_y)  # dominant coordinate
    b = np.where(use_x, lam_y, lam_x)
    safe = np.where(a == 0, 1.0, a)
    rho = 2.0 * a / math.pi * np.sqrt(np.maximum(math.pi - a * a, 0.0))  # signed in-plane radius
    angle = b * math.pi / (4.0 * safe)
    p, q = rho * np.cos(angle), rho * np.sin(angle)
    z = 1.0 - 2.0 * a * a / math.pi
    x = np.where(use_x, p, q)
    y = np.where(use_x, q, p)
    v = np.stack([x, y, z], axis=-1)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def resample_lambert(texture: np.ndarray, npx_out: int) -> np.ndarray:
    """Bilinear resampling of square-Lambert hemispheres to another half side (Lambert coordinates scale linearly).

    Parameters
    ----------
    texture
        (..., S, S) with S = 2 npx_in + 1.
    npx_out
        Target half side.

    Returns
    -------
    numpy.ndarray
        (..., 2 npx_out + 1, 2 npx_out + 1) float64.
    """
    texture = np.asarray(texture, dtype=np.float64)
    side_in = texture.shape[-1]
    npx_in = (side_in - 1) // 2
    if npx_in == npx_out:
        return texture.copy()
    pos = (np.arange(2 * npx_out + 1, dtype=np.float64) - npx_out) * (npx_in / npx_out) + npx_in
    i0 = np.clip(np.floor(pos).astype(int), 0, side_in - 1)
    i1 = np.minimum(i0 + 1, side_in - 1)
    w = pos - i0
    rows = texture[..., i0, :] * (1 - w)[:, None] + texture[..., i1, :] * w[:, None]
    return rows[..., i0] * (1 - w) + rows[..., i1] * w


def lambert_pixels_numpy(x, y, z, npx):
    """float64 numpy version of the Lambert pixel coordinates (same formulas as the projection)."""
    row, col = lambert_pixels(
        ops.convert_to_tensor(np.asarray(x, np.float64)),
        ops.convert_to_tensor(np.asarray(y, np.float64)),
        ops.convert_to_tensor(np.asarray(z, np.float64)),
        npx,
    )
    return np.asarray(ops.convert_to_numpy(row)), np.asarray(ops.convert_to_numpy(col))


def bilinear_numpy(tex, row, col):
    """Bilinear samples of (m, m, C) ``tex`` at float pixel coordinates, clamped like the projection."""
    m = tex.shape[0]
    i0 = np.clip(np.floor(row), 0, m - 1)
    j0 = np.clip(np.floor(col), 0, m - 1)
    di, dj = (row - i0)[..., None], (col - j0)[..., None]
    i0, j0 = i0.astype(int), j0.astype(int)
    i1, j1 = np.minimum(i0 + 1, m - 1), np.minimum(j0 + 1, m - 1)
    top = tex[i0, j0] + (tex[i0, j1] - tex[i0, j0]) * dj
    bottom = tex[i1, j0] + (tex[i1, j1] - tex[i1, j0]) * dj
    return top + (bottom - top) * di
