"""Detector geometry and the keras.ops master-pattern projection, validated against kikuchipy."""

import itertools
import json

import keras
import kikuchipy as kp
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from kikuchipy._utils.numba import rotate_vector
from kikuchipy.detectors import EBSDDetector
from kikuchipy.signals.util._master_pattern import (
    _get_direction_cosines_from_detector,
    _get_lambert_interpolation_parameters,
)
from orix.quaternion import Rotation

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.simulations import (
    DetectorGeometry,
    LambertProjector,
    detector_to_sample_matrix,
    direction_cosines,
    gnomonic_directions,
    lambert_coordinates,
    rotate_to_crystal,
    sample_lambert,
)
from ebsd_keras.simulations.geometry import sample_to_detector_matrix
from ebsd_keras.simulations.projection import fold_directions, lambert_grid_directions

pytestmark = pytest.mark.emsoft

GEOMETRIES = [
    DetectorGeometry(),
    DetectorGeometry(shape=(48, 64), pc=(0.42, 0.31, 0.71)),  # non-square, PC off centre
    DetectorGeometry(
        shape=(30, 20), pc=(0.55, 0.62, 0.48), tilt_deg=-4.0, sample_tilt_deg=65.0, azimuthal_deg=3.0, twist_deg=-6.0
    ),
    DetectorGeometry(shape=(7, 13), pc=(0.6, 0.45, 0.5), tilt_deg=0.0),
]


def _kp_detector(g: DetectorGeometry, pc=None) -> EBSDDetector:
    return EBSDDetector(
        g.shape,
        pc=g.pc if pc is None else pc,
        tilt=g.tilt_deg,
        sample_tilt=g.sample_tilt_deg,
        azimuthal=g.azimuthal_deg,
        twist=g.twist_deg,
    )


def _ncc(a, b):
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def master_pattern():
    return kp.data.nickel_ebsd_master_pattern_small(projection="lambert", hemisphere="both")


@pytest.fixture(scope="module")
def rotations():
    np.random.seed(7)  # orix draws from numpy's global generator
    return Rotation.random(100)


# ------------------------------------------------------------------ geometry


@pytest.mark.parametrize("g", GEOMETRIES, ids=lambda g: f"{g.shape}-{g.pc}")
def test_direction_cosines_equal_kikuchipy(g):
    ref = _get_direction_cosines_from_detector(_kp_detector(g))
    ours = direction_cosines(g)
    assert ours.shape == (g.size, 3) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        sample_to_detector_matrix(g), _kp_detector(g).sample_to_detector.to_matrix()[0], atol=1e-12
    )
    m = detector_to_sample_matrix(g)
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-12)


def test_direction_cosines_point_through_the_pattern_centre():
    # The pixel under the PC is seen along the screen normal Z_d (third column of the detector-to-sample matrix).
    g = DetectorGeometry(shape=(5, 5), pc=(0.5, 0.5, 0.7))
    centre = direction_cosines(g)[12]
    np.testing.assert_allclose(centre, detector_to_sample_matrix(g)[:, 2], atol=1e-12)


def test_geometry_round_trip_and_validation():
    g = GEOMETRIES[2]
    d = json.loads(json.dumps(g.to_dict()))
    assert DetectorGeometry.from_dict(d) == g
    assert g.with_pc((0.1, 0.2, 0.3)).pc == (0.1, 0.2, 0.3)
    with pytest.raises(EBSDInputError, match="shape"):
        DetectorGeometry(shape=(0, 60))
    with pytest.raises(EBSDInputError, match="PCz"):
        DetectorGeometry(pc=(0.5, 0.5, 0.0))
    with pytest.raises(EBSDInputError, match="pc"):
        DetectorGeometry(pc=(0.5, float("nan"), 0.6))
    with pytest.raises(EBSDInputError, match="tilt_deg"):
        DetectorGeometry(tilt_deg=float("inf"))
    with pytest.raises(EBSDInputError, match="unknown detector geometry keys"):
        DetectorGeometry.from_dict({"shape": [60, 60], "pcx": 0.5}, path="x.h5")
    with pytest.raises(EBSDInputError, match="x.h5: detector/pc"):
        DetectorGeometry.from_dict({"pc": [0.5, 0.5, -1.0]}, path="x.h5")


def test_gnomonic_directions_equal_direction_cosines_per_pc():
    g = GEOMETRIES[2]
    pcs = np.array([[0.5, 0.5, 0.6], [0.41, 0.58, 0.52], [0.63, 0.37, 0.81]])
    ours64 = np.asarray(gnomonic_directions(pcs, g))
    ours32 = np.asarray(gnomonic_directions(pcs.astype(np.float32), g))
    assert ours64.shape == (3, g.size, 3)
    for b, pc in enumerate(pcs):
        ref = direction_cosines(g.with_pc(pc))
        np.testing.assert_allclose(ours64[b], ref, atol=1e-12)
        np.testing.assert_allclose(ours32[b], ref, atol=1e-6)
    # Varying PCs in kikuchipy give the same set.
    ref_kp = _get_direction_cosines_from_detector(_kp_detector(g, pc=pcs))
    np.testing.assert_allclose(ours64, ref_kp, atol=1e-10)


def test_gnomonic_directions_gradient_wrt_pc():
    pc = tf.Variable([[0.5, 0.5, 0.6]], dtype=tf.float64)
    target = tf.constant(direction_cosines(DetectorGeometry(pc=(0.52, 0.47, 0.63))))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(gnomonic_directions(pc, DetectorGeometry()) - target))
    grad = tape.gradient(loss, pc).numpy()
    assert np.all(np.isfinite(grad)) and np.all(np.abs(grad) > 0)


# ------------------------------------------------------------------ rotation and Lambert mapping


def test_rotate_to_crystal_is_kikuchipys_rotation():
    np.random.seed(3)
    q = Rotation.random(5).data
    v = _unit(np.random.randn(40, 3))
    ours = np.asarray(rotate_to_crystal(v, q))
    assert ours.shape == (5, 40, 3)
    for b in range(5):
        np.testing.assert_allclose(ours[b], rotate_vector(q[b], v), atol=1e-12)
    # Per-pattern directions, and an un-normalised quaternion (normalised inside).
    ours_b = np.asarray(rotate_to_crystal(np.broadcast_to(v, (5, 40, 3)), 3.0 * q))
    np.testing.assert_allclose(ours_b, ours, atol=1e-12)
    # The inverse (passive vs active) would not match: guards against a transposed matrix.
    inv = q * np.array([1, -1, -1, -1])
    assert np.abs(np.asarray(rotate_to_crystal(v, inv)) - ours).max() > 0.1


def _special_directions():
    s = 1 / np.sqrt(2)
    special = [
        [0, 0, 1],
        [0, 0, -1],
        [1, 0, 0],
        [-1, 0, 0],
        [0, 1, 0],
        [0, -1, 0],  # poles and equator axes
        [s, s, 0],
        [-s, s, 0],
        [s, -s, 0],
        [-s, -s, 0],  # Lambert-square corners
        [0.3, 0.3, 0.9],
        [-0.3, 0.3, -0.9],
        [0.2, -0.2, 0.5],  # |x| = |y| branch switch
        [1e-9, 0, 1],
        [0, -1e-9, -1],  # next to the poles
        [0.8, 0.6, 0.0],
        [0.6, -0.8, -0.0],  # on the equator
    ]
    np.random.seed(11)
    return _unit(np.concatenate([special, np.random.randn(500, 3)]))


def _kp_lambert(v, side):
    scale = (side - 1) / 2
    return _get_lambert_interpolation_parameters(v, side, side, float(scale))


def test_lambert_coordinates_match_kikuchipy():
    v = _special_directions()
    npx = 200
    row, col, north = lambert_coordinates(v, npx)
    nii, nij, _, _, di, dj, _, _ = _kp_lambert(v, 2 * npx + 1)
    np.testing.assert_allclose(np.asarray(row), nii + di, atol=1e-9)
    np.testing.assert_allclose(np.asarray(col), nij + dj, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(north), v[:, 2] >= 0)
    # Poles at the centre, the equator on the border of the square.
    np.testing.assert_allclose(np.asarray(row)[:2], npx)
    np.testing.assert_allclose(np.asarray(col)[2:4], [2 * npx, 0], atol=1e-9)
    r32, c32, _ = lambert_coordinates(v.astype(np.float32), npx)
    assert np.abs(np.asarray(r32) - (nii + di)).max() < 2e-3  # float32 pixel coordinates


def test_sample_lambert_matches_kikuchipy_interpolation_with_border_clamp():
    rng = np.random.default_rng(0)
    side = 21
    north, south = rng.random((side, side)), rng.random((side, side))
    v = _special_directions()
    nii, nij, niip, nijp, di, dj, dim, djm = _kp_lambert(v, side)
    ref = np.empty(len(v))
    for k in range(len(v)):
        mp = north if v[k, 2] >= 0 else south
        ref[k] = (
            mp[nii[k], nij[k]] * dim[k] * djm[k]
            + mp[niip[k], nij[k]] * di[k] * djm[k]
            + mp[nii[k], nijp[k]] * dim[k] * dj[k]
            + mp[niip[k], nijp[k]] * di[k] * dj[k]
        )
    ours = np.asarray(sample_lambert(north, south, v))
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    # Exactly on the border (+x equator, corners) the clamped neighbour gives the border pixel itself.
    assert ours[2] == pytest.approx(north[side // 2, side - 1])
    assert ours[6] == pytest.approx(north[side - 1, side - 1])
    # Channel-last textures sample every channel the same way.
    both = np.asarray(sample_lambert(np.stack([north, 2 * north], -1), np.stack([south, 2 * south], -1), v))
    np.testing.assert_allclose(both, np.stack([ref, 2 * ref], -1), atol=1e-12)


def test_lambert_gradients_finite_at_poles_and_branch_switch():
    v = tf.Variable(_special_directions()[:17].astype(np.float32))
    rng = np.random.default_rng(1)
    north = tf.Variable(rng.random((21, 21)).astype(np.float32))
    south = tf.Variable(rng.random((21, 21)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        row, col, _ = lambert_coordinates(v, 10)
        coords = tf.reduce_sum(row * 1.3 + col)
        samples = tf.reduce_sum(sample_lambert(north, south, v))
    for grad in (tape.gradient(coords, v), *tape.gradient(samples, [v, north, south])):
        assert np.all(np.isfinite(np.asarray(grad)))


def test_lambert_jacobian_at_the_pole():
    v = tf.Variable([[0.0, 0.0, 1.0]], dtype=tf.float64)
    with tf.GradientTape() as tape:
        _, col, _ = lambert_coordinates(v, 10)
    grad = tape.gradient(col, v).numpy()[0]
    # Near the pole r = sqrt(2 (1 - z)) ~ x, so X ~ x sqrt(pi) / 2 and col = npx + npx X / sqrt(pi / 2)
    # -> d col / dx = npx / sqrt(2): finite and non-zero (a naive sqrt(x^2 + y^2) would give NaN here).
    np.testing.assert_allclose(grad, [10 / np.sqrt(2), 0.0, 0.0], atol=1e-9)


# ------------------------------------------------------------------ full projection against kikuchipy


def test_projection_reproduces_kikuchipy_ni(master_pattern, rotations):
    g = DetectorGeometry()
    ref = master_pattern.get_patterns(
        rotations, _kp_detector(g), energy=20, compute=True, dtype_out=np.float32, show_progressbar=False
    ).data
    proj = LambertProjector(g, npx=200)
    ours = proj(master_pattern.data[0], master_pattern.data[1], rotations.data.astype(np.float32))
    assert tuple(ours.shape) == (100, 60, 60)
    ncc = _ncc(ours, ref)
    assert ncc.mean() >= 0.9999 and ncc.min() >= 0.999, (ncc.mean(), ncc.min())
    # Measured 1 - NCC ~ 1e-10 (float32 rounding only); a half-pixel or hemisphere slip would show far above this.
    assert 1 - ncc.min() < 1e-6, ncc.min()


def test_projection_non_square_detector_and_varying_pc(master_pattern, rotations):
    g = GEOMETRIES[2]
    rot = rotations[:12]
    proj = LambertProjector(g, npx=200)
    ref = master_pattern.get_patterns(
        rot, _kp_detector(g), energy=20, compute=True, dtype_out=np.float32, show_progressbar=False
    ).data
    ncc = _ncc(proj(master_pattern.data[0], master_pattern.data[1], rot.data), ref)
    assert ncc.min() >= 0.9999, ncc.min()
    rng = np.random.default_rng(2)
    pcs = np.array(g.pc) + rng.uniform(-0.05, 0.05, (12, 3))
    ref = master_pattern.get_patterns(
        rot, _kp_detector(g, pc=pcs), energy=20, compute=True, dtype_out=np.float32, show_progressbar=False
    ).data
    ours = proj(master_pattern.data[0], master_pattern.data[1], rot.data.astype(np.float32), pc=pcs.astype(np.float32))
    ncc = _ncc(ours, ref)
    assert ncc.min() >= 0.9999, ncc.min()


def test_north_texture_is_kikuchipy_upper(master_pattern, rotations):
    # Ni is centrosymmetric (identical hemispheres), so make the south differ to see which one is used where.
    mp = master_pattern.deepcopy()
    mp.data[1] = np.ascontiguousarray(255 - mp.data[1].T)
    rot = rotations[:20]
    g = DetectorGeometry()
    ref = mp.get_patterns(
        rot, _kp_detector(g), energy=20, compute=True, dtype_out=np.float32, show_progressbar=False
    ).data
    proj = LambertProjector(g, npx=200)
    good = _ncc(proj(mp.data[0], mp.data[1], rot.data), ref)
    swapped = _ncc(proj(mp.data[1], mp.data[0], rot.data), ref)
    assert good.min() >= 0.9999
    assert swapped.mean() < 0.9


def test_projector_rejects_bad_textures():
    proj = LambertProjector(DetectorGeometry(shape=(4, 4)), npx=10)
    q = np.array([[1.0, 0, 0, 0]], np.float32)
    with pytest.raises(EBSDInputError, match="npx=10"):
        proj(np.zeros((41, 41)), np.zeros((41, 41)), q)
    with pytest.raises(EBSDInputError, match="differ in shape"):
        proj(np.zeros((21, 21)), np.zeros((21, 21, 2)), q)
    with pytest.raises(EBSDInputError, match="odd S"):
        sample_lambert(np.zeros((20, 20)), np.zeros((20, 20)), np.array([[0.0, 0.0, 1.0]]))
    with pytest.raises(EBSDInputError, match="npx"):
        LambertProjector(npx=0)


# ------------------------------------------------------------------ gradients and refinement


def _qmul(p, q):
    a1, b1, c1, d1 = (p[:, i] for i in range(4))
    a2, b2, c2, d2 = (q[:, i] for i in range(4))
    return ops.stack(
        [
            a1 * a2 - b1 * b2 - c1 * c2 - d1 * d2,
            a1 * b2 + b1 * a2 + c1 * d2 - d1 * c2,
            a1 * c2 - b1 * d2 + c1 * a2 + d1 * b2,
            a1 * d2 + b1 * c2 - c1 * b2 + d1 * a2,
        ],
        axis=-1,
    )


def _exp_map(w):
    """Quaternion of a rotation vector (radians); finite gradient at w = 0."""
    theta = ops.sqrt(ops.sum(w * w, axis=-1, keepdims=True) + 1e-30)
    return ops.concatenate([ops.cos(theta / 2), ops.sin(theta / 2) / theta * w], axis=-1)


def _tf_ncc(a, b):
    a = a - ops.mean(a, axis=(1, 2), keepdims=True)
    b = b - ops.mean(b, axis=(1, 2), keepdims=True)
    return ops.sum(a * b, axis=(1, 2)) / ops.sqrt(ops.sum(a * a, axis=(1, 2)) * ops.sum(b * b, axis=(1, 2)))


def test_gradients_wrt_texture_and_quaternion_are_finite_and_nonzero(master_pattern, rotations):
    proj = LambertProjector(DetectorGeometry(shape=(20, 20)), npx=200)
    north = tf.Variable(master_pattern.data[0].astype(np.float32) / 255)
    south = tf.Variable(master_pattern.data[1].astype(np.float32) / 255)
    q = tf.Variable(rotations.data[:4].astype(np.float32))
    target = tf.random.stateless_uniform((4, 20, 20), seed=(1, 2))
    with tf.GradientTape() as tape:
        loss = ops.mean(ops.square(proj(north, south, q) - target))
    gn, gs, gq = tape.gradient(loss, [north, south, q])
    for grad in (gn, gs, gq):
        grad = np.asarray(tf.convert_to_tensor(grad))
        assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
    # Only texels near projected pixels receive gradient.
    assert 0 < np.count_nonzero(np.asarray(tf.convert_to_tensor(gn))) < gn.shape[0] * gn.shape[1] / 4


def test_adam_refinement_recovers_a_half_degree_perturbation(master_pattern, rotations):
    g = DetectorGeometry()
    rot = rotations[:4]
    target = tf.constant(
        master_pattern.get_patterns(
            rot, _kp_detector(g), energy=20, compute=True, dtype_out=np.float32, show_progressbar=False
        ).data
    )
    rng = np.random.default_rng(5)
    axes = _unit(rng.normal(size=(4, 3)))
    start = Rotation.from_axes_angles(axes, np.deg2rad(0.5)) * rot
    assert np.allclose(np.rad2deg((~rot * start).angle), 0.5, atol=1e-4)

    proj = LambertProjector(g, npx=200)
    north = tf.constant(master_pattern.data[0].astype(np.float32))
    south = tf.constant(master_pattern.data[1].astype(np.float32))
    q0 = tf.constant(start.data.astype(np.float32))
    w = tf.Variable(tf.zeros((4, 3)))  # local rotation vector (radians) about the start
    keras.utils.set_random_seed(0)
    opt = keras.optimizers.Adam(learning_rate=keras.optimizers.schedules.CosineDecay(2e-3, 80))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = -ops.sum(_tf_ncc(proj(north, south, _qmul(_exp_map(w), q0)), target))
        opt.apply_gradients([(tape.gradient(loss, w), w)])
        return loss

    for _ in range(80):
        step()
    final = Rotation(np.asarray(_qmul(_exp_map(w), q0), np.float64))
    err = np.rad2deg((~rot * final).angle)
    assert err.max() < 0.05, err


def test_fold_is_invariant_under_the_point_group_and_lands_in_the_sector():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(500, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    folded = np.stack(fold_directions(*v.T, "m-3m"), axis=-1)
    x, y, z = folded.T
    assert np.all((0 <= y) & (y <= x) & (x <= z))
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((-1, 1), repeat=3):
            w = v[:, perm] * np.array(signs)
            np.testing.assert_allclose(np.stack(fold_directions(*w.T, "m-3m"), axis=-1), folded, atol=1e-15)
    tetragonal = np.stack(fold_directions(*v.T, "4/mmm"), axis=-1)
    np.testing.assert_allclose(np.stack(fold_directions(-v[:, 1], v[:, 0], -v[:, 2], "4/mmm"), -1), tetragonal)
    # keras.ops and numpy agree
    k = np.stack([np.asarray(c) for c in fold_directions(*(tf.constant(c) for c in v.T), "m-3m")], axis=-1)
    np.testing.assert_allclose(k, folded, atol=1e-12)


def test_lambert_grid_directions_invert_the_lambert_mapping():
    npx = 25
    v = lambert_grid_directions(npx)
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1.0, atol=1e-12)
    assert (v[..., 2] >= -1e-12).all()
    row, col, north = lambert_coordinates(tf.constant(v.reshape(-1, 3)), npx)
    rows, cols = np.meshgrid(np.arange(2 * npx + 1), np.arange(2 * npx + 1), indexing="ij")
    np.testing.assert_allclose(np.asarray(row).reshape(rows.shape), rows, atol=1e-9)
    np.testing.assert_allclose(np.asarray(col).reshape(cols.shape), cols, atol=1e-9)
