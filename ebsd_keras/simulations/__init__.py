"""Physics of EBSD pattern formation: detector geometry (numpy) and a differentiable master-pattern projection
(``keras.ops``). Core module: no kikuchipy import (kikuchipy is only used by the tests to validate it).

The projection names are imported lazily so that ``ebsd_keras.simulations.geometry`` (numpy only) can be used
without loading TensorFlow.
"""

from ebsd_keras.simulations.geometry import DetectorGeometry, detector_to_sample_matrix, direction_cosines

_PROJECTION = ("LambertProjector", "gnomonic_directions", "lambert_coordinates", "rotate_to_crystal", "sample_lambert")

__all__ = ["DetectorGeometry", "detector_to_sample_matrix", "direction_cosines", *_PROJECTION]


def __getattr__(name):
    if name in _PROJECTION:
        from ebsd_keras.simulations import projection

        return getattr(projection, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
