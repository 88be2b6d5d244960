"""Loss terms of the CVAE/GAN (paper-method.md, equations 6-14), written with ``keras.ops``.

Conventions
-----------
- Per-sample terms return shape (B,); the training step averages them over the (local) batch. Under
  ``tf.distribute`` the step divides by the number of replicas before taking gradients, because Keras's optimizer
  *sums* gradients across replicas (see ``ebsd_keras.models.cvaegan``).
- The Wasserstein terms are expectations over two sets of samples and return scalars.
- :func:`gradient_penalty` needs gradients of the critic with respect to its input, which ``keras.ops`` cannot
  express; it uses ``tf.GradientTape`` (this package runs Keras on the TensorFlow backend).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from itertools import pairwise

import keras
from keras import ops

from ebsd_keras.orientation import disorientation_angle, disorientation_loss

__all__ = [
    "kl_divergence",
    "bce_from_logits",
    "optimal_bce",
    "orientation_loss",
    "orientation_error_deg",
    "voltage_mse",
    "wasserstein_critic_loss",
    "wasserstein_generator_loss",
    "gradient_penalty",
    "KLSchedule",
    "LossWeights",
]


def kl_divergence(mu, logvar):
    """Eq 6: KL(N(mu, sigma^2) || N(0, I)) summed over latent dimensions, per sample.

    ``0.5 * sum(exp(logvar) + mu^2 - 1 - logvar)`` = ``sum(log(1/sigma) + (sigma^2 + mu^2)/2 - 1/2)``.

    Parameters
    ----------
    mu, logvar
        (B, latent_dim) mean and log-variance (natural log of sigma^2).

    Returns
    -------
    tensor
        (B,) KL in nats.
    """
    mu = ops.cast(mu, "float32")
    logvar = ops.cast(logvar, "float32")
    return 0.5 * ops.sum(ops.exp(logvar) + ops.square(mu) - 1.0 - logvar, axis=-1)


def _per_sample_mean(x):
    return ops.mean(ops.reshape(x, (ops.shape(x)[0], -1)), axis=-1)


def bce_from_logits(x, logits):
    """Eq 7: binary cross-entropy between grey-level targets and predicted logits, mean over pixels, per sample.

    Computed as ``max(l, 0) - l x + log1p(exp(-|l|))``, exact and stable for any logit (no sigmoid round trip).

    Parameters
    ----------
    x
        (B, H, W, 1) targets in [0, 1].
    logits
        (B, H, W, 1) decoder logits.

    Returns
    -------
    tensor
        (B,) mean BCE per pixel, nats. Its minimum over logits is :func:`optimal_bce` (not 0: targets are grey).

    Notes
    -----
    The *objective* uses this times the pixel count, the BCE summed over a pattern (nats per pattern), the scale of
    the authors' code on which the KL thresholds and loss weights of :class:`KLSchedule` / :class:`LossWeights`
    were tuned (``CVAEGAN.compile(bce_reduction="sum")``); the per-pixel mean is what the paper's tables report.
    """
    x = ops.cast(x, "float32")
    logits = ops.cast(logits, "float32")
    per_pixel = ops.relu(logits) - logits * x + ops.log1p(ops.exp(-ops.abs(logits)))
    return _per_sample_mean(per_pixel)


def optimal_bce(x, eps: float = 1e-7):
    """The lowest BCE any prediction can reach for targets ``x``: their mean binary entropy per pixel, per sample.

    ``-(x log x + (1 - x) log(1 - x))`` with 0 log 0 = 0. ``bce - optimal_bce`` is the fidelity gap (0 = perfect).

    Returns
    -------
    tensor
        (B,) nats per pixel.
    """
    x = ops.cast(x, "float32")
    p = ops.clip(x, eps, 1.0 - eps)
    h = -(x * ops.log(p) + (1.0 - x) * ops.log(1.0 - p))
    return _per_sample_mean(h)


def orientation_loss(q_true, q_pred, symmetry: str = "m-3m"):
    """Eqs 8-9: disorientation loss ``1 - cos(theta / 2)`` per sample for the crystal's Laue group ``symmetry``
    (default cubic m-3m; see ``ebsd_keras.orientation``)."""
    return disorientation_loss(q_true, q_pred, symmetry=symmetry)


def orientation_error_deg(q_true, q_pred, symmetry: str = "m-3m"):
    """Disorientation angle per sample for the Laue group ``symmetry`` (default m-3m), degrees (a metric)."""
    return disorientation_angle(q_true, q_pred, symmetry=symmetry)


def voltage_mse(v_true_kv, v_pred_kv, scale_kv: float = 1.0):
    """Eq 10: squared voltage error per sample, in units of ``scale_kv`` (pass the normalisation scale, e.g. 10 kV,
    to get the error in normalised units).

    Parameters
    ----------
    v_true_kv, v_pred_kv
        (B,) or (B, 1) voltages, kV.

    Returns
    -------
    tensor
        (B,) ``((v_true - v_pred) / scale_kv) ** 2``.
    """
    t = ops.reshape(ops.cast(v_true_kv, "float32"), (-1,))
    p = ops.reshape(ops.cast(v_pred_kv, "float32"), (-1,))
    return ops.square((t - p) / scale_kv)


def wasserstein_critic_loss(real_score, fake_score):
    """Eq 11: ``L4,dis = -E[D(x)] + E[D(G_dec(z))]`` (scalar). Its negative estimates the Wasserstein distance."""
    return ops.mean(ops.cast(fake_score, "float32")) - ops.mean(ops.cast(real_score, "float32"))


def wasserstein_generator_loss(fake_score):
    """Eq 12: ``L4,dec = -E[D(G_dec(z))]`` (scalar)."""
    return -ops.mean(ops.cast(fake_score, "float32"))


def gradient_penalty(critic_fn, real, fake, epsilon=None, seed=None, target: float = 1.0):
    """WGAN-GP penalty ``(||grad_x D(x_hat)||_2 - target)^2`` per sample, x_hat on lines between real and fake.

    Parameters
    ----------
    critic_fn
        Callable mapping a batch of patterns to scores (B,) (or (B, 1)).
    real, fake
        (B, H, W, C) patterns.
    epsilon
        Optional (B,) interpolation weights in [0, 1]; drawn uniformly (with ``seed``) when None.
    seed
        Int or ``keras.random.SeedGenerator`` for ``epsilon``.
    target
        Target gradient norm (1 for a 1-Lipschitz critic).

    Returns
    -------
    tensor
        (B,) penalties (multiply by the penalty weight, e.g. 10, and average).
    """
    import tensorflow as tf

    real = ops.cast(real, "float32")
    fake = ops.cast(fake, "float32")
    batch = ops.shape(real)[0]
    if epsilon is None:
        epsilon = keras.random.uniform((batch,), seed=seed)
    eps = ops.reshape(ops.cast(epsilon, "float32"), (-1, 1, 1, 1))
    x_hat = eps * real + (1.0 - eps) * fake
    with tf.GradientTape() as tape:
        tape.watch(x_hat)
        score = critic_fn(x_hat)
    grads = tape.gradient(score, x_hat)
    # + tiny: finite gradient of the norm even when grads are exactly 0
    norm = ops.sqrt(ops.sum(ops.square(ops.reshape(grads, (batch, -1))), axis=-1) + 1e-12)
    return ops.square(norm - target)


@keras.saving.register_keras_serializable(package="ebsd_keras")
class KLSchedule:
    """The adaptive KL coefficient alpha1_eff(KL): a function of the current KL value that carries no gradient.

    ``mode="step"`` (the authors' code, the default): with thresholds t_0 < t_1 < ... and multipliers m_0, m_1, ...,
    ``alpha1_eff = base * m_i`` where i is the number of thresholds strictly below KL. With the defaults:
    ``0.8 * {0.01 if KL <= 5; 0.1 if 5 < KL <= 15; 1.5 if KL > 15}``.

    ``mode="smooth"``: the same levels joined continuously, linear in **log** space (the multipliers span orders
    of magnitude): log m is m_0's below t_0, m_last's above t_last, and passes through each middle multiplier
    m_i at the midpoint of (t_{i-1}, t_i). With the defaults: 0.01 up to KL 5, 0.1 at KL 10, 1.5 from KL 15.

    ``kl`` is the batch-mean KL summed over latent dimensions (nats).
    """

    def __init__(self, base=0.8, thresholds=(5.0, 15.0), multipliers=(0.01, 0.1, 1.5), mode="step"):
        thresholds = tuple(float(t) for t in thresholds)
        multipliers = tuple(float(m) for m in multipliers)
        if len(multipliers) != len(thresholds) + 1:
            raise ValueError("KLSchedule needs one more multiplier than thresholds")
        if any(b <= a for a, b in pairwise(thresholds)):
            raise ValueError("KLSchedule thresholds must increase strictly")
        if mode not in ("step", "smooth"):
            raise ValueError(f"KLSchedule mode must be 'step' or 'smooth', got {mode!r}")
        if mode == "smooth" and (len(thresholds) < 1 or min(multipliers) <= 0):
            raise ValueError("the smooth KLSchedule needs positive multipliers and at least one threshold")
        self.base = float(base)
        self.thresholds = thresholds
        self.multipliers = multipliers
        self.mode = mode

    def _anchors(self):
        t, m = self.thresholds, self.multipliers
        xs = [t[0]] + [0.5 * (a + b) for a, b in pairwise(t)] + [t[-1]]
        ys = [math.log(v) for v in m]
        if len(t) == 1:  # two levels: one ramp ending at the threshold (xs would be degenerate)
            xs, ys = [t[0] - 1.0, t[0]], ys
        return xs, ys

    def multiplier(self, kl):
        """The multiplier m(KL) (without ``base``), same shape as ``kl``, no gradient."""
        kl = ops.stop_gradient(ops.cast(kl, "float32"))
        if self.mode == "step":
            out = ops.full_like(kl, self.multipliers[0])
            for t, m in zip(self.thresholds, self.multipliers[1:], strict=True):
                out = ops.where(kl > t, m, out)
            return out
        xs, ys = self._anchors()
        log_m = ops.full_like(kl, ys[0])
        for (x0, x1), (y0, y1) in zip(pairwise(xs), pairwise(ys), strict=True):
            log_m = log_m + ops.clip((kl - x0) / (x1 - x0), 0.0, 1.0) * (y1 - y0)
        return ops.exp(log_m)

    def __call__(self, kl):
        """alpha1_eff(KL) = base * m(KL), as a float32 tensor without gradient."""
        return ops.stop_gradient(self.base * self.multiplier(kl))

    def get_config(self):
        return {
            "base": self.base,
            "thresholds": list(self.thresholds),
            "multipliers": list(self.multipliers),
            "mode": self.mode,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, KLSchedule) and self.get_config() == other.get_config()

    def __repr__(self):
        return f"KLSchedule({self.get_config()})"


@dataclass(frozen=True)
class LossWeights:
    """The alphas of eqs 13-14 (and the WGAN-GP penalty weight).

    Attributes
    ----------
    kl
        alpha1: multiplies the adaptive coefficient of :class:`KLSchedule` (so 1.0 gives the authors' values).
    reconstruction
        alpha2 (BCE, summed over the pixels of a pattern: every weight here is on that per-pattern scale, the
        authors'; see ``CVAEGAN.compile(bce_reduction=...)``).
    orientation
        alpha3,o (disorientation loss 1 - cos(theta/2) ~ theta^2/8: 1e4 makes 1 degree cost ~0.4, the scale of the
        authors' ``1e4 * (1 - <q, q_hat>)``).
    voltage
        alpha3,av (squared error in units of the voltage normalisation scale, 10 kV by default: 1 kV off costs 1).
    adversarial_generator
        alpha4,dec (eq 12, generator side).
    adversarial_critic
        alpha4,dis (eq 11, critic side).
    gradient_penalty
        lambda of WGAN-GP (used when ``lipschitz="gp"``).
    """

    kl: float = 1.0
    reconstruction: float = 1.0
    orientation: float = 1e4
    voltage: float = 100.0
    adversarial_generator: float = 1.0
    adversarial_critic: float = 1.0
    gradient_penalty: float = 10.0

    def replace(self, **changes) -> LossWeights:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LossWeights:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown LossWeights fields: {unknown}")
        return cls(**{k: float(v) for k, v in data.items()})

    @classmethod
    def only(cls, name: str, value: float = 1.0) -> LossWeights:
        """All weights 0 except ``name`` (for isolating one term)."""
        zero = {f.name: 0.0 for f in dataclasses.fields(cls)}
        if name not in zero:
            raise ValueError(f"unknown loss weight {name!r}")
        return cls(**{**zero, name: float(value)})
