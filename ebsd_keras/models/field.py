"""A learned generator with no master-pattern table: a neural field on the crystal directions of the detector pixels.

The physics decoder (:mod:`ebsd_keras.models.physics`) stores the master pattern as a table and learns its values.
:class:`FieldDecoder` keeps the same differentiable geometry but holds *all* pattern knowledge in the weights of a
small MLP, a function of direction on the Kikuchi sphere (issue 14, deliverable 1):

1. For each detector pixel, its unit direction in the sample frame (the detector's gnomonic geometry, a fixed or a
   per-pattern Bruker pattern centre ``"pc"``), rotated into the crystal frame by the orientation ``q``.
2. Folded into the fundamental sector of the crystal symmetry (``physics_symmetry``; "m-3m": sorted absolute
   components, 0 <= y <= x <= z), so the 48 symmetry-equivalent directions share one output by construction.
3. Fourier features ``[d, sin(2 pi d B), cos(2 pi d B)]`` of the folded direction d, with a fixed Gaussian frequency
   matrix B (3, F) of standard deviation ``field_frequency_scale`` cycles per unit (kept as a non-trainable weight so
   a saved model regenerates the same features), then an MLP (``field_hidden``, ReLU) whose first layer is also fed
   the latent z and, for voltage models, the normalised voltage (one per-pattern vector added to every pixel's
   pre-activation); one linear output: the raw intensity of that pixel.
4. Contrast as the physics decoder's ``physics_contrast``: "rescale" (per-pattern min-max to [0, 1], the raw
   datasets' preprocessing) or "clahe" (rescale to 8 bit, then OpenCV-exact CLAHE in the graph with a surrogate
   gradient, :func:`ebsd_keras.models.clahe.clahe_tf`). Probabilities become logits as
   ``log(p + eps) - log(1 - p + eps)``, eps = 1e-4 (the physics decoder's).

Training on pixel subsets (:meth:`FieldDecoder.pixel_logits`): each pixel's value depends only on its own
direction, so the CVAE phase can evaluate ``field_train_pixels`` random pixels per pattern instead of all H x W
(7x fewer MLP evaluations at 512 of 3,600). The per-pattern min-max rescale of the "rescale" contrast needs the
whole pattern, so on a subset the affine map from raw field values to the targets is the per-pattern least-squares
fit instead (the same map when the field is right; the full-pattern path uses the exact min-max). The CLAHE contrast
mixes pixels within tiles and cannot be subsampled: a "clahe" field trains on full patterns.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from ebsd_keras.models.blocks import canonical_quaternion
from ebsd_keras.models.contrast import fixed_contrast
from ebsd_keras.models.decoders import BaseDecoder, register_decoder
from ebsd_keras.simulations.geometry import DetectorGeometry
from ebsd_keras.simulations.projection import gnomonic_directions, quaternion_to_matrix

from ebsd_keras.simulations.projection import fold_directions

__all__ = ["FieldDecoder", "FIELD_CONTRASTS", "subsample_pixels"]

_register = keras.saving.register_keras_serializable(package="ebsd_keras")
#: Contrast paths the field supports (the physics decoder's fixed ones; its "learned" head is not offered).
FIELD_CONTRASTS = ("rescale", "clahe")
_PROB_EPS = 1e-4  # as ebsd_keras.models.physics.PROB_EPS: finite logits (|l| <= 9.2) with a gradient at 0 and 1


def _probability_logits(p):
    return ops.log(p + _PROB_EPS) - ops.log(1.0 - p + _PROB_EPS)


def _rotate(directions, rot):
    """Components (x, y, z) of R v, each (B, N), for directions (N, 3) or (B, N, 3) and rotations (B, 3, 3)."""
    dx, dy, dz = directions[..., 0], directions[..., 1], directions[..., 2]
    if len(directions.shape) == 2:
        dx, dy, dz = dx[None], dy[None], dz[None]
    r = rot[:, :, :, None]
    return tuple(r[:, i, 0] * dx + r[:, i, 1] * dy + r[:, i, 2] * dz for i in range(3))


def subsample_pixels(x, index):
    """Pixels ``index`` (B, P) of patterns x (B, H, W[, 1]) as (B, P) (row-major pixel numbers)."""
    flat = ops.reshape(ops.cast(x, "float32"), (ops.shape(x)[0], -1))
    return ops.take_along_axis(flat, ops.cast(index, "int32"), axis=1)


@_register
class FieldDecoder(BaseDecoder):
    """Neural-field generator: folded crystal direction of each pixel -> Fourier features -> MLP -> contrast.

    Built from a :class:`~ebsd_keras.models.presets.ModelConfig` with ``decoder="field"`` (preset "field"); see the
    module docstring. Inputs ``{"z" (B, latent_dim), "quaternion" (B, 4), "voltage_kv" (B,) kV for voltage models,
    optional "pc" (B, 3) Bruker pattern centres}``; output logits (B, H, W, 1).

    Attributes
    ----------
    train_pixels
        Pixels per pattern the CVAE phase evaluates (0: whole patterns); only used with the "rescale" contrast.
    """

    accepts_pattern_centre = True

    def __init__(self, config=None, seed: int | None = None, **kwargs):
        kwargs.setdefault("name", "decoder")
        super().__init__(config, seed=seed, **kwargs)
        cfg = self.model_config
        if cfg.physics_contrast not in FIELD_CONTRASTS:
            raise ValueError(f"the field decoder's contrast must be in {FIELD_CONTRASTS}, not {cfg.physics_contrast!r}")
        self.geometry = DetectorGeometry(
            shape=tuple(cfg.image_shape),
            pc=tuple(cfg.physics_detector_pc),
            tilt_deg=cfg.physics_detector_tilt_deg,
            sample_tilt_deg=cfg.physics_sample_tilt_deg,
        )
        self.symmetry = cfg.physics_symmetry
        self.contrast = cfg.physics_contrast
        self.train_pixels = int(cfg.field_train_pixels)
        # the fixed detector's pixel directions, (H*W, 3), computed once
        pc = np.asarray([cfg.physics_detector_pc], dtype=np.float32)
        self._directions = np.asarray(gnomonic_directions(pc, self.geometry))[0].astype(np.float32)
        n_freq = int(cfg.field_frequencies)
        self.frequencies = self.add_weight(
            name="frequencies", shape=(3, n_freq), initializer="zeros", trainable=False
        )  # fixed; a weight so that a loaded model has the very same features
        rng = np.random.default_rng(0 if seed is None else int(seed))
        self.frequencies.assign(rng.normal(0.0, float(cfg.field_frequency_scale), (3, n_freq)).astype(np.float32))
        init = "he_uniform"
        hidden = [int(u) for u in cfg.field_hidden]
        self.first = layers.Dense(hidden[0], kernel_initializer=init, name="field_in")
        # z (and kV) enter the first layer as one per-pattern vector added to every pixel's pre-activation
        self.condition = layers.Dense(hidden[0], use_bias=False, kernel_initializer="glorot_uniform", name="field_z")
        self.hidden = [layers.Dense(u, kernel_initializer=init, name=f"field_h{i}") for i, u in enumerate(hidden[1:])]
        self.out = layers.Dense(1, kernel_initializer="glorot_uniform", name="field_out")
        self._build_now()

    @property
    def subsampling(self) -> bool:
        """Whether training may use pixel subsets (``train_pixels`` > 0 and the "rescale" contrast)."""
        return self.train_pixels > 0 and self.contrast == "rescale"

    # -- the field -----------------------------------------------------------------------------------------------
    def _conditioning(self, inputs):
        cfg = self.model_config
        c = ops.cast(inputs["z"], "float32")
        if cfg.use_voltage:
            if inputs.get("voltage_kv") is None:
                raise ValueError("this model uses the accelerating voltage: inputs need 'voltage_kv' (B,) in kV")
            center, scale = cfg.voltage_norm_kv
            v = (ops.reshape(ops.cast(inputs["voltage_kv"], "float32"), (-1, 1)) - center) / scale
            c = ops.concatenate([c, v], axis=-1)
        return self.condition(c)  # (B, hidden0)

    def _pixel_directions(self, inputs, index=None):
        """Sample-frame directions (N, 3) or (B, N, 3) of all pixels, or (B, P, 3) of pixels ``index`` (B, P)."""
        pc = inputs.get("pc")
        if pc is None:
            d = ops.convert_to_tensor(self._directions)
            return d if index is None else ops.take(d, ops.cast(index, "int32"), axis=0)
        d = gnomonic_directions(ops.cast(pc, "float32"), self.geometry)  # (B, H*W, 3)
        if index is None:
            return d
        return ops.take_along_axis(d, ops.cast(index, "int32")[..., None], axis=1)

    def field(self, inputs, index=None):
        """Raw intensities (B, N) of all pixels (row-major, N = H*W), or (B, P) of the pixels ``index`` (B, P)."""
        q = canonical_quaternion(inputs["quaternion"])
        x, y, z = _rotate(self._pixel_directions(inputs, index), quaternion_to_matrix(q))
        if self.symmetry != "none":
            x, y, z = fold_directions(x, y, z, self.symmetry)
        d = ops.stack([x, y, z], axis=-1)  # (B, N, 3)
        phase = (2.0 * math.pi) * ops.matmul(d, ops.convert_to_tensor(self.frequencies))  # (B, N, F)
        h = self.first(ops.concatenate([d, ops.sin(phase), ops.cos(phase)], axis=-1))
        h = ops.relu(h + self._conditioning(inputs)[:, None, :])
        for dense in self.hidden:
            h = ops.relu(dense(h))
        return self.out(h)[..., 0]

    def project(self, attributes: dict):
        """Raw intensities (B, H, W) of whole patterns (the refinement code's hook, as the physics decoder's).

        ``attributes`` may lack ``"z"``: the deterministic path z = 0 is used.
        """
        if attributes.get("z") is None:
            batch = ops.shape(attributes["quaternion"])[0]
            attributes = {**attributes, "z": ops.zeros((batch, self.latent_dim), dtype="float32")}
        h, w = self.model_config.image_shape
        return ops.reshape(self.field(attributes), (-1, h, w))

    def contrast_probabilities(self, raw, differentiable: bool = True):
        """Probabilities (B, H, W, 1) from raw intensities (B, H, W): min-max rescale, then CLAHE if configured."""
        return fixed_contrast(raw, self.contrast, self.model_config.physics.clahe, differentiable)

    def call(self, inputs, training=None, differentiable=True):
        """Logits (B, H, W, 1) of whole patterns.

        ``differentiable`` (default True, so that refinement and the GAN phase get gradients through CLAHE) adds
        the CLAHE surrogate gradient; the forward value is the same either way.
        """
        p = self.contrast_probabilities(self.project(inputs), differentiable=bool(differentiable))
        return ops.cast(_probability_logits(p), "float32")

    def pixel_logits(self, inputs, index, targets):
        """Logits (B, P) of pixels ``index`` (B, P) for training on pixel subsets ("rescale" contrast only).

        The min-max rescale needs the whole pattern; on a subset the raw values are mapped to [0, 1] by the
        per-pattern least-squares affine fit to ``targets`` (B, P) (differentiable; the same map as min-max
        when the field is exact up to an affine map, which is all the rescaled targets determine).
        """
        if self.contrast != "rescale":
            raise ValueError("pixel subsets need the 'rescale' contrast (CLAHE mixes the pixels of a tile)")
        raw = self.field(inputs, index)
        t = ops.cast(targets, "float32")
        rm = ops.mean(raw, axis=1, keepdims=True)
        tm = ops.mean(t, axis=1, keepdims=True)
        cov = ops.mean((raw - rm) * (t - tm), axis=1, keepdims=True)
        var = ops.mean(ops.square(raw - rm), axis=1, keepdims=True)
        p = ops.clip((raw - rm) * cov / (var + 1e-12) + tm, 0.0, 1.0)
        return _probability_logits(p)

    def generate(self, attributes: dict, z=None, sample: bool = False, seed=None):
        """As :meth:`BaseDecoder.generate` (probabilities in [0, 1]); also passes an optional pattern centre ``"pc"``
        (B, 3), and computes CLAHE without its surrogate gradient (faster, same values)."""
        if "quaternion" not in attributes:
            raise ValueError("attributes need a 'quaternion' entry (B, 4)")
        attrs = {k: v for k, v in attributes.items() if k in ("quaternion", "voltage_kv", "pc")}
        if z is None:
            batch = ops.shape(attributes["quaternion"])[0]
            if sample:
                rng = self.seed_generator if seed is None else int(seed)
                z = keras.random.normal((batch, self.latent_dim), seed=rng)
            else:
                z = ops.zeros((batch, self.latent_dim), dtype="float32")
        p = self.contrast_probabilities(self.project({"z": z, **attrs}), differentiable=False)
        return (p + _PROB_EPS) / (1.0 + 2.0 * _PROB_EPS)  # = sigmoid(logit_eps(p)), what call() gives


register_decoder("field", FieldDecoder)
