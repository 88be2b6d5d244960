"""Data: orientation sampling, master-pattern projection, preprocessing and the tf.data input pipeline.

``make_dataset`` is imported lazily so that ``import ebsd_keras.data`` does not pull in TensorFlow.
"""


def __getattr__(name):
    if name == "make_dataset":
        from ebsd_keras.data.pipeline import make_dataset

        return make_dataset
    raise AttributeError(name)
