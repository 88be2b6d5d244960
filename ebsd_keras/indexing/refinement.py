"""Gradient-based orientation (and pattern-centre) refinement through any generator.

The refined orientation of a pattern maximises the normalised cross-correlation (NCC) between the pattern and the
generator's pattern at that orientation -- the objective of :meth:`Indexer.refine_bobyqa
<ebsd_keras.indexing.dictionary.Indexer.refine_bobyqa>` -- but is found by derivatives through the generator
instead of derivative-free search, for a whole batch of patterns at once.

Parametrisation (the same as BOBYQA's): ``q = exp(v) * q_start`` with ``v`` a rotation vector (radians), a chart
of the rotation manifold centred on the start, so no unit-norm constraint is needed; optionally the Bruker pattern
centre ``pc = pc_start + d`` too (dimensionless fractions).

Objective: with ``g`` and ``t`` the zero-mean, unit-norm generated and target patterns, ``1 - NCC = |g - t|^2 / 2``,
a least-squares problem in the residual ``r = g - t`` (H * W values, 3 or 6 parameters per pattern), solved by
Levenberg-Marquardt steps ``-(J^T J + lambda diag(J^T J))^-1 J^T r`` with the Jacobian ``J = dr / d(v, d)`` from:

- "gauss-newton-fd" (default): forward differences, fresh at every iteration (a true Gauss-Newton method, so
  quadratic convergence near the optimum): the pattern at x and at x + h e_k for each parameter, one batch of
  (p + 1) B patterns. The exact output of an 8-bit CLAHE pipeline is piecewise constant, so its differences at
  small h are noise; a generator that exposes its stages (:class:`ClaheStages`: both generators here do) is
  differenced through the smooth map with the centre point's tile LUTs held fixed and no rounding -- the function
  whose derivative is the "lut" surrogate -- while the residual stays exact. Far from the optimum the NCC falls
  off like a Gaussian of the misorientation and the Gauss-Newton step (the peak's curvature) is too short by about
  the factor NCC, so a pattern's first 2 steps are divided by NCC^3 (exponent measured best of 1, 2, 2.5, 3, 4).
  With stages, a pattern is differenced only in its first ``fd_iterations`` (2) iterations
  (far from the optimum, where the Jacobian changes most) and then keeps its Jacobian of the smooth map (and the
  LUTs it holds), updated by Broyden's rank-one formula from each step: one generator pass per iteration instead
  of p + 1, and superlinear convergence, since the smooth map has no quantisation noise (Broyden on the exact
  output stalls at ~0.008 deg). Each call differences a fixed ``fd_fraction`` of the slots (those that need it,
  then the ones moving most). The patterns stream through ``batch_size`` slots: a pattern leaves its slot when
  its step falls below ``tol_deg`` (that last step is taken) and the next pattern takes it, so each generator
  call does useful work in one compiled shape. No derivative of the generator is taken (no surrogate gradient).
- "gauss-newton": forward-mode differentiation through the generator's surrogate gradient (one batched JVP: the
  batch is tiled once per parameter with one-hot tangents); by default ``J^T J`` is computed once per batch and
  reused with one reverse-mode gradient ``J^T r`` per iteration (a chord method: linear convergence;
  ``hessian_every`` recomputes it), and the batch iterates until all its patterns stopped.

In both, per pattern: the best point seen is kept, a step that lowered the NCC is halved back towards it, every
step is capped (``max_step_deg``) and the perturbation stays in the trust region box.

Method "adam": plain Adam ascent of the NCC on the same parameters (per-pattern, element-wise moments), for
comparison.

Generators are :class:`~ebsd_keras.indexing.generator.Generator` objects, ``gen(q, pc) -> (B, H, W)`` tensors in
[0, 1] built from ``keras.ops`` / TensorFlow ops: ``model_refinement_generator`` (a trained CVAEGAN or decoder;
the physics decoder runs with its CLAHE surrogate gradient, ``differentiable=True``; a CNN decoder is
differentiable as it is) and ``master_pattern_generator`` (a master pattern projected by the differentiable
Lambert projector, then the dataset's per-pattern rescale and
OpenCV-exact CLAHE in the graph: the same objective as BOBYQA against the true master pattern). The exact CLAHE
output is piecewise constant (integer grey levels); the surrogate supplies the derivative, while the residual and
NCC are always computed from the exact forward value.

Orientations are (N, 4) unit quaternions (q0, q1, q2, q3), q0 >= 0, passive, EMsoft P = +1; angles in degrees;
pattern centres Bruker (PCx, PCy, PCz).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, get_args

import numpy as np

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.indexing.dictionary import (
    DEFAULT_TRUST_REGION_DEG,
    RefineResult,
    as_pattern_stack,
    bobyqa_lockstep,
    normalized_rows,
    positive_scalar,
    rotvec_to_quaternion,
)
from ebsd_keras.indexing.generator import Generator
from ebsd_keras.orientation import hamilton_terms, normalize_quaternions, quaternion_multiply

__all__ = [
    "METHODS",
    "GradientRefineResult",
    "GradientSettings",
    "refine_gradient",
    "refine_bobyqa_generator",
    "check_pattern_centres",
]

#: Optimisers of :func:`refine_gradient`.
Method = Literal["gauss-newton-fd", "gauss-newton", "adam"]
METHODS: tuple[str, ...] = get_args(Method)
#: "gauss-newton-fd": a pattern's first iterations, whose step is divided by NCC^3 (the far phase; measured: 2
#: as fast as every iteration and no less accurate)
_SCALED_STEPS = 2
_DEFAULT_ITERATIONS = {"gauss-newton-fd": 10, "gauss-newton": 12, "adam": 150}
#: A pattern-centre step below this (fraction of the detector, 6e-4 px on 60 px) counts as converged.
_PC_TOL = 1e-5


@dataclass
class GradientRefineResult(RefineResult):
    """:class:`~ebsd_keras.indexing.dictionary.RefineResult` plus the refined pattern centres.

    Attributes
    ----------
    pc
        (N, 3) Bruker pattern centres used at the end (refined when asked, else the start values), or None when the
        generator's own fixed detector was used.
    iterations
        (N,) iterations until each pattern stopped.
    """

    pc: np.ndarray | None = None
    iterations: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


# ----------------------------------------------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------------------


def check_pattern_centres(pc, n: int, path=None, field_name: str = "pc") -> np.ndarray:
    """(N, 3) float64 Bruker pattern centres from one (3,) or (N, 3) array; finite, 0 < PCz, |PCx|, |PCy| < 2.

    Raises
    ------
    EBSDInputError
        Wrong shape, NaN/Inf, or values that cannot be Bruker fractions (e.g. EMsoft pixels or micrometres).
    """
    a = np.asarray(pc, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != 3 or len(a) not in (1, n):
        raise EBSDInputError(f"expected a (3,) or ({n}, 3) Bruker pattern centre, got shape {np.shape(pc)}", path,
                             field_name)  # fmt: skip
    if not np.isfinite(a).all():
        raise EBSDInputError("pattern centre contains NaN or Inf", path, field_name)
    if (a[:, 2] <= 0).any() or (np.abs(a[:, :2]) > 2).any() or (a[:, 2] > 10).any():
        raise EBSDInputError(
            f"pattern centre {a[0].tolist()} is not Bruker (PCx, PCy, PCz) fractions of the detector (expected "
            "about 0..1, PCz > 0)",
            path,
            field_name,
        )
    return np.repeat(a, n, axis=0) if len(a) == 1 else a


def _check_common(generator, patterns, q_start, pc_start, refine_pc):
    if not isinstance(generator, Generator):
        raise TypeError(
            f"expected an ebsd_keras.indexing.generator.Generator, got {type(generator).__name__} "
            "(wrap a function as Generator(fn, takes_pc=..., image_shape=...))"
        )
    pats = as_pattern_stack(patterns, generator.image_shape)
    q0 = normalize_quaternions(q_start)
    if len(q0) != len(pats):
        raise EBSDInputError(f"{len(pats)} patterns but {len(q0)} start orientations", None, "q_start")
    if (pc_start is not None or refine_pc) and not generator.takes_pc:
        raise EBSDInputError("this generator has a fixed detector: it cannot take or refine a pattern centre", None,
                             "pc")  # fmt: skip
    if pc_start is None and refine_pc:
        default = generator.default_pc
        if default is None:
            raise EBSDInputError("give a start pattern centre to refine it", None, "pc")
        pc_start = default
    pc0 = None if pc_start is None else check_pattern_centres(pc_start, len(pats))
    return pats, q0, pc0


# ----------------------------------------------------------------------------------------------------------------
# Compiled pieces
# ----------------------------------------------------------------------------------------------------------------


class _Steps:
    """tf.functions for one generator and parameter count: residual Jacobian products and gradients."""

    def __init__(self, generator, n_params: int, use_pc: bool, jit: bool):
        import tensorflow as tf

        self.n_params = n_params
        self.use_pc = use_pc

        def rotated(x, q0, pc0):
            """(q, pc) at parameters x: q = exp(v) * q0, pc = pc0 (+ d)."""
            v = x[:, :3]
            angle = tf.sqrt(tf.reduce_sum(v * v, axis=-1, keepdims=True) + 1e-30)
            half = 0.5 * angle
            # sin(a/2)/a -> 1/2 as a -> 0 (Taylor below 1e-4 rad keeps the gradient finite at v = 0)
            k = tf.where(angle > 1e-4, tf.sin(half) / angle, 0.5 - angle * angle / 48.0)
            q = _hamilton(tf.concat([tf.cos(half), k * v], axis=-1), q0)
            pc = None
            if use_pc:
                pc = pc0 + x[:, 3:] if n_params == 6 else pc0
            return q, pc

        def unit_rows(y):
            y = tf.reshape(tf.cast(y, tf.float32), (tf.shape(y)[0], -1))
            y = y - tf.reduce_mean(y, axis=1, keepdims=True)
            return y / tf.sqrt(tf.reduce_sum(y * y, axis=1, keepdims=True) + 1e-20)

        def residual(x, q0, pc0, t_hat):
            return unit_rows(generator(*rotated(x, q0, pc0))) - t_hat

        def jacobian_terms(x, q0, pc0, t_hat):
            p = n_params
            b = tf.shape(x)[0]
            xs = tf.tile(x, [p, 1])
            tangents = tf.repeat(tf.eye(p, dtype=x.dtype), b, axis=0)  # copy k varies parameter k
            with tf.autodiff.ForwardAccumulator(xs, tangents) as acc:
                r = residual(xs, tf.tile(q0, [p, 1]), tf.tile(pc0, [p, 1]), tf.tile(t_hat, [p, 1]))
            jac = tf.reshape(acc.jvp(r), (p, b, -1))
            r0 = r[:b]
            hess = tf.einsum("pbn,qbn->bpq", jac, jac)
            grad = tf.einsum("pbn,bn->bp", jac, r0)
            return 1.0 - 0.5 * tf.reduce_sum(r0 * r0, axis=1), grad, hess

        def gradient_terms(x, q0, pc0, t_hat):
            with tf.GradientTape() as tape:
                tape.watch(x)
                r = residual(x, q0, pc0, t_hat)
                half_sq = 0.5 * tf.reduce_sum(r * r, axis=1)
                total = tf.reduce_sum(half_sq)
            return 1.0 - half_sq, tape.gradient(total, x)

        stages = generator.stages
        self.stages = stages

        def points(x, q0, pc0, h):
            # x and x + h_k e_k: the (p + 1) B points of forward differences, as one batch (copy k varies x_k)
            p = n_params
            shifts = tf.concat([tf.zeros((1, p), x.dtype), tf.linalg.diag(h)], axis=0)  # (p + 1, p)
            xs = tf.reshape(x[None] + shifts[:, None, :], (-1, p))
            return rotated(xs, tf.tile(q0, [p + 1, 1]), tf.tile(pc0, [p + 1, 1]))

        def products(cols, r):
            # J^T r (B, p) and J^T J (B, p, p) from the Jacobian's columns (B, P): one product per pair (XLA's CPU
            # batched matmul is slower for these shapes)
            p = len(cols)
            jtr = tf.stack([tf.reduce_sum(c * r, axis=1) for c in cols], axis=1)
            prod = {(k, m): tf.reduce_sum(cols[k] * cols[m], axis=1) for k in range(p) for m in range(k, p)}
            return jtr, tf.stack([tf.stack([prod[min(k, m), max(k, m)] for m in range(p)], 1) for k in range(p)], 1)

        def normal_terms(y, exact, t_hat, h):
            # unit rows y ((p + 1) B, P) at the points, exact unit rows (B, P) at x -> NCC, J^T r, J^T J
            p = n_params
            y = tf.reshape(y, (p + 1, tf.shape(exact)[0], -1))  # copy k of the batch varies parameter k
            r = exact - t_hat
            jtr, jtj = products([(y[k + 1] - y[0]) / h[k] for k in range(p)], r)
            return 1.0 - 0.5 * tf.reduce_sum(r * r, axis=1), jtr, jtj

        def difference_terms(x, q0, pc0, t_hat, h):
            # forward differences of the generator's output: no derivative of the generator is needed
            y = unit_rows(generator(*points(x, q0, pc0, h)))
            return normal_terms(y, y[: tf.shape(x)[0]], t_hat, h)

        def staged_grey(x, q0, pc0, h):
            grey = tf.clip_by_value(tf.cast(stages.pre(*points(x, q0, pc0, h)), tf.float32), 0.0, 255.0)
            exact, lut = stages.exact(grey[: tf.shape(x)[0]])
            return grey, exact, lut

        def staged_smooth(grey, exact, lut):
            return stages.smooth(grey, lut, n_params + 1), exact

        def staged_terms(smooth, exact, t_hat, h):
            return normal_terms(unit_rows(stages.post(smooth)), unit_rows(stages.post(exact)), t_hat, h)

        if stages is None:
            self.difference_terms = tf.function(difference_terms, jit_compile=jit, reduce_retracing=True)
        else:
            # The exact output is piecewise constant (8-bit levels, integer histograms): differences of it are
            # noise at small h. Difference instead the smooth map with the centre point's tile LUTs held fixed and
            # no rounding (the function whose derivative is the "lut" surrogate), keeping the exact value for the
            # residual. Three compiled calls: XLA fuses the LUTs' computation into the LUT look-ups, and those into
            # each of their consumers, recomputing them per use when compiled together (3x slower).
            first = tf.function(staged_grey, jit_compile=jit, reduce_retracing=True)
            second = tf.function(staged_smooth, jit_compile=jit, reduce_retracing=True)
            third = tf.function(staged_terms, jit_compile=jit, reduce_retracing=True)
            self.difference_terms = lambda x, q0, pc0, t_hat, h: third(*second(*first(x, q0, pc0, h)), t_hat, h)
            self.mixed_terms = self._mixed(stages, rotated, unit_rows, products, jit)
        self.jacobian_terms = tf.function(jacobian_terms, jit_compile=jit, reduce_retracing=True)
        self.gradient_terms = tf.function(gradient_terms, jit_compile=jit, reduce_retracing=True)

    def _mixed(self, stages, rotated, unit_rows, products, jit):
        """Difference-and-Broyden terms: every slot's pattern at x, K slots' differences (fresh Jacobian and tile
        LUTs); the other slots update their kept Jacobian of the smooth fixed-LUT map by Broyden's rank-one formula
        from their last step, which the smooth map (no rounding, LUTs held) makes free of quantisation noise.

        Returns ``fn(x, q0, pc0, t_hat, h, fd_idx, jac, s_old, dx, lut_kept) -> (NCC, J^T r, J^T J, jac, s,
        lut_kept)`` (jac (B, p, P), s the smooth unit rows at x, lut_kept the LUTs the map holds per slot).
        """
        import tensorflow as tf

        p = self.n_params

        def grey_exact(x, q0, pc0, h, fd_idx):
            b = tf.shape(x)[0]
            xk = tf.gather(x, fd_idx)
            xs = tf.concat([x, tf.reshape(xk[None] + tf.linalg.diag(h)[:, None, :], (-1, p))], axis=0)
            q0s = tf.concat([q0, tf.tile(tf.gather(q0, fd_idx), [p, 1])], axis=0)
            pc0s = tf.concat([pc0, tf.tile(tf.gather(pc0, fd_idx), [p, 1])], axis=0)
            grey = tf.clip_by_value(tf.cast(stages.pre(*rotated(xs, q0s, pc0s)), tf.float32), 0.0, 255.0)
            exact, lut = stages.exact(grey[:b])
            return grey, exact, lut

        def smooth(grey, lut, lut_kept, fd_idx):
            # differenced slots take their fresh LUTs (kept from now on), the others keep theirs
            b = tf.shape(lut)[0]
            is_fd = tf.scatter_nd(fd_idx[:, None], tf.ones(tf.shape(fd_idx), tf.float32), [b]) > 0.5
            lut_c = tf.where(is_fd[:, None, None], lut, lut_kept)
            luts = tf.concat([lut_c, tf.tile(tf.gather(lut, fd_idx), [p, 1, 1])], axis=0)
            return stages.smooth(grey, luts, 1), lut_c

        def terms(sm, exact, t_hat, h, fd_idx, jac, s_old, dx):
            b = tf.shape(exact)[0]
            s_all = unit_rows(stages.post(sm))
            s = s_all[:b]
            r = unit_rows(stages.post(exact)) - t_hat
            dx2 = tf.reduce_sum(dx * dx, axis=1)
            miss = s - s_old - tf.reduce_sum(jac * dx[:, :, None], axis=1)
            scale = tf.where(dx2 > 1e-20, 1.0 / tf.maximum(dx2, 1e-20), 0.0)  # no step: no update
            jac = jac + dx[:, :, None] * (miss * scale[:, None])[:, None, :]
            diff = tf.reshape(s_all[b:], (p, tf.shape(fd_idx)[0], -1)) - tf.gather(s, fd_idx)[None]
            fresh = tf.transpose(diff / h[:, None, None], (1, 0, 2))  # (K, p, P)
            jac = tf.tensor_scatter_nd_update(jac, fd_idx[:, None], fresh)
            jtr, jtj = products([jac[:, k] for k in range(p)], r)
            return 1.0 - 0.5 * tf.reduce_sum(r * r, axis=1), jtr, jtj, jac, s

        # three compiled calls, as for difference_terms (XLA would recompute the LUTs per look-up)
        first = tf.function(grey_exact, jit_compile=jit, reduce_retracing=True)
        second = tf.function(smooth, jit_compile=jit, reduce_retracing=True)
        third = tf.function(terms, jit_compile=jit, reduce_retracing=True)

        def fn(x, q0, pc0, t_hat, h, fd_idx, jac, s_old, dx, lut_kept):
            grey, exact, lut = first(x, q0, pc0, h, fd_idx)
            sm, lut_c = second(grey, lut, lut_kept, fd_idx)
            return (*third(sm, exact, t_hat, h, fd_idx, jac, s_old, dx), lut_c)

        return fn


def _steps_for(generator, n_params: int, use_pc: bool, jit: bool) -> _Steps:
    """The compiled steps of a generator, kept on it: XLA compiles once per batch shape, not once per call."""
    cache = generator.compiled
    key = (n_params, use_pc, jit)
    if key not in cache:
        cache[key] = _Steps(generator, n_params, use_pc, jit)
    return cache[key]


def _hamilton(a, b):
    """Hamilton product of (B, 4) quaternion tensors."""
    import tensorflow as tf

    return tf.stack(hamilton_terms(tf.unstack(a, axis=-1), tf.unstack(b, axis=-1)), axis=-1)


def _cap_norm(step: np.ndarray, cap: float) -> np.ndarray:
    norm = np.linalg.norm(step, axis=1, keepdims=True)
    return step * np.minimum(1.0, cap / np.maximum(norm, 1e-30))


@dataclass(frozen=True)
class GradientSettings:
    """Settings of :func:`refine_gradient` (validated on construction; defaults that depend on ``method`` are
    resolved by the properties ``iterations``, ``step_cap_deg``, ``tolerance_deg`` and ``slots``).

    Attributes
    ----------
    refine_pc
        Also refine the pattern centre, per pattern.
    refine_orientation
        With ``refine_pc``: False keeps the start orientations and refines the pattern centre alone (PC calibration
        on patterns of known orientation; jointly, a PC shift and a rotation are nearly interchangeable on one
        pattern, so per-pattern joint refinement determines the PC poorly).
    method
        "gauss-newton-fd" (default: Levenberg-Marquardt with a fresh forward-difference Jacobian per iteration),
        "gauss-newton" (Jacobian by forward-mode differentiation, refreshed every ``hessian_every``) or "adam".
    max_iterations
        Iterations per pattern at most (default 10 for "gauss-newton-fd", 12 for "gauss-newton", 150 for Adam).
    hessian_every
        "gauss-newton" only: recompute ``J^T J`` (one JVP, ~5 gradients' cost on CPU) every this many
        iterations; None (default): only at the start of each batch; 1: the full method.
    damping
        Levenberg-Marquardt lambda, relative to the diagonal of ``J^T J``.
    max_step_deg, max_pc_step
        Largest rotation step (degrees; default 2 for "gauss-newton-fd", else 0.5) and PC step (fraction) in one
        iteration.
    tol_deg
        A pattern stops when its rotation step is below this (degrees) (and its PC step below 1e-5); default 1e-3
        for "gauss-newton-fd" (which then takes that last step: quadratic convergence makes it far more accurate
        than the tolerance), else 2e-4.
    trust_region_deg, pc_trust_region
        Box half-widths of the rotation vector per component (degrees) and of the PC change.
    learning_rate_deg
        Adam: the step size in degrees (PC: this times 0.01 / 1 deg).
    fd_step_deg, fd_pc_step
        "gauss-newton-fd": the difference steps of the rotation (degrees) and of the PC (fraction).
    fd_iterations, fd_fraction
        "gauss-newton-fd" with a staged generator: difference a pattern in its first ``fd_iterations``
        iterations, then update its Jacobian by Broyden's formula (``fd_iterations >= max_iterations``: difference
        every iteration); each generator call differences ``ceil(fd_fraction * batch_size)`` slots.
    batch_size
        Patterns optimised together (default 64 slots for "gauss-newton-fd": smaller batches stay in the CPU's
        caches, and slots are refilled as patterns converge; 256 otherwise, the last batch padded).
    jit
        XLA-compile the steps.

    Raises
    ------
    EBSDInputError
        An unknown method, a trust region outside (0, 20] degrees, nothing to refine, bad fd / batch settings.
    """

    refine_pc: bool = False
    refine_orientation: bool = True
    method: Method = "gauss-newton-fd"
    max_iterations: int | None = None
    hessian_every: int | None = None
    damping: float = 1e-3
    max_step_deg: float | None = None
    max_pc_step: float = 0.005
    tol_deg: float | None = None
    trust_region_deg: float = DEFAULT_TRUST_REGION_DEG
    pc_trust_region: float = 0.05
    learning_rate_deg: float = 0.05
    fd_step_deg: float = 0.05
    fd_pc_step: float = 1e-4
    fd_iterations: int = 2
    fd_fraction: float = 1 / 3
    batch_size: int | None = None
    jit: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise EBSDInputError(f"method must be one of {METHODS}, got {self.method!r}", None, "method")
        if not 0 < float(self.trust_region_deg) <= 20:
            raise EBSDInputError(
                f"trust region must be within (0, 20] degrees, got {self.trust_region_deg}", None, "trust_region"
            )
        if not self.refine_orientation and not self.refine_pc:
            raise EBSDInputError("nothing to refine: refine_orientation=False needs refine_pc=True", None, "refine_pc")
        if int(self.fd_iterations) < 1 or not 0 < float(self.fd_fraction) <= 1:
            raise EBSDInputError(
                f"need fd_iterations >= 1 and 0 < fd_fraction <= 1, got {self.fd_iterations}, {self.fd_fraction}",
                None,
                "fd_iterations",
            )
        if int(self.slots) < 1 or (self.hessian_every is not None and int(self.hessian_every) < 1):
            raise EBSDInputError("batch_size and hessian_every must be >= 1", None, "batch_size")

    @property
    def _fd(self) -> bool:
        return self.method == "gauss-newton-fd"

    @property
    def iterations(self) -> int:
        """Iterations per pattern at most (the method's default when ``max_iterations`` is None)."""
        return int(self.max_iterations) if self.max_iterations is not None else _DEFAULT_ITERATIONS[self.method]

    @property
    def step_cap_deg(self) -> float:
        """Largest rotation step per iteration, degrees."""
        return (2.0 if self._fd else 0.5) if self.max_step_deg is None else float(self.max_step_deg)

    @property
    def tolerance_deg(self) -> float:
        """Rotation step below which a pattern stops, degrees."""
        return (1e-3 if self._fd else 2e-4) if self.tol_deg is None else float(self.tol_deg)

    @property
    def slots(self) -> int:
        """Patterns optimised together."""
        return (64 if self._fd else 256) if self.batch_size is None else int(self.batch_size)

    def record(self, staged: bool, slots: int) -> dict:
        """What a refinement ran with, for its result's ``settings`` (JSON-ready)."""
        fd = self._fd
        if fd:
            how = "Jacobian by differences" + (" + Broyden updates of the smooth fixed-LUT map" if staged else "")
        else:
            how = "surrogate gradient through CLAHE"
        return {
            "refiner": f"gradient ({self.method})",
            "objective": f"NCC with the generated pattern (exact forward value; {how})",
            "parametrisation": "rotation vector v, q = exp(v) * q_start"
            + (", pc = pc_start + d" if self.refine_pc else ""),
            "method": self.method,
            "max_iterations": self.iterations,
            "hessian_every": self.hessian_every if self.method == "gauss-newton" else None,
            "fd_step_deg": float(self.fd_step_deg) if fd else None,
            "fd_iterations": int(self.fd_iterations) if fd else None,
            "fd_fraction": float(self.fd_fraction) if fd else None,
            "damping": float(self.damping),
            "max_step_deg": self.step_cap_deg,
            "tol_deg": self.tolerance_deg,
            "trust_region_deg": float(self.trust_region_deg),
            "refine_pc": bool(self.refine_pc),
            "refine_orientation": bool(self.refine_orientation),
            "batch_size": slots,
            "jit": bool(self.jit),
        }


# ----------------------------------------------------------------------------------------------------------------
# Gradient refinement
# ----------------------------------------------------------------------------------------------------------------


def refine_gradient(
    generator,
    patterns,
    q_start,
    settings: GradientSettings | None = None,
    *,
    pc_start=None,
    progress: bool = False,
    **keywords,
) -> GradientRefineResult:
    """Refine orientations (and optionally pattern centres) by maximising the NCC through a generator.

    Parameters
    ----------
    generator
        A :class:`~ebsd_keras.indexing.generator.Generator` (``model_refinement_generator``,
        ``master_pattern_generator``, or your own function built from TensorFlow / keras.ops, wrapped in one).
    patterns
        (N, H, W) target patterns (uint8 or float; NCC ignores offset and scale).
    q_start
        (N, 4) start orientations (e.g. dictionary indexing results).
    pc_start
        (3,) or (N, 3) Bruker pattern centres to generate at; None: the generator's own detector (or its default
        PC when ``refine_pc``).
    settings
        :class:`GradientSettings` (method, iterations, steps, trust regions, batch size); or give its fields as
        keywords (``refine_gradient(gen, patterns, q, method="adam", refine_pc=True)``).
    progress
        Show a tqdm bar over batches.

    Returns
    -------
    GradientRefineResult
        ``quaternion`` (N, 4), ``score`` (N,) NCC at the best evaluated point (for "gauss-newton-fd", the point
        before the last, unevaluated step), ``n_evaluations`` (N,) generator passes (a JVP counts as the number of
        parameters, a difference iteration as p + 1), ``pc`` (N, 3) or None, ``iterations`` (N,), ``seconds``,
        ``settings``.
    """
    import tensorflow as tf
    from tqdm.auto import tqdm

    if settings is not None and keywords:
        raise TypeError("give GradientSettings or keywords, not both")
    st = settings if settings is not None else GradientSettings(**keywords)
    method, refine_pc, refine_orientation = st.method, st.refine_pc, st.refine_orientation
    hessian_every, damping, max_pc_step = st.hessian_every, st.damping, st.max_pc_step
    trust_region_deg, pc_trust_region, learning_rate_deg = st.trust_region_deg, st.pc_trust_region, st.learning_rate_deg
    fd_step_deg, fd_pc_step, fd_iterations, fd_fraction = (
        st.fd_step_deg,
        st.fd_pc_step,
        st.fd_iterations,
        st.fd_fraction,
    )
    max_step_deg, tol_deg, batch_size, iters, jit = st.step_cap_deg, st.tolerance_deg, st.slots, st.iterations, st.jit
    fd = method == "gauss-newton-fd"
    pats, q0_all, pc0_all = _check_common(generator, patterns, q_start, pc_start, refine_pc)
    n = len(pats)
    use_pc = pc0_all is not None
    p = 6 if refine_pc else 3
    steps = _steps_for(generator, p, use_pc, jit)
    bound = np.full(p, math.radians(trust_region_deg))
    cap = np.array([math.radians(max_step_deg)] * 3 + [max_pc_step] * (p - 3))
    if refine_pc:
        bound[3:] = pc_trust_region
    tol = math.radians(tol_deg)
    targets = normalized_rows(pats, dtype=np.float32)
    b = max(1, min(int(batch_size), n))
    q_out = np.zeros((n, 4))
    pc_out = None if not use_pc else pc0_all.copy()
    scores = np.zeros(n)
    n_iter = np.zeros(n, dtype=np.int64)
    evals = np.zeros(n, dtype=np.int64)
    staged = generator.stages is not None
    t0 = time.perf_counter()
    free = np.ones(p, dtype=bool)
    free[:3] = refine_orientation
    limits = _Limits(iters, tol, cap, bound, free, damping)
    if fd:
        h = np.array([math.radians(fd_step_deg)] * 3 + [fd_pc_step] * (p - 3))
        broyden = None
        if staged and fd_iterations < iters:
            broyden = (int(fd_iterations), max(1, int(math.ceil(b * fd_fraction))))
        best_x, scores, n_iter, evals = _gauss_newton_fd(
            steps, q0_all, pc0_all, targets, b, p, limits, h, progress, broyden
        )
        q_out = positive_scalar(quaternion_multiply(rotvec_to_quaternion(best_x[:, :3]), q0_all))
        if refine_pc:
            pc_out = pc0_all + best_x[:, 3:]
    starts = () if fd else range(0, n, b)
    for start in tqdm(starts, desc="gradient refinement", unit="batch", disable=not progress):
        rows = np.arange(start, min(start + b, n))
        pad = np.concatenate([rows, np.repeat(rows[:1], b - len(rows))])
        q0 = tf.constant(q0_all[pad], tf.float32)
        pc0 = tf.constant((pc0_all[pad] if use_pc else np.zeros((b, 3))), tf.float32)
        t_hat = tf.constant(targets[pad])
        run = _gauss_newton if method == "gauss-newton" else _adam
        best_x, best_f, it, ev = run(steps, q0, pc0, t_hat, b, p, limits, hessian_every, learning_rate_deg)
        k = len(rows)
        dq = rotvec_to_quaternion(best_x[:k, :3])
        q_out[rows] = positive_scalar(quaternion_multiply(dq, q0_all[rows]))
        if refine_pc:
            pc_out[rows] = pc0_all[rows] + best_x[:k, 3:]
        scores[rows] = best_f[:k]
        n_iter[rows] = it[:k]
        evals[rows] = ev[:k]
    seconds = time.perf_counter() - t0
    return GradientRefineResult(
        quaternion=q_out,
        score=scores,
        n_evaluations=evals,
        seconds=seconds,
        pc=pc_out,
        iterations=n_iter,
        settings=st.record(staged=staged, slots=b),
    )


class _Limits(NamedTuple):
    """The iteration limits of one refinement: iterations, rotation-step tolerance (rad), per-parameter step caps and
    trust-region half-widths (p,), which parameters are free (p,) bool, Levenberg-Marquardt damping."""

    iters: int
    tol: float
    cap: np.ndarray
    bound: np.ndarray
    free: np.ndarray
    damping: float


def _gauss_newton(steps, q0, pc0, t_hat, b, p, limits: _Limits, hessian_every, _lr):
    """Levenberg-Marquardt / chord iterations on one batch; returns (best x, best NCC, iterations, evaluations)."""
    import tensorflow as tf

    iters, tol, free = limits.iters, limits.tol, limits.free

    x = np.zeros((b, p))
    best_x = x.copy()
    best_f = np.full(b, -np.inf)
    active = np.ones(b, dtype=bool)
    it_count = np.zeros(b, dtype=np.int64)
    evals = np.zeros(b, dtype=np.int64)
    hess = None
    for it in range(iters):
        xt = tf.constant(x, tf.float32)
        if hess is None or (hessian_every is not None and it % hessian_every == 0):
            f, g, h = steps.jacobian_terms(xt, q0, pc0, t_hat)
            hess = np.asarray(h, np.float64)
            evals[active] += p
        else:
            f, g = steps.gradient_terms(xt, q0, pc0, t_hat)
            evals[active] += 1
        f, g = np.asarray(f, np.float64), np.asarray(g, np.float64)
        new = _lm_step(f, g, hess, x, best_x, best_f, limits, tie_is_better=False)
        moved = np.linalg.norm(new[:, :3] - x[:, :3], axis=1) if free[0] else np.zeros(b)
        pc_moved = np.linalg.norm(new[:, 3:] - x[:, 3:], axis=1) if p > 3 else np.zeros(b)
        it_count[active] += 1
        done = (moved < tol) & (pc_moved < _PC_TOL)
        new[~active] = x[~active]  # stopped patterns stay put (they still ride along in the batch)
        active &= ~done
        x = new
        if not active.any():
            break
    return best_x, best_f, it_count, evals


def _lm_step(f, g, hess, x, best_x, best_f, limits: _Limits, ncc_scaled=False, tie_is_better=True):
    """One Levenberg-Marquardt update of every row; returns the new x (best_x, best_f are updated in place).

    ``tie_is_better``: an NCC equal to the best counts as no worse (``gauss-newton-fd``: the same point again, a slot
    that waited a call); the older ``gauss-newton`` treats it as a failed step.
    """
    damping, cap, bound, free = limits.damping, limits.cap, limits.bound, limits.free
    p = x.shape[1]
    better = (f >= best_f) if tie_is_better else (f > best_f)
    best_f[better] = f[better]
    best_x[better] = x[better]
    eye = np.eye(p)
    diag = np.einsum("bii->bi", hess)
    lhs = hess + damping * diag[:, :, None] * eye + 1e-12 * eye
    # held parameters: their rows and columns become the identity and their gradient 0
    lhs[:, ~free, :] = 0.0
    lhs[:, :, ~free] = 0.0
    lhs[:, ~free, ~free] = 1.0
    g = np.where(free, g, 0.0)
    step = -np.linalg.solve(lhs, g[..., None])[..., 0]
    if np.any(ncc_scaled):
        # The NCC falls off about like exp(-|v - v*|^2 / 2 w^2) around its peak, so the Gauss-Newton step (the
        # peak's curvature) is short by the factor NCC far from it; dividing by the NCC restores the full step
        # (near the peak NCC -> ~1, and the division is left out after the first steps)
        step /= np.where(ncc_scaled, np.clip(f, 0.2, 1.0) ** 3, 1.0)[:, None]
    step[:, :3] = _cap_norm(step[:, :3], cap[0])
    if p > 3:
        step[:, 3:] = _cap_norm(step[:, 3:], cap[3])
    # a step that lowered the NCC: go back half-way towards the best point instead
    worse = ~better
    new = np.clip(x + step, -bound, bound)
    new[worse] = best_x[worse] + 0.5 * (x[worse] - best_x[worse])
    return new


def _gauss_newton_fd(steps, q0_all, pc0_all, targets, b, p, limits: _Limits, h, progress, broyden=None):
    """Levenberg-Marquardt with a forward-difference Jacobian, over all patterns.

    ``b`` slots iterate together; a pattern leaves its slot as soon as it has converged and the next pattern takes
    the slot, so every generator call does useful work and the compiled batch shape never changes. Without
    ``broyden`` every iteration differences every slot; with ``broyden = (n_fd, k)`` (staged generators) a pattern
    is differenced in its first ``n_fd`` iterations and then keeps its Jacobian, updated by Broyden's formula;
    each call differences ``k`` slots (those that need it first, then the ones moving most), so a call costs
    b + p k patterns instead of (p + 1) b.

    Returns
    -------
    best x (N, p), best NCC (N,), iterations (N,), generator passes (N,)
    """
    import tensorflow as tf

    iters, tol, free = limits.iters, limits.tol, limits.free
    from tqdm.auto import tqdm

    n = len(q0_all)
    out_x = np.zeros((n, p))
    out_f = np.full(n, -np.inf)
    out_it = np.zeros(n, dtype=np.int64)
    out_ev = np.zeros(n, dtype=np.int64)
    slot = np.full(b, -1)
    x = np.zeros((b, p))
    best_x = np.zeros((b, p))
    best_f = np.full(b, -np.inf)
    it = np.zeros(b, dtype=np.int64)
    n_diff = np.zeros(b, dtype=np.int64)  # difference iterations of the slot's pattern
    ev = np.zeros(b, dtype=np.int64)
    last_step = np.full(b, np.inf)
    h_t = tf.constant(h, tf.float32)
    pc_all = pc0_all if pc0_all is not None else np.zeros((n, 3))
    queue = iter(range(n))
    bar = tqdm(total=n, desc="gradient refinement", unit="pattern", disable=not progress)
    kept = None  # (jac, s, lut) tensors of the Broyden variant
    x_prev = np.zeros((b, p))

    def refill(mask):
        for j in np.flatnonzero(mask):
            slot[j] = next(queue, -1)
        for a in (x, best_x, x_prev):
            a[mask] = 0.0
        best_f[mask] = -np.inf
        it[mask] = n_diff[mask] = ev[mask] = 0
        last_step[mask] = np.inf

    refill(np.ones(b, dtype=bool))
    while (slot >= 0).any():
        live = slot >= 0
        rows = np.where(live, slot, slot[live][0])  # empty slots (end of the queue) repeat a live pattern
        args = (
            tf.constant(x, tf.float32),
            tf.constant(q0_all[rows], tf.float32),
            tf.constant(pc_all[rows], tf.float32),
            tf.constant(targets[rows]),
            h_t,
        )
        waiting = np.zeros(b, dtype=bool)
        if broyden is None:
            f, g, hess = steps.difference_terms(*args)
            ev += p + 1
        else:
            n_fd, k = broyden
            needs = live & (n_diff < n_fd)
            # differenced this call: slots that need it, then those that moved most (a fresh Jacobian helps most)
            chosen = np.lexsort((-np.where(live, last_step, -1.0), ~needs))[:k]
            waiting = needs.copy()
            waiting[chosen] = False  # more slots need differences than fit: they wait a call, in place
            if kept is None:
                kept = (tf.zeros((b, p, targets.shape[1])), tf.zeros((b, targets.shape[1])), None)
            if kept[2] is None:  # the first call: no slot keeps LUTs yet
                plan = steps.stages.plan
                kept = (*kept[:2], tf.zeros((b, 1, 1) if plan is None else (b, plan.n_tiles, 256)))
            f, g, hess, jac, s_rows, lut_c = steps.mixed_terms(
                *args, tf.constant(chosen, tf.int32), kept[0], kept[1], tf.constant(x - x_prev, tf.float32), kept[2]
            )
            kept = (jac, s_rows, lut_c)
            n_diff[chosen] += 1
            ev += 1
            ev[chosen] += p
            x_prev = x.copy()
        f, g, hess = (np.asarray(a, np.float64) for a in (f, g, hess))
        new = _lm_step(f, g, hess, x, best_x, best_f, limits, ncc_scaled=it < _SCALED_STEPS)
        new[waiting] = x[waiting]
        moved = np.linalg.norm(new[:, :3] - x[:, :3], axis=1) if free[0] else np.zeros(b)
        pc_moved = np.linalg.norm(new[:, 3:] - x[:, 3:], axis=1) if p > 3 else np.zeros(b)
        last_step = np.where(waiting, last_step, moved)
        it += ~waiting
        # converged: a small Gauss-Newton step from the best point (a small move back after a failed step is not
        # convergence); that last step is taken without evaluating it: near the optimum it is far more accurate
        # than the point it starts from
        small = (moved < tol) & (pc_moved < _PC_TOL) & ~waiting & (best_f == f)
        done = live & (small | (it >= iters))
        final = np.where(small[:, None], new, best_x)
        idx = slot[done]
        out_x[idx], out_f[idx], out_it[idx], out_ev[idx] = final[done], best_f[done], it[done], ev[done]
        bar.update(int(done.sum()))
        x = new
        refill(done)
    bar.close()
    return out_x, out_f, out_it, out_ev


def _adam(steps, q0, pc0, t_hat, b, p, limits: _Limits, _hessian_every, lr_deg):
    """Adam ascent of the NCC on one batch; returns (best x, best NCC, iterations, evaluations)."""
    import tensorflow as tf

    iters, tol, bound, free = limits.iters, limits.tol, limits.bound, limits.free

    lr = np.array([math.radians(lr_deg)] * 3 + [0.01 * lr_deg] * (p - 3))
    beta1, beta2, eps = 0.9, 0.999, 1e-12
    x = np.zeros((b, p))
    m = np.zeros_like(x)
    s = np.zeros_like(x)
    best_x, best_f = x.copy(), np.full(b, -np.inf)
    active = np.ones(b, dtype=bool)
    it_count = np.zeros(b, dtype=np.int64)
    for it in range(iters):
        f, g = steps.gradient_terms(tf.constant(x, tf.float32), q0, pc0, t_hat)
        f, g = np.asarray(f, np.float64), np.asarray(g, np.float64)
        g[:, ~free] = 0.0
        better = f > best_f
        best_f = np.where(better, f, best_f)
        best_x[better] = x[better]
        m = beta1 * m + (1 - beta1) * g
        s = beta2 * s + (1 - beta2) * g * g
        # decaying step: Adam's steps have a fixed size and would otherwise orbit the optimum at +-lr
        decay = 1.0 / (1.0 + it / 20.0)
        step = -decay * lr * (m / (1 - beta1 ** (it + 1))) / (np.sqrt(s / (1 - beta2 ** (it + 1))) + eps)
        new = np.clip(x + step, -bound, bound)
        it_count[active] += 1
        done = np.linalg.norm(step[:, :3], axis=1) < tol if free[0] else np.linalg.norm(step, axis=1) < _PC_TOL
        new[~active] = x[~active]
        active &= ~done
        x = new
        if not active.any():
            break
    return best_x, best_f, it_count, it_count.copy()


# ----------------------------------------------------------------------------------------------------------------
# BOBYQA through a generator (the same objective, derivative-free: the fair comparison for the optimiser)
# ----------------------------------------------------------------------------------------------------------------


def refine_bobyqa_generator(
    generator,
    patterns,
    q_start,
    *,
    pc_start=None,
    trust_region_deg: float = DEFAULT_TRUST_REGION_DEG,
    initial_step_deg: float = 0.5,
    xtol_deg: float = 5e-4,
    max_evaluations: int = 400,
    workers: int = 8,
    jit: bool = True,
) -> RefineResult:
    """nlopt ``LN_BOBYQA`` on the NCC with a generator's patterns (what :meth:`Indexer.refine_bobyqa` does with the
    true master pattern), ``workers`` patterns in lock-step so that each generator call is one batch.

    Parameters are as in :meth:`~ebsd_keras.indexing.dictionary.Indexer.refine_bobyqa`; ``generator`` as in
    :func:`refine_gradient` (build it with ``differentiable=False``: no gradient is needed).

    Returns
    -------
    RefineResult
    """
    import nlopt
    import tensorflow as tf

    pats, q0, pc0 = _check_common(generator, patterns, q_start, pc_start, False)
    n = len(pats)
    bound = math.radians(float(trust_region_deg))
    step = min(math.radians(initial_step_deg), 0.5 * bound)
    targets = normalized_rows(pats, dtype=np.float64)
    width = max(1, min(int(workers), n))
    pc_fixed = None if pc0 is None else tf.constant(pc0[:1].repeat(width, 0), tf.float32)
    if pc0 is not None and not np.allclose(pc0, pc0[:1]):
        raise EBSDInputError("refine_bobyqa_generator takes one pattern centre for all patterns", None, "pc")
    compiled = tf.function(lambda q: generator(q, pc_fixed), jit_compile=jit)

    def project(qs):
        return normalized_rows(np.asarray(compiled(tf.constant(qs, tf.float32))), dtype=np.float64)

    t0 = time.perf_counter()
    q_out, scores, evals = bobyqa_lockstep(project, q0, targets, width, bound, step, xtol_deg, max_evaluations)
    return RefineResult(
        quaternion=q_out,
        score=scores,
        n_evaluations=evals,
        seconds=time.perf_counter() - t0,
        settings={
            "refiner": "bobyqa (generator)",
            "library": f"nlopt {nlopt.__version__} LN_BOBYQA",
            "trust_region_deg": float(trust_region_deg),
            "initial_step_deg": math.degrees(step),
            "xtol_deg": float(xtol_deg),
            "max_evaluations": int(max_evaluations),
            "workers": width,
        },
    )
