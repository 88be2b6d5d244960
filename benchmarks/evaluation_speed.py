"""Speed and floor of the fidelity evaluation: dictionary generation, dictionary indexing (DI) and refinement of
``n`` TRUE test patterns.

Test patterns: ``data/ni20/test.h5`` (the Ni 20 kV n = 100 set, test split at cubochoric N = 49) when it exists,
else a small set built here from the embedded EMsoft master pattern. The dictionary is a cubochoric grid at
``resolution`` degrees projected from the dataset's master pattern with its detector and preprocessing (CLAHE).

Printed: the timings, the floor numbers (DI and refined disorientation to the true orientation) next to the
reference of docs/evaluation-notes.md (2 deg dictionary: DI 0.99 +- 0.37 deg; refined ~0.05 deg, median ~0.016 deg,
measured there with kikuchipy's Nelder-Mead against the raw master pattern), and the check that the numpy matrix
product indexes like kikuchipy's ``EBSD.dictionary_indexing`` (and how much faster it is) on a small subset.

Run: ``python benchmarks/evaluation_speed.py [n] [resolution_deg]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: docs/evaluation-notes.md, true CLAHE'd projections, 2 deg dictionary (100-256 random orientations).
REFERENCE = {"di_mean": 0.99, "di_std": 0.37, "refined_mean": 0.056, "refined_median": 0.016}
DEFAULT_TEST = Path(__file__).resolve().parents[1] / "data" / "ni20" / "test.h5"


def _stats(x) -> str:
    x = np.asarray(x)
    return (
        f"{x.mean():.3f} +- {x.std():.3f} deg (median {np.median(x):.4f}, p95 {np.percentile(x, 95):.3f}, "
        f"max {x.max():.3f})"
    )


def _test_source(n: int, workdir: Path):
    if DEFAULT_TEST.exists():
        return DEFAULT_TEST
    from ebsd_keras.data.build import build_dataset

    out = workdir / "ni20-small"
    print(f"{DEFAULT_TEST} not found: building a small Ni 20 kV set in {out}")
    build_dataset(out, n_train=20, n_test=49, max_per_split={"train": 10, "val": 10, "test": n}, progress=False)
    return out / "test.h5"


def run(n: int = 1000, resolution: float = 2.0, compare_n: int = 100, seed: int = 0, workers: int = 16) -> dict:
    """Time the evaluation of ``n`` true test patterns with a ``resolution``-degree dictionary.

    Parameters
    ----------
    n
        True test patterns indexed and refined.
    resolution
        Dictionary spacing, degrees.
    compare_n
        Patterns indexed by kikuchipy's ``dictionary_indexing`` and refined by its ``refine_orientation`` for the
        cross-checks (0 to skip).
    seed
        Seed of the test subset.
    workers
        Patterns refined at once in lock-step.

    Returns
    -------
    dict
        Timings (s), throughputs and the floor statistics (degrees).
    """
    from ebsd_keras.indexing.dictionary import indexer_from_metadata
    from ebsd_keras.io.testset import load_test_set
    from ebsd_keras.orientation import disorientation

    out: dict = {"n": n, "resolution_deg": resolution, "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        source = _test_source(n, Path(tmp))
        t0 = time.perf_counter()
        ts = load_test_set(source, n=n, seed=seed)
        out["load_s"] = time.perf_counter() - t0
        out["test_source"] = str(source)
        print(f"test set: {source}, {len(ts)} of {ts.description['n_total']} patterns")

        ix = indexer_from_metadata(ts.metadata, 20.0, resolution_deg=resolution, progress=True)
        t0 = time.perf_counter()
        ix.dictionary_patterns()
        out["dictionary_size"] = ix.n_dictionary
        out["dictionary_generation_s"] = time.perf_counter() - t0
        rate = ix.n_dictionary / out["dictionary_generation_s"]
        print(
            f"dictionary: {ix.n_dictionary:,} patterns at {resolution:g} deg in {out['dictionary_generation_s']:.1f} s "
            f"({rate:.0f} patterns/s, projection + rescale + CLAHE)"
        )

        t0 = time.perf_counter()
        q_di, s_di = ix.dictionary_index(ts.patterns)
        out["dictionary_index_s"] = time.perf_counter() - t0
        di = disorientation(ts.quaternion, q_di)
        print(f"DI of {len(ts)} patterns: {out['dictionary_index_s']:.1f} s; error {_stats(di)}")

        r = ix.refine_bobyqa(ts.patterns, q_di, workers=workers)
        out["refine_s"] = r.seconds
        ref = disorientation(ts.quaternion, r.quaternion)
        print(
            f"BOBYQA refinement: {r.seconds:.1f} s ({r.seconds / len(ts) * 1e3:.1f} ms/pattern, "
            f"{r.n_evaluations.mean():.0f} evaluations/pattern); error {_stats(ref)}"
        )
        out["floor"] = {
            "di_mean": float(di.mean()),
            "di_std": float(di.std()),
            "di_median": float(np.median(di)),
            "di_p95": float(np.percentile(di, 95)),
            "refined_mean": float(ref.mean()),
            "refined_std": float(ref.std()),
            "refined_median": float(np.median(ref)),
            "refined_p95": float(np.percentile(ref, 95)),
            "refined_max": float(ref.max()),
        }
        total = out["dictionary_generation_s"] + out["dictionary_index_s"] + out["refine_s"]
        out["total_s"] = total
        print(f"total (dictionary + DI + refinement): {total:.1f} s")
        print(
            f"reference (evaluation-notes.md, 2 deg): DI {REFERENCE['di_mean']} +- {REFERENCE['di_std']} deg, "
            f"refined {REFERENCE['refined_mean']} deg (median {REFERENCE['refined_median']})"
        )

        if compare_n:
            m = min(compare_n, len(ts))
            pats = ts.patterns[:m]
            t0 = time.perf_counter()
            q_np, s_np = ix.dictionary_index(pats)
            t_np = time.perf_counter() - t0
            ix.progress = False
            t0 = time.perf_counter()
            q_kp, s_kp = ix.dictionary_index_kikuchipy(pats)
            t_kp = time.perf_counter() - t0
            agree = disorientation(q_np, q_kp)
            out["di_compare"] = {
                "n": m,
                "numpy_s": t_np,
                "kikuchipy_s": t_kp,
                "max_disagreement_deg": float(agree.max()),
                "max_score_difference": float(np.abs(s_np - s_kp).max()),
            }
            print(
                f"DI of {m} patterns: matrix product {t_np:.2f} s, kikuchipy dictionary_indexing {t_kp:.2f} s "
                f"(x{t_kp / t_np:.1f}); same orientation for {np.mean(agree < 1e-4) * 100:.1f} %, "
                f"max score difference {np.abs(s_np - s_kp).max():.2e}"
            )
            rk = ix.refine_kikuchipy(pats, q_di[:m])
            kerr = disorientation(ts.quaternion[:m], rk.quaternion)
            out["kikuchipy_refine"] = {
                "n": m,
                "seconds": rk.seconds,
                "mean": float(kerr.mean()),
                "median": float(np.median(kerr)),
            }
            print(
                f"kikuchipy refine_orientation (Nelder-Mead, raw master pattern) of {m}: {rk.seconds:.1f} s; "
                f"error {_stats(kerr)}; BOBYQA on the same: {_stats(ref[:m])}"
            )
    return out


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    n_arg = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    res_arg = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    run(n_arg, res_arg)
