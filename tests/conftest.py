"""Suite-wide fixtures.

Every test starts from the same random state (Python, NumPy, TensorFlow/Keras), so weights of the untrained models
the tests build are the same on every machine and in every run: a test cannot pass here and fail in CI because of a
lucky initialisation. Tests that study seeding set their own seeds on top of this.
"""

import keras
import pytest


@pytest.fixture(autouse=True)
def _fixed_random_state():
    keras.utils.set_random_seed(0)
    yield
