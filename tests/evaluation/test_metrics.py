"""Per-pattern metrics: BCE, optimal BCE, pixel tolerance, NCC, summaries, disorientation statistics (vs orix)."""

import numpy as np
import pytest
from orix.quaternion import Orientation, symmetry

from ebsd_keras.evaluation.metrics import (
    bce_per_pattern,
    disorientation_stats,
    ncc,
    optimal_bce,
    pixel_fraction_within,
    summarize,
)


@pytest.fixture
def grey():
    """Eight 60 x 60 uint8-like grey patterns in [0, 1], including exact 0 and 1 pixels."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(8, 60, 60)) / 255.0
    x[:, 0, 0], x[:, 0, 1] = 0.0, 1.0
    return x


def test_bce_equals_optimal_on_the_truth(grey):
    np.testing.assert_allclose(bce_per_pattern(grey, grey), optimal_bce(grey), atol=1e-6)
    assert optimal_bce(grey).shape == (8,)
    # a uniform grey level has the entropy of a fair coin at 0.5
    half = np.full((1, 4, 4), 0.5)
    assert optimal_bce(half)[0] == pytest.approx(np.log(2))


def test_bce_is_never_below_optimal_and_grows_with_error(grey):
    rng = np.random.default_rng(1)
    small = np.clip(grey + 0.02 * rng.normal(size=grey.shape), 0, 1)
    large = np.clip(grey + 0.2 * rng.normal(size=grey.shape), 0, 1)
    opt = optimal_bce(grey)
    assert np.all(bce_per_pattern(grey, small) > opt)
    assert np.all(bce_per_pattern(grey, large) > bce_per_pattern(grey, small))


def test_bce_matches_the_formula_and_clips():
    t = np.array([[[0.2, 0.9]]])
    g = np.array([[[0.4, 0.7]]])
    want = -np.mean([0.2 * np.log(0.4) + 0.8 * np.log(0.6), 0.9 * np.log(0.7) + 0.1 * np.log(0.3)])
    assert bce_per_pattern(t, g)[0] == pytest.approx(want)
    # a prediction of exactly 0 where the truth is 1 is finite (eps-clipped), not inf
    assert np.isfinite(bce_per_pattern(np.ones((1, 2, 2)), np.zeros((1, 2, 2))))[0]
    assert optimal_bce(np.array([[[0.0, 1.0]]]))[0] == 0.0


def test_pixel_fraction_within():
    t = np.zeros((3, 2, 2))
    g = np.stack([np.full((2, 2), 0.1), np.full((2, 2), 0.2), np.array([[0.0, 0.15], [0.3, 1.0]])])
    np.testing.assert_allclose(pixel_fraction_within(t, g), [1.0, 0.0, 0.5])
    assert pixel_fraction_within(t, g, tol=0.25)[1] == 1.0
    # a uint8 step of 38 (0.149) is within, 39 (0.153) is not
    assert pixel_fraction_within(np.zeros((1, 1, 2)), np.array([[[38, 39]]]) / 255)[0] == 0.5


def test_ncc(grey):
    np.testing.assert_allclose(ncc(grey, grey), 1.0)
    np.testing.assert_allclose(ncc(grey, 3.0 * grey + 7.0), 1.0)  # offset and scale do not matter
    np.testing.assert_allclose(ncc(grey, 1.0 - grey), -1.0)
    assert ncc(grey[:1], np.full((1, 60, 60), 0.3))[0] == 0.0  # constant pattern
    rng = np.random.default_rng(2)
    noisy = grey + 0.3 * rng.normal(size=grey.shape)
    assert np.all(ncc(grey, noisy) < 0.9)


def test_accepts_channel_axis_and_single_patterns(grey):
    np.testing.assert_allclose(bce_per_pattern(grey[..., None], grey), bce_per_pattern(grey, grey))
    assert ncc(grey[0], grey[0]).shape == (1,)


def test_shape_and_value_errors(grey):
    with pytest.raises(ValueError, match="differ in shape"):
        bce_per_pattern(grey, grey[:, :30])
    with pytest.raises(ValueError, match="NaN"):
        ncc(grey, np.full_like(grey, np.nan))
    with pytest.raises(ValueError, match="must be"):
        optimal_bce(np.zeros(5))


def test_summarize():
    s = summarize(np.arange(101.0))
    assert s["n"] == 101 and s["mean"] == 50.0 and s["median"] == 50.0
    assert s["p5"] == pytest.approx(5.0) and s["p95"] == pytest.approx(95.0)
    assert s["min"] == 0.0 and s["max"] == 100.0
    assert s["std"] == pytest.approx(np.arange(101.0).std())
    assert summarize([])["n"] == 0 and summarize([])["mean"] is None


def test_disorientation_stats_agree_with_orix():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(200, 4))
    b = rng.normal(size=(200, 4))
    # half of the pairs close together, half random: small and large angles
    b[:100] = a[:100] + 0.02 * rng.normal(size=(100, 4))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    angles, stats = disorientation_stats(a, b)
    ref = Orientation(a, symmetry.Oh).angle_with(Orientation(b, symmetry.Oh), degrees=True)
    np.testing.assert_allclose(angles, ref, atol=1e-6)
    assert stats["mean"] == pytest.approx(ref.mean(), abs=1e-6)
    assert stats["median"] == pytest.approx(np.median(ref), abs=1e-6)
    assert stats["p95"] == pytest.approx(np.percentile(ref, 95), abs=1e-6)
    assert angles.max() <= 62.8 + 1e-6
    # symmetry-equivalent and sign-flipped orientations are 0 apart
    s90 = np.array([np.sqrt(0.5), 0, 0, np.sqrt(0.5)])
    from ebsd_keras.orientation import quaternion_multiply

    same, _ = disorientation_stats(a[:5], -quaternion_multiply(s90[None], a[:5]))
    np.testing.assert_allclose(same, 0.0, atol=1e-5)
