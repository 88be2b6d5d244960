"""In-graph CLAHE against OpenCV's ``createCLAHE`` (the dataset's preprocessing), its layer, and its gradients."""

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from ebsd_keras.data.preprocess import CLAHEConfig, clahe
from ebsd_keras.models.clahe import CLAHE, clahe_tf


def _images(n=24, shape=(60, 60), seed=0):
    """uint8 test images: Kikuchi-like bands, noise, a flat image and a narrow grey range."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    angle = rng.uniform(0, np.pi, size=(n, 1, 1))
    bands = 127 + 90 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) / rng.uniform(2, 6, size=(n, 1, 1)))
    bands = np.clip(bands + rng.normal(0, 6, size=(n, h, w)), 0, 255).astype(np.uint8)
    noise = rng.integers(0, 256, size=(4, h, w), dtype=np.uint8)
    flat = np.full((1, h, w), 77, np.uint8)
    narrow = rng.integers(100, 104, size=(2, h, w), dtype=np.uint8)
    return np.concatenate([bands, noise, flat, narrow])


def _cv2(images, clip, tiles):
    op = cv2.createCLAHE(clipLimit=float(clip), tileGridSize=(int(tiles[1]), int(tiles[0])))
    return np.stack([op.apply(np.ascontiguousarray(im)) for im in images])


def _agreement(ours, ref):
    d = np.abs(np.asarray(ours, np.float64) - ref.astype(np.float64))
    return (d <= 1).mean(), (d == 0).mean()


def test_matches_opencv_on_patterns_the_project_uses():
    images = _images()
    ref = clahe(images, CLAHEConfig(10.0, (4, 4)))  # the dataset's own function
    ours = clahe_tf(images.astype(np.float32))
    within_one, exact = _agreement(ours, ref)
    assert within_one >= 0.99
    assert exact >= 0.999  # in practice bit-identical


@pytest.mark.parametrize(
    "shape, tiles, clip",
    [((61, 59), (4, 4), 10.0), ((48, 64), (3, 5), 10.0), ((7, 13), (4, 4), 2.0), ((60, 60), (4, 4), 0.0),
     ((60, 60), (2, 3), 40.0)],
)  # fmt: skip
def test_matches_opencv_for_other_sizes_tiles_and_clip_limits(shape, tiles, clip):
    # odd sizes exercise OpenCV's reflect-101 padding rule (both axes padded once either needs it)
    images = _images(n=6, shape=shape, seed=1)
    within_one, exact = _agreement(clahe_tf(images.astype(np.float32), clip, tiles), _cv2(images, clip, tiles))
    assert within_one >= 0.99
    assert exact >= 0.999


def test_channel_axis_rounding_and_xla():
    images = _images(n=4)
    ref = clahe(images)
    # (B, H, W, 1) input; real values round to the nearest level first
    ours = clahe_tf(images[..., None].astype(np.float32) + 0.3)
    assert ours.shape == (len(images), 60, 60, 1)
    np.testing.assert_array_equal(np.asarray(ours)[..., 0], ref)
    # XLA may fuse the float32 blend differently (FMA): a few pixels one grey level off
    xla = tf.function(lambda x: clahe_tf(x), jit_compile=True)(tf.constant(images.astype(np.float32)))
    within_one, exact = _agreement(xla, ref)
    assert within_one == 1.0 and exact >= 0.99


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="one-channel"):
        clahe_tf(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="gradient"):
        clahe_tf(np.zeros((1, 8, 8), np.float32), differentiable=True, gradient="nope")
    with pytest.raises(ValueError, match="tiles"):
        CLAHE(tiles=(0, 4))


@pytest.mark.parametrize("gradient", ["histogram", "lut"])
def test_surrogate_gradient_keeps_the_exact_forward_value(gradient):
    images = _images(n=4).astype(np.float32)
    x = tf.Variable(images)
    weights = tf.constant(np.random.default_rng(2).normal(size=images.shape).astype(np.float32))
    with tf.GradientTape() as tape:
        out = clahe_tf(x, differentiable=True, gradient=gradient)
        loss = tf.reduce_sum(out * weights)
    np.testing.assert_array_equal(np.asarray(out), clahe(images.astype(np.uint8)))
    grad = np.asarray(tape.gradient(loss, x))
    assert np.isfinite(grad).all()
    assert np.abs(grad).mean() > 1e-3
    # without the surrogate the output is a constant of the input
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(clahe_tf(x) * weights)
    assert tape.gradient(loss, x) is None or not np.any(np.asarray(tape.gradient(loss, x)))


def test_histogram_gradient_matches_finite_differences_of_the_smooth_clahe():
    from ebsd_keras.models.clahe import ClahePlan, clahe_blend, clahe_soft_cdf

    rng = np.random.default_rng(3)
    x = _images(n=2, seed=3).astype(np.float32)[:2] * 0.6 + 40.3
    plan = ClahePlan(60, 60, (4, 4), 10.0)
    u = tf.constant(rng.normal(size=x.shape).astype(np.float32))
    d = tf.constant(rng.normal(size=x.shape).astype(np.float32))
    smooth = lambda z: tf.reduce_sum(clahe_blend(clahe_soft_cdf(z, plan), z, plan) * u)  # noqa: E731
    a = tf.Variable(0.0)
    with tf.GradientTape() as tape:
        value = smooth(x + a * d)
    eps = 1e-3
    fd = (float(smooth(x + eps * d)) - float(smooth(x - eps * d))) / (2 * eps)
    assert float(tape.gradient(value, a)) == pytest.approx(fd, rel=0.1)


def test_layer_config_and_keras_round_trip(tmp_path):
    layer = CLAHE(clip_limit=4.0, tiles=(3, 3), differentiable=True, gradient="lut", name="clahe")
    again = CLAHE.from_config(layer.get_config())
    assert (again.clip_limit, again.tiles, again.differentiable, again.gradient) == (4.0, (3, 3), True, "lut")
    inputs = keras.Input((60, 60, 1))
    model = keras.Model(inputs, CLAHE(name="clahe")(inputs))
    path = tmp_path / "clahe.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    images = _images(n=3)
    np.testing.assert_array_equal(np.asarray(loaded(images[..., None].astype(np.float32)))[..., 0], clahe(images))
