"""The critic + classifier: one shared convolutional trunk, a WGAN score head and attribute heads."""

from __future__ import annotations

import keras
from keras import layers, ops

from ebsd_keras.models.blocks import ConfiguredModel, SeparableResidualBlock, make_activation

__all__ = ["Critic"]


@keras.saving.register_keras_serializable(package="ebsd_keras")
class Critic(ConfiguredModel):
    """Critic D(x) and attribute classifier sharing a trunk (paper-method.md, "Networks").

    ``call(pattern)`` (a (B, H, W, 1) tensor in [0, 1], or a dict with ``"pattern"``) returns a dict:

    - ``"score"``: (B,) unbounded real WGAN score (no sigmoid);
    - ``"quaternion"``: (B, 4) unit quaternion (L2-normalised; its sign is irrelevant to the disorientation loss);
    - ``"voltage_kv"``: (B,) predicted voltage in kV (de-normalised), only when ``config.use_voltage``.
    """

    def __init__(self, config=None, **kwargs):
        kwargs.setdefault("name", "critic")
        super().__init__(config, **kwargs)
        cfg = self.model_config
        act, slope, init = cfg.critic_activation, cfg.negative_slope, cfg.kernel_initializer
        self.stem = [
            layers.Conv2D(f, cfg.kernel_size, padding="same", use_bias=cfg.conv_bias, kernel_initializer=init,
                          name=f"stem{i}")
            for i, f in enumerate(cfg.critic_stem)
        ]  # fmt: skip
        self.stem_acts = [make_activation(act, slope) for _ in cfg.critic_stem]
        self.blocks = [
            SeparableResidualBlock(
                f,
                strides=s,
                kernel_size=cfg.kernel_size,
                activation=act,
                negative_slope=slope,
                use_bias=cfg.conv_bias,
                kernel_initializer=init,
                name=f"block{i}",
            )
            for i, (f, s) in enumerate(cfg.critic_blocks)
        ]
        self.exit = [
            layers.SeparableConv2D(f, cfg.kernel_size, padding="same", use_bias=cfg.conv_bias,
                                   depthwise_initializer=init, pointwise_initializer=init, name=f"exit{i}")
            for i, f in enumerate(cfg.critic_exit)
        ]  # fmt: skip
        self.exit_acts = [make_activation(act, slope) for _ in cfg.critic_exit]
        self.pool = layers.Flatten() if cfg.critic_pooling == "flatten" else layers.GlobalAveragePooling2D()
        self.shared = [
            layers.Dense(n, kernel_initializer=init, name=f"shared{i}") for i, n in enumerate(cfg.critic_dense)
        ]
        self.shared_acts = [make_activation(act, slope) for _ in cfg.critic_dense]
        self.heads = {"score": self._head("score", cfg.critic_score_dense, 1)}
        self.heads["quaternion"] = self._head("quaternion", cfg.critic_quaternion_dense, 4)
        if cfg.use_voltage:
            self.heads["voltage_kv"] = self._head("voltage", cfg.critic_voltage_dense, 1)
        self._build_now()

    def _head(self, prefix, hidden, nout):
        cfg = self.model_config
        dense = [
            layers.Dense(n, kernel_initializer=cfg.kernel_initializer, name=f"{prefix}_dense{i}")
            for i, n in enumerate(hidden)
        ]
        acts = [make_activation(cfg.critic_activation, cfg.negative_slope) for _ in hidden]
        return {"dense": dense, "acts": acts, "out": layers.Dense(nout, name=f"{prefix}_out")}

    def example_inputs(self, batch_size: int = 1):
        h, w = self.model_config.image_shape
        return keras.KerasTensor((batch_size, h, w, 1), dtype="float32")

    @staticmethod
    def _run_head(head, x):
        for dense, act in zip(head["dense"], head["acts"], strict=True):
            x = act(dense(x))
        return ops.cast(head["out"](x), "float32")  # float32 outputs under mixed precision too

    @property
    def lipschitz_variables(self):
        """Trainable variables of D(x) = score head o shared trunk: what the WGAN Lipschitz constraint applies to.

        The attribute heads (quaternion, voltage) are not part of D, so weight clipping leaves them free; clipping
        them too collapses the classifier to a constant output.
        """
        attribute_heads = {
            id(v)
            for name, head in self.heads.items()
            if name != "score"
            for layer in (*head["dense"], head["out"])
            for v in layer.trainable_variables
        }
        return [v for v in self.trainable_variables if id(v) not in attribute_heads]

    def features(self, pattern):
        """Shared trunk features (B, F) of patterns in [0, 1]."""
        x = ops.cast(pattern["pattern"] if isinstance(pattern, dict) else pattern, "float32")
        if len(x.shape) == 3:
            x = x[..., None]
        x = 2.0 * x - 1.0
        for conv, act in zip(self.stem, self.stem_acts, strict=True):
            x = act(conv(x))
        for block in self.blocks:
            x = block(x)
        for conv, act in zip(self.exit, self.exit_acts, strict=True):
            x = act(conv(x))
        x = self.pool(x)
        for dense, act in zip(self.shared, self.shared_acts, strict=True):
            x = act(dense(x))
        return x

    def call(self, pattern, training=None):
        f = self.features(pattern)
        out = {"score": self._run_head(self.heads["score"], f)[:, 0]}
        q = self._run_head(self.heads["quaternion"], f)
        out["quaternion"] = q / ops.sqrt(ops.sum(ops.square(q), axis=-1, keepdims=True) + 1e-12)
        if "voltage_kv" in self.heads:
            center, scale = self.model_config.voltage_norm_kv
            out["voltage_kv"] = center + scale * self._run_head(self.heads["voltage_kv"], f)[:, 0]
        return out
