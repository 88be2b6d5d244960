"""ebsd_keras: parametric simulation of EBSD patterns with generative models (Keras 3 on TensorFlow).

The core (orientation maths, TFRecords, models, training, export) depends on Keras/TensorFlow, numpy, scipy, h5py and
OpenCV only. Data building from master patterns and the fidelity evaluation use kikuchipy and orix (GPL-3.0-or-later),
installed with the ``emsoft`` extra.
"""

__version__ = "0.1.0"
