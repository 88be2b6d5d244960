"""The typed Generator (the one answer to "does it take a pattern centre?") and the refinement's settings object."""

import numpy as np
import pytest

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.indexing.generator import Generator, takes_pattern_centre
from ebsd_keras.indexing.refinement import METHODS, GradientSettings, refine_gradient


def _fn(q, pc=None):
    return np.zeros((len(q), 8, 8), np.float32) + (0.0 if pc is None else 1.0)


def test_generator_says_what_it_takes():
    fixed = Generator(_fn, takes_pc=False, image_shape=[8, 8])
    assert fixed.image_shape == (8, 8) and fixed.default_pc is None and fixed.stages is None
    assert fixed(np.zeros((2, 4))).shape == (2, 8, 8)
    with pytest.raises(EBSDInputError, match="fixed detector") as err:
        fixed(np.zeros((2, 4)), pc=np.zeros((2, 3)))
    assert err.value.field == "pc"
    free = Generator(_fn, takes_pc=True, image_shape=(8, 8), default_pc=[0.5, 0.5, 0.6])
    assert free.default_pc == (0.5, 0.5, 0.6) and free(np.zeros((1, 4)), np.zeros((1, 3))).max() == 1.0


def test_takes_pattern_centre_asks_the_model_then_the_decoder():
    class Decoder:
        accepts_pattern_centre = True

    class Model:
        takes_pattern_centre = False

    assert takes_pattern_centre(Decoder()) and not takes_pattern_centre(Model()) and not takes_pattern_centre(object())


def test_refinement_takes_only_a_typed_generator():
    with pytest.raises(TypeError, match="Generator"):
        refine_gradient(_fn, np.zeros((1, 8, 8)), np.array([[1.0, 0, 0, 0]]))


def test_gradient_settings_validate_and_resolve_method_defaults():
    assert METHODS == ("gauss-newton-fd", "gauss-newton", "adam")
    fd, adam = GradientSettings(), GradientSettings(method="adam")
    assert (fd.iterations, fd.step_cap_deg, fd.tolerance_deg, fd.slots) == (10, 2.0, 1e-3, 64)
    assert (adam.iterations, adam.step_cap_deg, adam.tolerance_deg, adam.slots) == (150, 0.5, 2e-4, 256)
    record = fd.record(staged=True, slots=64)
    assert record["method"] == "gauss-newton-fd" and "Broyden" in record["objective"] and record["batch_size"] == 64
    for bad, field in (
        ({"method": "newton"}, "method"),
        ({"trust_region_deg": 30.0}, "trust_region"),
        ({"refine_orientation": False}, "refine_pc"),
        ({"fd_fraction": 0.0}, "fd_iterations"),
        ({"batch_size": 0}, "batch_size"),
    ):
        with pytest.raises(EBSDInputError) as err:
            GradientSettings(**bad)
        assert err.value.field == field
