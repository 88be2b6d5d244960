"""Pattern-fidelity metrics of the paper (numpy, float64): BCE, optimal BCE, pixel tolerance, NCC, disorientation.

All pattern arguments are (N, H, W) (or (N, H, W, 1), or one (H, W) pattern) grey levels in [0, 1]; the truth is
the dataset pattern (uint8 / 255), the prediction the generator's output. Every metric is returned **per pattern**
((N,) array) so that distributions, not only means, can be reported; :func:`summarize` turns a per-pattern array
into mean, std, median and percentiles.
"""

from __future__ import annotations

import numpy as np

from ebsd_keras.orientation import disorientation

__all__ = [
    "BCE_EPS",
    "as_patterns",
    "bce_per_pattern",
    "optimal_bce",
    "pixel_fraction_within",
    "pixel_metrics",
    "ncc",
    "summarize",
    "disorientation_stats",
]

#: Predictions are clipped to [eps, 1 - eps] before the logarithms (as Keras' binary cross-entropy does).
BCE_EPS = 1e-7


def as_patterns(x, name: str = "patterns") -> np.ndarray:
    """(N, H, W) float64 view of patterns given as (N, H, W), (N, H, W, 1) or (H, W).

    Raises
    ------
    ValueError
        For other shapes or non-finite values.
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    elif a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W), (N, H, W, 1) or (H, W), got shape {np.shape(x)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contain NaN or Inf")
    return a


def _pair(truth, generated) -> tuple[np.ndarray, np.ndarray]:
    t, g = as_patterns(truth, "truth"), as_patterns(generated, "generated")
    if t.shape != g.shape:
        raise ValueError(f"truth {t.shape} and generated {g.shape} patterns differ in shape")
    return t, g


def bce_per_pattern(truth, generated, eps: float = BCE_EPS) -> np.ndarray:
    """Binary cross-entropy (paper eq 7) of each generated pattern against its truth, averaged over pixels.

    ``-mean(t log g + (1 - t) log(1 - g))`` with ``g`` clipped to ``[eps, 1 - eps]``; in nats per pixel.

    Parameters
    ----------
    truth
        Target grey levels in [0, 1].
    generated
        Predicted grey levels in [0, 1].
    eps
        Clipping of the prediction.

    Returns
    -------
    numpy.ndarray
        (N,) BCE per pattern. Its minimum over ``generated`` is :func:`optimal_bce` (reached at ``generated ==
        truth``), not 0, because the targets are grey levels.
    """
    t, g = _pair(truth, generated)
    g = np.clip(g, eps, 1.0 - eps)
    return -(t * np.log(g) + (1.0 - t) * np.log1p(-g)).mean(axis=(1, 2))


def optimal_bce(truth) -> np.ndarray:
    """The smallest reachable BCE of each pattern: the mean binary entropy of its grey levels (0 log 0 = 0).

    Returns
    -------
    numpy.ndarray
        (N,) nats per pixel; the paper's "optimal" 0.503 is the mean of this over its test set.
    """
    t = as_patterns(truth, "truth")
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(t > 0, t * np.log(t), 0.0) + np.where(t < 1, (1.0 - t) * np.log1p(-t), 0.0))
    return h.mean(axis=(1, 2))


def pixel_fraction_within(truth, generated, tol: float = 0.15) -> np.ndarray:
    """Fraction of pixels of each pattern with ``|generated - truth| <= tol`` (tol as a fraction of full range 1).

    Returns
    -------
    numpy.ndarray
        (N,) fractions in [0, 1]; the paper reports > 80 % within 0.15.
    """
    t, g = _pair(truth, generated)
    # A tiny slack so that a difference of exactly tol (e.g. 38/255 vs 0.15 in float) is not lost to rounding.
    return (np.abs(g - t) <= tol + 1e-12).mean(axis=(1, 2))


def ncc(a, b) -> np.ndarray:
    """Normalised cross-correlation (zero-mean, unit-norm dot product) of each pattern pair.

    Returns
    -------
    numpy.ndarray
        (N,) values in [-1, 1]; a constant pattern gives 0.
    """
    x, y = _pair(a, b)
    x = x.reshape(len(x), -1)
    y = y.reshape(len(y), -1)
    # a constant pattern centres to exactly 0 (rounding would otherwise leave ~1e-17 noise with any correlation)
    x = np.where(np.ptp(x, axis=1, keepdims=True) > 0, x - x.mean(axis=1, keepdims=True), 0.0)
    y = np.where(np.ptp(y, axis=1, keepdims=True) > 0, y - y.mean(axis=1, keepdims=True), 0.0)
    den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    num = (x * y).sum(axis=1)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def summarize(values) -> dict:
    """Distribution summary of a per-pattern metric.

    Returns
    -------
    dict
        ``n``, ``mean``, ``std`` (population), ``median``, ``p5``, ``p95``, ``min``, ``max`` as floats (NaN-free
        input expected; an empty input gives ``n = 0`` and ``None`` elsewhere).
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return {"n": 0, "mean": None, "std": None, "median": None, "p5": None, "p95": None, "min": None, "max": None}
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "median": float(np.median(v)),
        "p5": float(np.percentile(v, 5)),
        "p95": float(np.percentile(v, 95)),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def disorientation_stats(q_ref, q_found) -> tuple[np.ndarray, dict]:
    """Cubic (m-3m) disorientation of found orientations to reference ones, and its summary.

    Parameters
    ----------
    q_ref, q_found
        (N, 4) unit quaternions (q0, q1, q2, q3), passive, EMsoft P = +1.

    Returns
    -------
    angles : numpy.ndarray
        (N,) disorientation angles in degrees.
    stats : dict
        :func:`summarize` of the angles (degrees).
    """
    angles = disorientation(q_ref, q_found)
    return angles, summarize(angles)


def pixel_metrics(truth, generated, tol: float = 0.15) -> tuple[dict, dict]:
    """The pixel-level fidelity of generated patterns against the truth (the evaluation's, paper Table 1).

    Returns
    -------
    stats, per
        ``per``: per-pattern arrays ``bce``, ``optimal_bce``, ``bce_gap`` (BCE minus the truth's entropy),
        ``within_15pct`` (fraction of pixels within ``tol``), ``ncc``; ``stats``: :func:`summarize` of each, plus
        ``patterns_with_80pct_within`` / ``patterns_with_95pct_within`` (fractions of patterns).
    """
    bce = bce_per_pattern(truth, generated)
    opt = optimal_bce(truth)
    within = pixel_fraction_within(truth, generated, tol)
    corr = ncc(truth, generated)
    per = {"bce": bce, "optimal_bce": opt, "bce_gap": bce - opt, "within_15pct": within, "ncc": corr}
    stats = {k: summarize(v) for k, v in per.items()}
    stats["patterns_with_80pct_within"] = float(np.mean(within >= 0.8))
    stats["patterns_with_95pct_within"] = float(np.mean(within >= 0.95))
    return stats, per
