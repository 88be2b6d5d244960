"""Decoders / generators G_dec(z, attributes) -> pattern logits, and the decoder registry.

Every decoder returns **logits** (B, H, W, 1); probabilities are ``sigmoid(logits)`` (:meth:`BaseDecoder.generate`).
Training uses the logits directly (a numerically stable BCE, ``ebsd_keras.losses.bce_from_logits``).

New decoder kinds (e.g. a physics-based one) subclass :class:`BaseDecoder`, register themselves for serialization,
and are added to :data:`DECODERS`; :func:`build_decoder` picks one by ``config.decoder``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from ebsd_keras.models.blocks import ConfiguredModel, FiLM, UpResidualBlock, make_activation

__all__ = ["BaseDecoder", "CNNDecoder", "DECODERS", "build_decoder", "register_decoder"]

_register = keras.saving.register_keras_serializable(package="ebsd_keras")


class BaseDecoder(ConfiguredModel):
    """Common interface: ``call({"z", "quaternion", "voltage_kv"?}) -> logits`` and :meth:`generate`.

    Subclasses build their layers, then call ``self._build_now()`` at the end of ``__init__``.
    """

    #: Whether ``call`` takes a per-pattern Bruker pattern centre ``"pc"`` (decoders that project with a detector).
    accepts_pattern_centre = False

    def __init__(self, config=None, seed: int | None = None, **kwargs):
        super().__init__(config, **kwargs)
        self.seed = seed
        # Drives the sampled generation path when no explicit seed is given.
        self.seed_generator = keras.random.SeedGenerator(seed, name="generate_seed")

    @property
    def latent_dim(self) -> int:
        return self.model_config.latent_dim

    def example_inputs(self, batch_size: int = 1):
        z = keras.KerasTensor((batch_size, self.latent_dim), dtype="float32")
        return {"z": z, **self._attribute_specs(batch_size)}

    def generate(self, attributes: dict, z=None, sample: bool = False, seed=None):
        """Patterns in [0, 1] for the given attributes.

        Parameters
        ----------
        attributes
            ``{"quaternion": (B, 4), "voltage_kv": (B,) kV}`` (voltage only for voltage models).
        z
            Latent vectors (B, latent_dim); overrides ``sample``.
        sample
            ``False`` (default): the deterministic path z = 0 (the prior mean), identical on every call.
            ``True``: z ~ N(0, I), drawn with ``seed`` (an int gives reproducible samples) or, when ``seed`` is
            None, with the decoder's own seed generator (a new draw each call).

        Returns
        -------
        tensor
            (B, H, W, 1) float32 probabilities = sigmoid(logits).
        """
        if "quaternion" not in attributes:
            raise ValueError("attributes need a 'quaternion' entry (B, 4)")
        batch = ops.shape(attributes["quaternion"])[0]
        if z is None:
            if sample:
                rng = self.seed_generator if seed is None else int(seed)
                z = keras.random.normal((batch, self.latent_dim), seed=rng)
            else:
                z = ops.zeros((batch, self.latent_dim), dtype="float32")
        inputs = {"z": z, **{k: v for k, v in attributes.items() if k in ("quaternion", "voltage_kv")}}
        return ops.sigmoid(self(inputs, training=False))

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@_register
class CNNDecoder(BaseDecoder):
    """Dense layers from (z, attributes) to a small feature map, then upsampling residual blocks, then logits.

    Conditioning (``config.conditioning``): "add" — a latent MLP and an attribute MLP of the same shape, summed
    (the paper); "concat" — one MLP on [z, attributes]; "film" — "concat" plus FiLM after every upsampling block.
    The attributes always enter the Dense input, because FiLM's per-channel scale/shift alone cannot move
    Kikuchi bands (their *positions* depend on the orientation).
    """

    def __init__(self, config=None, seed: int | None = None, **kwargs):
        kwargs.setdefault("name", "decoder")
        super().__init__(config, seed=seed, **kwargs)
        cfg = self.model_config
        slope, init = cfg.negative_slope, cfg.kernel_initializer
        start = int(np.prod(cfg.decoder_start))

        def mlp(prefix):
            sizes = (*cfg.decoder_dense, start)
            dense = [layers.Dense(n, kernel_initializer=init, name=f"{prefix}{i}") for i, n in enumerate(sizes)]
            return dense, [make_activation("leaky_relu", slope) for _ in sizes]

        self.z_dense, self.z_acts = mlp("dense")
        if cfg.conditioning == "add":
            self.a_dense, self.a_acts = mlp("attr_dense")
        else:
            self.a_dense, self.a_acts = [], []
        film = cfg.conditioning == "film"
        self.film_embedding = (
            [
                layers.Dense(cfg.film_dim, kernel_initializer=init, name="film_embedding0"),
                layers.Dense(cfg.film_dim, kernel_initializer=init, name="film_embedding1"),
            ]
            if film
            else []
        )
        self.film_acts = [make_activation("leaky_relu", slope) for _ in self.film_embedding]
        stem_conv = layers.Conv2DTranspose if cfg.decoder_upsampling == "transpose" else layers.Conv2D
        self.stem = [
            stem_conv(f, cfg.kernel_size, padding="same", use_bias=cfg.conv_bias, kernel_initializer=init,
                      name=f"stem{i}")
            for i, f in enumerate(cfg.decoder_stem)
        ]  # fmt: skip
        self.stem_acts = [make_activation("leaky_relu", slope) for _ in cfg.decoder_stem]
        self.blocks = [
            UpResidualBlock(
                f,
                factor=k,
                kernel_size=cfg.kernel_size,
                mode=cfg.decoder_upsampling,
                interpolation=cfg.decoder_interpolation,
                negative_slope=slope,
                use_bias=cfg.conv_bias,
                kernel_initializer=init,
                name=f"block{i}",
            )
            for i, (f, k) in enumerate(cfg.decoder_blocks)
        ]
        self.films = [FiLM(f, name=f"film{i}") for i, (f, _) in enumerate(cfg.decoder_blocks)] if film else []
        # Glorot for the logits head: a small, unbiased start (sigmoid(0) = 0.5 grey).
        self.head = layers.Conv2D(1, cfg.kernel_size, padding="same", name="logits")
        self._build_now()

    def call(self, inputs, training=None):
        cfg = self.model_config
        a = self.attributes(inputs)
        z = ops.cast(inputs["z"], "float32")
        h = z if cfg.conditioning == "add" else ops.concatenate([z, a], axis=-1)
        for dense, act in zip(self.z_dense, self.z_acts, strict=True):
            h = act(dense(h))
        if cfg.conditioning == "add":
            g = a
            for dense, act in zip(self.a_dense, self.a_acts, strict=True):
                g = act(dense(g))
            h = h + g
        h = ops.reshape(h, (-1, *cfg.decoder_start))
        emb = a
        for dense, act in zip(self.film_embedding, self.film_acts, strict=True):
            emb = act(dense(emb))
        for conv, act in zip(self.stem, self.stem_acts, strict=True):
            h = act(conv(h))
        for i, block in enumerate(self.blocks):
            h = block(h)
            if self.films:
                h = self.films[i](h, emb)
        return ops.cast(self.head(h), "float32")  # float32 logits under mixed precision too


#: Decoder kinds by ``ModelConfig.decoder`` (a "physics" kind is planned).
DECODERS: dict[str, type[BaseDecoder]] = {"cnn": CNNDecoder}


def register_decoder(kind: str, cls: type[BaseDecoder]) -> None:
    """Make a decoder class available to :func:`build_decoder` as ``config.decoder == kind``."""
    if not (isinstance(cls, type) and issubclass(cls, BaseDecoder)):
        raise TypeError("decoders must subclass BaseDecoder")
    DECODERS[kind] = cls


def build_decoder(config, seed: int | None = None, **kwargs) -> BaseDecoder:
    """The decoder that ``config.decoder`` names, built from ``config``."""
    from ebsd_keras.models.presets import ModelConfig, get_preset

    cfg = get_preset(config) if isinstance(config, str) else config
    if not isinstance(cfg, ModelConfig):
        raise TypeError("config must be a ModelConfig or a preset name")
    # Decoder kinds above this module register themselves on import (ebsd_keras.models.cvaegan imports them all),
    # so this module imports none of them: the arrows point down.
    if cfg.decoder not in DECODERS:
        raise ValueError(
            f"unknown decoder kind {cfg.decoder!r}; available: {sorted(DECODERS)} "
            "(import ebsd_keras.models.cvaegan to register every kind)"
        )
    return DECODERS[cfg.decoder](cfg, seed=seed, **kwargs)
