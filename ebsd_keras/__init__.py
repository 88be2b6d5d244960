"""ebsd_keras: parametric simulation of EBSD patterns with generative models (Keras 3 on TensorFlow).

The core (orientation maths, TFRecords, models, training, export) depends on Keras/TensorFlow, numpy, scipy, h5py and
OpenCV only. Data building from master patterns and the fidelity evaluation use kikuchipy and orix (GPL-3.0-or-later),
installed with the ``emsoft`` extra.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "generate"]


def __getattr__(name):
    # ``ebsd_keras.generate`` is imported on first use, so ``import ebsd_keras`` stays cheap (no TensorFlow).
    if name == "generate":
        from ebsd_keras.serving.generate import generate

        return generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
