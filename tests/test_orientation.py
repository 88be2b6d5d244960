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
    check_euler_radians,
    disorientation,
    disorientation_angle,
    disorientation_loss,
    euler_to_quaternion,
    quaternion_conjugate,
    quaternion_multiply,
    quaternion_to_euler,
    reduce_to_fundamental_zone,
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
