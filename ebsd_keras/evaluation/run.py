"""The fidelity evaluation of a pattern generator against a held-out test set, and its report.

:func:`evaluate_generator` works on a plain generator callable::

    generate_fn(quaternion (B, 4) float32, voltage_kv (B,) float32 kV) -> (B, H, W) float in [0, 1]

so any model can be evaluated (a CNN decoder, a physics decoder, ...). :func:`model_generator` builds one from a
loaded ``CVAEGAN`` (deterministic path z = 0, or prior samples), :func:`true_pattern_generator` from the test set
itself (the trivial generator: it must reach every floor exactly).

Computed (paper-method.md, "Metrics and the paper's results"):

- BCE per pattern, generated vs truth (eq 7), next to the optimal BCE (entropy of the targets) and their gap;
- the fraction of pixels within 0.15 of the truth (distribution, KDE figure), pixel-value histograms, NCC;
- dictionary indexing (DI) and refinement (nlopt BOBYQA; kikuchipy as a cross-check) of the generated patterns:
  disorientation to the input orientation — and the same on the **true** patterns (the floor);
- for a model: the critic's orientation (and voltage) prediction error on real and generated patterns, parameter
  counts and generation throughput (batch 256).

:func:`write_report` writes ``report.json`` (every number, the configuration and package versions), ``report.md``
(:mod:`~ebsd_keras.evaluation.markdown`: tables beside the paper's Table 1 and the targets) and PNG figures
(:mod:`~ebsd_keras.evaluation.figures`), atomically. The voltage analyses (the wrong-voltage table of the paper's
Fig 5, band width vs kV) are :mod:`ebsd_keras.evaluation.voltage`.

When the true patterns themselves index badly (:data:`FLOOR_WARNING_DEG`), the dictionary is too coarse for the
test set and every indexing number is meaningless: :func:`floor_warnings` says so, in ``results["warnings"]``, the
log and ``report.md``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from ebsd_keras._versions import package_versions
from ebsd_keras.errors import EBSDInputError
from ebsd_keras.evaluation.metrics import (
    disorientation_stats,
    pixel_metrics,
    summarize,
)
from ebsd_keras.io.testset import TestSet, load_test_set
from ebsd_keras.serialization import jsonable

__all__ = [
    "PAPER_TABLE1",
    "TARGETS",
    "model_generator",
    "true_pattern_generator",
    "evaluate_generator",
    "EvaluationSettings",
    "write_report",
    "floor_warnings",
    "assume_defaults",
    "FLOOR_WARNING_DEG",
]

logger = logging.getLogger(__name__)

#: The paper's test-set numbers (Ding and De Graef 2023, Table 1, CVAE; DI dictionary at cubochoric n = 100).
PAPER_TABLE1 = {
    "bce": 0.541,
    "optimal_bce": 0.503,
    "bce_gap": 0.038,
    "pixels_within_15pct": 0.80,  # "> 80 %"
    "di_error_deg": {"mean": 0.650, "std": 0.257},
    "refined_error_deg": {"mean": 0.142, "std": 0.061},
}
#: Targets for a compact model (refined orientation error, pixels within 15 %, BCE gap).
TARGETS = {"refined_error_deg_mean_max": 0.10, "pixels_within_15pct_min": 0.95, "bce_gap_max": 0.01}

PIXEL_TOLERANCE = 0.15
#: A true-pattern floor (mean DI or refined error of the test set's own patterns) above this, degrees, means the
#: dictionary is too coarse: patterns are matched to pseudo-symmetric neighbours, not refined to the truth.
FLOOR_WARNING_DEG = 1.0
#: A mean DI error of the true patterns below this, degrees, means the test orientations are dictionary grid points
#: (a test grid inside the dictionary's): DI is then exact for the truth, a degenerate floor.
DEGENERATE_FLOOR_DEG = 0.01
REFINERS = ("bobyqa", "kikuchipy", "both")  # the values of Refiner
_VERSION_PACKAGES = (
    "numpy",
    "scipy",
    "h5py",
    "tensorflow",
    "keras",
    "kikuchipy",
    "orix",
    "nlopt",
    "matplotlib",
    "tqdm",
)
_GRID_COLUMNS = 8
_HIST_BINS = 64


# ----------------------------------------------------------------------------------------------------------------
# Test sets
# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------------------------------------------


def model_generator(model, sample: bool = False, seed: int = 0):
    """A ``generate_fn`` for a ``CVAEGAN``: the deterministic path (z = 0) or prior samples z ~ N(0, I).

    Parameters
    ----------
    model
        A model with ``generate(attributes, z=...)`` and ``model_config`` (``use_voltage``, ``latent_dim``).
    sample
        Draw z from the prior (seeded numpy generator: reproducible for the same call sequence).
    seed
        Seed of the prior samples.

    Returns
    -------
    callable
        ``fn(quaternion (B, 4), voltage_kv (B,)) -> (B, H, W)`` float32 in [0, 1] (compiled with ``tf.function``).
    """
    import tensorflow as tf

    use_voltage = bool(model.model_config.use_voltage)
    latent = int(model.model_config.latent_dim)

    @tf.function(reduce_retracing=True)
    def generate(q, v, z):
        attrs = {"quaternion": q}
        if use_voltage:
            attrs["voltage_kv"] = v
        return model.generate(attrs, z=z)

    rng = np.random.default_rng(seed)

    def fn(quaternion, voltage_kv):
        q = np.asarray(quaternion, dtype=np.float32).reshape(-1, 4)
        v = np.asarray(voltage_kv, dtype=np.float32).reshape(-1)
        shape = (len(q), latent)
        z = rng.standard_normal(shape).astype(np.float32) if sample else np.zeros(shape, np.float32)
        out = np.asarray(generate(q, v, z))
        return out[..., 0] if out.ndim == 4 else out

    return fn


def true_pattern_generator(test_set: TestSet):
    """A ``generate_fn`` that returns the test set's own patterns (/ 255) for its (orientation, voltage) pairs.

    Evaluating it must give the trivial answers (BCE = optimal BCE, 100 % pixels within 15 %, NCC 1, DI and
    refinement errors equal to the true-pattern floor): a check of the evaluation itself.
    """
    table = {}
    for i, (q, v) in enumerate(zip(test_set.quaternion, test_set.voltage_kv, strict=True)):
        table[_key(q, v)] = i

    def fn(quaternion, voltage_kv):
        q = np.asarray(quaternion, dtype=np.float32).reshape(-1, 4)
        v = np.asarray(voltage_kv, dtype=np.float32).reshape(-1)
        try:
            rows = [table[_key(a, b)] for a, b in zip(q, v, strict=True)]
        except KeyError:
            raise EBSDInputError("orientation not in the test set", None, "quaternion") from None
        return test_set.patterns[rows].astype(np.float32) / 255.0

    return fn


def _key(q, v) -> bytes:
    return np.asarray(q, dtype=np.float32).tobytes() + np.float32(v).tobytes()


def _run_generator(generate_fn, test_set: TestSet, batch_size: int, progress: bool, desc: str) -> np.ndarray:
    """All generated patterns (n, H, W) float64 in [0, 1], validated."""
    from tqdm.auto import tqdm

    q = test_set.quaternion.astype(np.float32)
    v = test_set.voltage_kv.astype(np.float32)
    out = np.empty((len(q), *test_set.shape), dtype=np.float64)
    with tqdm(total=len(q), unit="pattern", desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(q), batch_size):
            stop = min(start + batch_size, len(q))
            g = np.asarray(generate_fn(q[start:stop], v[start:stop]), dtype=np.float64)
            if g.ndim == 4 and g.shape[-1] == 1:
                g = g[..., 0]
            if g.shape != (stop - start, *test_set.shape):
                raise EBSDInputError(
                    f"generator returned shape {g.shape}, expected {(stop - start, *test_set.shape)}",
                    None,
                    "generated",
                )
            if not np.isfinite(g).all():
                raise EBSDInputError("generator returned NaN or Inf", None, "generated")
            if g.min() < -1e-3 or g.max() > 1 + 1e-3:
                raise EBSDInputError(
                    f"generator values span [{g.min():.4g}, {g.max():.4g}], expected [0, 1]", None, "generated"
                )
            out[start:stop] = np.clip(g, 0.0, 1.0)
            bar.update(stop - start)
    return out


def _throughput(generate_fn, test_set: TestSet, batch: int = 256, min_seconds: float = 1.0) -> dict:
    """Patterns per second of ``generate_fn`` at ``batch`` (after one warm-up call)."""
    reps = int(math.ceil(batch / len(test_set)))
    q = np.tile(test_set.quaternion.astype(np.float32), (reps, 1))[:batch]
    v = np.tile(test_set.voltage_kv.astype(np.float32), reps)[:batch]
    generate_fn(q, v)
    calls, t0 = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - t0 < min_seconds:
        np.asarray(generate_fn(q, v))
        calls += 1
    dt = time.perf_counter() - t0
    return {"batch_size": batch, "calls": calls, "seconds": dt, "patterns_per_s": calls * batch / dt}


# ----------------------------------------------------------------------------------------------------------------
# Metrics on sets
# ----------------------------------------------------------------------------------------------------------------


def _pixel_histogram(truth: np.ndarray, generated: np.ndarray | None) -> dict:
    edges = np.linspace(0.0, 1.0, _HIST_BINS + 1)
    out = {"bin_edges": edges.tolist(), "real": np.histogram(truth, bins=edges)[0].tolist()}
    if generated is not None:
        out["generated"] = np.histogram(generated, bins=edges)[0].tolist()
    return out


def _critic_metrics(model, patterns: np.ndarray, test_set: TestSet, batch: int = 256) -> dict:
    """The critic/classifier's orientation (and voltage) prediction error and mean score on patterns in [0, 1]."""
    qs, vs, scores = [], [], []
    for start in range(0, len(patterns), batch):
        x = patterns[start : start + batch, ..., None].astype(np.float32)
        out = model.critic(x, training=False)
        qs.append(np.asarray(out["quaternion"], dtype=np.float64))
        scores.append(np.asarray(out["score"], dtype=np.float64).reshape(-1))
        if "voltage_kv" in out:
            vs.append(np.asarray(out["voltage_kv"], dtype=np.float64).reshape(-1))
    angles, stats = disorientation_stats(test_set.quaternion, np.concatenate(qs))
    res = {
        "orientation_error_deg": stats,
        "fraction_within_2deg": float(np.mean(angles <= 2.0)),
        "fraction_within_5deg": float(np.mean(angles <= 5.0)),
        "score": summarize(np.concatenate(scores)),
    }
    if vs:
        err = np.concatenate(vs) - test_set.voltage_kv
        res["voltage_error_kv"] = summarize(err)
        res["voltage_mae_kv"] = float(np.mean(np.abs(err)))
    return res


def _indexers(test_set: TestSet, resolution_deg, semi_edge_steps, master_pattern, clahe_config, progress) -> dict:
    """One :class:`Indexer` per voltage of the test set."""
    from ebsd_keras.indexing.dictionary import indexer_from_metadata

    out = {}
    for kv in np.unique(np.round(test_set.voltage_kv, 3)):
        out[float(kv)] = indexer_from_metadata(
            test_set.metadata,
            float(kv),
            resolution_deg=resolution_deg,
            semi_edge_steps=semi_edge_steps,
            path=test_set.description.get("path"),
            master_pattern=master_pattern,
            clahe_config=clahe_config,
            progress=progress,
        )
    return out


def _index_and_refine(
    sets: dict,
    test_set: TestSet,
    indexers: dict,
    refine: bool,
    refiner: str,
    kikuchipy_subset: int,
    trust_region_deg,
    workers: int,
) -> tuple[dict, dict, dict]:
    """DI (+ refinement) of every named pattern set, one pass over each voltage's dictionary for all sets.

    Returns (stats per set, per-pattern arrays per set, timing).
    """
    names = list(sets)
    n = len(test_set)
    keys = np.round(test_set.voltage_kv, 3)
    found = {k: {"di": np.zeros((n, 4)), "di_score": np.zeros(n)} for k in names}
    if refine:
        for k in names:
            found[k].update(refined=np.zeros((n, 4)), refined_score=np.zeros(n), evaluations=np.zeros(n))
    kp_rows = np.arange(n) if refiner == "kikuchipy" else np.arange(min(n, kikuchipy_subset))
    use_kp = refine and refiner in ("kikuchipy", "both") and len(kp_rows) > 0
    if use_kp:
        for k in names:
            found[k].update(kp=np.full((n, 4), np.nan), kp_score=np.full(n, np.nan))
    timing = {
        "dictionary_generation_s": 0.0,
        "dictionary_index_s": 0.0,
        "refine_bobyqa_s": 0.0,
        "refine_kikuchipy_s": 0.0,
    }
    settings = {}
    for kv, indexer in indexers.items():
        rows = np.flatnonzero(keys == round(kv, 3))
        stack = np.concatenate([sets[k][rows] for k in names])
        t0 = time.perf_counter()
        fresh = not indexer.dictionary_cached  # this pass also projects the dictionary
        q_di, s_di = indexer.dictionary_index(stack)
        gen = indexer.timing.get("dictionary_generation_s", 0.0) if fresh else 0.0
        timing["dictionary_generation_s"] += gen
        timing["dictionary_index_s"] += time.perf_counter() - t0 - gen
        for j, k in enumerate(names):
            part = slice(j * len(rows), (j + 1) * len(rows))
            found[k]["di"][rows], found[k]["di_score"][rows] = q_di[part], s_di[part]
        if refine and refiner in ("bobyqa", "both"):
            r = indexer.refine_bobyqa(
                stack, q_di, trust_region_deg=trust_region_deg, workers=workers, desc=f"BOBYQA {kv:g} kV"
            )
            timing["refine_bobyqa_s"] += r.seconds
            settings["bobyqa"] = r.settings
            for j, k in enumerate(names):
                part = slice(j * len(rows), (j + 1) * len(rows))
                found[k]["refined"][rows] = r.quaternion[part]
                found[k]["refined_score"][rows] = r.score[part]
                found[k]["evaluations"][rows] = r.n_evaluations[part]
        if use_kp:
            sub = np.intersect1d(rows, kp_rows)
            if len(sub):
                kp_stack = np.concatenate([sets[k][sub] for k in names])
                kp_start = np.concatenate([found[k]["di"][sub] for k in names])
                r = indexer.refine_kikuchipy(kp_stack, kp_start, trust_region_deg=trust_region_deg)
                timing["refine_kikuchipy_s"] += r.seconds
                settings["kikuchipy"] = {**r.settings, "n_patterns_per_set": int(len(kp_rows))}
                for j, k in enumerate(names):
                    part = slice(j * len(sub), (j + 1) * len(sub))
                    found[k]["kp"][sub], found[k]["kp_score"][sub] = r.quaternion[part], r.score[part]
                    if refiner == "kikuchipy":
                        found[k]["refined"][sub] = r.quaternion[part]
                        found[k]["refined_score"][sub] = r.score[part]
                        found[k]["evaluations"][sub] = r.n_evaluations[part]
    stats, per = {}, {}
    for k in names:
        f = found[k]
        di_err, di_stats = disorientation_stats(test_set.quaternion, f["di"])
        stats[k] = {"di_error_deg": di_stats, "di_score": summarize(f["di_score"])}
        per[k] = {"di_error_deg": di_err, "di_score": f["di_score"]}
        if refine:
            ref_err, ref_stats = disorientation_stats(test_set.quaternion, f["refined"])
            stats[k].update(
                refined_error_deg=ref_stats,
                refined_score=summarize(f["refined_score"]),
                refine_evaluations=summarize(f["evaluations"]),
            )
            per[k].update(refined_error_deg=ref_err, refined_score=f["refined_score"])
        if use_kp:
            ok = np.isfinite(f["kp_score"])
            kp_err, kp_stats = disorientation_stats(test_set.quaternion[ok], f["kp"][ok])
            stats[k]["kikuchipy_refined_error_deg"] = kp_stats
            stats[k]["kikuchipy_refined_score"] = summarize(f["kp_score"][ok])
            kp_per = np.full(n, np.nan)
            kp_per[ok] = kp_err
            per[k]["kikuchipy_refined_error_deg"] = kp_per
            if refine and refiner == "both":
                _, agree = disorientation_stats(f["refined"][ok], f["kp"][ok])
                stats[k]["bobyqa_vs_kikuchipy_deg"] = agree
    timing["settings"] = settings
    return stats, per, timing


def _versions() -> dict:
    return package_versions(_VERSION_PACKAGES)


def _model_info(model, label: str) -> dict:
    info = {"label": label, "class": type(model).__name__, "params": int(model.count_params())}
    for part in ("encoder", "decoder", "critic"):
        sub = getattr(model, part, None)
        if sub is not None:
            info[f"{part}_params"] = int(sub.count_params())
    cfg = getattr(model, "model_config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        info["config"] = cfg.to_dict()
    return info


# ----------------------------------------------------------------------------------------------------------------
# The evaluation
# ----------------------------------------------------------------------------------------------------------------


Refiner = Literal["bobyqa", "kikuchipy", "both"]
Preprocessing = Literal["auto", "clahe", "none"]


@dataclass(frozen=True)
class EvaluationSettings:
    """Settings of :func:`evaluate_generator` (validated on construction).

    Attributes
    ----------
    n
        Number of test patterns (seeded random subset); ``None`` for all.
    dictionary_resolution
        DI dictionary spacing in degrees. Default: the training split's cubochoric density when the provenance
        records it (the paper's choice), else 2 degrees.
    refine
        Refine the DI orientations.
    seed
        Seed of the test subset (and of prior samples made by the caller's generators).
    label
        Name of the evaluated generator in the report.
    split
        Split of a directory test source.
    refiner
        "bobyqa" (default: all patterns), "kikuchipy" (all patterns with kikuchipy's refinement) or "both" (BOBYQA
        on all, kikuchipy on the first ``kikuchipy_subset`` as a cross-check).
    semi_edge_steps
        Dictionary as a cubochoric density instead of ``dictionary_resolution``.
    trust_region_deg
        Refinement box half-width, degrees (default 2, or the dictionary resolution if coarser).
    kikuchipy_subset
        Patterns per set refined by kikuchipy with ``refiner="both"``.
    master_pattern
        EMsoft master-pattern file overriding the provenance's.
    preprocessing
        "auto" (from the provenance), "clahe" (clip 10, 4 x 4) or "none".
    batch_size
        Generator batch size.
    workers
        Patterns refined at once in lock-step (see :meth:`Indexer.refine_bobyqa`).
    throughput_seconds
        Minimum time spent measuring the generation throughput (batch 256).
    overwrite
        Replace an existing ``out_dir``.
    progress
        Progress bars.

    Raises
    ------
    EBSDInputError
        An unknown refiner or preprocessing.
    """

    n: int | None = 1000
    dictionary_resolution: float | None = None
    refine: bool = True
    seed: int = 0
    label: str = "model"
    split: str = "test"
    refiner: Refiner = "bobyqa"
    semi_edge_steps: int | None = None
    trust_region_deg: float | None = None
    kikuchipy_subset: int = 100
    master_pattern: object = None
    preprocessing: Preprocessing = "auto"
    batch_size: int = 256
    workers: int = 16
    throughput_seconds: float = 1.0
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.refiner not in REFINERS:
            raise EBSDInputError(f"refiner must be one of {', '.join(REFINERS)}, got {self.refiner!r}", None, "refiner")
        if self.preprocessing not in get_args(Preprocessing):
            raise EBSDInputError(
                f"preprocessing must be auto, clahe or none, got {self.preprocessing!r}", None, "preprocessing"
            )


def evaluate_generator(
    generate_fn,
    test_source,
    settings: EvaluationSettings | None = None,
    *,
    model=None,
    variants: dict | None = None,
    indexers: dict | None = None,
    out_dir=None,
    **keywords,
) -> dict:
    """Evaluate a pattern generator against a held-out test set (and the true-pattern floor).

    Parameters
    ----------
    generate_fn
        ``fn(quaternion (B, 4) float32, voltage_kv (B,) float32 kV) -> (B, H, W)`` in [0, 1], or ``None`` to
        evaluate only the true-pattern floor.
    test_source
        EMsoft-layout HDF5 file, dataset directory or TFRecord directory (see :func:`load_test_set`), or a
        :class:`TestSet`.
    settings
        :class:`EvaluationSettings` (test subset, dictionary, refiner, preprocessing, batch sizes, output); or give
        its fields as keywords (``evaluate_generator(fn, test, n=100, refiner="both")``).
    model
        The ``CVAEGAN`` behind ``generate_fn``: adds the critic's classification errors, parameter counts.
    variants
        More generators ``{name: generate_fn}`` (e.g. prior samples) evaluated on the pixel metrics only.
    indexers
        Pre-built ``{kV: Indexer}`` (reuse across evaluations of the same test set; dictionary options are then
        ignored).
    out_dir
        Write the report there (:func:`write_report`) when given.

    Returns
    -------
    dict
        Every number (see :func:`write_report`); keys starting with "_" hold arrays for the figures.
    """
    from ebsd_keras.data.preprocess import CLAHEConfig

    t_start = time.perf_counter()
    if settings is not None and keywords:
        raise TypeError("give EvaluationSettings or keywords, not both")
    st = settings if settings is not None else EvaluationSettings(**keywords)
    n, seed, split, label, refine, refiner = st.n, st.seed, st.split, st.label, st.refine, st.refiner
    dictionary_resolution, semi_edge_steps, trust_region_deg = (
        st.dictionary_resolution,
        st.semi_edge_steps,
        st.trust_region_deg,
    )
    kikuchipy_subset, master_pattern, preprocessing = st.kikuchipy_subset, st.master_pattern, st.preprocessing
    batch_size, workers, throughput_seconds = st.batch_size, st.workers, st.throughput_seconds
    overwrite, progress = st.overwrite, st.progress
    if out_dir is not None and Path(out_dir).exists() and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists (use --overwrite to replace it)")
    t0 = time.perf_counter()
    ts = test_source if isinstance(test_source, TestSet) else load_test_set(test_source, n, seed, split)
    timing = {"load_s": time.perf_counter() - t0}
    truth = ts.patterns.astype(np.float64) / 255.0

    generated = None
    if generate_fn is not None:
        t0 = time.perf_counter()
        generated = _run_generator(generate_fn, ts, batch_size, progress, f"generating ({label})")
        timing["generate_s"] = time.perf_counter() - t0

    # Pixel metrics
    floor_pixel, floor_per = pixel_metrics(truth, truth, PIXEL_TOLERANCE)
    pixel = {"true": floor_pixel}
    per_pattern = {"index": ts.index, "optimal_bce": floor_per["optimal_bce"]}
    if generated is not None:
        pixel[label], gen_per = pixel_metrics(truth, generated, PIXEL_TOLERANCE)
        per_pattern.update({f"{label}_{k}": v for k, v in gen_per.items() if k != "optimal_bce"})
    for name, fn in (variants or {}).items():
        g = _run_generator(fn, ts, batch_size, progress, f"generating ({name})")
        pixel[name], var_per = pixel_metrics(truth, g, PIXEL_TOLERANCE)
        per_pattern.update({f"{name}_{k}": v for k, v in var_per.items() if k in ("bce", "within_15pct", "ncc")})

    # Dictionary indexing and refinement of the generated and the true patterns
    dictionary_resolution, semi_edge_steps, basis = _dictionary_choice(
        ts, dictionary_resolution, semi_edge_steps, given=indexers is not None
    )
    clahe_choice = {"auto": "auto", "clahe": CLAHEConfig(), "none": None}[preprocessing]
    if indexers is None:
        indexers = _indexers(ts, dictionary_resolution, semi_edge_steps, master_pattern, clahe_choice, progress)
    sets = {"true": ts.patterns}
    if generated is not None:
        sets = {label: generated, "true": ts.patterns}
    idx_stats, idx_per, idx_timing = _index_and_refine(
        sets, ts, indexers, refine, refiner, kikuchipy_subset, trust_region_deg, workers
    )
    refine_settings = idx_timing.pop("settings")
    warnings = floor_warnings(idx_stats.get("true"), basis)
    for w in warnings:
        logger.warning(w)
    timing.update(idx_timing)
    for k, per in idx_per.items():
        per_pattern.update({f"{k}_{m}": v for m, v in per.items()})

    results = {
        "format": "ebsd_keras.evaluation",
        "format_version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "label": label,
        "true_only": generated is None,
        "config": {
            "n": n,
            "seed": int(seed),
            "split": split,
            "refine": bool(refine),
            "refiner": refiner,
            "refine_settings": refine_settings,
            "pixel_tolerance": PIXEL_TOLERANCE,
            "bce_eps": 1e-7,
            "dictionary_basis": basis,
            "dictionary": {f"{kv:g}": ix.describe() for kv, ix in indexers.items()},
            "variants": sorted(variants or {}),
            "preprocessing_choice": preprocessing,
        },
        "test_set": {
            **ts.description,
            "voltages_kv": sorted({float(v) for v in np.round(ts.voltage_kv, 3)}),
            "training_semi_edge_steps": ts.training_semi_edge_steps,
        },
        "pixel": pixel,
        "pixel_histogram": _pixel_histogram(truth, generated),
        "indexing": idx_stats,
        "warnings": warnings,
        "paper": PAPER_TABLE1,
        "targets": TARGETS,
    }
    if generated is not None:
        results["target_check"] = _target_check(results, label)
    if model is not None:
        t0 = time.perf_counter()
        results["model"], results["critic"] = _model_info(model, label), _critics(model, truth, generated, ts)
        timing["critic_s"] = time.perf_counter() - t0
    if generate_fn is not None:
        results.setdefault("model", {"label": label})["throughput"] = _throughput(
            generate_fn, ts, min_seconds=throughput_seconds
        )
    timing["total_s"] = time.perf_counter() - t_start
    results["timing"] = timing
    results["versions"] = _versions()
    results["per_pattern"] = per_pattern
    rows = np.linspace(0, len(ts) - 1, min(_GRID_COLUMNS, len(ts))).astype(int)
    results["_figures"] = {
        "truth": truth[rows],
        "generated": None if generated is None else generated[rows],
        "euler_deg": _euler_titles(ts.quaternion[rows]),
    }
    if out_dir is not None:
        write_report(results, out_dir, overwrite=overwrite)
    return results


def _dictionary_choice(ts: TestSet, resolution_deg, semi_edge_steps, given: bool):
    """(resolution_deg, semi_edge_steps, basis): the training density when recorded (the paper's choice), else
    2 degrees; ``basis`` says which in the report."""
    if resolution_deg is not None or semi_edge_steps is not None or given:
        return resolution_deg, semi_edge_steps, "given"
    if ts.training_semi_edge_steps is not None:
        steps = ts.training_semi_edge_steps
        return None, steps, f"training density (cubochoric N = {steps})"
    logger.warning("no training density recorded: dictionary at 2 degrees")
    return 2.0, None, "2 deg (no training density recorded in the test set's provenance)"


def _critics(model, truth, generated, ts: TestSet) -> dict:
    """The critic's classification errors on the real (and the generated) patterns."""
    out = {"real": _critic_metrics(model, truth, ts)}
    if generated is not None:
        out["generated"] = _critic_metrics(model, generated, ts)
    return out


def _file_crystal(path) -> tuple[int, float] | None:
    """(space group, a in nm) of an EMsoft file's ``CrystalData``, or None when it has none."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            sg = int(np.asarray(f["CrystalData/SpaceGroupNumber"]).reshape(-1)[0])
            a = float(np.asarray(f["CrystalData/LatticeParameters"]).reshape(-1)[0])
    except (OSError, KeyError, ValueError, IndexError):
        return None
    return sg, a


def assume_defaults(test_set: TestSet, model=None, master_pattern=None, preprocessing: str = "auto", need_model=True):
    """Defaults for evaluating a user's own EMsoft file, which carries no ebsd_keras provenance.

    - no model: the shipped model for the file's voltages (:func:`~ebsd_keras.serving.models.default_model_path`);
    - no master pattern in the provenance and none given: the embedded EMsoft Ni 20 kV master pattern, when the
      file's crystal (``CrystalData``: Fm-3m, a = 0.35236 nm) and voltage (20 kV) match it;
    - ``preprocessing="auto"`` with none recorded: CLAHE (clip 10, 4 x 4 tiles), the shipped models' own.

    Returns
    -------
    dict
        ``model``, ``master_pattern``, ``preprocessing`` to use and ``assumed``: one line saying what was assumed
        (None when nothing was).
    """
    from ebsd_keras.io.emsoft import NICKEL_CRYSTAL

    said = []
    meta = test_set.metadata or {}
    volts = np.unique(np.round(np.asarray(test_set.voltage_kv, dtype=np.float64), 3))
    if model is None and need_model:
        from ebsd_keras.serving.models import default_model_path

        model = default_model_path(volts)
        kv = ", ".join(f"{v:g}" for v in volts)
        said.append(f"model {model.parent.name} (the shipped model for {kv} kV)")
    path = test_set.description.get("path")
    if master_pattern is None and not meta.get("source") and path and test_set.description.get("format") == "emsoft-h5":
        crystal = _file_crystal(path)
        ni_a = float(NICKEL_CRYSTAL["lattice_parameters"][0])
        nickel = crystal is not None and crystal[0] == NICKEL_CRYSTAL["space_group"] and abs(crystal[1] - ni_a) < 1e-3
        if nickel and len(volts) == 1 and abs(volts[0] - 20.0) < 0.01:
            from ebsd_keras.data.simulate import embedded_master_pattern_path

            master_pattern = embedded_master_pattern_path()
            said.append("master pattern: the embedded EMsoft Ni 20 kV one (the file's crystal and voltage match it)")
    if preprocessing == "auto" and meta.get("preprocessing") is None:
        preprocessing = "clahe"
        said.append("preprocessing: CLAHE, clip 10, 4 x 4 tiles (the file records none)")
    return {
        "model": model,
        "master_pattern": master_pattern,
        "preprocessing": preprocessing,
        "assumed": ("assumed: " + "; ".join(said)) if said else None,
    }


def floor_warnings(true_stats: dict | None, basis: str = "") -> list[str]:
    """Warnings about the true-pattern floor: the test set's own patterns must index to (near) their orientations.

    Parameters
    ----------
    true_stats
        ``results["indexing"]["true"]``: ``di_error_deg`` and, if refined, ``refined_error_deg`` summaries
        (mean, std, ... in degrees).
    basis
        How the dictionary was chosen (said in the warning).

    Returns
    -------
    list of str
        One sentence when the floor's mean exceeds :data:`FLOOR_WARNING_DEG` (dictionary too coarse), one when the
        true patterns' DI error is below :data:`DEGENERATE_FLOOR_DEG` (test orientations on the dictionary grid);
        else empty.
    """
    if not true_stats:
        return []
    out = []
    di_mean = (true_stats.get("di_error_deg") or {}).get("mean")
    if di_mean is not None and di_mean < DEGENERATE_FLOOR_DEG:
        out.append(
            f"the true patterns dictionary-index to {di_mean:.4f} deg on average (less than {DEGENERATE_FLOOR_DEG:g} "
            f"deg): the test orientations lie on the dictionary's grid ({basis or 'as given'}), so dictionary "
            "indexing is exact for them and rewards a generator for landing on grid points; use a dictionary "
            "resolution that is not the test set's sampling (--dictionary-resolution, degrees)"
        )
    key = "refined_error_deg" if true_stats.get("refined_error_deg") else "di_error_deg"
    stats = true_stats.get(key) or {}
    mean, std = stats.get("mean"), stats.get("std", float("nan"))
    if mean is None or not mean > FLOOR_WARNING_DEG:
        return out
    what = "refined" if key == "refined_error_deg" else "dictionary-indexed"
    return out + [
        f"the true patterns themselves {what} to {mean:.2f} deg ± {std:.2f} deg (more than {FLOOR_WARNING_DEG:g} deg): "
        f"the dictionary ({basis or 'as given'}) is too coarse for this test set, so the indexing errors measure the "
        "dictionary, not the generator; use a finer --dictionary-resolution (degrees)"
    ]


def _euler_titles(q) -> list[str]:
    from ebsd_keras.orientation import quaternion_to_euler

    e = quaternion_to_euler(q, degrees=True)
    return [f"({a:.0f}, {b:.0f}, {c:.0f})" for a, b, c in e]


def _target_check(results: dict, label: str) -> dict:
    pix = results["pixel"][label]
    out = {
        "bce_gap": {"value": pix["bce_gap"]["mean"], "max": TARGETS["bce_gap_max"]},
        "pixels_within_15pct": {"value": pix["within_15pct"]["mean"], "min": TARGETS["pixels_within_15pct_min"]},
    }
    out["bce_gap"]["pass"] = out["bce_gap"]["value"] <= TARGETS["bce_gap_max"]
    out["pixels_within_15pct"]["pass"] = out["pixels_within_15pct"]["value"] >= TARGETS["pixels_within_15pct_min"]
    ref = results["indexing"][label].get("refined_error_deg")
    if ref is not None:
        out["refined_error_deg_mean"] = {
            "value": ref["mean"],
            "max": TARGETS["refined_error_deg_mean_max"],
            "pass": ref["mean"] <= TARGETS["refined_error_deg_mean_max"],
        }
    return out


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def write_report(results: dict, out_dir, overwrite: bool = False) -> Path:
    """Write ``report.json``, ``report.md`` and PNG figures to ``out_dir`` (created atomically).

    Parameters
    ----------
    results
        From :func:`evaluate_generator` (or a loaded ``report.json``: the pattern grid then is left out).
    out_dir
        Report directory; must not exist unless ``overwrite``.
    overwrite
        Replace an existing directory (only once the new one is complete).

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    from ebsd_keras._atomic import atomic_dir
    from ebsd_keras.evaluation.figures import write_figures
    from ebsd_keras.evaluation.markdown import report_markdown
    from ebsd_keras.serving.pattern_grid import save_pattern_grid

    out_dir = Path(out_dir)
    doc = jsonable(results, drop_private=True)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / "report.json").write_text(json.dumps(doc, indent=1) + "\n")
        (tmp / "report.md").write_text(report_markdown(doc))
        figs = results.get("_figures") or {}
        if figs.get("truth") is not None:
            rows = {"real": figs["truth"]}
            if figs.get("generated") is not None:
                rows[results["label"]] = figs["generated"]
                rows["difference"] = figs["generated"] - figs["truth"]
            save_pattern_grid(
                tmp / "patterns.png",
                rows,
                titles=figs.get("euler_deg"),
                diff_rows=("difference",),
                title="Bunge Euler angles (phi1, Phi, phi2) in degrees",
            )
        write_figures(doc, tmp)
    return out_dir
