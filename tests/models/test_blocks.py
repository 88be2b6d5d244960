"""Building blocks: shapes, FiLM identity at start, serialization, attribute handling, bounded log-variance."""

import keras
import numpy as np
import pytest
from keras import layers, ops

from ebsd_keras.models.blocks import (
    FiLM,
    LeakyReLU,
    SeparableResidualBlock,
    UpResidualBlock,
    attribute_vector,
    canonical_quaternion,
    soft_clip,
)
from ebsd_keras.models.encoder import Encoder
from ebsd_keras.models.presets import get_preset


def rand(*shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype("float32")


@pytest.mark.parametrize("size, strides, expected", [(60, 2, 30), (15, 2, 8), (15, 1, 15)])
def test_separable_residual_block_shapes(size, strides, expected):
    block = SeparableResidualBlock(6, strides=strides)
    assert tuple(block(rand(2, size, size, 3)).shape) == (2, expected, expected, 6)
    # two separable convs (depthwise 3x3 + pointwise, with biases) + a 1x1 shortcut
    assert block.count_params() == (9 * 3 + 3 * 6 + 6) + (9 * 6 + 6 * 6 + 6) + (3 * 6 + 6)


@pytest.mark.parametrize("mode", ["resize", "transpose"])
@pytest.mark.parametrize("factor", [1, 2, 3])
def test_up_residual_block_shapes(mode, factor):
    block = UpResidualBlock(4, factor=factor, mode=mode)
    assert tuple(block(rand(2, 5, 5, 3)).shape) == (2, 5 * factor, 5 * factor, 4)


def test_up_block_shortcut_has_no_zero_insertion():
    """A constant input must give a constant output (a zero-inserting stride-2 1x1 shortcut would not)."""
    block = UpResidualBlock(2, factor=2, mode="transpose", use_bias=False)
    x = np.ones((1, 5, 5, 1), "float32")
    block(x)
    for v in block.conv1.weights + block.conv2.weights:
        v.assign(ops.zeros_like(v))  # main path off: the output is the shortcut alone
    y = ops.convert_to_numpy(block(x))
    np.testing.assert_allclose(y, y[:, :1, :1, :] * np.ones_like(y), rtol=1e-6)


def test_film_is_identity_at_initialisation_and_learns_per_channel():
    film = FiLM(3)
    x = rand(2, 4, 4, 3)
    np.testing.assert_allclose(ops.convert_to_numpy(film(x, rand(2, 5))), x)
    film.projection.kernel.assign(np.ones((5, 6), "float32"))
    assert not np.allclose(ops.convert_to_numpy(film(x, rand(2, 5))), x)


def test_leaky_relu_matches_keras():
    x = np.linspace(-3, 3, 13).astype("float32")
    np.testing.assert_allclose(
        ops.convert_to_numpy(LeakyReLU(0.2)(x)), ops.convert_to_numpy(layers.LeakyReLU(negative_slope=0.2)(x))
    )


@pytest.mark.parametrize(
    "layer",
    [SeparableResidualBlock(5, strides=2, activation="relu"), UpResidualBlock(4, factor=3, mode="transpose")],
    ids=["sep", "up"],
)
def test_blocks_round_trip_through_config(layer):
    x = rand(1, 6, 6, 3)
    y = layer(x)
    clone = layer.__class__.from_config(layer.get_config())
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(ops.convert_to_numpy(clone(x)), ops.convert_to_numpy(y))
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(again) is type(layer) and again.get_config() == layer.get_config()


def test_canonical_quaternion_normalises_and_flips_sign():
    q = np.array([[-2.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5], [-1.0, 1.0, 0.0, 0.0]], "float32")
    out = ops.convert_to_numpy(canonical_quaternion(q))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    assert (out[:, 0] >= 0).all()
    np.testing.assert_allclose(out[2], np.array([1, -1, 0, 0]) / np.sqrt(2), rtol=1e-6)


def test_attribute_vector_normalises_voltage():
    q = np.array([[1.0, 0, 0, 0]], "float32")
    vec = ops.convert_to_numpy(attribute_vector({"quaternion": q, "voltage_kv": np.array([30.0])}, True, (20.0, 10.0)))
    np.testing.assert_allclose(vec, [[1, 0, 0, 0, 1.0]])
    with pytest.raises(ValueError, match="voltage_kv"):
        attribute_vector({"quaternion": q}, True)


def test_model_is_invariant_to_quaternion_sign_and_scale():
    enc = Encoder(get_preset("tiny"))
    x = rand(2, 60, 60, 1)
    q = np.random.default_rng(1).normal(size=(2, 4)).astype("float32")
    mu1, _ = enc({"pattern": x, "quaternion": q})
    mu2, _ = enc({"pattern": x, "quaternion": -3.0 * q})
    np.testing.assert_allclose(ops.convert_to_numpy(mu1), ops.convert_to_numpy(mu2), rtol=1e-4, atol=1e-5)


def test_soft_clip_bounds_and_is_near_identity_at_the_centre():
    x = np.array([-1e6, -50.0, -3.0, 0.0, 50.0, 1e6], "float32")
    y = ops.convert_to_numpy(soft_clip(x, -10.0, 4.0))
    assert (y >= -10.0).all() and (y <= 4.0).all()
    assert y[2] == pytest.approx(-3.0)
    assert np.all(np.diff(y) >= 0)


def test_encoder_logvar_stays_bounded_for_extreme_inputs():
    cfg = get_preset("tiny")
    enc = Encoder(cfg)
    enc.head.kernel.assign(1e4 * np.ones(enc.head.kernel.shape, "float32"))
    _, logvar = enc({"pattern": rand(2, 60, 60, 1), "quaternion": rand(2, 4)})
    lv = ops.convert_to_numpy(logvar)
    lo, hi = cfg.logvar_bounds
    assert np.isfinite(lv).all() and lv.min() >= lo and lv.max() <= hi
    assert lv.max() > hi - 1  # really pushed to the bound
