"""Serving trained models: load a model file or folder (:mod:`~ebsd_keras.serving.models`, with the shipped-model
registry and cards), generate patterns (:mod:`~ebsd_keras.serving.generate`, one writer per output format) and
export TF Serving SavedModels (:mod:`~ebsd_keras.serving.export`).

Submodules are imported on use: :mod:`~ebsd_keras.serving.models` and :mod:`~ebsd_keras.serving.generate` import
only numpy until a model is loaded.
"""
