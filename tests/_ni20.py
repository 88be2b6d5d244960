"""Shared fixtures of the indexing and evaluation tests (registered suite-wide by tests/conftest.py, built only
when a test asks for them): one tiny Ni 20 kV dataset (embedded EMsoft master pattern, CLAHE) and
one 3-degree dictionary, built once per session.

A 3 deg cubochoric dictionary (30,443 patterns) is the coarsest that indexes every test pattern correctly here:
at 5 deg several of 40 random orientations were mis-indexed by ~45-55 deg (pseudo-symmetric matches of 60 x 60
CLAHE'd patterns), at 4 deg one of 64; the refinement's trust region widens to the resolution (3 deg), which
every DI error at 3 deg falls within (measured maximum 2.4 deg).
"""

import numpy as np
import pytest

#: Dictionary resolution of the tests, degrees.
RESOLUTION_DEG = 3.0
#: Test patterns per set.
N_TEST = 30


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory):
    """builder output: train/val/test.h5 + dataset.json; the test split is 30 of a cubochoric N = 25 grid."""
    from ebsd_keras.data.build import build_dataset

    out = tmp_path_factory.mktemp("evaluation") / "ni20"
    build_dataset(
        out,
        n_train=6,
        n_test=25,
        max_per_split={"train": 8, "val": 8, "test": N_TEST + 10},
        batch_size=64,
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def test_set(dataset_dir):
    from ebsd_keras.io.testset import load_test_set

    return load_test_set(dataset_dir, n=N_TEST, seed=0)


@pytest.fixture(scope="session")
def indexer(test_set):
    from ebsd_keras.indexing.dictionary import indexer_from_metadata

    ix = indexer_from_metadata(test_set.metadata, 20.0, resolution_deg=RESOLUTION_DEG, progress=False)
    ix.dictionary_patterns()  # project once, cached for every test
    return ix


@pytest.fixture(scope="session")
def true_di(indexer, test_set):
    """Dictionary indexing of the true test patterns: (quaternions, scores)."""
    return indexer.dictionary_index(test_set.patterns)


def _perturb(q, angle_deg, seed=0):
    from ebsd_keras.orientation import quaternion_multiply

    rng = np.random.default_rng(seed)
    axis = rng.normal(size=(len(q), 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    half = np.deg2rad(angle_deg) / 2
    dq = np.concatenate([np.full((len(q), 1), np.cos(half)), np.sin(half) * axis], axis=1)
    return quaternion_multiply(dq, q)


@pytest.fixture(scope="session")
def perturb():
    """``perturb(q, angle_deg, seed=0)``: each orientation rotated by exactly ``angle_deg`` about a random axis."""
    return _perturb
