"""Physics-informed decoder: a learned master pattern, projected onto the detector by differentiable physics.

The CNN decoders must learn from data that rotating a crystal moves Kikuchi bands along great circles. This decoder
has that built in (issue 6):

1. **Master pattern** (:class:`MasterPatternTexture`): a trainable square-Lambert texture in EMsoft's ``mLPNH``
   layout, half side ``npx``. Crystal symmetry is imposed by construction, by *folding* every crystal-frame
   direction into a fundamental sector before the Lambert lookup, so only that sector exists as a variable:

   - "4/mmm" (preset default): |x|, |y|, |z| and x <-> y, i.e. the 8 flips / transposes of the Lambert square and
     south = north. These map grid pixels onto grid pixels, so a texture equal to EMsoft's reproduces kikuchipy's
     projections exactly (NCC 1.0); the variable is one quadrant, (npx + 1)^2 pixels.
   - "m-3m": the 48 signed permutations of the axes (sorted |components|, 0 <= y <= x <= z): 1/6 of the
     "4/mmm" unknowns, but the 3-fold axes map grid pixels between grid points, so bilinear interpolation of the
     EMsoft pattern's near-Nyquist detail differs slightly from kikuchipy's (pattern NCC ~0.998 with the true
     master pattern at npx 200).
   - "none": two free hemispheres (any crystal), projected by
     :class:`~ebsd_keras.simulations.projection.LambertProjector`.

   The EMsoft Ni master pattern satisfies these symmetries (south = north and the square's 8 flips exactly; the
   3-fold axes up to interpolation; see the tests). Voltage models have one texture channel per voltage knot,
   linearly interpolated in kV (continuous; exact at the knots).
2. **Projection**: the keras.ops gnomonic / square-Lambert chain of :mod:`ebsd_keras.simulations.projection`
   (the projector's detector directions, rotation, Lambert mapping and bilinear sampling), differentiable with
   respect to the texture, the orientation and the pattern centre. Fixed detector from the config; an optional
   per-pattern Bruker pattern centre ``inputs["pc"]`` (B, 3) overrides it.
3. **Contrast** (``config.physics_contrast``): "clahe" (preset default) rescales each projection to [0, 255] from
   its own min and max, rounds to 8 bit and applies OpenCV-exact CLAHE in the graph (:mod:`ebsd_keras.models.clahe`)
   -- the dataset's own preprocessing, with a surrogate gradient for training; "learned" replaces it by a small
   conv head (standardised projection, its locally normalised version and local mean over ~one CLAHE tile, pixel
   coordinates); "rescale" is the per-pattern min-max rescale alone (for raw, non-CLAHE data). With a texture equal
   to EMsoft's, "clahe" reproduces the dataset's patterns to within one grey level.
4. **Latent residual**: z -> Dense -> a coarse map (zero-initialised) -> bilinear upsampling, added to the logits,
   so the CVAE latent can carry what the physics does not (detector noise, ...); 0 at initialisation.

Output: logits (B, H, W, 1) like every :class:`~ebsd_keras.models.decoders.BaseDecoder`. Probabilities p from the
CLAHE / rescale paths become logits as ``log(p + eps) - log(1 - p + eps)`` (eps = 1e-4, finite at p = 0 and 1).

The learned master pattern can be exported in EMsoft's EMEBSDmaster layout
(:func:`ebsd_keras.models.tools.export_master_pattern`) and compared with a reference master pattern
(:func:`ebsd_keras.models.tools.texture_ncc`). Learned from CLAHE'd patterns it is determined only
up to what CLAHE preserves: the order of intensities within each tile (plus the clip limit's weak pull), so its
plain NCC with EMsoft's is lower than its rank correlation (``tools.texture_ncc(..., rank=True)``).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from ebsd_keras.models.blocks import LeakyReLU, canonical_quaternion
from ebsd_keras.models.contrast import fixed_contrast, minmax_unit
from ebsd_keras.models.decoders import BaseDecoder, register_decoder
from ebsd_keras.models.presets import PHYSICS_BAND_RENDERS, PHYSICS_SYMMETRIES, physics_sector_side
from ebsd_keras.simulations.geometry import DetectorGeometry
from ebsd_keras.simulations.physics import cubic_plane_normals, electron_wavelength_angstrom
from ebsd_keras.simulations.projection import (
    LambertProjector,
    bilinear_from_table,
    bilinear_numpy,
    fold_directions,
    gnomonic_directions,
    lambert_grid_directions,
    lambert_pixels,
    lambert_pixels_numpy,
    quaternion_to_matrix,
    resample_lambert,
    rotate_components,
)

__all__ = [
    "MasterPatternTexture",
    "PhysicsDecoder",
    "physics_geometry",
    "sector_side",
    "voltage_weights",
    "BandProfiles",
    "minmax_unit",
    "PROB_EPS",
]

_register = keras.saving.register_keras_serializable(package="ebsd_keras")
#: Probabilities become logits as log(p + eps) - log(1 - p + eps): finite (|logit| <= 9.2) with a gradient at 0 / 1.
PROB_EPS = 1e-4


# ----------------------------------------------------------------------------------------------------------------
# Symmetry sectors and voltage knots (the folding and Lambert grids are in simulations.projection)
# ----------------------------------------------------------------------------------------------------------------


def sector_side(npx: int, symmetry: str) -> int:
    """Side of the square variable holding the fundamental sector of a folded symmetry, from the pole (npx, npx).

    Computed from the grid (every folded direction's Lambert pixel plus one bilinear neighbour fits), and equal to
    the closed form used by :func:`ebsd_keras.models.presets.count_parameters`.
    """
    return physics_sector_side(int(npx), symmetry)


def voltage_weights(voltage_kv, knots_kv):
    """Linear-interpolation ("hat") weights of voltages over the texture channels' knots.

    Parameters
    ----------
    voltage_kv
        (B,) voltages, kV; clamped to [knots[0], knots[-1]].
    knots_kv
        Increasing knot voltages (kV), one per texture channel.

    Returns
    -------
    tensor
        (B, len(knots)) non-negative weights summing to 1; one-hot at a knot, continuous in kV.
    """
    knots = [float(k) for k in knots_kv]
    v = ops.reshape(ops.cast(voltage_kv, "float32"), (-1, 1))
    if len(knots) == 1:
        return ops.ones_like(v)
    v = ops.clip(v, knots[0], knots[-1])
    cols = []
    for i, k in enumerate(knots):
        left = ops.relu(1.0 - (k - v) / (k - knots[i - 1])) if i > 0 else ops.cast(v <= k, "float32")
        right = ops.relu(1.0 - (v - k) / (knots[i + 1] - k)) if i < len(knots) - 1 else ops.cast(v >= k, "float32")
        cols.append(ops.where(v <= k, left, right))
    return ops.concatenate(cols, axis=-1)


def physics_geometry(config) -> DetectorGeometry:
    """The physics decoder's fixed detector from a :class:`~ebsd_keras.models.presets.ModelConfig`."""
    return DetectorGeometry(
        shape=tuple(config.image_shape),
        pc=tuple(config.physics_detector_pc),
        tilt_deg=config.physics_detector_tilt_deg,
        sample_tilt_deg=config.physics_sample_tilt_deg,
    )


# ----------------------------------------------------------------------------------------------------------------
# The master-pattern layer
# ----------------------------------------------------------------------------------------------------------------


@_register
class MasterPatternTexture(layers.Layer):
    """A trainable square-Lambert master pattern with built-in symmetry, projected onto a detector.

    Parameters
    ----------
    npx
        Half side: the full hemisphere grid is (2 npx + 1)^2 pixels.
    symmetry
        One of :data:`~ebsd_keras.models.presets.PHYSICS_SYMMETRIES` (see the module docstring).
    channels
        Texture channels (one per voltage knot).
    geometry
        :class:`DetectorGeometry` or its dict.
    lr_scale
        The texture is ``lr_scale * variable``: under Adam (steps ~ learning rate in variable units) this multiplies
        the texture's effective learning rate without a second optimizer.
    init_mean, init_noise
        Initial texture: this constant plus Gaussian noise of this standard deviation (texture units).
    seed
        Seed of the initial noise.

    Call
    ----
    ``layer(quaternion (B, 4), pc=None)`` -> (B, H, W, channels) raw intensities (texture units).
    """

    def __init__(
        self,
        npx: int = 200,
        symmetry: str = "4/mmm",
        channels: int = 1,
        geometry=None,
        lr_scale: float = 30.0,
        init_mean: float = 0.5,
        init_noise: float = 0.05,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if symmetry not in PHYSICS_SYMMETRIES:
            raise ValueError(f"symmetry must be one of {PHYSICS_SYMMETRIES}, got {symmetry!r}")
        if int(npx) != npx or npx < 2:
            raise ValueError(f"npx must be an integer >= 2, got {npx!r}")
        self.npx = int(npx)
        self.symmetry = symmetry
        self.channels = int(channels)
        if isinstance(geometry, dict):
            geometry = DetectorGeometry.from_dict(geometry)
        self.geometry = geometry if geometry is not None else DetectorGeometry()
        self.lr_scale = float(lr_scale)
        self.init_mean = float(init_mean)
        self.init_noise = float(init_noise)
        self.seed = seed
        self.projector = LambertProjector(self.geometry, self.npx)
        side = 2 * self.npx + 1
        if symmetry == "none":
            self.variable_shape = (2, side, side, self.channels)
        else:
            m = sector_side(self.npx, symmetry)
            self.variable_shape = (m, m, self.channels)
        self.texture_variable = self.add_weight(
            name="texture",
            shape=self.variable_shape,
            initializer=keras.initializers.RandomNormal(
                mean=self.init_mean / self.lr_scale, stddev=self.init_noise / self.lr_scale, seed=seed
            ),
            trainable=True,
        )
        self.built = True

    # -- the texture ----------------------------------------------------------------------------------------------
    @property
    def texture(self):
        """The master-pattern values (the variable times ``lr_scale``), shape :attr:`variable_shape`."""
        return ops.convert_to_tensor(self.texture_variable) * self.lr_scale

    def call(self, quaternion, pc=None):
        q = ops.cast(quaternion, "float32")
        tex = ops.cast(self.texture, "float32")
        h, w = self.geometry.shape
        if self.symmetry == "none":
            out = self.projector(tex[0], tex[1], q, pc=pc)  # (B, H, W, C)
            return ops.reshape(out, (-1, h, w, self.channels))
        directions = self.projector.directions if pc is None else gnomonic_directions(pc, self.geometry)
        x, y, z = rotate_components(directions, quaternion_to_matrix(q))
        x, y, z = fold_directions(x, y, z, self.symmetry)
        row, col = lambert_pixels(x, y, z, self.npx)
        m = self.variable_shape[0]
        table = ops.reshape(tex, (m * m, self.channels))
        # the sector starts at the pole pixel (npx, npx); folded coordinates are >= npx up to rounding
        out = bilinear_from_table(table, m, row - float(self.npx), col - float(self.npx), True)
        return ops.reshape(out, (-1, h, w, self.channels))

    def compute_output_shape(self, quaternion_shape, pc_shape=None):
        return (quaternion_shape[0], *self.geometry.shape, self.channels)

    # -- conversion to and from full hemispheres ------------------------------------------------------------------
    def _fold_table(self):
        """(row, col) of each northern grid pixel's folded direction in the sector variable, float64 (S, S)."""
        v = lambert_grid_directions(self.npx)
        x, y, z = fold_directions(v[..., 0], v[..., 1], v[..., 2], self.symmetry)
        row, col = lambert_pixels_numpy(x, y, z, self.npx)
        return row - self.npx, col - self.npx

    def hemispheres(self) -> tuple[np.ndarray, np.ndarray]:
        """The learned master pattern as full hemispheres (north, south), float32 (C, S, S) each.

        For folded symmetries every grid pixel is the texture at its folded direction (bilinear in the sector, as
        in a projection); south = north.
        """
        tex = np.asarray(ops.convert_to_numpy(self.texture), dtype=np.float64)
        if self.symmetry == "none":
            north, south = tex[0], tex[1]
            return (np.moveaxis(north, -1, 0).astype(np.float32), np.moveaxis(south, -1, 0).astype(np.float32))
        row, col = self._fold_table()
        north = np.moveaxis(bilinear_numpy(tex, row, col), -1, 0).astype(np.float32)  # (C, S, S)
        return north, north.copy()

    def set_master_pattern(self, north, south=None) -> None:
        """Set the texture from hemisphere(s) (S', S') or (C, S', S'), resampled to this layer's npx.

        For folded symmetries only the fundamental sector of ``north`` is used (copied pixel for pixel when the
        sizes agree).
        """
        north = np.asarray(north, dtype=np.float64)
        north = north[None] if north.ndim == 2 else north
        north = resample_lambert(north, self.npx)  # (C', S, S)
        if north.shape[0] not in (1, self.channels):
            raise ValueError(f"{north.shape[0]} master-pattern channels for a {self.channels}-channel texture")
        north = np.broadcast_to(north, (self.channels, *north.shape[1:]))
        if self.symmetry == "none":
            south = north if south is None else np.asarray(south, dtype=np.float64)
            south = resample_lambert(south[None] if south.ndim == 2 else south, self.npx)
            south = np.broadcast_to(south, north.shape)
            value = np.stack([np.moveaxis(north, 0, -1), np.moveaxis(south, 0, -1)])
        else:
            m = self.variable_shape[0]
            sector = north[:, self.npx : self.npx + m, self.npx : self.npx + m]
            value = np.moveaxis(sector, 0, -1)
        self.texture_variable.assign((value / self.lr_scale).astype(np.float32))

    def get_config(self):
        return {
            **super().get_config(),
            "npx": self.npx,
            "symmetry": self.symmetry,
            "channels": self.channels,
            "geometry": self.geometry.to_dict(),
            "lr_scale": self.lr_scale,
            "init_mean": self.init_mean,
            "init_noise": self.init_noise,
            "seed": self.seed,
        }


# ----------------------------------------------------------------------------------------------------------------
# Voltage as physics: band profiles whose widths follow the Bragg angles
# ----------------------------------------------------------------------------------------------------------------


@_register
class BandProfiles(layers.Layer):
    """Kikuchi bands as learned 1-D profiles whose width follows the Bragg angle at each voltage.

    A Kikuchi band of plane family f is centred on the great circle of the plane and its edges sit at the Bragg angle
    theta_f(V) = asin(lambda(V) / 2 d_f) from it; lambda is the relativistic electron wavelength, so when the voltage
    rises every band narrows by the same factor while its position stays. This layer puts that into the master
    pattern: the intensity at a crystal direction n is

        I(n, V) = sum over planes p:  a_f(V) * P_f( |n . g_p| / sin theta_f(V) ),    f = family of p,

    (|n . g_p| is the sine of the angle between n and the plane), where ``P_f`` is a learned piecewise-linear profile
    over [0, extent] (``knots`` values; 0 beyond) and a_f(V) = 1 + s_f (lambda(V) / lambda(20 kV) - 1) a learned
    linear change of the band's strength. Everything that depends on the voltage is one function of a physical
    variable, so a voltage between the training voltages is generated by the same profiles at an intermediate width
    -- not by blending two patterns whose bands sit at two different widths (which doubles the band edges).

    Two ways to put the bands on the detector (``render``):

    - ``"detector"``: the profiles are evaluated at every detector pixel's own crystal direction (one profile lookup
      per pixel and plane). Band edges sit exactly at the Bragg angle, with no grid in between, and each pattern of
      a batch may have its own voltage at no extra cost. Kinematical truth patterns projected from master patterns
      converge to this as the master-pattern grid is refined (Ni, 60 x 60 px: 2 * 200 + 1 px master patterns are
      only NCC 0.984 raw / 0.956 CLAHE'd to 2 * 1000 + 1 px ones; the band edges snap to the grid);
    - ``"lambert"``: evaluated once per distinct voltage of a batch on the m-3m fundamental sector of a
      square-Lambert grid (half side ``npx``; all cubic families share that symmetry), then projected like
      :class:`MasterPatternTexture` (folded directions, bilinear lookup), optionally blurred by a learned kernel:
      one texture lookup per pixel, but band edges snap to the grid and every distinct voltage of a batch builds
      its own texture.

    Parameters
    ----------
    reflectors
        (hkl) families (all cubic equivalents are used).
    lattice_nm
        Cubic lattice parameter, nm (d = a / sqrt(h^2 + k^2 + l^2)).
    knots, extent
        Profile samples and their span in units of sin theta_f (u = |n . g| / sin theta_f in [0, extent]).
    npx
        Half side of the Lambert grid the bands are evaluated on.
    blur
        Half side (Lambert pixels) of a learned blur kernel applied to the band texture (0: none).
    geometry
        :class:`DetectorGeometry` (or its dict) of the fixed detector.
    lr_scale
        Profiles are ``lr_scale * variable`` (as the texture).
    init_height
        Initial profile: this height inside the band (u <= 1), 0 outside -- the kinematical band shape.
    seed
        Seed of a small initial noise.
    render
        "lambert" (default; the band texture on the Lambert grid) or "detector" (profiles evaluated at each pixel's
        direction; ``npx`` and ``blur`` are then unused).

    Call
    ----
    ``layer(quaternion (B, 4), voltage_kv (B,), pc=None)`` -> (B, H, W) intensities.
    """

    reference_kv = 20.0

    def __init__(
        self,
        reflectors=((1, 1, 1), (2, 0, 0), (2, 2, 0), (3, 1, 1), (2, 2, 2)),
        lattice_nm: float = 0.35236,
        knots: int = 48,
        extent: float = 3.0,
        npx: int = 200,
        blur: int = 0,
        geometry=None,
        lr_scale: float = 30.0,
        init_height: float = 0.1,
        seed: int | None = None,
        render: str = "lambert",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if render not in PHYSICS_BAND_RENDERS:
            raise ValueError(f"render must be one of {PHYSICS_BAND_RENDERS}, got {render!r}")
        self.render = render
        self.reflectors = tuple(tuple(int(i) for i in r) for r in reflectors)
        self.lattice_nm = float(lattice_nm)
        self.knots = int(knots)
        self.extent = float(extent)
        self.npx = int(npx)
        if isinstance(geometry, dict):
            geometry = DetectorGeometry.from_dict(geometry)
        self.geometry = geometry if geometry is not None else DetectorGeometry()
        self.lr_scale = float(lr_scale)
        self.init_height = float(init_height)
        self.seed = seed
        self.projector = LambertProjector(self.geometry, 2)  # only for its detector directions
        normals, family, hkl2 = cubic_plane_normals(self.reflectors)
        self._normals = normals.astype(np.float32)  # (P, 3)
        self._family = family  # (P,)
        self.d_nm = self.lattice_nm / np.sqrt(hkl2)  # (F,)
        # |cos| between the m-3m sector's grid directions (with a margin of ``blur`` pixels for the blur kernel)
        # and every plane normal: a constant ((M + 2 blur)^2, P)
        self.blur = int(blur) if render == "lambert" else 0
        self.side = sector_side(self.npx, "m-3m")
        if render == "lambert":
            lo, hi = self.npx - self.blur, self.npx + self.side + self.blur
            grid = lambert_grid_directions(self.npx)[lo:hi, lo:hi]
            self._sector_cos = np.abs(grid.reshape(-1, 3) @ normals.T).astype(np.float32)
        n_fam = len(self.reflectors)
        u = np.linspace(0.0, self.extent, self.knots)
        init = np.where(u <= 1.0, self.init_height, 0.0)[None].repeat(n_fam, 0)
        noise = np.random.default_rng(seed).normal(0.0, 0.01 * max(self.init_height, 1e-3), init.shape)
        self.profile_variable = self.add_weight(
            name="profiles",
            shape=(n_fam, self.knots),
            initializer=keras.initializers.Constant((init + noise) / self.lr_scale),
            trainable=True,
        )
        self.amplitude_slope = self.add_weight(
            name="amplitude_slope", shape=(n_fam,), initializer="zeros", trainable=True
        )
        if self.blur:
            # a blur fixed in angle (Lambert pixels), not in Bragg angles: what a finite master-pattern grid or the
            # energy spread does to band edges at every voltage alike; starts as the identity
            k = 2 * self.blur + 1
            delta = np.zeros((k, k), np.float32)
            delta[self.blur, self.blur] = 1.0
            self.blur_kernel = self.add_weight(
                name="blur_kernel", shape=(k, k), initializer=keras.initializers.Constant(delta), trainable=True
            )
        self.built = True

    @property
    def profiles(self):
        """(F, knots) profile values (variable times ``lr_scale``)."""
        return ops.convert_to_tensor(self.profile_variable) * self.lr_scale

    def sin_bragg(self, voltage_kv):
        """(U, F) sines of the families' Bragg angles at voltages (U,) kV: lambda / 2d."""
        lam = electron_wavelength_angstrom(ops.reshape(ops.cast(voltage_kv, "float32"), (-1, 1)))
        return lam / ops.convert_to_tensor((20.0 * self.d_nm).astype(np.float32))[None]

    def set_profiles(self, values) -> None:
        """Set the profiles (F, knots) (e.g. a kinematical box: |F_hkl| for u <= 1, 0 beyond)."""
        values = np.asarray(values, np.float32) / self.lr_scale
        self.profile_variable.assign(values.reshape(self.profile_variable.shape))

    def intensity(self, abs_cos, voltage_kv):
        """Band intensities (U, N) from |cos| (N, P) between directions and plane normals, at voltages (U,) kV."""
        fam = ops.convert_to_tensor(self._family)
        sin_p = ops.take(self.sin_bragg(voltage_kv), fam, axis=1)[:, None, :]  # (U, 1, P)
        pos = ops.convert_to_tensor(abs_cos)[None] / sin_p * ((self.knots - 1) / self.extent)  # (U, N, P)
        inside = ops.cast(pos < self.knots - 1, "float32")
        pos = ops.minimum(pos, self.knots - 1 - 1e-3)
        i0 = ops.floor(pos)
        frac = pos - i0
        idx = ops.cast(i0, "int32") + fam[None, None, :] * self.knots
        table, slope = self._table_and_slope()
        # one gather of (value, slope) pairs instead of two gathers
        got = ops.take(ops.reshape(ops.stack([table, slope], -1), (-1, 2)), idx, axis=0)  # (U, N, P, 2)
        value = got[..., 0] + got[..., 1] * frac
        amp = ops.take(self._strength(voltage_kv), fam, axis=1)  # (U, P)
        return ops.sum(value * inside * amp[:, None, :], axis=-1)  # (U, N)

    def _table_and_slope(self):
        """(F, knots) profile values and the slope to the next knot (0 after the last)."""
        table = self.profiles
        return table, ops.concatenate([table[:, 1:] - table[:, :-1], ops.zeros_like(table[:, :1])], 1)

    def _strength(self, voltage_kv):
        """(U, F) band strengths a_f(V) = 1 + s_f (lambda(V) / lambda(20 kV) - 1) at voltages (U,) kV."""
        lam = electron_wavelength_angstrom(ops.reshape(ops.cast(voltage_kv, "float32"), (-1, 1)))
        ratio = lam / float(electron_wavelength_angstrom(self.reference_kv)) - 1.0  # (U, 1)
        return 1.0 + ops.convert_to_tensor(self.amplitude_slope)[None, :] * ratio

    def _sparse_intensity(self, abs_cos, voltage_kv):
        """:meth:`intensity` (B, N) for (B, N, P) |cos| with one voltage per row, looked up only where it can be
        non-zero.

        A profile is 0 beyond ``extent`` Bragg angles from its plane, which ~90 % of the (pixel, plane) pairs are
        (Ni, 60 x 60 px): selecting the others first and summing them back per pixel halves the time of the dense
        lookup (0.13 against 0.29 s for 256 patterns on 2 CPU cores). Same values up to float summation order.
        """
        fam = ops.convert_to_tensor(self._family)
        n_pix = int(np.prod(self.geometry.shape))
        sin_p = ops.take(self.sin_bragg(voltage_kv), fam, axis=1)  # (B, P)
        pos = abs_cos / sin_p[:, None, :] * ((self.knots - 1) / self.extent)  # (B, N, P)
        b_idx, n_idx, p_idx = ops.where(pos < self.knots - 1)  # the pairs inside a profile's span, row-major
        n_planes = int(self._normals.shape[0])
        pos = ops.take(ops.reshape(pos, (-1,)), (b_idx * n_pix + n_idx) * n_planes + p_idx)
        i0 = ops.floor(pos)
        frac = pos - i0
        table, slope = self._table_and_slope()
        f_idx = ops.take(fam, p_idx)
        idx = ops.cast(i0, "int32") + f_idx * self.knots
        value = ops.take(ops.reshape(table, (-1,)), idx) + ops.take(ops.reshape(slope, (-1,)), idx) * frac
        amp = ops.take(ops.reshape(self._strength(voltage_kv), (-1,)), b_idx * len(self.reflectors) + f_idx)
        batch = ops.shape(abs_cos)[0]
        out = ops.segment_sum(value * amp, b_idx * n_pix + n_idx, num_segments=batch * n_pix)
        return ops.reshape(out, (-1, n_pix))

    def sector_tables(self, voltage_kv):
        """(M*M, U) band intensities on the m-3m sector grid at voltages (U,) kV (blurred by the learned kernel)."""
        flat = self.intensity(self._sector_cos, voltage_kv)  # (U, (M + 2 blur)^2)
        if not self.blur:
            return ops.transpose(flat)
        full = self.side + 2 * self.blur
        img = ops.reshape(flat, (-1, full, full, 1))
        kernel = ops.reshape(ops.convert_to_tensor(self.blur_kernel), (2 * self.blur + 1, 2 * self.blur + 1, 1, 1))
        out = ops.conv(img, kernel, padding="valid")  # (U, M, M, 1)
        return ops.transpose(ops.reshape(out, (-1, self.side * self.side)))

    def call(self, quaternion, voltage_kv, pc=None):
        import tensorflow as tf

        q = ops.cast(quaternion, "float32")
        v = ops.reshape(ops.cast(voltage_kv, "float32"), (-1,))
        directions = self.projector.directions if pc is None else gnomonic_directions(pc, self.geometry)
        x, y, z = rotate_components(directions, quaternion_to_matrix(q))
        h, w = self.geometry.shape
        if self.render == "detector":
            normals = ops.convert_to_tensor(self._normals)  # (P, 3): |n . g| per pixel and plane, all planes
            abs_cos = ops.abs(
                x[..., None] * normals[:, 0] + y[..., None] * normals[:, 1] + z[..., None] * normals[:, 2]
            )  # (B, N, P)
            return ops.reshape(self._sparse_intensity(abs_cos, v), (-1, h, w))
        unique, which = tf.unique(v)  # one band texture per distinct voltage of the batch
        table = self.sector_tables(unique)  # (M*M, U)
        x, y, z = fold_directions(x, y, z, "m-3m")
        row, col = lambert_pixels(x, y, z, self.npx)
        out = bilinear_from_table(table, self.side, row - float(self.npx), col - float(self.npx), True)  # (B, N, U)
        pick = ops.one_hot(which, ops.shape(unique)[0])[:, None, :]  # (B, 1, U)
        return ops.reshape(ops.sum(out * pick, axis=-1), (-1, h, w))

    def on_directions(self, directions, voltage_kv: float) -> np.ndarray:
        """Band intensities (N,) at crystal-frame unit directions (N, 3) and one voltage (kV), evaluated directly."""
        abs_cos = np.abs(np.asarray(directions, np.float32) @ self._normals.T)  # (N, P)
        out = self.intensity(abs_cos, np.array([voltage_kv], np.float32))
        return np.asarray(ops.convert_to_numpy(out))[0]

    def compute_output_shape(self, quaternion_shape, voltage_shape=None, pc_shape=None):
        return (quaternion_shape[0], *self.geometry.shape)

    def get_config(self):
        return {
            **super().get_config(),
            "reflectors": [list(r) for r in self.reflectors],
            "lattice_nm": self.lattice_nm,
            "knots": self.knots,
            "extent": self.extent,
            "npx": self.npx,
            "blur": self.blur,
            "geometry": self.geometry.to_dict(),
            "lr_scale": self.lr_scale,
            "init_height": self.init_height,
            "seed": self.seed,
            "render": self.render,
        }


# ----------------------------------------------------------------------------------------------------------------
# The decoder
# ----------------------------------------------------------------------------------------------------------------


def _upsampling_matrix(grid: int, shape) -> np.ndarray:
    """(grid^2, H*W) float32 matrix of bilinear upsampling from a grid x grid map (half-pixel centres, clamped)."""

    def axis(n_out):
        pos = np.clip((np.arange(n_out) + 0.5) * grid / n_out - 0.5, 0.0, grid - 1.0)
        i0 = np.minimum(np.floor(pos).astype(int), grid - 1)
        i1 = np.minimum(i0 + 1, grid - 1)
        m = np.zeros((grid, n_out))
        m[i0, np.arange(n_out)] += 1.0 - (pos - i0)
        m[i1, np.arange(n_out)] += pos - i0
        return m

    my, mx = axis(shape[0]), axis(shape[1])
    return np.einsum("ah,bw->abhw", my, mx).reshape(grid * grid, shape[0] * shape[1]).astype(np.float32)


def _probability_logits(p):
    """Logits of probabilities p in [0, 1]: log(p + eps) - log(1 - p + eps), finite with a gradient everywhere."""
    return ops.log(p + PROB_EPS) - ops.log(1.0 - p + PROB_EPS)


@_register
class PhysicsDecoder(BaseDecoder):
    """Learned master pattern -> differentiable projection -> contrast (CLAHE / learned) -> + latent residual.

    Built from a :class:`~ebsd_keras.models.presets.ModelConfig` with ``decoder="physics"`` (preset "physics");
    see the module docstring and the ``physics_*`` config fields. Inputs: ``{"z" (B, latent_dim), "quaternion"
    (B, 4), "voltage_kv" (B,) kV for voltage models, optional "pc" (B, 3) Bruker pattern centres}``; output logits
    (B, H, W, 1).
    """

    accepts_pattern_centre = True  # projects with a detector: generates at any pattern centre

    def __init__(self, config=None, seed: int | None = None, **kwargs):
        kwargs.setdefault("name", "decoder")
        super().__init__(config, seed=seed, **kwargs)
        cfg = self.model_config
        self.geometry = physics_geometry(cfg)
        channels = len(cfg.physics_voltage_knots_kv) if cfg.use_voltage else 1
        self.voltage_model = cfg.physics_voltage_model if cfg.use_voltage else None
        if self.voltage_model == "bands":
            channels = 1  # the texture is the voltage-independent part; the bands carry the voltage
            self.bands = BandProfiles(
                reflectors=cfg.physics_band_reflectors,
                lattice_nm=cfg.physics_band_lattice_nm,
                knots=int(cfg.physics_band_profile[0]),
                extent=float(cfg.physics_band_profile[1]),
                npx=cfg.physics_npx,
                blur=int(cfg.physics_band_blur),
                render=cfg.physics_band_render,
                geometry=self.geometry,
                lr_scale=cfg.physics_texture_lr_scale,
                seed=seed,
                name="bands",
            )
        else:
            self.bands = None
        self.master_pattern = MasterPatternTexture(
            npx=cfg.physics_npx,
            symmetry=cfg.physics_symmetry,
            channels=channels,
            geometry=self.geometry,
            lr_scale=cfg.physics_texture_lr_scale,
            seed=seed,
            name="master_pattern",
        )
        if self.bands is not None and not cfg.physics_band_texture:
            self.master_pattern.trainable = False  # bands only: the texture is not used
        self.contrast = cfg.physics_contrast
        slope, init = cfg.negative_slope, cfg.kernel_initializer
        learned = self.contrast == "learned"
        if learned or cfg.physics_head_channels:
            self.head_convs = [
                layers.Conv2D(f, cfg.kernel_size, padding="same", kernel_initializer=init, name=f"head{i}")
                for i, f in enumerate(cfg.physics_head_channels)
            ]
            self.head_acts = [LeakyReLU(slope, name=f"head_act{i}") for i in range(len(self.head_convs))]
            # "learned": the head *is* the contrast model (Glorot start); otherwise a residual that starts at 0
            self.head_out = layers.Conv2D(
                1, 1, kernel_initializer="glorot_uniform" if learned else "zeros", name="head_logits"
            )
        else:
            self.head_convs, self.head_acts, self.head_out = [], [], None
        if learned:
            size = max(3, int(round(min(cfg.image_shape) / max(cfg.physics_clahe_tiles))))  # ~ one CLAHE tile
            self.local_mean = layers.AveragePooling2D(size, strides=1, padding="same", name="local_mean")
        units, grid = cfg.physics_residual
        if units and grid:
            self.residual_hidden = layers.Dense(units, kernel_initializer=init, name="residual_hidden")
            self.residual_act = LeakyReLU(slope, name="residual_act")
            self.residual_map = layers.Dense(grid * grid, kernel_initializer="zeros", name="residual_map")
            self.residual_grid = int(grid)
            # bilinear upsampling (half-pixel centres) as one constant matrix: (g*g,) -> (H*W,)
            self._upsample = _upsampling_matrix(self.residual_grid, tuple(cfg.image_shape))
        else:
            self.residual_hidden = None
        h, w = cfg.image_shape
        yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
        self._coords = np.stack([yy, xx], axis=-1)[None].astype(np.float32)  # (1, H, W, 2)
        self._build_now()

    # -- pieces ----------------------------------------------------------------------------------------------------
    def project(self, attributes: dict):
        """Raw projected intensities (B, H, W) of the master pattern (voltage channels mixed), texture units."""
        q = canonical_quaternion(attributes["quaternion"])
        pc = attributes.get("pc")
        pc = None if pc is None else ops.cast(pc, "float32")
        if self.bands is not None:
            if attributes.get("voltage_kv") is None:
                raise ValueError("this model uses the accelerating voltage: inputs need 'voltage_kv' (B,) in kV")
            out = self.bands(q, attributes["voltage_kv"], pc=pc)
            if self.model_config.physics_band_texture:
                out = out + self.master_pattern(q, pc=pc)[..., 0]
            return out
        raw = self.master_pattern(q, pc=pc)  # (B, H, W, C)
        if self.master_pattern.channels == 1:
            return raw[..., 0]
        if attributes.get("voltage_kv") is None:
            raise ValueError("this model uses the accelerating voltage: inputs need a 'voltage_kv' entry (B,) in kV")
        weights = voltage_weights(attributes["voltage_kv"], self.model_config.physics_voltage_knots_kv)
        return ops.sum(raw * weights[:, None, None, :], axis=-1)

    def _with_coords(self, features):
        coords = ops.broadcast_to(
            ops.convert_to_tensor(self._coords), (ops.shape(features)[0], *self._coords.shape[1:])
        )
        return ops.concatenate([features, coords], axis=-1)

    def _head(self, features):
        h = self._with_coords(features)
        for conv, act in zip(self.head_convs, self.head_acts, strict=True):
            h = act(conv(h))
        return self.head_out(h)

    def _learned_contrast(self, raw):
        x = raw[..., None]
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        std = ops.sqrt(ops.mean(ops.square(x - mean), axis=(1, 2, 3), keepdims=True) + 1e-12)
        x = (x - mean) / (std + 1e-6)
        local = self.local_mean(x)
        local_var = ops.relu(self.local_mean(ops.square(x)) - ops.square(local))
        normalised = (x - local) / ops.sqrt(local_var + 1e-3)
        return self._head(ops.concatenate([x, normalised, local], axis=-1))

    def contrast_probabilities(self, raw, differentiable: bool = True):
        """Probabilities (B, H, W, 1) of the fixed contrast paths ("clahe", "rescale") from raw projections.

        With ``differentiable=False`` the CLAHE path computes only the exact forward value (faster; no gradient).
        """
        return fixed_contrast(raw, self.contrast, self.model_config.physics.clahe, differentiable)

    def call(self, inputs, training=None, differentiable=None):
        """Logits (B, H, W, 1).

        ``differentiable`` (default: ``training``) switches on the CLAHE surrogate gradient; pass True to
        differentiate generated patterns outside training (e.g. orientation refinement through the generator).
        """
        differentiable = bool(training) if differentiable is None else bool(differentiable)
        raw = self.project(inputs)
        if self.contrast == "learned":
            logits = self._learned_contrast(raw)
        else:
            p = self.contrast_probabilities(raw, differentiable=differentiable)
            logits = _probability_logits(p)
            if self.head_out is not None:
                logits = logits + self._head(p)
        if self.residual_hidden is not None:
            logits = logits + self.residual_logits(inputs["z"])
        return ops.cast(logits, "float32")

    def residual_logits(self, z):
        """The latent residual added to the logits, (B, H, W, 1) (zeros when the config has none)."""
        shape = (-1, *self.model_config.image_shape, 1)
        z = ops.cast(z, "float32")
        if self.residual_hidden is None:
            return ops.zeros((ops.shape(z)[0], *shape[1:]), dtype="float32")
        coarse = self.residual_map(self.residual_act(self.residual_hidden(z)))  # (B, g*g)
        return ops.reshape(ops.matmul(coarse, ops.convert_to_tensor(self._upsample)), shape)

    def generate(self, attributes: dict, z=None, sample: bool = False, seed=None):
        """As :meth:`BaseDecoder.generate` (probabilities in [0, 1]); also passes an optional per-pattern pattern
        centre ``"pc"`` (B, 3).

        The deterministic path (z = 0) of the CLAHE / rescale contrasts takes a shortcut with the same values: the
        residual map is the same for every pattern, so ``sigmoid(logit_eps(p) + r) = (p + eps) e^r / ((p + eps)
        e^r + 1 - p + eps)`` is computed once per pixel instead of log, log and sigmoid per pattern pixel.
        """
        if "quaternion" not in attributes:
            raise ValueError("attributes need a 'quaternion' entry (B, 4)")
        keys = ("quaternion", "voltage_kv", "pc")
        attrs = {k: v for k, v in attributes.items() if k in keys}
        fast = z is None and not sample and self.contrast != "learned" and self.head_out is None
        if not fast:
            if z is None:
                batch = ops.shape(attributes["quaternion"])[0]
                if sample:
                    rng = self.seed_generator if seed is None else int(seed)
                    z = keras.random.normal((batch, self.latent_dim), seed=rng)
                else:
                    z = ops.zeros((batch, self.latent_dim), dtype="float32")
            return ops.sigmoid(self({"z": z, **attrs}, training=False))
        p = self.contrast_probabilities(self.project(attrs), differentiable=False)
        odds = ops.exp(self.residual_logits(ops.zeros((1, self.latent_dim), dtype="float32")))  # (1, H, W, 1)
        num = (p + PROB_EPS) * odds
        return num / (num + (1.0 - p + PROB_EPS))


register_decoder("physics", PhysicsDecoder)
