"""Suite-wide fixtures.

Every test starts from the same random state (Python, NumPy, TensorFlow/Keras), so weights of the untrained models
the tests build are the same on every machine and in every run: a test cannot pass here and fail in CI because of a
lucky initialisation. Tests that study seeding set their own seeds on top of this.
"""

import os
import sys
import tempfile
from pathlib import Path

# numba (orix, kikuchipy) caches compiled functions next to the installed package; processes that compile at the same
# time (the CLI tests start subprocesses) can leave a torn cache entry that segfaults every later import of orix.
# A cache private to this test session (inherited by its subprocesses) cannot be torn by anything else.
os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="ebsd-keras-numba-"))

import keras
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the shared helpers (_ni20, _gen_models)
# The tiny Ni 20 kV dataset, test set and dictionary shared by tests/indexing and tests/evaluation (session-scoped,
# built only when a test asks for them).
from _ni20 import dataset_dir, indexer, perturb, test_set, true_di  # noqa: E402, F401


@pytest.fixture(autouse=True)
def _fixed_random_state():
    keras.utils.set_random_seed(0)
    yield
