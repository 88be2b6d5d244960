"""Orientation maths against orix and the EMsoft known value."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from orix.quaternion import Orientation, Rotation, symmetry

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.orientation import (
    CUBIC_SYMMETRY,
    LAUE_GROUPS,
    POINT_GROUP_TO_LAUE,
    check_euler_radians,
    disorientation,
    disorientation_angle,
    disorientation_loss,
    euler_to_quaternion,
    fold_to_fundamental_sector,
    laue_group,
    quaternion_conjugate,
    quaternion_multiply,
    quaternion_to_euler,
    reduce_to_fundamental_zone,
    symmetry_matrices,
    symmetry_operators,
)


@pytest.fixture(scope="module")
def pairs():
    keras.utils.set_random_seed(1)
    return Rotation.random(3000).data, Rotation.random(3000).data


def test_known_emsoft_value():
    q = euler_to_quaternion([120.0, 45.0, 60.0], degrees=True)
    np.testing.assert_allclose(q[0], [0.0, -0.33141, -0.19134, -0.92388], atol=1e-5)
    np.testing.assert_allclose(q, euler_to_quaternion(np.deg2rad([120.0, 45.0, 60.0])), atol=1e-15)


def test_euler_to_quaternion_matches_orix_and_q0_positive(pairs):
    q, _ = pairs
    euler = Rotation(q).to_euler()
    ours = euler_to_quaternion(euler)
    assert np.all(ours[:, 0] >= 0)
    np.testing.assert_allclose(
        ours, Rotation.from_euler(euler).data * np.sign(Rotation.from_euler(euler).data[:, :1]), atol=1e-12
    )


def test_quaternion_to_euler_matches_orix_and_round_trips(pairs):
    q, _ = pairs
    euler = quaternion_to_euler(q)
    np.testing.assert_allclose(euler, Rotation(q).to_euler(), atol=1e-9)
    assert np.all(disorientation(euler_to_quaternion(euler), q) < 1e-4)
    # degenerate Phi = 0 and Phi = pi
    for e in ([0.3, 0.0, 0.0], [0.3, np.pi, 0.0]):
        back = quaternion_to_euler(euler_to_quaternion(e))
        assert disorientation(euler_to_quaternion(back), euler_to_quaternion(e))[0] < 1e-4


def test_symmetry_group_is_closed_and_has_24_unit_elements():
    assert CUBIC_SYMMETRY.shape == (24, 4)
    np.testing.assert_allclose(np.linalg.norm(CUBIC_SYMMETRY, axis=1), 1.0)
    prod = quaternion_multiply(CUBIC_SYMMETRY[:, None], CUBIC_SYMMETRY[None, :]).reshape(-1, 4)
    prod *= np.sign(prod[:, :1] + 1e-9)
    # every product is one of the 24 elements (up to sign)
    dots = np.abs(prod @ CUBIC_SYMMETRY.T)
    assert np.allclose(dots.max(axis=1), 1.0)
    # the same set as orix's proper cubic group 432
    np.testing.assert_allclose(np.abs(symmetry.O.data @ CUBIC_SYMMETRY.T).max(axis=1), np.ones(24), atol=1e-12)


def test_product_and_conjugate():
    q = Rotation.random(10).data
    np.testing.assert_allclose(quaternion_multiply(q, quaternion_conjugate(q))[:, 0], 1.0)
    np.testing.assert_allclose(
        quaternion_multiply(q[:5], q[5:]),
        (Rotation(q[:5]) * Rotation(q[5:])).data
        * np.sign(quaternion_multiply(q[:5], q[5:])[:, :1])
        * np.sign((Rotation(q[:5]) * Rotation(q[5:])).data[:, :1]),
        atol=1e-12,
    )


def test_disorientation_matches_orix(pairs):
    a, b = pairs
    ref = np.rad2deg(Orientation(a, symmetry.Oh).angle_with(Orientation(b, symmetry.Oh)))
    np.testing.assert_allclose(disorientation(a, b), ref, atol=1e-4)
    assert disorientation(a, b).max() <= 62.8


def test_disorientation_symmetry_and_sign_invariance(pairs):
    a, b = pairs
    s = CUBIC_SYMMETRY[np.arange(len(a)) % 24]
    np.testing.assert_allclose(disorientation(quaternion_multiply(s, a), -b), disorientation(a, b), atol=1e-6)
    np.testing.assert_allclose(disorientation(a, a), 0.0, atol=1e-5)


def test_reduce_to_fundamental_zone(pairs):
    a, _ = pairs
    fz = reduce_to_fundamental_zone(a)
    assert np.all(disorientation(fz, a) < 1e-4)
    # inside the 432 zone: no equivalent has a smaller rotation angle
    equiv = np.abs(quaternion_multiply(CUBIC_SYMMETRY[None], fz[:, None])[..., 0])
    assert np.all(fz[:, 0] >= equiv.max(axis=1) - 1e-12)
    np.testing.assert_allclose(fz, reduce_to_fundamental_zone(Orientation(a, symmetry.Oh).reduce().data), atol=1e-9)


def test_check_euler_radians_refuses_degrees_and_nan():
    check_euler_radians(np.deg2rad([[120, 45, 60]]))
    with pytest.raises(EBSDInputError, match="degrees"):
        check_euler_radians([[120.0, 45.0, 60.0]], path="x.h5")
    with pytest.raises(EBSDInputError, match="x.h5: EulerAngles: .*non-finite"):
        check_euler_radians([[np.nan, 0.0, 0.0]], path="x.h5")


def test_keras_angle_matches_numpy_and_is_sign_and_norm_invariant(pairs):
    a, b = pairs
    ours = ops.convert_to_numpy(disorientation_angle(a.astype("float32"), (-3.0 * b).astype("float32")))
    np.testing.assert_allclose(ours, disorientation(a, b), atol=2e-3)
    # accurate near zero in float32
    small = (Rotation.from_axes_angles([1, 2, 3], np.deg2rad(0.01)) * Rotation(a[:50])).data
    np.testing.assert_allclose(
        ops.convert_to_numpy(disorientation_angle(a[:50].astype("float32"), small.astype("float32"))),
        0.01,
        atol=2e-4,
    )


def test_keras_loss_is_monotonic_in_angle_and_zero_at_identity(pairs):
    a, b = pairs
    loss = ops.convert_to_numpy(disorientation_loss(a, b))
    angle = disorientation(a, b)
    np.testing.assert_allclose(loss, 1 - np.cos(np.deg2rad(angle) / 2), atol=1e-9)
    assert np.allclose(ops.convert_to_numpy(disorientation_loss(a, -a)), 0.0, atol=1e-7)


def test_keras_loss_gradient_finite_at_zero_and_descends():
    target = Rotation.random(8).data.astype("float32")
    for start in (target, target * 2.0):  # identical (non-normalised) orientations: finite gradient
        x = tf.Variable(start)
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(disorientation_loss(target, x)) + tf.reduce_sum(disorientation_angle(target, x))
        grad = tape.gradient(total, x)
        assert np.all(np.isfinite(grad.numpy()))
    # gradient descent on the loss reduces the disorientation
    x = tf.Variable(Rotation.random(8).data.astype("float32"))
    before = disorientation(target, x.numpy()).mean()
    opt = keras.optimizers.Adam(0.05)
    for _ in range(200):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(disorientation_loss(target, x))
        opt.apply_gradients([(tape.gradient(loss, x), x)])
    assert disorientation(target, x.numpy()).mean() < min(1.0, before / 10)


# ----------------------------------------------------------------------------------------------------------------
# Every Laue group, against orix
# ----------------------------------------------------------------------------------------------------------------

_ORIX_LAUE = {g.name: g for g in symmetry._groups if g.name in LAUE_GROUPS}
_ORDERS = {"-1": 1, "2/m": 2, "mmm": 4, "4/m": 4, "4/mmm": 8, "-3": 3, "-3m": 6, "6/m": 6, "6/mmm": 12, "m-3": 12}


@pytest.fixture(scope="module")
def pairs64():
    rng = np.random.default_rng(17)
    a, b = rng.normal(size=(2, 3000, 4))
    return a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)


def test_eleven_laue_groups_and_point_group_mapping():
    assert len(LAUE_GROUPS) == 11 and set(_ORIX_LAUE) == set(LAUE_GROUPS)
    assert len(POINT_GROUP_TO_LAUE) == 40  # the 32 point groups and orix's 8 names of other settings
    orix_name = {"2": "112", "m": "11m"}  # orix spells these two by their setting
    for name, laue in POINT_GROUP_TO_LAUE.items():  # orix agrees on every point group's Laue group
        assert next(g for g in symmetry._groups if g.name == orix_name.get(name, name)).laue.name == laue
    assert laue_group("622") == "6/mmm" and laue_group("-43m") == "m-3m"
    with pytest.raises(EBSDInputError, match="symmetry: unknown point group '6/mm'"):
        laue_group("6/mm")


@pytest.mark.parametrize("group", LAUE_GROUPS)
def test_symmetry_operators_equal_orix_laue_proper_subgroup(group):
    ours = symmetry_operators(group)
    ref = _ORIX_LAUE[group].laue_proper_subgroup.data
    assert ours.shape == (len(ref), 4) == (_ORDERS.get(group, 24), 4)
    np.testing.assert_allclose(ours[0], [1, 0, 0, 0])
    assert np.all(ours[:, 0] >= 0)
    # the same set up to q -> -q, each element once
    dots = np.abs(ref @ ours.T)
    np.testing.assert_allclose(np.sort(dots.max(axis=1)), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.sort(dots.max(axis=0)), 1.0, atol=1e-12)
    assert np.all(np.isclose(dots, 1.0, atol=1e-9).sum(axis=1) == 1)
    # matrices: proper rotations and their inverses, closed under products
    mats = symmetry_matrices(group)
    assert mats.shape == (2 * len(ours), 3, 3)
    np.testing.assert_allclose(np.linalg.det(mats[: len(ours)]), 1.0)
    np.testing.assert_allclose(np.linalg.det(mats[len(ours) :]), -1.0)
    prods = np.einsum("aij,bjk->abik", mats, mats).reshape(-1, 1, 9)
    assert np.all(np.min(np.abs(prods - mats.reshape(1, -1, 9)).max(axis=2), axis=1) < 1e-12)


@pytest.mark.parametrize("group", LAUE_GROUPS)
def test_disorientation_and_reduction_match_orix_for_every_group(group, pairs64):
    a, b = pairs64
    sym = _ORIX_LAUE[group]
    ref = Orientation(a, sym).angle_with(Orientation(b, sym), degrees=True)
    ours = disorientation(a, b, symmetry=group)
    assert np.abs(ours - ref).max() <= 1e-6
    # equivalent inputs give the same angle
    s = symmetry_operators(group)[np.arange(len(a)) % len(symmetry_operators(group))]
    np.testing.assert_allclose(disorientation(quaternion_multiply(s, a), -b, symmetry=group), ours, atol=1e-9)
    np.testing.assert_allclose(disorientation(a, a, symmetry=group), 0.0, atol=1e-6)
    fz = reduce_to_fundamental_zone(a, symmetry=group)
    orix_fz = Orientation(a, sym).reduce().data
    np.testing.assert_allclose(fz, orix_fz * np.sign(orix_fz[:, :1]), atol=1e-12)
    assert np.all(Orientation(fz, sym) < _orientation_region(sym))


def _orientation_region(sym):
    from orix.quaternion import OrientationRegion

    return OrientationRegion.from_symmetry(sym.laue_proper_subgroup)


def test_default_symmetry_is_cubic(pairs64):
    a, b = pairs64
    np.testing.assert_array_equal(disorientation(a, b), disorientation(a, b, symmetry="m-3m"))
    assert disorientation(a, b, symmetry="-1").max() > 150 > 62.8 > disorientation(a, b).max()


@pytest.mark.parametrize("group", LAUE_GROUPS)
def test_keras_loss_and_angle_any_group(group, pairs64):
    a, b = (x[:500] for x in pairs64)
    angle = disorientation(a, b, symmetry=group)
    loss = ops.convert_to_numpy(disorientation_loss(a, -2.0 * b, symmetry=group))
    np.testing.assert_allclose(loss, 1 - np.cos(np.deg2rad(angle) / 2), atol=1e-9)
    np.testing.assert_allclose(
        ops.convert_to_numpy(disorientation_angle(a.astype("float32"), b.astype("float32"), symmetry=group)),
        angle,
        atol=2e-3,
    )
    # finite gradient at 0 deg: identical and symmetry-equivalent predictions
    target = a[:8].astype("float32")
    equivalent = quaternion_multiply(symmetry_operators(group)[-1][None], a[:8]).astype("float32")
    for start in (target, equivalent, 3.0 * target):
        x = tf.Variable(start)
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(disorientation_loss(target, x, symmetry=group))
            total += tf.reduce_sum(disorientation_angle(target, x, symmetry=group))
        grad = tape.gradient(total, x).numpy()
        assert np.all(np.isfinite(grad))
        assert float(total) < 1e-2


@pytest.mark.parametrize("group", LAUE_GROUPS)
def test_fold_to_fundamental_sector(group):
    v = np.random.default_rng(3).normal(size=(2000, 3))
    folded = np.stack(fold_to_fundamental_sector(*v.T, symmetry=group), axis=-1)
    np.testing.assert_allclose(np.linalg.norm(folded, axis=1), np.linalg.norm(v, axis=1))
    mats = symmetry_matrices(group)
    # every symmetry image of a direction folds to the same representative, which is one of its images
    for m in mats[:: max(1, len(mats) // 5)]:
        again = np.stack(fold_to_fundamental_sector(*(v @ m.T).T, symmetry=group), axis=-1)
        np.testing.assert_allclose(again, folded, atol=1e-12)
    images = np.einsum("gij,nj->ngi", mats, v)
    assert np.all(np.min(np.abs(images - folded[:, None]).max(axis=2), axis=1) < 1e-12)
    # the same in keras.ops
    k = fold_to_fundamental_sector(*(ops.convert_to_tensor(c) for c in v.T), symmetry=group)
    np.testing.assert_allclose(np.stack([ops.convert_to_numpy(c) for c in k], axis=-1), folded, atol=1e-12)


def test_fold_sectors_of_reflection_groups_are_the_standard_triangles():
    v = np.random.default_rng(4).normal(size=(3000, 3))
    x, y, z = fold_to_fundamental_sector(*v.T, symmetry="m-3m")
    assert np.all((0 <= y) & (y <= x) & (x <= z))
    x, y, z = fold_to_fundamental_sector(*v.T, symmetry="6/mmm")
    azimuth = np.degrees(np.arctan2(y, x))
    assert np.all((z >= 0) & (azimuth >= 0) & (azimuth <= 30 + 1e-9))
    x, y, z = fold_to_fundamental_sector(*v.T, symmetry="4/mmm")
    assert np.all((z >= 0) & (y >= 0) & (y <= x))
