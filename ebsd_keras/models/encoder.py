"""The CVAE encoder G_enc(x, attributes) -> (mu, logvar) (paper-method.md, "Networks")."""

from __future__ import annotations

import keras
from keras import layers, ops

from ebsd_keras.models.blocks import ConfiguredModel, SeparableResidualBlock, make_activation, soft_clip

__all__ = ["Encoder"]


@keras.saving.register_keras_serializable(package="ebsd_keras")
class Encoder(ConfiguredModel):
    """Conv stem, depthwise-separable residual blocks, flatten (or global average) + attributes, Dense stack.

    ``call({"pattern": (B, H, W, 1) in [0, 1], "quaternion": (B, 4), "voltage_kv": (B,) kV if use_voltage})``
    returns ``(mu, logvar)``, each (B, latent_dim). ``logvar`` is soft-clipped to ``config.logvar_bounds`` so that
    ``exp(logvar)`` stays finite. Quaternions are normalised and sign-canonicalised (q0 >= 0) and the voltage is
    normalised inside the model.
    """

    def __init__(self, config=None, **kwargs):
        kwargs.setdefault("name", "encoder")
        super().__init__(config, **kwargs)
        cfg = self.model_config
        act = "leaky_relu"
        conv = {
            "padding": "same",
            "use_bias": cfg.conv_bias,
            "kernel_initializer": cfg.kernel_initializer,
        }
        self.stem = [layers.Conv2D(f, cfg.kernel_size, name=f"stem{i}", **conv) for i, f in enumerate(cfg.encoder_stem)]
        self.stem_acts = [make_activation(act, cfg.negative_slope) for _ in cfg.encoder_stem]
        self.blocks = [
            SeparableResidualBlock(
                f,
                strides=s,
                kernel_size=cfg.kernel_size,
                activation=act,
                negative_slope=cfg.negative_slope,
                use_bias=cfg.conv_bias,
                kernel_initializer=cfg.kernel_initializer,
                name=f"block{i}",
            )
            for i, (f, s) in enumerate(cfg.encoder_blocks)
        ]
        self.pool = layers.Flatten() if cfg.encoder_pooling == "flatten" else layers.GlobalAveragePooling2D()
        self.dense = [
            layers.Dense(n, kernel_initializer=cfg.kernel_initializer, name=f"dense{i}")
            for i, n in enumerate(cfg.encoder_dense)
        ]
        self.dense_acts = [make_activation(act, cfg.negative_slope) for _ in cfg.encoder_dense]
        # Glorot for the linear output: mu and logvar start small.
        self.head = layers.Dense(2 * cfg.latent_dim, name="mu_logvar")
        self._build_now()

    def example_inputs(self, batch_size: int = 1):
        h, w = self.model_config.image_shape
        return {
            "pattern": keras.KerasTensor((batch_size, h, w, 1), dtype="float32"),
            **self._attribute_specs(batch_size),
        }

    def call(self, inputs, training=None):
        cfg = self.model_config
        x = ops.cast(inputs["pattern"], "float32")
        if len(x.shape) == 3:
            x = x[..., None]
        x = 2.0 * x - 1.0  # [0, 1] -> [-1, 1]: centred inputs
        for conv, act in zip(self.stem, self.stem_acts, strict=True):
            x = act(conv(x))
        for block in self.blocks:
            x = block(x)
        x = ops.concatenate([self.pool(x), self.attributes(inputs)], axis=-1)
        for dense, act in zip(self.dense, self.dense_acts, strict=True):
            x = act(dense(x))
        # float32 outputs even under a mixed-precision policy: the losses and the sampling run in float32
        mu, raw_logvar = ops.split(ops.cast(self.head(x), "float32"), 2, axis=-1)
        lo, hi = cfg.logvar_bounds
        return mu, soft_clip(raw_logvar, lo, hi)
