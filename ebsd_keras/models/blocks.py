"""Building blocks shared by the encoder, the decoders and the critic (Keras 3 layers, ``keras.ops`` only).

Every layer is registered for ``.keras`` serialization (package ``ebsd_keras``) and rebuilds from ``get_config``.
"""

from __future__ import annotations

import keras
from keras import layers, ops

__all__ = [
    "LeakyReLU",
    "make_activation",
    "SeparableResidualBlock",
    "UpResidualBlock",
    "FiLM",
    "soft_clip",
    "canonical_quaternion",
    "attribute_vector",
    "ConfiguredModel",
]

_register = keras.saving.register_keras_serializable(package="ebsd_keras")


@_register
class LeakyReLU(layers.Layer):
    """Leaky ReLU computed as ``max(x, slope * x)`` (for 0 <= slope < 1).

    Same function as ``keras.layers.LeakyReLU``, but without TensorFlow's ``LeakyRelu`` op: with oneDNN (the
    default on x86 CPUs) TF 2.21's grappler remapper tries to fuse Conv2D + BiasAdd + LeakyRelu in training graphs,
    fails ("remapper failed: ... LeakyReluGrad exist for missing node ... BiasAdd") and logs an error at every trace.
    """

    def __init__(self, negative_slope: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(negative_slope) < 1.0:
            raise ValueError(f"negative_slope must be in [0, 1), got {negative_slope}")
        self.negative_slope = float(negative_slope)
        self.built = True

    def call(self, x):
        return ops.maximum(x, self.negative_slope * x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


def make_activation(kind: str = "leaky_relu", negative_slope: float = 0.2, name: str | None = None):
    """A leaky ReLU (``kind="leaky_relu"``, see :class:`LeakyReLU`) or ReLU layer."""
    if kind == "leaky_relu":
        return LeakyReLU(negative_slope=negative_slope, name=name)
    if kind == "relu":
        return layers.ReLU(name=name)
    raise ValueError(f"unknown activation {kind!r}; use 'leaky_relu' or 'relu'")


def soft_clip(x, low: float, high: float):
    """Smoothly bound ``x`` to (low, high): ``c + r tanh((x - c) / r)`` with c the centre and r the half-range.

    Slope 1 at the centre, so values well inside the band pass almost unchanged, and the gradient never vanishes
    abruptly as a hard clip's would. Used to keep the encoder's log-variance finite (exp(logvar) cannot overflow).
    """
    c = 0.5 * (low + high)
    r = 0.5 * (high - low)
    return c + r * ops.tanh((x - c) / r)


def canonical_quaternion(q):
    """Normalise quaternions (..., 4) and flip their sign so that q0 >= 0 (q and -q are one rotation)."""
    q = ops.cast(q, "float32")
    q = q / ops.sqrt(ops.sum(ops.square(q), axis=-1, keepdims=True) + 1e-12)
    return ops.where(q[..., :1] < 0, -q, q)


def attribute_vector(inputs: dict, use_voltage: bool, voltage_norm_kv=(20.0, 10.0)):
    """The attribute vector the networks see: canonical quaternion (4) and, optionally, normalised voltage (1).

    Parameters
    ----------
    inputs
        Dict with ``"quaternion"`` (B, 4) and, when ``use_voltage``, ``"voltage_kv"`` (B,) or (B, 1) in kV.
    use_voltage
        Whether to append ``(kV - center) / scale``.
    voltage_norm_kv
        (center, scale) in kV.

    Returns
    -------
    tensor
        (B, 4) or (B, 5) float32.
    """
    if "quaternion" not in inputs:
        raise ValueError("model inputs need a 'quaternion' entry (B, 4)")
    q = canonical_quaternion(inputs["quaternion"])
    if not use_voltage:
        return q
    if inputs.get("voltage_kv") is None:
        raise ValueError("this model uses the accelerating voltage: inputs need a 'voltage_kv' entry (B,) in kV")
    center, scale = voltage_norm_kv
    v = ops.reshape(ops.cast(inputs["voltage_kv"], "float32"), (-1, 1))
    return ops.concatenate([q, (v - center) / scale], axis=-1)


@_register
class SeparableResidualBlock(layers.Layer):
    """Two depthwise-separable convolutions with an activation between, plus a 1x1 convolution shortcut.

    ``out = act(sepconv2(act(sepconv1(x))) + shortcut(x))``. With ``strides=2`` the second separable convolution
    strides and the shortcut is 2x2 average pooling followed by the 1x1 convolution (as in ResNet-D), halving H and
    W (``padding="same"``: ceil(H / 2)). Same parameters as a stride-2 1x1 convolution, but it sees every pixel
    instead of one in four, and it avoids a TensorFlow 2.21 + oneDNN bug: the filter gradient of a 1x1 stride-2
    convolution on 60x60 inputs corrupts the heap (``free(): invalid next size``) and kills the process.
    """

    def __init__(
        self,
        filters: int,
        strides: int = 1,
        kernel_size: int = 3,
        activation: str = "leaky_relu",
        negative_slope: float = 0.2,
        use_bias: bool = True,
        kernel_initializer: str = "he_normal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.strides = int(strides)
        self.kernel_size = int(kernel_size)
        self.activation = activation
        self.negative_slope = float(negative_slope)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        sep = {
            "padding": "same",
            "use_bias": self.use_bias,
            "depthwise_initializer": kernel_initializer,
            "pointwise_initializer": kernel_initializer,
        }
        self.sep1 = layers.SeparableConv2D(self.filters, self.kernel_size, name="sep1", **sep)
        self.sep2 = layers.SeparableConv2D(self.filters, self.kernel_size, strides=self.strides, name="sep2", **sep)
        self.pool = (
            layers.AveragePooling2D(self.strides, strides=self.strides, padding="same", name="pool")
            if self.strides > 1
            else None
        )
        self.shortcut = layers.Conv2D(
            self.filters,
            1,
            padding="same",
            use_bias=self.use_bias,
            kernel_initializer=kernel_initializer,
            name="shortcut",
        )
        self.act1 = make_activation(activation, negative_slope, name="act1")
        self.act2 = make_activation(activation, negative_slope, name="act2")

    def _pooled_shape(self, input_shape):
        return self.pool.compute_output_shape(input_shape) if self.pool is not None else input_shape

    def build(self, input_shape):
        self.sep1.build(input_shape)
        mid = self.sep1.compute_output_shape(input_shape)
        self.sep2.build(mid)
        self.shortcut.build(self._pooled_shape(input_shape))
        self.built = True

    def call(self, x):
        y = self.sep2(self.act1(self.sep1(x)))
        skip = self.pool(x) if self.pool is not None else x
        return self.act2(y + self.shortcut(skip))

    def compute_output_shape(self, input_shape):
        return self.shortcut.compute_output_shape(self._pooled_shape(input_shape))

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "strides": self.strides,
            "kernel_size": self.kernel_size,
            "activation": self.activation,
            "negative_slope": self.negative_slope,
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer,
        }


@_register
class UpResidualBlock(layers.Layer):
    """Upsampling residual block: two convolutions (main path) plus an upsample + 1x1 convolution shortcut.

    ``mode="resize"``: upsample by ``factor`` (bilinear or nearest), then two 3x3 convolutions.
    ``mode="transpose"``: a 3x3 transposed convolution, then a 3x3 transposed convolution with stride ``factor``
    (the paper's layout). Either way the shortcut upsamples *before* a 1x1 convolution, never a stride-``factor``
    1x1 transposed convolution (that inserts zeros between pixels: 75 % zeros at factor 2, a checkerboard).
    """

    def __init__(
        self,
        filters: int,
        factor: int = 1,
        kernel_size: int = 3,
        mode: str = "resize",
        interpolation: str = "bilinear",
        activation: str = "leaky_relu",
        negative_slope: float = 0.2,
        use_bias: bool = True,
        kernel_initializer: str = "he_normal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in ("resize", "transpose"):
            raise ValueError(f"mode must be 'resize' or 'transpose', got {mode!r}")
        self.filters = int(filters)
        self.factor = int(factor)
        self.kernel_size = int(kernel_size)
        self.mode = mode
        self.interpolation = interpolation
        self.activation = activation
        self.negative_slope = float(negative_slope)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        conv = {"padding": "same", "use_bias": self.use_bias, "kernel_initializer": kernel_initializer}
        up = self.factor > 1
        self.upsample = layers.UpSampling2D(self.factor, interpolation=interpolation, name="upsample") if up else None
        if mode == "resize":
            self.conv1 = layers.Conv2D(self.filters, self.kernel_size, name="conv1", **conv)
            self.conv2 = layers.Conv2D(self.filters, self.kernel_size, name="conv2", **conv)
        else:
            self.conv1 = layers.Conv2DTranspose(self.filters, self.kernel_size, name="conv1", **conv)
            self.conv2 = layers.Conv2DTranspose(
                self.filters, self.kernel_size, strides=self.factor, name="conv2", **conv
            )
        self.shortcut = layers.Conv2D(self.filters, 1, name="shortcut", **conv)
        self.act1 = make_activation(activation, negative_slope, name="act1")
        self.act2 = make_activation(activation, negative_slope, name="act2")

    def _upsampled_shape(self, input_shape):
        return self.upsample.compute_output_shape(input_shape) if self.upsample is not None else input_shape

    def build(self, input_shape):
        up_shape = self._upsampled_shape(input_shape)
        first_in = up_shape if self.mode == "resize" else input_shape
        self.conv1.build(first_in)
        self.conv2.build(self.conv1.compute_output_shape(first_in))
        self.shortcut.build(up_shape)
        self.built = True

    def call(self, x):
        skip = self.upsample(x) if self.upsample is not None else x
        main = skip if self.mode == "resize" else x
        y = self.conv2(self.act1(self.conv1(main)))
        return self.act2(y + self.shortcut(skip))

    def compute_output_shape(self, input_shape):
        return self.shortcut.compute_output_shape(self._upsampled_shape(input_shape))

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "factor": self.factor,
            "kernel_size": self.kernel_size,
            "mode": self.mode,
            "interpolation": self.interpolation,
            "activation": self.activation,
            "negative_slope": self.negative_slope,
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer,
        }


@_register
class FiLM(layers.Layer):
    """Feature-wise linear modulation: ``x * (1 + gamma(c)) + beta(c)`` per channel, from a conditioning vector.

    The Dense layer producing (gamma, beta) starts at zero, so the block is the identity at initialisation and
    conditioning is learned gradually.
    """

    def __init__(self, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.projection = layers.Dense(2 * self.channels, kernel_initializer="zeros", name="projection")

    def build(self, features_shape, condition_shape=None):
        if condition_shape is None:
            raise ValueError("FiLM needs the conditioning vector's shape")
        self.projection.build(condition_shape)
        self.built = True

    def call(self, features, condition):
        gamma, beta = ops.split(self.projection(condition), 2, axis=-1)
        gamma = gamma[:, None, None, :]
        beta = beta[:, None, None, :]
        return features * (1.0 + gamma) + beta

    def compute_output_shape(self, features_shape, condition_shape=None):
        return features_shape

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


class ConfiguredModel(keras.Model):
    """Base of the encoder, decoders and critic: a subclassed model made from one :class:`ModelConfig`.

    Its config is just ``{"name", "trainable", "config": ModelConfig.to_dict()}``, so ``.keras`` files load with
    ``safe_mode=True``. Models build their weights at construction (a symbolic call on :meth:`example_inputs`),
    so parameters can be counted and weights loaded straight away.
    """

    def __init__(self, config=None, **kwargs):
        from ebsd_keras.models.presets import ModelConfig, get_preset

        super().__init__(**kwargs)
        if config is None:
            config = get_preset()
        elif isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        elif isinstance(config, str):
            config = get_preset(config)
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, a dict or a preset name, got {type(config).__name__}")
        self.model_config = config

    def example_inputs(self, batch_size: int = 1):
        """Symbolic inputs of the right structure (for building)."""
        raise NotImplementedError

    def _build_now(self):
        # A symbolic call creates every variable without running any convolution.
        self(self.example_inputs(), training=False)

    def _attribute_specs(self, batch_size):
        specs = {"quaternion": keras.KerasTensor((batch_size, 4), dtype="float32")}
        if self.model_config.use_voltage:
            specs["voltage_kv"] = keras.KerasTensor((batch_size,), dtype="float32")
        return specs

    def attributes(self, inputs):
        """Attribute vector (B, 4 or 5) from an input dict (see :func:`attribute_vector`)."""
        cfg = self.model_config
        return attribute_vector(inputs, cfg.use_voltage, cfg.voltage_norm_kv)

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "config": self.model_config.to_dict()}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
