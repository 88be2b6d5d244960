"""Model configurations: one frozen :class:`ModelConfig` per preset, and an analytic parameter count.

Presets
-------
``"compact"`` (the default)
    A convolutional design with a small spatial bottleneck (4x4 feature maps flattened into one Dense layer),
    FiLM conditioning in the decoder and resize-convolution upsampling (no transposed convolutions, so no
    checkerboards; shortcuts are bilinear upsampling + 1x1 convolution). About 5 M parameters for encoder, decoder
    and critic together.
``"paper"``
    The authors' layer plan (Ding and De Graef 2023; docs/reference-implementation.md): latent 500, Xception-like
    trunks, four huge Dense layers on flattened feature maps, decoder conditioning by adding an attribute MLP to the
    latent MLP. About 1.244 B parameters (encoder 246.9 M, decoder 512.9 M, critic 484.0 M). Its flaws are fixed
    without changing the parameter count: activations between all Dense layers, upsample + 1x1 conv shortcuts
    instead of zero-insertion stride-2 1x1 transposed convolutions, bounded log-variance, logits output, an
    unbounded critic score.
``"tiny"``
    For tests: under 200 k parameters, fast on a CPU.
``"physics"``
    The physics-informed decoder (``ebsd_keras.models.physics``): a trainable square-Lambert master pattern
    (npx 200, the 8 symmetries of the Lambert square built in), projected onto the detector by a differentiable
    gnomonic projection, then OpenCV-exact in-graph CLAHE and a latent residual; a small encoder and critic.
    About 43 k decoder parameters.
``"field"``
    A learned generator with no master-pattern table (``ebsd_keras.models.field``): each detector pixel's crystal
    direction for the given orientation and pattern centre, folded by m-3m, Fourier features, then an MLP
    (3 x 256) whose first layer also sees z (and kV); raw intensity, then the physics decoder's contrast (in-graph
    CLAHE, or the min-max rescale for raw data). Trains on random pixel subsets (``field_train_pixels``) and
    generates full patterns. About 200 k decoder parameters.

Spatial plans use ``padding="same"``, so a stride-2 stage maps H to ceil(H / 2); decoder upsampling factors must
multiply the start size up to the image size exactly (checked when the config is made).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from ebsd_keras.simulations.geometry import DetectorGeometry

__all__ = [
    "ModelConfig",
    "PhysicsConfig",
    "ClaheConfig",
    "BandConfig",
    "PRESETS",
    "DEFAULT_PRESET",
    "get_preset",
    "count_parameters",
    "CONDITIONING_MODES",
    "PHYSICS_SYMMETRIES",
    "PHYSICS_CONTRASTS",
    "PHYSICS_VOLTAGE_MODELS",
]

#: Decoder conditioning modes. "add": separate latent and attribute MLPs whose outputs are added (the paper);
#: "concat": one MLP on [z, attributes]; "film": "concat" plus a FiLM (per-channel scale and shift from the
#: attributes) after every decoder stage.
CONDITIONING_MODES = ("concat", "film", "add")
_POOLING = ("flatten", "global_avg")
_UPSAMPLING = ("resize", "transpose")
_INTERPOLATION = ("bilinear", "nearest")
_ACTIVATIONS = ("leaky_relu", "relu")
#: Symmetry built into the physics decoder's master pattern: "m-3m" (every direction folded into the cubic
#: fundamental sector 0 <= y <= x <= z), "4/mmm" (the square's 8 flips and transposes, south = north), "none" (two
#: free hemispheres).
PHYSICS_SYMMETRIES = ("m-3m", "4/mmm", "none")
#: Contrast model after the projection: "clahe" (per-pattern rescale to 8 bit, then OpenCV-exact CLAHE in the graph),
#: "learned" (a small conv head learns the contrast response), "rescale" (per-pattern min-max rescale only: raw data).
PHYSICS_CONTRASTS = ("clahe", "learned", "rescale")
#: How a physics voltage model varies its master pattern with kV: "knots" (texture channels blended linearly in kV),
#: "bands" (learned band profiles whose widths scale with the Bragg angles at each voltage).
PHYSICS_VOLTAGE_MODELS = ("knots", "bands")
#: Where "bands" models evaluate their profiles: on a Lambert grid, or at each detector pixel's direction.
PHYSICS_BAND_RENDERS = ("lambert", "detector")


def _tuplify(value):
    """Lists (from JSON) back to tuples, recursively, so configs compare and hash equal after a round trip."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuplify(v) for v in value)
    return value


def _tuplify_fields(obj) -> None:
    for f in dataclasses.fields(obj):
        object.__setattr__(obj, f.name, _tuplify(getattr(obj, f.name)))


@dataclass(frozen=True)
class ClaheConfig:
    """In-graph CLAHE of the physics and field decoders (``physics.contrast == "clahe"``).

    Attributes
    ----------
    clip_limit
        OpenCV clip limit (10 in the paper's preprocessing).
    tiles
        Tile grid (rows, columns).
    gradient
        Training surrogate gradient of the histogram equalisation: "histogram" or "lut"
        (:mod:`ebsd_keras.models.clahe`).
    """

    clip_limit: float = 10.0
    tiles: tuple = (4, 4)
    gradient: Literal["histogram", "lut"] = "histogram"

    def __post_init__(self):
        _tuplify_fields(self)


@dataclass(frozen=True)
class BandConfig:
    """Band voltage model of the physics decoder (``physics.voltage_model == "bands"``).

    Attributes
    ----------
    reflectors
        (h, k, l) plane families whose band profiles are learned.
    lattice_nm
        Cubic lattice parameter, nm (Bragg angles of the families at each voltage).
    profile
        (knots, extent in Bragg angles) of each learned profile.
    texture
        Whether a voltage-independent texture is added to the bands.
    blur
        Half side (Lambert pixels) of a learned blur fixed in angle; 0 for none.
    render
        "lambert" (band texture on the Lambert grid) or "detector" (profiles evaluated at each detector pixel).
    """

    reflectors: tuple = ((1, 1, 1), (2, 0, 0), (2, 2, 0), (3, 1, 1), (2, 2, 2))
    lattice_nm: float = 0.35236
    profile: tuple = (48, 3.0)
    texture: bool = True
    blur: int = 2
    render: Literal["lambert", "detector"] = "lambert"

    def __post_init__(self):
        _tuplify_fields(self)


@dataclass(frozen=True)
class PhysicsConfig:
    """Settings of the decoders that project a master pattern (physics) or a field of directions (field).

    Attributes
    ----------
    npx
        Master-pattern half side (grid 2 npx + 1 per hemisphere).
    symmetry
        One of :data:`PHYSICS_SYMMETRIES`.
    contrast
        One of :data:`PHYSICS_CONTRASTS`.
    head_channels
        Conv widths of the contrast head ("learned"; a zero-initialised residual head otherwise; () for none).
    residual
        (hidden units, grid side) of the latent residual map; (0, 0) for none.
    texture_lr_scale
        The master pattern is this factor times its variable (a larger effective learning rate under Adam).
    voltage_knots_kv
        Voltages (kV) of the master-pattern channels of a "knots" voltage model, linearly interpolated in between.
    voltage_model
        One of :data:`PHYSICS_VOLTAGE_MODELS`.
    clahe
        :class:`ClaheConfig`.
    band
        :class:`BandConfig`.
    """

    npx: int = 200
    symmetry: str = "4/mmm"
    contrast: Literal["clahe", "learned", "rescale"] = "clahe"
    head_channels: tuple = ()
    residual: tuple = (32, 8)
    texture_lr_scale: float = 30.0
    voltage_knots_kv: tuple = (10.0, 15.0, 20.0, 25.0, 30.0)
    voltage_model: Literal["knots", "bands"] = "knots"
    clahe: ClaheConfig = dataclasses.field(default_factory=ClaheConfig)
    band: BandConfig = dataclasses.field(default_factory=BandConfig)

    def __post_init__(self):
        _tuplify_fields(self)


#: Flat ``physics_*`` names of configs written before the nesting (``.keras`` files, JSON, keyword overrides) and
#: where each lives now. They stay readable as attributes and accepted by ``replace``/``from_dict``/``get_preset``.
_LEGACY = {
    "physics_detector_pc": ("detector", "pc"),
    "physics_detector_tilt_deg": ("detector", "tilt_deg"),
    "physics_sample_tilt_deg": ("detector", "sample_tilt_deg"),
    **{
        f"physics_{n}": ("physics", n)
        for n in (
            "npx",
            "symmetry",
            "contrast",
            "head_channels",
            "residual",
            "texture_lr_scale",
            "voltage_knots_kv",
            "voltage_model",
        )
    },
    **{f"physics_clahe_{n}": ("physics", "clahe", n) for n in ("clip_limit", "tiles", "gradient")},
    **{
        f"physics_band_{n}": ("physics", "band", n)
        for n in ("reflectors", "lattice_nm", "profile", "texture", "blur", "render")
    },
}


def _nested_replace(obj, path: tuple, value):
    """``obj`` with the attribute at ``path`` (names, outermost first) replaced, rebuilding each frozen level."""
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: _nested_replace(getattr(obj, path[0]), path[1:], value)})


def _nested_get(obj, path: tuple):
    for name in path:
        obj = getattr(obj, name)
    return obj


def _from_nested_dict(cls, data):
    """Build a nested settings dataclass from its dict form (dicts inside become the field's dataclass)."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} must be a mapping, got {type(data).__name__}")
    if cls is DetectorGeometry:
        return DetectorGeometry.from_dict(data)
    kinds = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(kinds))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    sub = {"clahe": ClaheConfig, "band": BandConfig}
    return cls(**{k: _from_nested_dict(sub[k], v) if k in sub and cls is PhysicsConfig else v for k, v in data.items()})


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build the encoder, the decoder and the critic.

    Sizes are channel counts (convolutions) or unit counts (Dense). ``*_blocks`` are ``(filters, stride)`` for the
    encoder and critic residual blocks and ``(filters, upsampling factor)`` for the decoder blocks.

    Attributes
    ----------
    name
        Preset name (informational).
    image_shape
        (H, W) of the patterns, pixels; one channel.
    latent_dim
        Size of the latent vector z.
    use_voltage
        Whether the accelerating voltage is an attribute (input of encoder and decoder, output of the critic).
    voltage_norm_kv
        (center, scale) in kV: the models see (kV - center) / scale; the critic predicts kV.
    negative_slope
        LeakyReLU slope.
    logvar_bounds
        (low, high) for the encoder's log-variance, enforced by a smooth tanh soft clip.
    conditioning
        Decoder conditioning, one of :data:`CONDITIONING_MODES`. The encoder always concatenates the attributes to
        its flattened features (as the authors' code does).
    conv_bias
        Whether convolutions have biases (the paper: no).
    kernel_size
        Spatial kernel size of all 3x3-type convolutions.
    kernel_initializer
        Keras initializer name for convolution and Dense kernels.
    decoder
        Decoder kind, a key of ``ebsd_keras.models.decoders.DECODERS``.
    detector
        :class:`~ebsd_keras.simulations.geometry.DetectorGeometry` the physics and field decoders project onto
        (pattern centre, detector and sample tilts); its shape is always ``image_shape``.
    physics
        :class:`PhysicsConfig` of the physics decoder (``decoder="physics"``, :mod:`ebsd_keras.models.physics`)
        and, for symmetry and contrast, the field decoder. Voltage models (``use_voltage``) with
        ``physics.voltage_model == "bands"`` use :class:`BandConfig` (:class:`ebsd_keras.models.physics.BandProfiles`:
        one learned band profile per reflector family over the angle from the lattice plane in units of the family's
        Bragg angle at the voltage, so band widths follow the relativistic electron wavelength at every voltage).
        The flat names of earlier releases (``physics_npx``, ``physics_detector_pc``, ``physics_clahe_tiles``,
        ``physics_band_render`` ...) remain readable and are accepted by :meth:`replace`, :meth:`from_dict` and
        :func:`get_preset`, so ``.keras`` files saved before the nesting load unchanged.
    decoder_upsampling
        "resize" (upsample, then convolve) or "transpose" (transposed convolutions, as in the paper).
    critic_activation
        "leaky_relu" or "relu" (the paper's critic uses ReLU).
    """

    name: str = "compact"
    image_shape: tuple = (60, 60)
    latent_dim: int = 128
    use_voltage: bool = False
    voltage_norm_kv: tuple = (20.0, 10.0)
    negative_slope: float = 0.2
    logvar_bounds: tuple = (-10.0, 4.0)
    conditioning: str = "film"
    conv_bias: bool = True
    kernel_size: int = 3
    kernel_initializer: str = "he_normal"
    # encoder
    encoder_stem: tuple = (32,)
    encoder_blocks: tuple = ((48, 2), (96, 2), (128, 2), (128, 2))
    encoder_pooling: str = "flatten"
    encoder_dense: tuple = (512,)
    # decoder
    decoder: str = "cnn"
    decoder_dense: tuple = (512,)
    decoder_start: tuple = (5, 5, 128)
    decoder_stem: tuple = ()
    decoder_blocks: tuple = ((128, 3), (96, 2), (64, 2))
    decoder_upsampling: str = "resize"
    decoder_interpolation: str = "bilinear"
    film_dim: int = 128
    # critic (shared trunk + heads)
    critic_activation: str = "leaky_relu"
    critic_stem: tuple = (32,)
    critic_blocks: tuple = ((64, 2), (128, 2), (192, 2), (128, 2))
    critic_exit: tuple = ()
    critic_pooling: str = "flatten"
    critic_dense: tuple = (512,)
    critic_score_dense: tuple = (128,)
    critic_quaternion_dense: tuple = (256,)
    critic_voltage_dense: tuple = (64,)
    # physics and neural-field decoders (decoder="physics" / "field"): the detector they project onto and their
    # settings, nested (the flat ``physics_*`` names of earlier releases are read-only aliases, see _LEGACY)
    detector: DetectorGeometry = dataclasses.field(default_factory=DetectorGeometry)
    physics: PhysicsConfig = dataclasses.field(default_factory=PhysicsConfig)
    # neural-field decoder (decoder="field", ebsd_keras.models.field); it shares the detector and the physics
    # symmetry and contrast above
    field_frequencies: int = 128
    field_frequency_scale: float = 8.0
    field_hidden: tuple = (256, 256, 256)
    field_train_pixels: int = 512

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _tuplify(getattr(self, f.name)))
        # The detector's shape is the pattern shape by definition: one source of truth (image_shape).
        object.__setattr__(self, "detector", dataclasses.replace(self.detector, shape=tuple(self.image_shape)))
        self._validate()

    # ------------------------------------------------------------------------------------------------------------
    def _validate(self) -> None:
        def need(cond, msg):
            if not cond:
                raise ValueError(f"ModelConfig {self.name!r}: {msg}")

        need(len(self.image_shape) == 2 and all(int(s) > 0 for s in self.image_shape), "image_shape must be (H, W)")
        need(int(self.latent_dim) > 0, "latent_dim must be positive")
        need(self.conditioning in CONDITIONING_MODES, f"conditioning must be one of {CONDITIONING_MODES}")
        need(self.encoder_pooling in _POOLING and self.critic_pooling in _POOLING, f"pooling must be in {_POOLING}")
        need(self.decoder_upsampling in _UPSAMPLING, f"decoder_upsampling must be one of {_UPSAMPLING}")
        need(self.decoder_interpolation in _INTERPOLATION, f"decoder_interpolation must be one of {_INTERPOLATION}")
        need(self.critic_activation in _ACTIVATIONS, f"critic_activation must be one of {_ACTIVATIONS}")
        lo, hi = self.logvar_bounds
        need(lo < hi, "logvar_bounds must be (low, high) with low < high")
        need(
            len(self.voltage_norm_kv) == 2 and self.voltage_norm_kv[1] > 0, "voltage_norm_kv must be (center, scale>0)"
        )
        need(len(self.decoder_start) == 3, "decoder_start must be (h, w, channels)")
        for blocks, what in ((self.encoder_blocks, "encoder"), (self.critic_blocks, "critic")):
            need(all(len(b) == 2 and b[1] in (1, 2) for b in blocks), f"{what}_blocks must be (filters, stride 1|2)")
        need(all(len(b) == 2 and b[1] >= 1 for b in self.decoder_blocks), "decoder_blocks must be (filters, factor>=1)")
        need(len(self.decoder_blocks) > 0 or len(self.decoder_stem) > 0, "the decoder needs at least one stage")
        self._validate_physics(need)
        need(int(self.field_frequencies) == self.field_frequencies >= 1, "field_frequencies must be an int >= 1")
        need(float(self.field_frequency_scale) > 0, "field_frequency_scale must be positive")
        need(len(self.field_hidden) >= 1 and all(int(u) == u >= 1 for u in self.field_hidden), "field_hidden: units")
        need(int(self.field_train_pixels) == self.field_train_pixels >= 0, "field_train_pixels must be an int >= 0")
        h, w, _ = self.decoder_start
        factor = math.prod(int(b[1]) for b in self.decoder_blocks)
        need(
            (h * factor, w * factor) == tuple(self.image_shape),
            f"decoder_start {h}x{w} times the upsampling factors ({factor}) gives {h * factor}x{w * factor}, "
            f"not the image shape {self.image_shape[0]}x{self.image_shape[1]}",
        )

    def _validate_physics(self, need) -> None:
        need(int(self.physics.npx) == self.physics.npx and self.physics.npx >= 2, "physics.npx must be an int >= 2")
        need(self.physics.symmetry in PHYSICS_SYMMETRIES, f"physics.symmetry must be one of {PHYSICS_SYMMETRIES}")
        need(self.physics.contrast in PHYSICS_CONTRASTS, f"physics.contrast must be one of {PHYSICS_CONTRASTS}")
        need(all(int(c) == c and c > 0 for c in self.physics.head_channels), "physics.head_channels must be > 0")
        need(
            len(self.physics.residual) == 2 and all(int(v) == v and v >= 0 for v in self.physics.residual),
            "physics.residual must be (hidden units, grid side), integers >= 0",
        )
        need(float(self.physics.texture_lr_scale) > 0, "physics.texture_lr_scale must be positive")
        knots = self.physics.voltage_knots_kv
        need(
            len(knots) >= 1 and all(b > a for a, b in zip(knots[:-1], knots[1:], strict=True)),
            "physics.voltage_knots_kv must be increasing voltages (kV)",
        )
        need(
            len(self.detector.pc) == 3 and self.detector.pc[2] > 0,
            "detector.pc must be a Bruker (PCx, PCy, PCz) with PCz > 0",
        )
        need(
            len(self.physics.clahe.tiles) == 2 and all(int(t) == t and t >= 1 for t in self.physics.clahe.tiles),
            "physics.clahe.tiles must be two positive integers",
        )
        need(self.physics.clahe.gradient in ("histogram", "lut"), "physics.clahe.gradient must be 'histogram' or 'lut'")
        need(self.physics.voltage_model in PHYSICS_VOLTAGE_MODELS, f"physics.voltage_model: {PHYSICS_VOLTAGE_MODELS}")
        need(
            len(self.physics.band.reflectors) >= 1
            and all(len(r) == 3 and any(int(i) != 0 for i in r) for r in self.physics.band.reflectors),
            "physics.band.reflectors must be non-zero (h, k, l) triples",
        )
        need(float(self.physics.band.lattice_nm) > 0, "physics.band.lattice_nm must be positive (nm)")
        need(int(self.physics.band.blur) == self.physics.band.blur >= 0, "physics.band.blur must be an int >= 0")
        need(self.physics.band.render in PHYSICS_BAND_RENDERS, f"physics.band.render: {PHYSICS_BAND_RENDERS}")
        need(
            len(self.physics.band.profile) == 2
            and int(self.physics.band.profile[0]) >= 2
            and float(self.physics.band.profile[1]) > 1,
            "physics.band.profile must be (knots >= 2, extent > 1 Bragg angle)",
        )

    # ------------------------------------------------------------------------------------------------------------
    @property
    def attribute_dim(self) -> int:
        """Length of the attribute vector the networks see: quaternion (4) plus normalised voltage (1)."""
        return 4 + int(bool(self.use_voltage))

    def replace(self, **overrides) -> ModelConfig:
        """A copy with some fields changed (validated); the flat ``physics_*`` names of older configs are accepted."""
        direct = {k: v for k, v in overrides.items() if k not in _LEGACY}
        if isinstance(direct.get("detector"), dict):
            direct["detector"] = _from_nested_dict(DetectorGeometry, direct["detector"])
        if isinstance(direct.get("physics"), dict):
            direct["physics"] = _from_nested_dict(PhysicsConfig, direct["physics"])
        out = dataclasses.replace(self, **direct) if direct else self
        legacy = {k: v for k, v in overrides.items() if k in _LEGACY}
        if legacy:
            nested = {"detector": out.detector, "physics": out.physics}
            for key, value in legacy.items():
                top, *rest = _LEGACY[key]
                nested[top] = _nested_replace(nested[top], tuple(rest), _tuplify(value))
            out = dataclasses.replace(out, **nested)
        return out

    def to_dict(self) -> dict:
        """JSON-friendly dict, nested settings as nested dicts (tuples become lists); inverse of :meth:`from_dict`."""

        def plain(v):
            if dataclasses.is_dataclass(v):
                return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
            return [plain(x) for x in v] if isinstance(v, tuple) else v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Build from :meth:`to_dict` output, or from the flat ``physics_*`` form of configs saved before the
        nesting; unknown keys raise ``ValueError`` (a typo must not pass silently)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - set(_LEGACY))
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {unknown}")
        return cls().replace(**dict(data))


def _legacy_alias(path: tuple) -> property:
    return property(lambda self: _nested_get(self, path), doc=f"Read-only alias of ``{'.'.join(path)}``.")


for _name, _path in _LEGACY.items():
    setattr(ModelConfig, _name, _legacy_alias(_path))
del _name, _path

PRESETS: dict[str, ModelConfig] = {
    "compact": ModelConfig(),
    "paper": ModelConfig(
        name="paper",
        latent_dim=500,
        conditioning="add",
        conv_bias=False,
        encoder_stem=(256, 256),
        encoder_blocks=((256, 1), (512, 1), (728, 2), (512, 2)),
        encoder_pooling="flatten",
        encoder_dense=(2048, 2048, 1024),
        decoder_dense=(1024, 2048, 4096),
        decoder_start=(15, 15, 256),
        decoder_stem=(256, 256),
        decoder_blocks=((512, 1), (728, 2), (512, 2)),
        decoder_upsampling="transpose",
        critic_activation="relu",
        critic_stem=(256, 256),
        critic_blocks=((256, 1), (512, 1), (728, 1), (256, 2)),
        critic_exit=(256, 256),
        critic_pooling="flatten",
        critic_dense=(2048,),
        critic_score_dense=(1024, 256),
        critic_quaternion_dense=(2048, 1024, 256),
        critic_voltage_dense=(1024, 256),
    ),
    "tiny": ModelConfig(
        name="tiny",
        latent_dim=8,
        encoder_stem=(8,),
        encoder_blocks=((8, 2), (16, 2), (16, 2), (16, 2)),
        encoder_dense=(32,),
        decoder_dense=(32,),
        decoder_start=(5, 5, 16),
        decoder_blocks=((16, 3), (8, 2), (8, 2)),
        film_dim=16,
        critic_stem=(8,),
        critic_blocks=((8, 2), (16, 2), (16, 2), (16, 2)),
        critic_dense=(32,),
        critic_score_dense=(16,),
        critic_quaternion_dense=(16,),
        critic_voltage_dense=(8,),
    ),
    "physics": ModelConfig(
        name="physics",
        decoder="physics",
        latent_dim=16,
        encoder_stem=(8,),
        encoder_blocks=((16, 2), (32, 2), (32, 2), (32, 2)),
        encoder_dense=(64,),
        critic_stem=(16,),
        critic_blocks=((32, 2), (64, 2), (64, 2), (64, 2)),
        critic_dense=(128,),
        critic_score_dense=(64,),
        critic_quaternion_dense=(64,),
        critic_voltage_dense=(32,),
    ),
    "field": ModelConfig(
        name="field",
        decoder="field",
        latent_dim=16,
        physics=PhysicsConfig(symmetry="m-3m", residual=(0, 0)),
        encoder_stem=(8,),
        encoder_blocks=((16, 2), (32, 2), (32, 2), (32, 2)),
        encoder_dense=(64,),
        critic_stem=(16,),
        critic_blocks=((32, 2), (64, 2), (64, 2), (64, 2)),
        critic_dense=(128,),
        critic_score_dense=(64,),
        critic_quaternion_dense=(64,),
        critic_voltage_dense=(32,),
    ),
}

DEFAULT_PRESET = "compact"


def get_preset(name: str = DEFAULT_PRESET, **overrides) -> ModelConfig:
    """Return a preset config, optionally with fields overridden (e.g. ``get_preset("compact", use_voltage=True)``).

    Raises
    ------
    ValueError
        For an unknown preset name or an invalid override.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


# ----------------------------------------------------------------------------------------------------------------
# Analytic parameter count (mirrors blocks.py / encoder.py / decoders.py / critic.py layer by layer)
# ----------------------------------------------------------------------------------------------------------------


def _conv(k, cin, cout, bias):
    return k * k * cin * cout + (cout if bias else 0)


def _sepconv(k, cin, cout, bias):
    return k * k * cin + cin * cout + (cout if bias else 0)


def _dense(nin, nout):
    return nin * nout + nout


def _dense_stack(nin, sizes):
    total = 0
    for n in sizes:
        total += _dense(nin, n)
        nin = n
    return total, nin


def _sep_residual(k, cin, cout, bias):
    return _conv(1, cin, cout, bias) + _sepconv(k, cin, cout, bias) + _sepconv(k, cout, cout, bias)


def _up_residual(k, cin, cout, bias):
    # transposed and resize convolutions have the same kernel sizes
    return _conv(1, cin, cout, bias) + _conv(k, cin, cout, bias) + _conv(k, cout, cout, bias)


def _trunk(cfg, stem, blocks, exit_convs, pooling):
    """Parameters and output feature size of a conv stem + separable residual blocks (+ exit sep-convs)."""
    k, bias = cfg.kernel_size, cfg.conv_bias
    h, w = cfg.image_shape
    c, total = 1, 0
    for f in stem:
        total += _conv(k, c, f, bias)
        c = f
    for f, s in blocks:
        total += _sep_residual(k, c, f, bias)
        c = f
        h, w = -(-h // s), -(-w // s)
    for f in exit_convs:
        total += _sepconv(k, c, f, bias)
        c = f
    return total, (h * w * c if pooling == "flatten" else c)


def count_parameters(config: ModelConfig | str) -> dict[str, int]:
    """Analytic parameter counts of the encoder, decoder and critic that ``config`` builds.

    Returns
    -------
    dict
        ``{"encoder": n, "decoder": n, "critic": n, "total": n}``; equals the built models' ``count_params()``
        (tested on reduced-width variants), so the 1.24 B paper model need not be built to know its size.
    """
    cfg = get_preset(config) if isinstance(config, str) else config
    if cfg.decoder not in ("cnn", "physics", "field"):
        raise NotImplementedError(
            f"no analytic parameter count for decoder kind {cfg.decoder!r}; build it and use count_params()"
        )
    k, bias, a = cfg.kernel_size, cfg.conv_bias, cfg.attribute_dim

    enc, feat = _trunk(cfg, cfg.encoder_stem, cfg.encoder_blocks, (), cfg.encoder_pooling)
    dense, nin = _dense_stack(feat + a, cfg.encoder_dense)
    enc += dense + _dense(nin, 2 * cfg.latent_dim)

    h0, w0, c0 = cfg.decoder_start
    start = h0 * w0 * c0
    if cfg.conditioning == "add":
        zmlp, _ = _dense_stack(cfg.latent_dim, (*cfg.decoder_dense, start))
        amlp, _ = _dense_stack(a, (*cfg.decoder_dense, start))
        dec = zmlp + amlp
    else:
        dec, _ = _dense_stack(cfg.latent_dim + a, (*cfg.decoder_dense, start))
    film = cfg.conditioning == "film"
    if film:
        dec += _dense_stack(a, (cfg.film_dim, cfg.film_dim))[0]
    c = c0
    for f in cfg.decoder_stem:
        dec += _conv(k, c, f, bias)
        c = f
    for f, _factor in cfg.decoder_blocks:
        dec += _up_residual(k, c, f, bias) + (_dense(cfg.film_dim, 2 * f) if film else 0)
        c = f
    dec += _conv(k, c, 1, True)  # logits head, always with a bias
    if cfg.decoder == "physics":
        dec = _physics_decoder_parameters(cfg)
    elif cfg.decoder == "field":
        dec = _field_decoder_parameters(cfg)

    crit, feat = _trunk(cfg, cfg.critic_stem, cfg.critic_blocks, cfg.critic_exit, cfg.critic_pooling)
    shared, nin = _dense_stack(feat, cfg.critic_dense)
    crit += shared
    heads = [(cfg.critic_score_dense, 1), (cfg.critic_quaternion_dense, 4)]
    if cfg.use_voltage:
        heads.append((cfg.critic_voltage_dense, 1))
    for hidden, nout in heads:
        crit += _dense_stack(nin, (*hidden, nout))[0]
    return {"encoder": enc, "decoder": dec, "critic": crit, "total": enc + dec + crit}


def physics_sector_side(npx: int, symmetry: str) -> int:
    """Rows (= columns) of the master-pattern variable of a folded symmetry (mirrors ``physics.sector_side``).

    The fundamental sector starts at the Lambert pole (pixel npx, npx); for m-3m its farthest pixel is [111], at
    Lambert coordinate sqrt(2 (1 - 1/sqrt(3))) * sqrt(pi) / 2 along each axis, i.e. 0.6504 npx pixels from the
    pole; one more row and column hold the bilinear neighbours.
    """
    if symmetry == "4/mmm":
        return npx + 1
    along = math.sqrt(2.0 * (1.0 - 1.0 / math.sqrt(3.0))) * math.sqrt(math.pi) / 2.0 / math.sqrt(math.pi / 2.0)
    return min(int(math.floor(along * npx)) + 2, npx + 1)


def _physics_decoder_parameters(cfg: ModelConfig) -> int:
    """Trainable parameters of :class:`ebsd_keras.models.physics.PhysicsDecoder` (mirrors it layer by layer)."""
    npx, channels = int(cfg.physics_npx), (len(cfg.physics_voltage_knots_kv) if cfg.use_voltage else 1)
    bands = bool(cfg.use_voltage) and cfg.physics_voltage_model == "bands"
    if bands:  # one profile table (families x knots) and one amplitude slope per family; an optional 1-channel texture
        n_fam = len(cfg.physics_band_reflectors)
        channels = 1 if cfg.physics_band_texture else 0
    if cfg.physics_symmetry == "none":
        total = 2 * (2 * npx + 1) ** 2 * channels
    else:
        total = physics_sector_side(npx, cfg.physics_symmetry) ** 2 * channels
    if bands:
        total += (
            n_fam * int(cfg.physics_band_profile[0])
            + n_fam
            + (2 * int(cfg.physics_band_blur) + 1) ** 2
            * (int(cfg.physics_band_blur) > 0 and cfg.physics_band_render == "lambert")
        )
    # contrast head: "learned" sees (standardised, locally normalised, local mean, y, x); the residual head of the
    # other modes sees (probability, y, x); 3x3 convolutions, then a 1x1 convolution to the logits
    heads = cfg.physics_head_channels
    if heads or cfg.physics_contrast == "learned":
        c = 5 if cfg.physics_contrast == "learned" else 3
        for f in heads:
            total += _conv(cfg.kernel_size, c, f, True)
            c = f
        total += _conv(1, c, 1, True)
    units, grid = cfg.physics_residual
    if units and grid:
        total += _dense(cfg.latent_dim, units) + _dense(units, grid * grid)
    return total


def _field_decoder_parameters(cfg: ModelConfig) -> int:
    """Trainable parameters of :class:`ebsd_keras.models.field.FieldDecoder` (mirrors it layer by layer): an MLP on
    (3 folded direction components + 2 x frequencies Fourier features), the first layer also fed the latent and the
    normalised voltage; the frequency matrix is fixed (not trainable)."""
    features = 3 + 2 * int(cfg.field_frequencies)
    hidden = [int(u) for u in cfg.field_hidden]
    total = _dense(features, hidden[0]) + cfg.latent_dim * hidden[0] + (hidden[0] if cfg.use_voltage else 0)
    total += _dense_stack(hidden[0], (*hidden[1:], 1))[0]
    return total + 3 * int(cfg.field_frequencies)  # the fixed frequency matrix is a (non-trainable) weight too
