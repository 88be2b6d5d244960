"""Dictionary indexing (DI) and orientation refinement of EBSD patterns, for the fidelity evaluation (GPL ``emsoft``
extra: kikuchipy, orix, nlopt).

An :class:`Indexer` is built once per (master pattern, detector, energy, preprocessing). Its dictionary holds the
patterns of a cubochoric grid of the cubic m-3m fundamental zone, projected from the master pattern and preprocessed
**exactly like the dataset** (each pattern rescaled from its own [min, max] to uint8, then CLAHE when the dataset
used it), so that a true test pattern equals the dictionary pattern of its orientation.

- :meth:`Indexer.dictionary_index`: best dictionary match of each pattern by the normalised cross-correlation (NCC),
  computed as one matrix product of zero-mean, unit-norm patterns per dictionary batch (the same similarity as
  kikuchipy's ``EBSD.dictionary_indexing(metric="ncc")``, which :meth:`Indexer.dictionary_index_kikuchipy` runs
  as a cross-check; the matrix product is the faster, see ``benchmarks/evaluation_speed.py``).
- :meth:`Indexer.refine_bobyqa`: the paper's refinement, per pattern: nlopt ``LN_BOBYQA`` maximises the NCC
  between the pattern and the identically preprocessed projection over a local rotation vector (3 parameters,
  box trust region around the start). Projections come from the ``keras.ops`` :class:`LambertProjector`
  (float64, XLA-compiled); several patterns are optimised at once in lock-step so that each projection call serves
  one objective evaluation of every pattern in flight.
- :meth:`Indexer.refine_kikuchipy`: kikuchipy's ``EBSD.refine_orientation`` (it projects the *raw* master pattern,
  without the dataset's preprocessing) as an independent cross-check.

Orientations are (N, 4) unit quaternions (q0, q1, q2, q3), q0 >= 0, passive, EMsoft P = +1; angles in degrees.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ebsd_keras.data.preprocess import CLAHEConfig, clahe, clahe_from_metadata
from ebsd_keras.errors import EBSDInputError
from ebsd_keras.orientation import normalize_quaternions, quaternion_multiply

__all__ = [
    "DEFAULT_CLAHE",
    "DEFAULT_TRUST_REGION_DEG",
    "RefineResult",
    "Indexer",
    "dictionary_orientations",
    "clahe_from_metadata",
    "master_pattern_from_metadata",
    "indexer_from_metadata",
]

logger = logging.getLogger(__name__)

#: The paper's preprocessing (clip limit 10, 4 x 4 tiles); frozen, so safe as a default argument.
DEFAULT_CLAHE = CLAHEConfig()
#: Half-width (degrees) of the box trust region of the refinement (per rotation-vector component), the paper's 2 deg.
#: It is widened to the dictionary's resolution when that is coarser: a DI result can be off by more than 2 deg
#: then, and a box that does not contain the truth cannot refine to it.
DEFAULT_TRUST_REGION_DEG = 2.0


@dataclass
class RefineResult:
    """Refined orientations.

    Attributes
    ----------
    quaternion
        (N, 4) refined unit quaternions, q0 >= 0.
    score
        (N,) NCC at the refined orientation.
    n_evaluations
        (N,) objective evaluations (projections) per pattern.
    seconds
        Wall time of the whole refinement.
    settings
        The refiner and its parameters (for the report).
    """

    quaternion: np.ndarray
    score: np.ndarray
    n_evaluations: np.ndarray
    seconds: float
    settings: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# Dictionary orientations and preprocessing
# ----------------------------------------------------------------------------------------------------------------


def positive_scalar(q: np.ndarray) -> np.ndarray:
    q = np.ascontiguousarray(np.asarray(q, dtype=np.float64).reshape(-1, 4))
    return np.where(q[:, :1] < 0, -q, q)


def dictionary_orientations(resolution_deg: float | None = None, semi_edge_steps: int | None = None) -> np.ndarray:
    """Cubochoric orientations of the cubic m-3m fundamental zone for a dictionary.

    Parameters
    ----------
    resolution_deg
        Grid spacing in degrees (orix ``get_sample_fundamental(resolution, point_group=Oh)``; 2 deg gives 100,347).
    semi_edge_steps
        Or EMsoft's cubochoric density N (100 gives the paper's 333,227, about 1.4 deg apart). Exactly one of the two.

    Returns
    -------
    numpy.ndarray
        (M, 4) float64 quaternions, q0 >= 0.
    """
    from orix.quaternion import symmetry
    from orix.sampling import get_sample_fundamental

    if (resolution_deg is None) == (semi_edge_steps is None):
        raise EBSDInputError(
            "give exactly one of a dictionary resolution (degrees) and cubochoric semi-edge steps",
            None,
            "dictionary_resolution",
        )
    if resolution_deg is not None:
        res = float(resolution_deg)
        if not math.isfinite(res) or not 0.25 <= res <= 20.0:
            raise EBSDInputError(
                f"dictionary resolution must be within [0.25, 20] degrees, got {resolution_deg!r}",
                None,
                "dictionary_resolution",
            )
        rot = get_sample_fundamental(resolution=res, point_group=symmetry.Oh, method="cubochoric")
    else:
        steps = semi_edge_steps
        if isinstance(steps, bool) or int(steps) != steps or not 2 <= int(steps) <= 300:
            raise EBSDInputError(
                f"cubochoric semi-edge steps must be an integer within [2, 300], got {steps!r}",
                None,
                "semi_edge_steps",
            )
        rot = get_sample_fundamental(point_group=symmetry.Oh, method="cubochoric", semi_edge_steps=int(steps))
    return positive_scalar(rot.data)


def _steps_resolution_deg(semi_edge_steps: int) -> float:
    """Grid resolution (degrees) of a cubochoric grid of N semi-edge steps: the inverse of orix's
    ``resolution_to_semi_edge_steps`` (Singh and De Graef 2016, eq 9): N = 100 -> 1.357 deg, 2 deg -> N = 67."""
    return 131.97049 / int(semi_edge_steps) + 0.03732


def normalized_rows(patterns, dtype=np.float32) -> np.ndarray:
    """(N, H*W) zero-mean unit-norm rows (constant patterns stay zero): NCC becomes a dot product."""
    x = np.asarray(patterns).reshape(len(patterns), -1).astype(dtype, copy=True)
    flat = np.ptp(x, axis=1) == 0
    x -= x.mean(axis=1, keepdims=True)
    x[flat] = 0.0  # exactly: a constant pattern matches nothing
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norm, out=x, where=norm > 0)
    return x


def _inverse_centred_norms(patterns) -> np.ndarray:
    """1 / ||p - mean(p)|| of each pattern (N,) float32; 0 for constant patterns."""
    x = np.asarray(patterns).reshape(len(patterns), -1).astype(np.float64)
    norm = np.linalg.norm(x - x.mean(axis=1, keepdims=True), axis=1)
    return np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 1e-9).astype(np.float32)


def as_pattern_stack(patterns, shape, what: str = "patterns") -> np.ndarray:
    a = np.asarray(patterns)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or tuple(a.shape[1:]) != tuple(shape):
        raise EBSDInputError(
            f"expected (N, {shape[0]}, {shape[1]}) patterns for this detector, got shape {np.shape(patterns)}",
            None,
            what,
        )
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise EBSDInputError("patterns contain NaN or Inf", None, what)
    return a


def rotvec_to_quaternion(v: np.ndarray) -> np.ndarray:
    """Unit quaternion of a rotation vector (radians), (..., 3) -> (..., 4)."""
    v = np.asarray(v, dtype=np.float64)
    angle = np.linalg.norm(v, axis=-1, keepdims=True)
    half = 0.5 * angle
    # sin(a/2)/a -> 1/2 as a -> 0
    k = np.where(angle > 1e-12, np.sin(half) / np.where(angle > 1e-12, angle, 1.0), 0.5)
    return np.concatenate([np.cos(half), k * v], axis=-1)


# ----------------------------------------------------------------------------------------------------------------
# Lock-step batching of objective evaluations across threads
# ----------------------------------------------------------------------------------------------------------------


class _LockStep:
    """Collects one projection request from each of ``width`` worker threads and serves them with one batched call.

    Each worker runs its own nlopt optimisation and blocks in :meth:`evaluate` until every worker still running has
    asked for a projection; the last one to ask runs the batch (padded to ``width`` rows, so one compiled shape
    serves every call and a row's result never depends on the others).
    """

    def __init__(self, fn, width: int):
        self.fn = fn
        self.width = int(width)
        self.cond = threading.Condition()
        self.active = self.width
        self.pending: dict[int, np.ndarray] = {}
        self.results: dict[int, object] = {}

    def evaluate(self, slot: int, q: np.ndarray) -> np.ndarray:
        with self.cond:
            self.pending[slot] = q
            self._run_if_complete()
            while slot not in self.results:
                self.cond.wait()
            out = self.results.pop(slot)
        if isinstance(out, BaseException):
            raise out
        return out

    def retire(self) -> None:
        with self.cond:
            self.active -= 1
            self._run_if_complete()

    def _run_if_complete(self) -> None:
        # Called with the lock held; every other active worker is waiting, so running here blocks nobody useful.
        if not self.pending or len(self.pending) < self.active:
            return
        slots = list(self.pending)
        qs = np.stack([self.pending[s] for s in slots])
        self.pending = {}
        pad = np.repeat(qs[:1], self.width - len(qs), axis=0)
        try:
            out = self.fn(np.concatenate([qs, pad]))
            for i, s in enumerate(slots):
                self.results[s] = out[i]
        except BaseException as exc:  # hand the error to every waiting worker
            for s in slots:
                self.results[s] = exc
        self.cond.notify_all()


def bobyqa_lockstep(project, q0, targets, width, bound, step, xtol_deg, max_evaluations, on_done=None):
    """nlopt ``LN_BOBYQA`` maximising the NCC of each pattern, ``width`` patterns in lock-step threads.

    Each thread optimises one pattern at a time over a rotation vector v (radians, within ``bound`` per component;
    q = exp(v) * q0); their objective calls meet in :class:`_LockStep`, so every ``project`` call is one batch.

    Parameters
    ----------
    project
        (width, 4) quaternions -> (width, P) zero-mean unit-norm rows (float64).
    q0, targets
        (N, 4) start quaternions and (N, P) normalised target patterns.
    width, bound, step, xtol_deg, max_evaluations
        Threads; trust region and initial step (radians); stopping step (degrees); evaluations per pattern.
    on_done
        Called (under a lock) after each pattern, e.g. to advance a progress bar.

    Returns
    -------
    q_out, scores, evals
        (N, 4) refined quaternions (q0 >= 0), (N,) best NCC, (N,) objective evaluations.
    """
    import nlopt

    n = len(q0)
    q_out = q0.copy()
    scores = np.zeros(n)
    evals = np.zeros(n, dtype=np.int64)
    lock = threading.Lock()
    order = iter(range(n))
    errors: list[BaseException] = []
    step_batch = _LockStep(project, width)

    def work(slot: int) -> None:
        try:
            while True:
                with lock:
                    i = next(order, None)
                if i is None or errors:
                    return
                # best point seen: nlopt's RoundoffLimited exception would otherwise lose the result
                best = {"f": -np.inf, "v": np.zeros(3), "n": 0}

                def objective(v, grad, i=i, best=best):
                    best["n"] += 1
                    q = quaternion_multiply(rotvec_to_quaternion(v), q0[i])
                    f = float(step_batch.evaluate(slot, q) @ targets[i])
                    if f > best["f"]:
                        best["f"], best["v"] = f, np.array(v, dtype=np.float64)
                    return f

                opt = nlopt.opt(nlopt.LN_BOBYQA, 3)
                opt.set_max_objective(objective)
                opt.set_lower_bounds([-bound] * 3)
                opt.set_upper_bounds([bound] * 3)
                opt.set_initial_step([step] * 3)
                opt.set_xtol_abs(math.radians(xtol_deg))
                opt.set_maxeval(int(max_evaluations))
                with contextlib.suppress(nlopt.RoundoffLimited):
                    opt.optimize(np.zeros(3))
                q = quaternion_multiply(rotvec_to_quaternion(best["v"]), q0[i])
                q_out[i] = np.where(q[:1] < 0, -q, q)
                scores[i] = best["f"]
                evals[i] = best["n"]
                if on_done is not None:
                    with lock:
                        on_done()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)
        finally:
            step_batch.retire()

    threads = [threading.Thread(target=work, args=(s,), daemon=True) for s in range(width)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return q_out, scores, evals


# ----------------------------------------------------------------------------------------------------------------
# Indexer
# ----------------------------------------------------------------------------------------------------------------


class Indexer:
    """Dictionary indexing and refinement against one master pattern, detector, energy and preprocessing.

    Parameters
    ----------
    master_pattern
        kikuchipy ``EBSDMasterPattern``, square Lambert, both hemispheres (from
        :func:`ebsd_keras.data.simulate.load_master_pattern` or ``kinematical_master_pattern``).
    detector
        :class:`~ebsd_keras.simulations.geometry.DetectorGeometry`, or the detector dictionary of the dataset
        metadata (Bruker ``pc``, ``shape``, ``tilt_deg``, ``sample_tilt_deg``, ``px_size_um``, ``binning``).
    energy_kv
        Accelerating voltage, kV (checked against the master pattern's).
    clahe_config
        CLAHE settings the dataset used (after the per-pattern rescale to uint8), or ``None`` for none.
    resolution_deg, semi_edge_steps
        Dictionary grid: spacing in degrees, or cubochoric density N (exactly one; default 2 deg).
    projector
        ``"keras"`` (default; XLA-compiled :class:`~ebsd_keras.simulations.projection.LambertProjector`, ~3x faster)
        or ``"kikuchipy"`` (``EBSDMasterPattern.get_patterns``) for the dictionary patterns.
    batch_size
        Dictionary patterns projected and compared at a time.
    cache_max_bytes
        Keep the preprocessed (uint8) dictionary in memory when it is at most this big (the 2 deg dictionary of
        60 x 60 patterns is 0.36 GB); otherwise it is projected again for every :meth:`dictionary_index` call.
    progress
        Show tqdm progress bars.
    """

    def __init__(
        self,
        master_pattern,
        detector,
        energy_kv: float,
        clahe_config: CLAHEConfig | None = DEFAULT_CLAHE,
        *,
        resolution_deg: float | None = None,
        semi_edge_steps: int | None = None,
        projector: str = "keras",
        batch_size: int = 2048,
        cache_max_bytes: int = 2 * 1024**3,
        progress: bool = True,
    ):
        from ebsd_keras.data.simulate import ENERGY_TOLERANCE_KV, make_detector, master_pattern_source
        from ebsd_keras.simulations.geometry import DetectorGeometry

        if projector not in ("keras", "kikuchipy"):
            raise EBSDInputError(f"projector must be 'keras' or 'kikuchipy', got {projector!r}", None, "projector")
        if clahe_config is not None and not isinstance(clahe_config, CLAHEConfig):
            raise EBSDInputError(f"clahe_config must be a CLAHEConfig or None, got {clahe_config!r}", None, "clahe")
        if resolution_deg is None and semi_edge_steps is None:
            resolution_deg = 2.0
        self.master_pattern = master_pattern
        self.source = master_pattern_source(master_pattern)
        self.energy_kv = float(energy_kv)
        mp_kv = self.source.get("energy_kv")
        if mp_kv is not None and abs(float(mp_kv) - self.energy_kv) > ENERGY_TOLERANCE_KV:
            raise EBSDInputError(
                f"master pattern is for {float(mp_kv):g} kV, the indexer was asked for {self.energy_kv:g} kV",
                self.source.get("file"),
                "energy_kv",
            )
        det = detector.to_dict() if isinstance(detector, DetectorGeometry) else dict(detector)
        self.detector_dict = det
        kwargs = {
            k: det[k] for k in ("shape", "pc", "tilt_deg", "sample_tilt_deg", "px_size_um", "binning") if k in det
        }
        self.detector = make_detector(**kwargs)
        self.shape = tuple(int(s) for s in self.detector.shape)
        self.geometry = DetectorGeometry(
            shape=self.shape,
            pc=tuple(float(p) for p in np.asarray(self.detector.pc).reshape(-1)[:3]),
            tilt_deg=float(self.detector.tilt),
            sample_tilt_deg=float(self.detector.sample_tilt),
        )
        self.clahe_config = clahe_config
        self.projector_kind = projector
        self.batch_size = int(batch_size)
        self.cache_max_bytes = int(cache_max_bytes)
        self.progress = bool(progress)
        self.dictionary_quaternions = dictionary_orientations(resolution_deg, semi_edge_steps)
        self.resolution_deg = (
            float(resolution_deg) if resolution_deg is not None else _steps_resolution_deg(semi_edge_steps)
        )
        self.semi_edge_steps = None if semi_edge_steps is None else int(semi_edge_steps)
        data = np.asarray(master_pattern.data)
        if data.ndim != 3 or data.shape[0] != 2 or data.shape[1] != data.shape[2]:
            raise EBSDInputError(
                f"expected a two-hemisphere square-Lambert master pattern (2, S, S), got {data.shape}",
                self.source.get("file"),
                "master_pattern",
            )
        self._north, self._south = data[0], data[1]
        self.npx = (data.shape[-1] - 1) // 2
        self._cache: np.ndarray | None = None
        self._cache_inv_norm: np.ndarray | None = None
        self._compiled: dict = {}
        self.timing: dict[str, float] = {}

    # -- description ---------------------------------------------------------------------------------------------
    @property
    def n_dictionary(self) -> int:
        """Number of dictionary orientations."""
        return int(len(self.dictionary_quaternions))

    @property
    def dictionary_cached(self) -> bool:
        """Whether the preprocessed dictionary is held in memory (else the next indexing projects it again)."""
        return self._cache is not None

    def describe(self) -> dict:
        """Settings for the report: dictionary size and resolution, energy, preprocessing, detector, source."""
        return {
            "dictionary_size": self.n_dictionary,
            "resolution_deg": self.resolution_deg,
            "semi_edge_steps": self.semi_edge_steps,
            "energy_kv": self.energy_kv,
            "preprocessing": {
                "rescale": "per pattern: own [min, max] -> [0, 255], uint8",
                "clahe": "none" if self.clahe_config is None else self.clahe_config.to_dict(),
            },
            "detector": self.detector_dict,
            "master_pattern": {k: self.source.get(k) for k in ("kind", "file", "embedded", "energy_kv", "npx")},
            "projector": self.projector_kind,
            "similarity": "NCC (normalised dot product of zero-mean patterns)",
        }

    # -- preprocessing and projection ------------------------------------------------------------------------------
    def preprocess(self, raw) -> np.ndarray:
        """Raw projected intensities (N, H, W) -> uint8 exactly as the dataset: per-pattern rescale, then CLAHE."""
        from ebsd_keras.data.simulate import rescale_per_pattern

        out = rescale_per_pattern(np.asarray(raw))
        return clahe(out, self.clahe_config) if self.clahe_config is not None else out

    def _keras_fn(self, dtype: str, jit: bool = True):
        """A compiled projection (B, 4) -> (B, H, W) in ``dtype`` (built once per dtype)."""
        key = (dtype, jit)
        if key not in self._compiled:
            import tensorflow as tf

            from ebsd_keras.simulations.projection import LambertProjector

            proj = LambertProjector(self.geometry, npx=self.npx)
            north = tf.constant(self._north.astype(dtype))
            south = tf.constant(self._south.astype(dtype))
            self._compiled[key] = tf.function(
                lambda q: proj(north, south, q),
                input_signature=[tf.TensorSpec((None, 4), getattr(tf, dtype))],
                jit_compile=jit,
            )
        return self._compiled[key]

    def project(self, quaternions, dtype: str = "float32") -> np.ndarray:
        """Preprocessed (uint8) patterns of orientations (N, 4), projected with the configured projector."""
        q = np.asarray(quaternions, dtype=np.float64).reshape(-1, 4)
        if self.projector_kind == "kikuchipy":
            from ebsd_keras.data.simulate import project_patterns

            parts = [
                p
                for _, p in project_patterns(
                    self.master_pattern, q, self.detector, self.energy_kv, batch_size=self.batch_size, progress=False
                )
            ]
            out = np.concatenate(parts) if parts else np.zeros((0, *self.shape), np.uint8)
            return clahe(out, self.clahe_config) if self.clahe_config is not None else out
        fn = self._keras_fn(dtype)
        out = np.empty((len(q), *self.shape), dtype=np.uint8)
        b = self.batch_size
        for start in range(0, len(q), b):
            chunk = q[start : start + b]
            n = len(chunk)
            if n < b and len(q) > b:  # pad the last batch: one compiled shape for the whole dictionary
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], b - n, axis=0)])
            out[start : start + n] = self.preprocess(np.asarray(fn(chunk.astype(dtype)))[:n])
        return out

    def _dictionary_batches(self):
        """(start, uint8 patterns, 1 / centred norms) over the dictionary: cached, or projected (and cached if small).

        The inverse norms of the zero-mean dictionary patterns are kept so that indexing needs only the uint8 -> float
        cast of the dictionary: for a zero-mean query x, x . (d - mean(d)) = x . d.
        """
        from tqdm.auto import tqdm

        if self._cache is not None:
            for start in range(0, self.n_dictionary, self.batch_size):
                stop = start + self.batch_size
                yield start, self._cache[start:stop], self._cache_inv_norm[start:stop]
            return
        size = self.n_dictionary * int(np.prod(self.shape))
        keep = size <= self.cache_max_bytes
        cache = np.empty((self.n_dictionary, *self.shape), np.uint8) if keep else None
        inv_norms = np.empty(self.n_dictionary, np.float32) if keep else None
        spent = 0.0  # projection time only: the consumer's matrix products run between the yields
        with tqdm(
            total=self.n_dictionary, unit="pattern", desc="dictionary", disable=not self.progress, dynamic_ncols=True
        ) as bar:
            for start in range(0, self.n_dictionary, self.batch_size):
                t0 = time.perf_counter()
                pats = self.project(self.dictionary_quaternions[start : start + self.batch_size])
                inv = _inverse_centred_norms(pats)
                spent += time.perf_counter() - t0
                if keep:
                    cache[start : start + len(pats)] = pats
                    inv_norms[start : start + len(pats)] = inv
                bar.update(len(pats))
                yield start, pats, inv
        self.timing["dictionary_generation_s"] = spent
        if keep:
            self._cache, self._cache_inv_norm = cache, inv_norms

    def dictionary_patterns(self) -> np.ndarray:
        """All preprocessed dictionary patterns (M, H, W) uint8 (projects them if not cached)."""
        if self._cache is None:
            parts = [p for _, p, _ in self._dictionary_batches()]
            if self._cache is None:
                return np.concatenate(parts)
        return self._cache

    # -- dictionary indexing -------------------------------------------------------------------------------------
    def dictionary_index(self, patterns) -> tuple[np.ndarray, np.ndarray]:
        """Best dictionary orientation of each pattern by NCC.

        Parameters
        ----------
        patterns
            (N, H, W) patterns (uint8, or float in [0, 1]; NCC ignores offset and scale).

        Returns
        -------
        quaternions : numpy.ndarray
            (N, 4) dictionary orientations of the best matches.
        scores : numpy.ndarray
            (N,) their NCC.
        """
        pats = as_pattern_stack(patterns, self.shape)
        exp = normalized_rows(pats)  # (N, P) float32
        best = np.full(len(exp), -np.inf, dtype=np.float32)
        best_idx = np.zeros(len(exp), dtype=np.int64)
        t0 = time.perf_counter()
        for start, dic, inv_norm in self._dictionary_batches():
            sim = exp @ dic.reshape(len(dic), -1).astype(np.float32).T  # rows of exp are zero-mean: no centring
            sim *= inv_norm[None, :]  # (N, B) NCC
            j = np.argmax(sim, axis=1)
            s = sim[np.arange(len(exp)), j]
            better = s > best
            best[better] = s[better]
            best_idx[better] = start + j[better]
        self.timing["dictionary_index_s"] = time.perf_counter() - t0
        return self.dictionary_quaternions[best_idx].copy(), best.astype(np.float64)

    def dictionary_index_kikuchipy(self, patterns) -> tuple[np.ndarray, np.ndarray]:
        """The same indexing with kikuchipy's ``EBSD.dictionary_indexing`` (NCC, keep_n=1), as a cross-check.

        The dictionary is the same preprocessed one, in a 1-D signal with a 1-D crystal map (2-D navigation shapes
        can scramble the returned order in kikuchipy 0.13).
        """
        import kikuchipy as kp
        from orix.crystal_map import CrystalMap, PhaseList
        from orix.quaternion import Rotation

        pats = as_pattern_stack(patterns, self.shape).astype(np.float32)
        dic = self.dictionary_patterns().astype(np.float32)
        rot = Rotation(self.dictionary_quaternions).flatten()
        dxmap = CrystalMap(rotations=rot, phase_list=PhaseList(self.master_pattern.phase), x=np.arange(rot.size))
        dictionary = kp.signals.EBSD(dic, xmap=dxmap, detector=self.detector)
        exp = kp.signals.EBSD(pats)
        quiet = contextlib.nullcontext() if self.progress else contextlib.redirect_stdout(io.StringIO())
        with quiet:
            xmap = exp.dictionary_indexing(dictionary, metric="ncc", keep_n=1, n_per_iteration=self.batch_size)
        q = np.asarray(xmap.rotations.data).reshape(len(pats), -1, 4)[:, 0]  # (n, k) when keep_n >= 2
        scores = np.asarray(xmap.prop["scores"]).reshape(len(pats), -1)[:, 0]
        return positive_scalar(q), scores.astype(np.float64)

    # -- refinement ----------------------------------------------------------------------------------------------
    def default_trust_region_deg(self) -> float:
        """2 deg (the paper), widened to the dictionary resolution when that is coarser."""
        return max(DEFAULT_TRUST_REGION_DEG, self.resolution_deg)

    def refine_bobyqa(
        self,
        patterns,
        q_start,
        trust_region_deg: float | None = None,
        initial_step_deg: float = 0.5,
        xtol_deg: float = 5e-4,
        max_evaluations: int = 400,
        workers: int = 8,
        desc: str = "refining",
    ) -> RefineResult:
        """Refine orientations by maximising the NCC with nlopt ``LN_BOBYQA``.

        For each pattern the orientation is ``exp(v) * q_start`` with ``v`` a rotation vector (radians) in the box
        ``|v_i| <= trust_region``; the objective is the NCC between the pattern and the projection at that
        orientation, preprocessed exactly like the dataset (rescale to uint8, then CLAHE if used).

        Parameters
        ----------
        patterns
            (N, H, W) patterns (uint8 or float).
        q_start
            (N, 4) starting orientations (e.g. from :meth:`dictionary_index`).
        trust_region_deg
            Half-width of the box per component, degrees; default :meth:`default_trust_region_deg`.
        initial_step_deg
            BOBYQA's initial trust-region radius (rhobeg), degrees.
        xtol_deg
            Stop when a step changes every component by less than this, degrees.
        max_evaluations
            Objective evaluations per pattern at most.
        workers
            Patterns optimised at once in lock-step (each projection call is a batch of this many).
        desc
            Progress bar label.

        Returns
        -------
        RefineResult
        """
        import nlopt
        from tqdm.auto import tqdm

        pats = as_pattern_stack(patterns, self.shape)
        q0 = normalize_quaternions(q_start)
        if len(q0) != len(pats):
            raise EBSDInputError(f"{len(pats)} patterns but {len(q0)} start orientations", None, "q_start")
        tr = self.default_trust_region_deg() if trust_region_deg is None else float(trust_region_deg)
        if not 0 < tr <= 20:
            raise EBSDInputError(f"trust region must be within (0, 20] degrees, got {tr}", None, "trust_region")
        bound = math.radians(tr)
        step = min(math.radians(initial_step_deg), 0.5 * bound)
        targets = normalized_rows(pats, dtype=np.float64)
        n = len(pats)
        width = max(1, min(int(workers), n))
        fn = self._keras_fn("float64")

        def project(qs):
            return normalized_rows(self.preprocess(np.asarray(fn(qs))), dtype=np.float64)

        t0 = time.perf_counter()
        bar = tqdm(total=n, unit="pattern", desc=desc, disable=not self.progress, dynamic_ncols=True)
        try:
            q_out, scores, evals = bobyqa_lockstep(
                project, q0, targets, width, bound, step, xtol_deg, max_evaluations, on_done=lambda: bar.update(1)
            )
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        return RefineResult(
            quaternion=q_out,
            score=scores,
            n_evaluations=evals,
            seconds=seconds,
            settings={
                "refiner": "bobyqa",
                "library": f"nlopt {nlopt.__version__} LN_BOBYQA",
                "objective": "NCC with the projection preprocessed like the dataset",
                "parametrisation": "rotation vector v, q = exp(v) * q_start",
                "trust_region_deg": tr,
                "initial_step_deg": math.degrees(step),
                "xtol_deg": float(xtol_deg),
                "max_evaluations": int(max_evaluations),
                "projector": "keras LambertProjector float64 (XLA)",
                "workers": width,
            },
        )

    def refine_kikuchipy(
        self,
        patterns,
        q_start,
        trust_region_deg: float | None = None,
        method: str = "minimize",
        method_kwargs: dict | None = None,
    ) -> RefineResult:
        """Refine with kikuchipy's ``EBSD.refine_orientation`` (cross-check of :meth:`refine_bobyqa`).

        kikuchipy projects the raw master pattern (no uint8 rescale, no CLAHE) and compares it by NCC, so CLAHE'd
        patterns refine slightly worse here than with :meth:`refine_bobyqa` (see docs/evaluation-notes.md).

        Parameters
        ----------
        patterns
            (N, H, W) patterns.
        q_start
            (N, 4) start orientations.
        trust_region_deg
            Half-width of the Euler-angle box, degrees (same for the three angles); default
            :meth:`default_trust_region_deg`.
        method
            kikuchipy method: "minimize" (SciPy Nelder-Mead by default) or an nlopt name such as "LN_NELDERMEAD".
        method_kwargs
            Passed to kikuchipy.

        Returns
        -------
        RefineResult
        """
        import kikuchipy as kp
        from orix.crystal_map import CrystalMap, PhaseList
        from orix.quaternion import Rotation

        pats = as_pattern_stack(patterns, self.shape).astype(np.float32)
        q0 = normalize_quaternions(q_start)
        if len(q0) != len(pats):
            raise EBSDInputError(f"{len(pats)} patterns but {len(q0)} start orientations", None, "q_start")
        tr = self.default_trust_region_deg() if trust_region_deg is None else float(trust_region_deg)
        xmap = CrystalMap(rotations=Rotation(q0), phase_list=PhaseList(self.master_pattern.phase), x=np.arange(len(q0)))
        signal = kp.signals.EBSD(pats)
        signal.axes_manager.navigation_axes[0].name = "x"  # matches the crystal map's x (no step-size warning)
        t0 = time.perf_counter()
        # kikuchipy prints its settings on stdout; keep that out of quiet runs
        quiet = contextlib.nullcontext() if self.progress else contextlib.redirect_stdout(io.StringIO())
        with quiet:
            out = signal.refine_orientation(
                xmap,
                self.detector,
                self.master_pattern,
                energy=self.energy_kv,
                method=method,
                method_kwargs=method_kwargs,
                trust_region=[tr, tr, tr],
                compute=True,
            )
        seconds = time.perf_counter() - t0
        q = positive_scalar(out.rotations.data)
        evals = np.asarray(out.prop.get("num_evals", np.zeros(len(q))), dtype=np.int64).reshape(-1)
        return RefineResult(
            quaternion=q,
            score=np.asarray(out.prop["scores"], dtype=np.float64).reshape(-1),
            n_evaluations=evals,
            seconds=seconds,
            settings={
                "refiner": "kikuchipy",
                "library": f"kikuchipy {kp.__version__} EBSD.refine_orientation",
                "method": method,
                "objective": "NCC with the raw master-pattern projection (no dataset preprocessing)",
                "trust_region_deg": tr,
            },
        )


# ----------------------------------------------------------------------------------------------------------------
# From dataset metadata
# ----------------------------------------------------------------------------------------------------------------


def master_pattern_from_metadata(metadata: dict, energy_kv: float, path=None, override=None):
    """Load the master pattern a dataset was projected from, at ``energy_kv``.

    Parameters
    ----------
    metadata
        Dataset provenance (``source.per_voltage`` entries with ``kind``, ``file``, ``embedded``, ``energy_kv``).
    energy_kv
        Voltage, kV.
    path
        The dataset file (for error messages).
    override
        An EMsoft master-pattern file to use instead (for files without provenance, or moved master patterns).

    Returns
    -------
    kikuchipy.signals.EBSDMasterPattern
    """
    from pathlib import Path

    from ebsd_keras.data.simulate import kinematical_master_pattern, load_master_pattern

    if override is not None:
        return load_master_pattern(override, energy_kv)
    source = (metadata or {}).get("source") or {}
    entries = source.get("per_voltage") or []
    match = [e for e in entries if e.get("energy_kv") is not None and abs(float(e["energy_kv"]) - energy_kv) < 0.01]
    if not match:
        raise EBSDInputError(
            f"the dataset's provenance names no master pattern for {energy_kv:g} kV; give one with --master-pattern",
            path,
            "ebsd_keras/metadata/source",
        )
    entry = match[0]
    if entry.get("kind") == "kinematical":
        return kinematical_master_pattern(energy_kv, half_size=int(entry.get("half_size", 200)))
    if entry.get("kind") == "ebsdsim-dynamical":
        # simulated, not stored: the same call as the build (minutes per voltage on a CPU; --master-pattern avoids it)
        from ebsd_keras.data.simulate import ebsdsim_master_pattern

        return ebsdsim_master_pattern(energy_kv, half_size=int(entry.get("half_size", 60)))
    if entry.get("embedded"):
        return load_master_pattern(None, energy_kv)
    file = entry.get("file")
    if not file or not Path(file).exists():
        raise EBSDInputError(
            f"the master pattern {file!r} recorded in the dataset's provenance is not here; give it with "
            "--master-pattern",
            path,
            "ebsd_keras/metadata/source",
        )
    return load_master_pattern(file, energy_kv)


def indexer_from_metadata(
    metadata: dict,
    energy_kv: float,
    *,
    resolution_deg: float | None = None,
    semi_edge_steps: int | None = None,
    path=None,
    master_pattern=None,
    clahe_config="auto",
    detector: dict | None = None,
    **kwargs,
) -> Indexer:
    """An :class:`Indexer` for a dataset, from its provenance (detector, preprocessing, master pattern).

    Parameters
    ----------
    metadata
        Dataset provenance (the ``ebsd_keras`` metadata of an EMsoft-layout file, or a TFRecord source's).
    energy_kv
        Voltage, kV.
    resolution_deg, semi_edge_steps
        Dictionary grid (see :class:`Indexer`).
    path
        The dataset (for error messages).
    master_pattern
        EMsoft master-pattern file overriding the provenance.
    clahe_config
        "auto" (from the provenance), a :class:`CLAHEConfig` or ``None`` (no CLAHE).
    detector
        Detector dictionary overriding the provenance's.
    kwargs
        Passed to :class:`Indexer`.
    """
    det = detector if detector is not None else (metadata or {}).get("detector")
    if not isinstance(det, dict) or "pc" not in det:
        raise EBSDInputError("no detector recorded in the dataset's provenance", path, "ebsd_keras/metadata/detector")
    config = clahe_from_metadata(metadata, path) if clahe_config == "auto" else clahe_config
    mp = master_pattern_from_metadata(metadata, float(energy_kv), path, master_pattern)
    return Indexer(
        mp, det, float(energy_kv), config, resolution_deg=resolution_deg, semi_edge_steps=semi_edge_steps, **kwargs
    )
