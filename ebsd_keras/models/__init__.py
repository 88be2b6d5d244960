"""Generative models: encoder, decoders (generators), critic + classifier, and the CVAEGAN that trains them.

Exports are loaded lazily, so ``import ebsd_keras.models.presets`` (pure Python) does not import TensorFlow.

- :mod:`~ebsd_keras.models.presets`: :class:`ModelConfig`, :data:`PRESETS` ("compact" default, "paper", "tiny"),
  :func:`get_preset`, :func:`count_parameters`.
- :mod:`~ebsd_keras.models.blocks`: residual / upsampling blocks, FiLM, attribute handling.
- :mod:`~ebsd_keras.models.encoder`, :mod:`~ebsd_keras.models.decoders` (:data:`DECODERS`, :func:`build_decoder`),
  :mod:`~ebsd_keras.models.critic`, :mod:`~ebsd_keras.models.cvaegan` (:class:`CVAEGAN`).
"""

import importlib

_EXPORTS = {
    "ModelConfig": "presets",
    "PRESETS": "presets",
    "DEFAULT_PRESET": "presets",
    "get_preset": "presets",
    "count_parameters": "presets",
    "Encoder": "encoder",
    "BaseDecoder": "decoders",
    "CNNDecoder": "decoders",
    "PhysicsDecoder": "physics",  # importing it registers decoder kind "physics"
    "DECODERS": "decoders",
    "build_decoder": "decoders",
    "register_decoder": "decoders",
    "Critic": "critic",
    "CVAEGAN": "cvaegan",
    "PHASES": "cvaegan",
    "default_optimizer": "cvaegan",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
