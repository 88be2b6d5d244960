"""Hyper-parameter search for the CVAEGAN with KerasTuner (see tuning/README.md).

- :mod:`ebsd_keras.tuning.space`: TOML search-space files, validated before any trial runs (no TensorFlow import).
- :mod:`ebsd_keras.tuning.hypermodel`: :class:`CVAEGANHyperModel` (one trial = cvae, critic, gan phases on a fixed
  budget) and the objective ``val_fidelity``.
- :mod:`ebsd_keras.tuning.search`: tuners (random, bayesian, hyperband), resumable and distributed search, summary
  table, export of the best configuration as ``ebsd-keras train --config`` files, the default-configuration baseline.

Import the submodules directly; this package imports nothing heavy.
"""

from ebsd_keras.tuning.space import HYPERPARAMETERS, SearchSpace, default_values, load_search_space

__all__ = ["HYPERPARAMETERS", "SearchSpace", "default_values", "load_search_space"]
