"""The neural-field decoder: symmetry by construction, pattern centre, pixel-subset training, saving, contrast swap.

A small field (16 frequencies, 2 x 32 hidden units) keeps every test at a few seconds on a CPU.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from ebsd_keras.models.cvaegan import CVAEGAN
from ebsd_keras.models.field import FieldDecoder, subsample_pixels
from ebsd_keras.models.tools import field_with_contrast
from ebsd_keras.models.presets import count_parameters, get_preset
from ebsd_keras.orientation import euler_to_quaternion

SMALL = dict(field_frequencies=16, field_hidden=(32, 32), field_train_pixels=64, latent_dim=4)
RAW = get_preset("field", physics_contrast="rescale", **SMALL)


def quaternions(n, seed=0):
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype("float32")


def quat_mul(a, b):
    a0, a1, a2, a3 = a.T
    b0, b1, b2, b3 = b.T
    return np.stack(
        [
            a0 * b0 - a1 * b1 - a2 * b2 - a3 * b3,
            a0 * b1 + a1 * b0 + a2 * b3 - a3 * b2,
            a0 * b2 - a1 * b3 + a2 * b0 + a3 * b1,
            a0 * b3 + a1 * b2 - a2 * b1 + a3 * b0,
        ],
        axis=1,
    ).astype("float32")


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return CVAEGAN(config=RAW, seed=0)


def test_parameter_count_matches_the_analytic_count(model):
    assert model.decoder.count_params() == count_parameters(RAW)["decoder"]
    default = get_preset("field")
    assert count_parameters(default)["decoder"] < 250_000  # ~200 k: the budget is 10 M for everything
    # no master-pattern table: only the MLP's kernels/biases and the fixed frequency matrix
    names = {v.path.split("/")[-1] for v in model.decoder.weights}
    assert names <= {"kernel", "bias", "frequencies"}, names


def test_symmetry_equivalent_orientations_give_the_same_pattern(model):
    q = quaternions(3)
    # a 4-fold rotation about the crystal z axis and a 3-fold about [111], applied on the crystal side
    s4 = np.array([[np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)]], "float32")
    s3 = np.array([[0.5, 0.5, 0.5, 0.5]], "float32")
    p = ops.convert_to_numpy(model.generate({"quaternion": q}))
    for s in (s4, s3):
        for equivalent in (quat_mul(np.repeat(s, 3, 0), q), quat_mul(q, np.repeat(s, 3, 0))):
            other = ops.convert_to_numpy(model.generate({"quaternion": equivalent}))
            if np.abs(other - p).max() < 1e-4:
                break
        else:
            pytest.fail("no side of the product is a crystal symmetry: folding broken")
    # a general rotation changes the pattern
    tilted = euler_to_quaternion(np.array([[0.1, 0.2, 0.3]] * 3)).astype("float32")
    assert np.abs(ops.convert_to_numpy(model.generate({"quaternion": tilted})) - p).max() > 1e-3


def test_pattern_centre_moves_the_pattern_and_defaults_to_the_config(model):
    q = quaternions(2)
    base = ops.convert_to_numpy(model.generate({"quaternion": q}))
    same = ops.convert_to_numpy(model.generate({"quaternion": q, "pc": np.tile(RAW.physics_detector_pc, (2, 1))}))
    np.testing.assert_allclose(base, same, atol=1e-5)
    moved = ops.convert_to_numpy(model.generate({"quaternion": q, "pc": np.tile([0.45, 0.5, 0.6], (2, 1))}))
    assert np.abs(moved - base).max() > 1e-3
    assert model.takes_pattern_centre


def test_pixel_logits_on_all_pixels_equal_the_full_pattern_logits(model):
    """With targets that are the model's own min-max-rescaled pattern, the least-squares affine map of the
    subset path equals the min-max rescale of the full path."""
    dec = model.decoder
    q = quaternions(2)
    inputs = {"z": np.zeros((2, RAW.latent_dim), "float32"), "quaternion": q}
    full = ops.convert_to_numpy(dec(inputs))[..., 0].reshape(2, -1)
    p = ops.convert_to_numpy(dec.generate({"quaternion": q}))
    index = np.tile(np.arange(3600), (2, 1))
    targets = (p.reshape(2, -1) * (1 + 2e-4) - 1e-4).astype("float32")  # undo the eps of generate()
    sub = ops.convert_to_numpy(dec.pixel_logits(inputs, index, targets))
    np.testing.assert_allclose(sub, full, atol=2e-2)
    picked = np.array([[5, 100, 3599], [0, 1, 2]])
    np.testing.assert_array_equal(ops.convert_to_numpy(subsample_pixels(p, picked)), np.take_along_axis(
        p.reshape(2, -1), picked, axis=1))  # fmt: skip


def test_cvae_phase_learns_a_teacher_field_from_pixel_subsets():
    """Targets rendered by another random field of the same shape: learnable exactly. The subset path must lower
    the full-pattern validation gap (z = mu) and only P pixels enter each training BCE."""
    keras.utils.set_random_seed(1)
    teacher = CVAEGAN(config=RAW, seed=1)
    q = quaternions(16, seed=3)
    x = ops.convert_to_numpy(teacher.generate({"quaternion": q}))
    data = tf.data.Dataset.from_tensor_slices({"pattern": x, "quaternion": q}).batch(16).repeat()
    keras.utils.set_random_seed(2)
    student = CVAEGAN(config=RAW, seed=2)
    student.compile(phase="cvae", encoder_decoder_optimizer=keras.optimizers.Adam(3e-3), sampled_validation=False)
    before = student.evaluate(data, steps=1, verbose=0, return_dict=True)["bce_gap"]
    calls = []
    original = student.decoder.pixel_logits

    def counting(inputs, index, targets):
        calls.append(tuple(index.shape))
        return original(inputs, index, targets)

    student.decoder.pixel_logits = counting
    h = student.fit(data, epochs=1, steps_per_epoch=60, verbose=0).history
    after = student.evaluate(data, steps=1, verbose=0, return_dict=True)["bce_gap"]
    assert calls and calls[0][1] == RAW.field_train_pixels  # traced with (B, P) indices
    assert after < 0.5 * before, (before, after)
    assert np.isfinite(h["loss"]).all()


def test_keras_round_trip_safe_mode_and_contrast_swap(model, tmp_path):
    q = quaternions(2)
    path = tmp_path / "field.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode on
    assert isinstance(loaded.decoder, FieldDecoder)
    before = ops.convert_to_numpy(model.generate({"quaternion": q}))
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded.generate({"quaternion": q})), before)
    clahe = field_with_contrast(model, "clahe")
    assert clahe.model_config.physics_contrast == "clahe" and clahe.decoder.contrast == "clahe"
    raw = ops.convert_to_numpy(model.generate({"quaternion": q}))[..., 0]
    eq = ops.convert_to_numpy(clahe.generate({"quaternion": q}))[..., 0]
    import cv2

    for r, e in zip(raw, eq, strict=True):  # the dataset's preprocessing of the raw output, in the graph
        grey = np.rint((r - r.min()) / (r.max() - r.min()) * 255).astype(np.uint8)
        ref = cv2.createCLAHE(clipLimit=10.0, tileGridSize=(4, 4)).apply(grey) / 255.0
        assert np.abs(e - ref).max() < 2.5 / 255
    with pytest.raises(ValueError, match="contrast"):
        CVAEGAN(config=RAW.replace(physics_contrast="learned"))
