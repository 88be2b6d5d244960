"""Pattern generators for indexing and refinement: one typed :class:`Generator` for a model or a master pattern.

A generator maps orientations (and, if it can, pattern centres) to patterns::

    gen(q (B, 4) float32, pc (B, 3) Bruker or None) -> (B, H, W) float32 in [0, 1]

and says what it is: whether it takes a pattern centre (``takes_pc``; for a model decided by
:func:`takes_pattern_centre`, the one place that question is answered), its image shape, its default pattern centre
and, for generators that end in 8-bit CLAHE, the stages around the CLAHE that the gradient refinement differentiates
(:class:`ClaheStages`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ebsd_keras.errors import EBSDInputError

__all__ = [
    "Generator",
    "ClaheStages",
    "takes_pattern_centre",
    "model_refinement_generator",
    "master_pattern_generator",
]


def takes_pattern_centre(model) -> bool:
    """Whether a model (a CVAEGAN or a decoder) generates at a given pattern centre.

    Decoders that project with a detector declare ``accepts_pattern_centre = True`` (the physics decoder and its
    kin); a CVAEGAN answers for its decoder (``takes_pattern_centre``).
    """
    if hasattr(model, "takes_pattern_centre"):
        return bool(model.takes_pattern_centre)
    return bool(getattr(model, "accepts_pattern_centre", False))


@dataclass(eq=False)
class Generator:
    """A pattern generator and what it can do.

    Attributes
    ----------
    fn
        ``fn(q (B, 4), pc (B, 3) or None) -> (B, H, W)`` float32 patterns in [0, 1] (keras.ops tensors or numpy).
    takes_pc
        Whether ``pc`` may be given (a generator with a fixed detector raises ``EBSDInputError`` when it is).
    image_shape
        (H, W) of its patterns.
    default_pc
        Its own Bruker pattern centre (PCx, PCy, PCz), where it has one (the start of a pattern-centre refinement).
    stages
        :class:`ClaheStages` when the generator ends in 8-bit CLAHE, else None.
    """

    fn: Callable
    takes_pc: bool
    image_shape: tuple
    default_pc: tuple | None = None
    stages: ClaheStages | None = None
    #: compiled refinement steps of this generator, by (parameters, use_pc, jit) (see ``indexing.refinement``)
    compiled: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.image_shape = tuple(int(s) for s in self.image_shape)
        if self.default_pc is not None:
            self.default_pc = tuple(float(p) for p in self.default_pc)

    def __call__(self, q, pc=None):
        if pc is not None and not self.takes_pc:
            raise EBSDInputError("this generator has a fixed detector: it cannot take a pattern centre", None, "pc")
        return self.fn(q, pc)


class ClaheStages:
    """A generator split at its CLAHE, for finite differences of a smooth map (see :func:`refine_gradient`).

    Parameters
    ----------
    pre
        ``pre(q, pc) -> (B, H, W)`` grey levels in [0, 255] before CLAHE (real-valued, not yet rounded).
    post
        ``post(c) -> (B, H, W)`` the generator's output from CLAHE'd grey levels ``c`` in [0, 255].
    clip_limit, tiles
        The CLAHE (OpenCV ``clipLimit`` and (rows, columns)); ``clip_limit=None``: no CLAHE, only the 8-bit
        rounding.
    shape
        (H, W) of the patterns.
    """

    def __init__(self, pre, post, clip_limit, tiles, shape):
        from ebsd_keras.models.clahe import ClahePlan

        self.pre, self.post = pre, post
        self.plan = None if clip_limit is None else ClahePlan(int(shape[0]), int(shape[1]), tiles, clip_limit)

    def exact(self, grey):
        """Exact CLAHE of grey levels (B, H, W) and the tile LUTs: (output (B, H, W), LUTs) (no CLAHE: rounding)."""
        import tensorflow as tf

        from ebsd_keras.models.clahe import clahe_exact

        if self.plan is None:
            return tf.round(grey), tf.zeros((tf.shape(grey)[0], 1, 1), tf.float32)
        return clahe_exact(tf.cast(tf.round(grey), tf.int32), self.plan)

    def smooth(self, grey, lut, copies: int):
        """The smooth map of grey levels (copies * B, H, W) through the LUTs of B patterns, no rounding."""
        import tensorflow as tf

        from ebsd_keras.models.clahe import clahe_blend

        if self.plan is None:
            return grey
        return clahe_blend(tf.tile(lut, [copies, 1, 1]), grey, self.plan)


def model_refinement_generator(
    model, differentiable: bool = True, voltage_kv: float | None = None, clahe_gradient: str | None = "lut"
):
    """A refinement generator from a trained model: the deterministic path (z = 0).

    Parameters
    ----------
    model
        A CVAEGAN (``.decoder``) or a decoder (``generate`` / ``call({"z", "quaternion", ...})``).
    differentiable
        For the physics decoder: switch on its CLAHE surrogate gradient (``call(..., differentiable=True)``).
        False gives the exact forward value only (faster; for derivative-free refiners).
    voltage_kv
        Accelerating voltage (kV) for voltage models (one value for every pattern).
    clahe_gradient
        For a physics decoder with in-graph CLAHE: the CLAHE surrogate gradient to refine with, "lut" (each tile's
        LUT held fixed: about 2.5x cheaper per gradient than "histogram", and what refinement needs: the band
        positions, not the equalisation's response to global intensity changes) or "histogram"; None: the model's
        own (``physics_clahe_gradient``). The forward value is the same either way.

    Returns
    -------
    Generator
        ``gen(q (B, 4), pc (B, 3) or None) -> (B, H, W)`` float32 probabilities. A pattern centre is only accepted
        by decoders that project with one (:func:`takes_pattern_centre`); others raise ``EBSDInputError``.
    """
    from keras import ops

    decoder = getattr(model, "decoder", model)
    cfg = decoder.model_config
    if cfg.use_voltage and voltage_kv is None:
        raise EBSDInputError("this model uses the accelerating voltage: give voltage_kv (kV)", None, "voltage_kv")
    takes_pc = takes_pattern_centre(decoder)
    is_physics = cfg.decoder == "physics"

    # the physics decoder's "clahe" contrast (projection, rescale, CLAHE, logits): run here, split at the CLAHE
    clahe_path = (
        is_physics and getattr(decoder, "contrast", None) == "clahe" and getattr(decoder, "head_out", None) is None
    )
    own_contrast = clahe_gradient is None or not clahe_path

    def inputs_of(q, pc):
        batch = ops.shape(q)[0]
        inputs = {"z": ops.zeros((batch, cfg.latent_dim), dtype="float32"), "quaternion": q}
        if cfg.use_voltage:
            inputs["voltage_kv"] = ops.full((batch,), float(voltage_kv), dtype="float32")
        if pc is not None:
            if not takes_pc:
                raise EBSDInputError(
                    f"the {type(decoder).__name__} has a fixed detector and cannot generate at other pattern centres",
                    None,
                    "pc",
                )
            inputs["pc"] = pc
        return inputs

    def fn(q, pc=None):
        inputs = inputs_of(q, pc)
        if not own_contrast:
            return _physics_clahe_probabilities(decoder, inputs, differentiable, clahe_gradient)
        if is_physics:
            logits = decoder(inputs, training=False, differentiable=differentiable)
        else:
            logits = decoder(inputs, training=False)
        return ops.sigmoid(logits)[..., 0]

    return Generator(
        fn,
        takes_pc=takes_pc,
        image_shape=tuple(cfg.image_shape),
        default_pc=tuple(cfg.physics_detector_pc) if takes_pc else None,
        stages=_physics_stages(decoder, inputs_of) if clahe_path else None,
    )


def _physics_stages(decoder, inputs_of) -> ClaheStages:
    """The physics decoder's clahe path as :class:`ClaheStages`: rescaled projection | CLAHE | logits + residual."""
    from keras import ops

    from ebsd_keras.models.contrast import minmax_unit
    from ebsd_keras.models.physics import PROB_EPS

    cfg = decoder.model_config

    def pre(q, pc):
        return minmax_unit(decoder.project(inputs_of(q, pc))) * 255.0

    def post(c):
        # sigmoid(logit_eps(p) + r) with the z = 0 residual r the same for every pattern: (p + eps) e^r / ((p + eps)
        # e^r + 1 - p + eps), one exp per pixel instead of log, log and sigmoid per pattern pixel (as generate())
        p = c / 255.0
        odds = ops.exp(decoder.residual_logits(ops.zeros((1, cfg.latent_dim), dtype="float32"))[..., 0])
        num = (p + PROB_EPS) * odds
        return num / (num + (1.0 - p + PROB_EPS))

    return ClaheStages(pre, post, cfg.physics_clahe_clip_limit, cfg.physics_clahe_tiles, cfg.image_shape)


def _physics_clahe_probabilities(decoder, inputs, differentiable: bool, gradient: str):
    """The physics decoder's "clahe" contrast path (projection, min-max rescale, CLAHE, logits + latent residual)
    with another CLAHE surrogate gradient; the same forward value as ``sigmoid(decoder(inputs))``."""
    from keras import ops

    from ebsd_keras.models.clahe import clahe_tf
    from ebsd_keras.models.contrast import minmax_unit
    from ebsd_keras.models.physics import PROB_EPS

    cfg = decoder.model_config
    unit = minmax_unit(decoder.project(inputs))
    p = (
        clahe_tf(
            unit * 255.0,
            cfg.physics_clahe_clip_limit,
            cfg.physics_clahe_tiles,
            differentiable=differentiable,
            gradient=gradient,
        )
        / 255.0
    )
    if getattr(decoder, "residual_hidden", None) is None:
        return (p + PROB_EPS) / (1.0 + 2.0 * PROB_EPS)  # sigmoid(logit_eps(p))
    # sigmoid(logit_eps(p) + r) as odds: one exp of the residual instead of log, log and sigmoid per pixel
    num = (p + PROB_EPS) * ops.exp(decoder.residual_logits(inputs["z"])[..., 0])
    return num / (num + (1.0 - p + PROB_EPS))


def master_pattern_generator(
    master_pattern, geometry, clahe_config="default", differentiable: bool = True, clahe_gradient: str = "lut"
):
    """A refinement generator that projects a master pattern and preprocesses it like the dataset, in the graph.

    Parameters
    ----------
    master_pattern
        kikuchipy ``EBSDMasterPattern`` (square Lambert, both hemispheres) or a pair (north, south) of (S, S)
        arrays.
    geometry
        :class:`~ebsd_keras.simulations.geometry.DetectorGeometry` (or its dict): shape, tilts, default PC.
    clahe_config
        :class:`~ebsd_keras.data.preprocess.CLAHEConfig`, "default" (clip 10, 4 x 4) or None (rescale only).
    differentiable
        Add CLAHE's surrogate gradient (see :func:`ebsd_keras.models.clahe.clahe_tf`).
    clahe_gradient
        The surrogate: "lut" (each tile's LUT held fixed; default, cheaper) or "histogram" (smooth CLAHE).

    Returns
    -------
    Generator
        ``gen(q (B, 4), pc (B, 3) or None) -> (B, H, W)`` float32 in [0, 1]: per-pattern min-max rescale to
        [0, 255], rounding to integers and CLAHE -- :meth:`Indexer.preprocess
        <ebsd_keras.indexing.dictionary.Indexer.preprocess>` of the projection, to within float32 rounding.
    """
    from keras import ops

    from ebsd_keras.data.preprocess import CLAHEConfig
    from ebsd_keras.models.clahe import clahe_tf
    from ebsd_keras.models.contrast import minmax_unit
    from ebsd_keras.simulations.geometry import DetectorGeometry
    from ebsd_keras.simulations.projection import LambertProjector

    if isinstance(geometry, dict):
        geometry = DetectorGeometry.from_dict(geometry)
    if clahe_config == "default":
        clahe_config = CLAHEConfig()
    if isinstance(master_pattern, (tuple, list)):
        north, south = (np.asarray(h, dtype=np.float32) for h in master_pattern)
    else:
        data = np.asarray(master_pattern.data, dtype=np.float32)
        if data.ndim != 3 or data.shape[0] != 2:
            raise EBSDInputError(
                f"expected a two-hemisphere square-Lambert master pattern (2, S, S), got {data.shape}",
                None,
                "master_pattern",
            )
        north, south = data[0], data[1]
    projector = LambertProjector(geometry, npx=(north.shape[-1] - 1) // 2)
    north_t, south_t = ops.convert_to_tensor(north), ops.convert_to_tensor(south)

    def pre(q, pc):  # grey levels in [0, 255], before rounding and CLAHE
        return minmax_unit(projector(north_t, south_t, ops.cast(q, "float32"), pc=pc)) * 255.0

    def fn(q, pc=None):
        grey = pre(q, pc)
        if clahe_config is None:
            rounded = ops.round(grey)  # the dataset's uint8 rounding; straight-through gradient
            return (grey + ops.stop_gradient(rounded - grey)) / 255.0
        out = clahe_tf(
            grey,
            clahe_config.clip_limit,
            clahe_config.tiles,
            differentiable=differentiable,
            gradient=clahe_gradient,
        )
        return out / 255.0

    clip, tiles = (None, None) if clahe_config is None else (clahe_config.clip_limit, clahe_config.tiles)
    return Generator(
        fn,
        takes_pc=True,
        image_shape=tuple(geometry.shape),
        default_pc=tuple(geometry.pc),
        stages=ClaheStages(pre, lambda c: c / 255.0, clip, tiles, geometry.shape),
    )
