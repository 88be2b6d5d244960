"""The fixed contrast step shared by the decoders that make raw intensities (physics, field): per-pattern min-max
rescale to [0, 1] as the dataset builder does, then, for "clahe", OpenCV-exact CLAHE in the graph
(:func:`ebsd_keras.models.clahe.clahe_tf`) on the 8-bit scale."""

from __future__ import annotations

from keras import ops

from ebsd_keras.models.clahe import clahe_tf

__all__ = ["minmax_unit", "fixed_contrast"]


def minmax_unit(raw, axis=(1, 2)):
    """Per-pattern linear rescale to [0, 1] over ``axis`` (default the (H, W) axes of (B, H, W)); a constant
    pattern becomes 0."""
    lo = ops.min(raw, axis=axis, keepdims=True)
    hi = ops.max(raw, axis=axis, keepdims=True)
    span = hi - lo
    return (raw - lo) / ops.where(span > 0, span, ops.ones_like(span))


def fixed_contrast(raw, contrast: str, clahe, differentiable: bool = True):
    """Probabilities (B, H, W, 1) from raw intensities (B, H, W).

    Parameters
    ----------
    raw
        (B, H, W) raw intensities (any scale).
    contrast
        "rescale" (min-max only: raw data) or "clahe".
    clahe
        Settings with ``clip_limit``, ``tiles`` (rows, columns) and ``gradient``
        (:class:`ebsd_keras.models.presets.ClaheConfig`).
    differentiable
        Add CLAHE's surrogate gradient (False: the exact forward value only, faster); the value is the same.
    """
    unit = minmax_unit(raw)
    if contrast == "rescale":
        return unit[..., None]
    out = clahe_tf(unit * 255.0, clahe.clip_limit, clahe.tiles, differentiable=differentiable, gradient=clahe.gradient)
    return out[..., None] / 255.0
