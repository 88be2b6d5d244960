"""Training: :class:`TrainConfig` (everything a run needs) and :func:`train` (one phase: cvae, critic or gan).

``from ebsd_keras.training import TrainConfig, train`` — see :mod:`ebsd_keras.training.phases` for the files a run
writes and how interrupted runs resume exactly.
"""

from ebsd_keras.training.config import PHASE_DEFAULTS, TrainConfig, load_train_config

__all__ = ["TrainConfig", "PHASE_DEFAULTS", "load_train_config", "train"]


def train(config, verbose="auto", callbacks=None) -> dict:
    """Train one phase; see :func:`ebsd_keras.training.phases.train` (imported lazily: it needs TensorFlow)."""
    from ebsd_keras.training.phases import train as _train

    return _train(config, verbose=verbose, callbacks=callbacks)
