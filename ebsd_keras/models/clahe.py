"""In-graph CLAHE (contrast-limited adaptive histogram equalisation) that reproduces OpenCV's ``createCLAHE``.

The dataset's targets are ``cv2.createCLAHE(clipLimit=10, tileGridSize=(4, 4)).apply`` of 8-bit patterns
(:func:`ebsd_keras.data.preprocess.clahe`). :class:`CLAHE` computes the same thing inside a TensorFlow graph, so a
generator can emit CLAHE'd patterns and its SavedModel / ``.keras`` file needs no OpenCV. It follows OpenCV 4/5's
``CLAHE_Impl::apply`` for 8-bit images step by step:

1. if H or W is not a multiple of the tile grid, the image used for the histograms is padded at the bottom / right
   with ``BORDER_REFLECT_101`` (TensorFlow's ``REFLECT``) by ``tiles - size % tiles`` pixels on *both* axes;
2. one 256-bin histogram per tile; integer clip limit ``max(int(clip_limit * tile_area / 256), 1)``; the clipped
   excess is spread evenly (``excess // 256`` per bin) and the remainder one count at a time every
   ``max(256 // remainder, 1)`` bins from bin 0;
3. LUT = ``round(cumsum(hist) * float32(255 / tile_area))`` (float32, round half to even as ``cvRound``);
4. each pixel blends the LUTs of its four nearest tile centres bilinearly with OpenCV's float32 weights
   (``x / tile_width - 0.5``, clamped tile indices) and rounds.

Tested against ``cv2``: identical output on the project's patterns, random images, odd sizes and tile grids.

Gradients: the exact output has none (integer histograms). For training a generator *through* CLAHE,
``differentiable=True`` adds a surrogate gradient while keeping the exact forward value (``exact + soft -
stop_gradient(soft)``). The default surrogate ("histogram") is a smooth CLAHE: tile histograms by linear binning of
the real-valued input, the same clip limit with an even redistribution, cumulative sums as LUTs, linear
interpolation at each pixel's value and the same bilinear tile blend. It carries the dependence of each LUT on all
pixels of its tile, so a global monotone change of the input (which equalisation undoes) gets (almost) no gradient,
except through the clip limit, the only thing that pins the input's intensity scale. The simpler "lut" surrogate
holds the LUTs fixed (a pointwise monotone map).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

__all__ = ["CLAHE", "clahe_tf", "ClahePlan", "clahe_exact", "clahe_soft_cdf", "clahe_blend"]

_HIST = 256
_register = keras.saving.register_keras_serializable(package="ebsd_keras")


def _tf():
    import tensorflow as tf

    return tf


def _axis_weights(size: int, tile: int, n_tiles: int):
    """OpenCV's per-coordinate tile indices and float32 weights along one axis.

    Returns (t1, t2, a) with ``t1, t2`` int32 (size,) clamped tile indices and ``a`` float32 (size,) the weight of
    ``t2`` (``1 - a`` is the weight of ``t1``, computed in float32 as OpenCV does).
    """
    inv = np.float32(1.0) / np.float32(tile)
    tf_ = np.arange(size, dtype=np.float32) * inv - np.float32(0.5)
    t1 = np.floor(tf_).astype(np.int32)
    a = (tf_ - t1.astype(np.float32)).astype(np.float32)
    t2 = t1 + 1
    return np.maximum(t1, 0), np.minimum(t2, n_tiles - 1), a


def clahe_tf(images, clip_limit: float = 10.0, tiles=(4, 4), differentiable: bool = False, gradient: str = "histogram"):
    """OpenCV-equivalent CLAHE of 8-bit grey images held as floats.

    Parameters
    ----------
    images
        (B, H, W) or (B, H, W, 1) grey levels in [0, 255]; rounded to integers first (half to even, as
        ``np.rint``), so real-valued inputs give the CLAHE of their 8-bit rounding.
    clip_limit
        OpenCV ``clipLimit`` (the paper: 10). 0 or less disables clipping (plain adaptive equalisation).
    tiles
        Tile grid as (rows, columns). (OpenCV's ``tileGridSize`` is (columns, rows).)
    differentiable
        Add a surrogate gradient (the forward value is unchanged; see ``gradient``). Without it the output carries
        no gradient.
    gradient
        The surrogate: "histogram" (default) differentiates a smooth CLAHE whose tile histograms are built by
        linear binning of the real-valued input, with the clip limit and an even redistribution, so the gradient
        knows that equalisation undoes global monotone changes of the input (except where the clip limit
        bites); "lut" holds every tile's LUT fixed and uses its local slope (a pointwise monotone map).

    Returns
    -------
    tensor
        float32 of the input's shape, integer grey levels in [0, 255] (what ``cv2`` returns, as floats).
    """
    x = ops.cast(ops.convert_to_tensor(images), "float32")
    squeeze_channel = len(x.shape) == 4
    if squeeze_channel:
        if x.shape[-1] != 1:
            raise ValueError(f"CLAHE works on one-channel images, got shape {tuple(x.shape)}")
        x = x[..., 0]
    if len(x.shape) != 3:
        raise ValueError(f"expected (B, H, W) or (B, H, W, 1) images, got shape {tuple(x.shape)}")
    if gradient not in ("histogram", "lut"):
        raise ValueError(f"gradient must be 'histogram' or 'lut', got {gradient!r}")
    plan = ClahePlan(int(x.shape[1]), int(x.shape[2]), tiles, clip_limit)
    x = ops.clip(x, 0.0, 255.0)
    levels = ops.cast(ops.round(ops.stop_gradient(x)), "int32")  # (B, H, W) exact grey levels
    exact, lut = clahe_exact(levels, plan)
    if differentiable:
        if gradient == "histogram":
            soft = clahe_blend(clahe_soft_cdf(x, plan), x, plan)
        else:
            soft = clahe_blend(ops.stop_gradient(lut), x, plan)
        exact = exact + (soft - ops.stop_gradient(soft))  # exactly 0 forward: the value stays exact
    return exact[..., None] if squeeze_channel else exact


class ClahePlan:
    """Static sizes of one CLAHE call: tiles, padding (OpenCV's rule), tile area, integer clip limit, weights."""

    def __init__(self, h: int, w: int, tiles, clip_limit: float):
        self.h, self.w = h, w
        self.ty, self.tx = (int(t) for t in tiles)
        if self.ty < 1 or self.tx < 1:
            raise ValueError(f"tiles must be positive, got {tiles}")
        # OpenCV pads the histogram source with BORDER_REFLECT_101 when a side does not divide; once either side
        # needs it, *both* get ``tiles - size % tiles`` (a whole extra tile row's worth on a side that divides).
        self.pad_h = self.pad_w = 0
        if h % self.ty or w % self.tx:
            self.pad_h, self.pad_w = self.ty - h % self.ty, self.tx - w % self.tx
        self.th, self.tw = (h + self.pad_h) // self.ty, (w + self.pad_w) // self.tx
        self.area = self.th * self.tw
        self.n_tiles = self.ty * self.tx
        self.limit = max(int(float(clip_limit) * self.area / _HIST), 1) if clip_limit > 0 else 0
        self.lut_scale = np.float32(_HIST - 1) / np.float32(self.area)
        self.ty1, self.ty2, ya = _axis_weights(h, self.th, self.ty)
        self.tx1, self.tx2, xa = _axis_weights(w, self.tw, self.tx)
        self.ya, self.ya1 = ya[None, :, None], (np.float32(1.0) - ya).astype(np.float32)[None, :, None]
        self.xa, self.xa1 = xa[None, None, :], (np.float32(1.0) - xa).astype(np.float32)[None, None, :]

    def tiles_of(self, img):
        """(B, H, W) -> (B, T, area) pixel values per tile of the (padded) histogram source."""
        tf = _tf()
        if self.pad_h or self.pad_w:
            img = tf.pad(img, [[0, 0], [0, self.pad_h], [0, self.pad_w]], mode="REFLECT")
        t = tf.reshape(img, (-1, self.ty, self.th, self.tx, self.tw))
        return tf.reshape(tf.transpose(t, (0, 1, 3, 2, 4)), (-1, self.n_tiles, self.area))

    def histogram(self, bins, weights):
        """Per-tile histograms (B, T, 256) from bin indices and weights shaped (B, T, n): one segment sum."""
        tf = _tf()
        batch = tf.shape(bins)[0]
        ids = bins + tf.reshape(tf.range(batch * self.n_tiles, dtype="int32") * _HIST, (-1, self.n_tiles, 1))
        hist = tf.math.unsorted_segment_sum(weights, ids, num_segments=batch * self.n_tiles * _HIST)
        return tf.reshape(hist, (-1, self.n_tiles, _HIST))

    def tile_offsets(self, ty, tx):
        """Flat (tile * 256) offsets (H, W) of the tile (ty per row, tx per column) for each pixel."""
        return (ty[:, None] * self.tx + tx[None, :]).astype(np.int32) * _HIST


def clahe_exact(levels, plan: ClahePlan):
    """OpenCV's CLAHE of int32 levels (B, H, W): (output float32 (B, H, W), LUTs float32 (B, T, 256))."""
    tf = _tf()
    tiled = plan.tiles_of(levels)
    hist = plan.histogram(tiled, tf.ones_like(tiled))
    if plan.limit:  # clipping and redistribution, exactly as OpenCV's integer loop
        excess = tf.reduce_sum(tf.maximum(hist - plan.limit, 0), axis=-1, keepdims=True)  # (B, T, 1)
        batch_add = excess // _HIST
        residual = excess - batch_add * _HIST
        hist = tf.minimum(hist, plan.limit) + batch_add
        # the remainder: +1 on bins 0, step, 2 step, ... (residual of them), step = max(256 // residual, 1).
        # Float arithmetic (exact for these small integers) instead of a (B, T, 256) integer division.
        res_f = tf.cast(residual, "float32")
        step = tf.maximum(tf.floor(_HIST / tf.maximum(res_f, 1.0)), 1.0)
        k = tf.floor(tf.range(_HIST, dtype="float32")[None, None, :] / step)
        extra = (res_f > 0) & (k * step == tf.range(_HIST, dtype="float32")[None, None, :]) & (k < res_f)
        hist = hist + tf.cast(extra, "int32")
    cdf = tf.cast(tf.cumsum(hist, axis=-1), "float32")
    lut = tf.clip_by_value(tf.round(cdf * plan.lut_scale), 0.0, 255.0)  # float32 product, round half to even
    flat = tf.reshape(lut, (-1,))
    base = tf.reshape(tf.range(tf.shape(levels)[0], dtype="int32") * (plan.n_tiles * _HIST), (-1, 1, 1))

    def plane(ty, tx):
        return tf.gather(flat, base + plan.tile_offsets(ty, tx)[None] + levels)

    # OpenCV's float32 blend, in its order of operations, then cvRound (half to even) and saturation
    top = plane(plan.ty1, plan.tx1) * plan.xa1 + plane(plan.ty1, plan.tx2) * plan.xa
    bottom = plane(plan.ty2, plan.tx1) * plan.xa1 + plane(plan.ty2, plan.tx2) * plan.xa
    out = tf.clip_by_value(tf.round(top * plan.ya1 + bottom * plan.ya), 0.0, 255.0)
    return tf.stop_gradient(out), tf.stop_gradient(lut)


def clahe_soft_cdf(x, plan: ClahePlan):
    """Smooth per-tile LUTs (B, T, 256) from real-valued x: linear binning, soft clip, even redistribution."""
    tf = _tf()
    tiled = plan.tiles_of(x)
    lo = tf.stop_gradient(tf.minimum(tf.floor(tiled), _HIST - 2.0))
    frac = tiled - lo
    lo_i = tf.cast(lo, "int32")
    hist = plan.histogram(tf.concat([lo_i, lo_i + 1], axis=-1), tf.concat([1.0 - frac, frac], axis=-1))
    if plan.limit:
        excess = tf.reduce_sum(tf.nn.relu(hist - plan.limit), axis=-1, keepdims=True)
        hist = tf.minimum(hist, float(plan.limit)) + excess / _HIST
    return tf.cumsum(hist, axis=-1) * plan.lut_scale


def clahe_blend(lut, x, plan: ClahePlan):
    """Bilinear blend of the four neighbouring tiles' LUTs, each linearly interpolated at real-valued x."""
    tf = _tf()
    flat = tf.reshape(lut, (-1,))
    base = tf.reshape(tf.range(tf.shape(x)[0], dtype="int32") * (plan.n_tiles * _HIST), (-1, 1, 1))
    lo = tf.stop_gradient(tf.minimum(tf.floor(x), _HIST - 2.0))
    frac = x - lo
    lo_i = tf.cast(lo, "int32")

    def plane(ty, tx):
        idx = base + plan.tile_offsets(ty, tx)[None] + lo_i
        a = tf.gather(flat, idx)
        return a + (tf.gather(flat, idx + 1) - a) * frac

    top = plane(plan.ty1, plan.tx1) * plan.xa1 + plane(plan.ty1, plan.tx2) * plan.xa
    bottom = plane(plan.ty2, plan.tx1) * plan.xa1 + plane(plan.ty2, plan.tx2) * plan.xa
    return top * plan.ya1 + bottom * plan.ya


@_register
class CLAHE(layers.Layer):
    """Keras layer wrapping :func:`clahe_tf` (OpenCV ``createCLAHE(clip_limit, tiles)`` on 8-bit grey levels).

    Parameters
    ----------
    clip_limit
        OpenCV ``clipLimit``.
    tiles
        Tile grid (rows, columns).
    differentiable, gradient
        Surrogate gradient (see :func:`clahe_tf`); the forward value is exact either way.

    Inputs are (B, H, W) or (B, H, W, 1) grey levels in [0, 255]; outputs have the same shape, float32 in [0, 255].
    """

    def __init__(
        self, clip_limit: float = 10.0, tiles=(4, 4), differentiable: bool = False, gradient="histogram", **kwargs
    ):
        super().__init__(**kwargs)
        self.clip_limit = float(clip_limit)
        self.tiles = tuple(int(t) for t in tiles)
        if len(self.tiles) != 2 or min(self.tiles) < 1:
            raise ValueError(f"tiles must be two positive integers, got {tiles!r}")
        if gradient not in ("histogram", "lut"):
            raise ValueError(f"gradient must be 'histogram' or 'lut', got {gradient!r}")
        self.differentiable = bool(differentiable)
        self.gradient = gradient
        self.built = True

    def call(self, images):
        return clahe_tf(images, self.clip_limit, self.tiles, self.differentiable, self.gradient)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "clip_limit": self.clip_limit,
            "tiles": list(self.tiles),
            "differentiable": self.differentiable,
            "gradient": self.gradient,
        }
