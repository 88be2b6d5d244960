"""Loss terms (eqs 6-14), the adaptive KL coefficient and the loss weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from ebsd_keras.losses import (
    KLSchedule,
    LossWeights,
    bce_from_logits,
    gradient_penalty,
    kl_divergence,
    optimal_bce,
    orientation_error_deg,
    orientation_loss,
    voltage_mse,
    wasserstein_critic_loss,
    wasserstein_generator_loss,
)
from ebsd_keras.orientation import euler_to_quaternion


def np_(x):
    return ops.convert_to_numpy(x)


def test_kl_matches_closed_form_and_is_zero_for_the_prior():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(3, 7)).astype("float32")
    logvar = rng.normal(size=(3, 7)).astype("float32")
    sigma = np.exp(0.5 * logvar)
    expected = np.sum(np.log(1 / sigma) + (sigma**2 + mu**2) / 2 - 0.5, axis=1)  # eq 6 + constant
    np.testing.assert_allclose(np_(kl_divergence(mu, logvar)), expected, rtol=1e-5)
    np.testing.assert_allclose(np_(kl_divergence(np.zeros((2, 5)), np.zeros((2, 5)))), 0.0, atol=1e-7)


def test_bce_from_logits_matches_naive_formula_and_is_stable():
    rng = np.random.default_rng(1)
    x = rng.random((2, 6, 6, 1)).astype("float32")
    logits = rng.normal(scale=3, size=(2, 6, 6, 1)).astype("float32")
    p = 1 / (1 + np.exp(-logits.astype("float64")))
    naive = -(x * np.log(p) + (1 - x) * np.log(1 - p))
    np.testing.assert_allclose(np_(bce_from_logits(x, logits)), naive.reshape(2, -1).mean(1), rtol=1e-5)
    huge = np.full((1, 2, 2, 1), 200.0, "float32")
    out = np_(bce_from_logits(np.zeros_like(huge), huge))
    assert np.isfinite(out).all() and out[0] == pytest.approx(200.0)


def test_optimal_bce_is_the_minimum_of_bce():
    rng = np.random.default_rng(2)
    x = rng.uniform(0.05, 0.95, size=(2, 5, 5, 1)).astype("float32")
    x[0, 0, 0, 0] = 0.0  # 0 log 0 = 0
    best = np_(optimal_bce(x))
    exact_logits = np.log(np.clip(x, 1e-7, 1) / np.clip(1 - x, 1e-7, 1))
    np.testing.assert_allclose(np_(bce_from_logits(x, exact_logits)), best, rtol=1e-4)
    assert (np_(bce_from_logits(x, exact_logits + 0.3)) > best).all()
    assert np.isfinite(best).all()


def test_orientation_terms_are_symmetric_aware():
    q = euler_to_quaternion(np.array([[0.3, 0.5, 0.7]])).astype("float32")
    q90 = euler_to_quaternion(np.array([[0.3, 0.5, 0.7 + np.pi / 2]])).astype("float32")
    assert np_(orientation_loss(q, -q))[0] == pytest.approx(0.0, abs=1e-6)
    # phi2 + 90 deg is a crystal-side 4-fold rotation about [001]: a symmetry, disorientation 0
    assert np_(orientation_error_deg(q, q90))[0] == pytest.approx(0.0, abs=1e-2)
    # 50 deg about [001] from the identity is 40 deg away (the 4-fold equivalent is closer); 120 deg about [111] (the
    # 3-fold axis) is 0
    ident = np.array([[1.0, 0, 0, 0]], "float32")
    r50 = np.array([[np.cos(np.deg2rad(25)), 0, 0, np.sin(np.deg2rad(25))]], "float32")
    assert np_(orientation_error_deg(ident, r50))[0] == pytest.approx(40.0, abs=1e-2)
    r111 = np.array([[np.cos(np.deg2rad(60)), *(np.sin(np.deg2rad(60)) / np.sqrt(3),) * 3]], "float32")
    assert np_(orientation_error_deg(ident, r111))[0] == pytest.approx(0.0, abs=1e-2)
    # the largest cubic disorientation, 62.8 deg, about <1, 1, sqrt(2) - 1> is reached, not exceeded
    axis = np.array([1.0, 1.0, np.sqrt(2) - 1])
    axis /= np.linalg.norm(axis)
    half = np.deg2rad(62.799) / 2
    r_max = np.array([[np.cos(half), *(np.sin(half) * axis)]], "float32")
    assert np_(orientation_error_deg(ident, r_max))[0] == pytest.approx(62.8, abs=0.05)
    tilted = euler_to_quaternion(np.array([[0.3, 0.5 + np.deg2rad(2.0), 0.7]])).astype("float32")
    assert np_(orientation_error_deg(q, tilted))[0] == pytest.approx(2.0, abs=1e-2)


def test_voltage_mse_units():
    np.testing.assert_allclose(np_(voltage_mse([20.0, 10.0], [21.0, 10.0])), [1.0, 0.0])
    np.testing.assert_allclose(np_(voltage_mse([20.0], [[21.0]], scale_kv=10.0)), [0.01], rtol=1e-6)


def test_wasserstein_losses():
    real = np.array([2.0, 4.0], "float32")
    fake = np.array([-1.0, 1.0], "float32")
    assert float(wasserstein_critic_loss(real, fake)) == pytest.approx(-3.0)  # -E[D(x)] + E[D(G(z))]
    assert float(wasserstein_generator_loss(fake)) == pytest.approx(0.0)
    assert float(wasserstein_generator_loss(real)) == pytest.approx(-3.0)


def test_gradient_penalty_of_a_linear_critic():
    w = np.random.default_rng(3).normal(size=(4, 4, 1)).astype("float32")
    norm = np.linalg.norm(w)

    def critic(x):  # D(x) = <w, x>: gradient w everywhere
        return ops.sum(x * w, axis=(1, 2, 3))

    real = np.ones((3, 4, 4, 1), "float32")
    fake = np.zeros((3, 4, 4, 1), "float32")
    gp = np_(gradient_penalty(critic, real, fake, seed=0))
    np.testing.assert_allclose(gp, (norm - 1.0) ** 2, rtol=1e-5)
    gp = np_(gradient_penalty(lambda x: critic(x) / norm, real, fake, epsilon=np.full(3, 0.3)))
    np.testing.assert_allclose(gp, 0.0, atol=1e-8)


@pytest.mark.parametrize(
    "kl, multiplier", [(1.0, 0.01), (5.0, 0.01), (5.001, 0.1), (10.0, 0.1), (15.0, 0.1), (15.001, 1.5), (20.0, 1.5)]
)
def test_kl_schedule_step_values(kl, multiplier):
    """The authors' step function, boundaries included: 0.8 x {0.01 if KL <= 5; 0.1 if 5 < KL <= 15; 1.5 above}."""
    assert float(KLSchedule()(kl)) == pytest.approx(0.8 * multiplier, rel=1e-6)


def test_kl_schedule_works_on_tensors_without_gradient():
    kl = tf.Variable([1.0, 10.0, 20.0])
    with tf.GradientTape() as tape:
        alpha = KLSchedule()(kl)
        loss = tf.reduce_sum(alpha * kl)
    np.testing.assert_allclose(np_(alpha), [0.008, 0.08, 1.2], rtol=1e-6)
    # d(alpha * kl)/d kl = alpha only: alpha carries no gradient
    np.testing.assert_allclose(np_(tape.gradient(loss, kl)), [0.008, 0.08, 1.2], rtol=1e-6)


def test_kl_schedule_smooth_is_continuous_and_hits_the_levels():
    smooth = KLSchedule(mode="smooth")
    kls = np.linspace(0.0, 30.0, 3001).astype("float32")
    values = np_(smooth(kls))
    assert np.all(np.diff(values) >= 0)
    assert np.max(np.abs(np.diff(np.log(values)))) < 0.01  # no jumps
    for kl, m in [(0.0, 0.01), (5.0, 0.01), (10.0, 0.1), (15.0, 1.5), (30.0, 1.5)]:
        assert float(smooth(kl)) == pytest.approx(0.8 * m, rel=1e-4)
    assert float(smooth(7.5)) == pytest.approx(0.8 * np.sqrt(0.01 * 0.1), rel=1e-4)  # log-space midpoint


def test_kl_schedule_serialization_and_validation():
    sched = KLSchedule(base=0.5, thresholds=(1.0, 2.0, 3.0), multipliers=(1, 2, 3, 4), mode="smooth")
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(sched))
    assert again == sched
    assert KLSchedule.from_config(sched.get_config()) == sched
    with pytest.raises(ValueError):
        KLSchedule(thresholds=(5.0,), multipliers=(1.0,))
    with pytest.raises(ValueError):
        KLSchedule(thresholds=(15.0, 5.0))
    with pytest.raises(ValueError):
        KLSchedule(mode="linear")


def test_loss_weights_round_trip_and_only():
    w = LossWeights(kl=0.5, voltage=3.0)
    assert LossWeights.from_dict(w.to_dict()) == w
    only = LossWeights.only("voltage", 2.0)
    assert only.voltage == 2.0 and only.kl == 0.0 and only.reconstruction == 0.0 and only.gradient_penalty == 0.0
    with pytest.raises(ValueError, match="unknown LossWeights"):
        LossWeights.from_dict({"kl_weight": 1.0})
