"""Dictionary indexing and refinement on true and deliberately perturbed patterns of the tiny Ni 20 kV test set."""

import cv2
import numpy as np
import pytest
from _ni20 import N_TEST, RESOLUTION_DEG  # noqa: E402 - tests/ is on sys.path (tests/conftest.py)
from orix.quaternion import symmetry
from orix.sampling import get_sample_fundamental

from ebsd_keras.data.preprocess import CLAHEConfig
from ebsd_keras.errors import EBSDInputError
from ebsd_keras.evaluation.metrics import ncc
from ebsd_keras.indexing.dictionary import (
    Indexer,
    clahe_from_metadata,
    dictionary_orientations,
    indexer_from_metadata,
    master_pattern_from_metadata,
)
from ebsd_keras.orientation import disorientation


def test_dictionary_is_preprocessed_like_the_dataset(indexer, test_set):
    """Projection + per-pattern rescale + CLAHE at the true orientation reproduces the stored test pattern."""
    assert indexer.clahe_config == CLAHEConfig()  # read from the provenance
    mine = indexer.project(test_set.quaternion, dtype="float64")
    assert mine.dtype == np.uint8 and mine.shape == test_set.patterns.shape
    # Float rounding (another projector, other batches: even kikuchipy itself reproduces the stored patterns only to
    # ~0.14 % of pixels) flips a rare uint8 level before CLAHE, which moves a few neighbours by a few levels.
    diff = np.abs(mine.astype(int) - test_set.patterns)
    assert np.mean(diff == 0) > 0.995 and diff.max() <= 10
    assert ncc(mine, test_set.patterns).min() > 0.999


def test_dictionary_orientations_follow_orix():
    q = dictionary_orientations(resolution_deg=6.0)
    ref = get_sample_fundamental(resolution=6.0, point_group=symmetry.Oh, method="cubochoric")
    assert q.shape == (ref.size, 4) and np.all(q[:, 0] >= 0)
    assert len(dictionary_orientations(semi_edge_steps=10)) == len(
        get_sample_fundamental(point_group=symmetry.Oh, method="cubochoric", semi_edge_steps=10).data.reshape(-1, 4)
    )
    for bad in (dict(resolution_deg=0.01), dict(resolution_deg=float("nan")), dict(semi_edge_steps=1.5), {}):
        with pytest.raises(EBSDInputError):
            dictionary_orientations(**bad)


def test_dictionary_index_true_patterns(indexer, test_set, true_di):
    q, scores = true_di
    err = disorientation(test_set.quaternion, q)
    assert q.shape == (N_TEST, 4) and scores.shape == (N_TEST,)
    # set by the dictionary spacing: never a wrong (pseudo-symmetric) match, never more than the spacing
    assert err.max() < RESOLUTION_DEG
    assert 0.5 < err.mean() < 2.0
    assert np.all((scores > 0.2) & (scores <= 1.0 + 1e-6))


def test_matrix_product_agrees_with_kikuchipy(indexer, test_set, true_di):
    q_kp, s_kp = indexer.dictionary_index_kikuchipy(test_set.patterns[:8])
    np.testing.assert_allclose(disorientation(q_kp, true_di[0][:8]), 0.0, atol=1e-4)
    np.testing.assert_allclose(s_kp, true_di[1][:8], atol=1e-4)


def test_bobyqa_refines_true_patterns_far_below_the_dictionary_spacing(indexer, test_set, true_di):
    r = indexer.refine_bobyqa(test_set.patterns, true_di[0])
    err = disorientation(test_set.quaternion, r.quaternion)
    assert err.mean() < 0.01 and err.max() < 0.05, err  # "well under 0.1 deg" with a 3 deg dictionary
    assert np.all(r.score > 0.999)
    assert np.all(r.score >= true_di[1])
    assert r.settings["trust_region_deg"] == RESOLUTION_DEG  # widened from 2 deg to the dictionary spacing
    assert np.all(r.n_evaluations > 5)


def test_lock_step_batching_does_not_change_results(indexer, test_set, true_di):
    one = indexer.refine_bobyqa(test_set.patterns[:3], true_di[0][:3], workers=1)
    many = indexer.refine_bobyqa(test_set.patterns[:3], true_di[0][:3], workers=3)
    np.testing.assert_array_equal(one.quaternion, many.quaternion)
    np.testing.assert_array_equal(one.n_evaluations, many.n_evaluations)


def test_rotated_patterns_refine_to_the_rotated_orientation(indexer, test_set, true_di, perturb):
    """Patterns projected 1.5 deg away from their labels: the refined error is the 1.5 deg, not the floor."""
    q_rot = perturb(test_set.quaternion[:10], 1.5)
    pats = indexer.project(q_rot, dtype="float64")
    q_di, _ = indexer.dictionary_index(pats)
    r = indexer.refine_bobyqa(pats, q_di)
    err_label = disorientation(test_set.quaternion[:10], r.quaternion)
    err_true = disorientation(q_rot, r.quaternion)
    np.testing.assert_allclose(err_label, 1.5, atol=0.05)
    assert err_true.max() < 0.05


def test_blurred_patterns_score_lower(indexer, test_set, true_di):
    blurred = np.stack([cv2.GaussianBlur(p, (0, 0), 1.5) for p in test_set.patterns[:6]])
    r_true = indexer.refine_bobyqa(test_set.patterns[:6], true_di[0][:6])
    r_blur = indexer.refine_bobyqa(blurred, true_di[0][:6])
    assert np.all(r_blur.score < r_true.score - 0.01)
    assert disorientation(test_set.quaternion[:6], r_blur.quaternion).max() < 0.5  # still the right orientation


def test_kikuchipy_refinement_cross_check(indexer, test_set, true_di):
    r = indexer.refine_kikuchipy(test_set.patterns[:3], true_di[0][:3])
    err = disorientation(test_set.quaternion[:3], r.quaternion)
    # kikuchipy compares with the raw projection (no CLAHE): a little worse than BOBYQA, still far below 0.1 deg
    assert err.max() < 0.1, err
    assert r.settings["refiner"] == "kikuchipy"


def test_bad_inputs(indexer, test_set, true_di):
    with pytest.raises(EBSDInputError, match="patterns"):
        indexer.dictionary_index(test_set.patterns[:, :30])
    with pytest.raises(EBSDInputError, match="start orientations"):
        indexer.refine_bobyqa(test_set.patterns[:3], true_di[0][:2])
    with pytest.raises(EBSDInputError, match="NaN"):
        indexer.dictionary_index(np.full((1, 60, 60), np.nan))
    with pytest.raises(EBSDInputError, match="trust region"):
        indexer.refine_bobyqa(test_set.patterns[:1], true_di[0][:1], trust_region_deg=0)
    with pytest.raises(EBSDInputError, match="projector"):
        Indexer(indexer.master_pattern, indexer.detector_dict, 20.0, projector="emsoft")
    with pytest.raises(EBSDInputError, match="kV"):
        Indexer(indexer.master_pattern, indexer.detector_dict, 15.0)


def test_provenance_readers(test_set):
    meta = test_set.metadata
    assert clahe_from_metadata(meta) == CLAHEConfig()
    assert clahe_from_metadata({"preprocessing": {"rescale": "x", "clahe": "none"}}) is None
    convert_form = {"clip_limit": 4.0, "tiles": [8, 8], "method": "clahe-opencv", "applied_by": "ebsd-keras convert"}
    assert clahe_from_metadata({"preprocessing": convert_form}) == CLAHEConfig(4.0, (8, 8))
    with pytest.raises(EBSDInputError, match="preprocessing"):
        clahe_from_metadata({})
    with pytest.raises(EBSDInputError, match="no master pattern for 30 kV"):
        master_pattern_from_metadata(meta, 30.0)
    with pytest.raises(EBSDInputError, match="detector"):
        indexer_from_metadata({"preprocessing": meta["preprocessing"]}, 20.0)


def test_master_pattern_of_an_ebsdsim_dataset_is_simulated_again(monkeypatch):
    """ebsdsim master patterns are not stored: evaluation reruns the build's simulation with the recorded size."""
    import ebsd_keras.data.simulate as simulate
    from ebsd_keras.indexing.dictionary import master_pattern_from_metadata

    calls = []
    monkeypatch.setattr(simulate, "ebsdsim_master_pattern", lambda kv, half_size: calls.append((kv, half_size)) or "mp")
    meta = {
        "source": {"per_voltage": [{"kind": "ebsdsim-dynamical", "file": None, "energy_kv": 15.0, "half_size": 40}]}
    }
    assert master_pattern_from_metadata(meta, 15.0) == "mp" and calls == [(15.0, 40)]
    with pytest.raises(EBSDInputError, match="no master pattern for 20 kV"):
        master_pattern_from_metadata(meta, 20.0, path="set.h5")


def test_the_indexer_takes_the_one_detector_type(indexer):
    """A DetectorGeometry is accepted wherever the dataset's detector dict is: the same geometry comes out."""
    from ebsd_keras.indexing.dictionary import Indexer

    again = Indexer(indexer.master_pattern, indexer.geometry, 20.0, indexer.clahe_config, resolution_deg=10.0)
    assert again.geometry == indexer.geometry and again.shape == indexer.shape
    np.testing.assert_allclose(again.project(np.array([[1.0, 0, 0, 0]])), indexer.project(np.array([[1.0, 0, 0, 0]])))
