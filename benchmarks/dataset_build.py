"""Benchmark: dataset building throughput (patterns/s) against kikuchipy's bare ``get_patterns``.

Measured in one run, after warming up numba (first calls compile for seconds):

- ``kikuchipy_patterns_per_s``: ``EBSDMasterPattern.get_patterns(..., dtype_out=float32, compute=True)`` for all n
  random orientations in one call, kikuchipy's default chunking (the bare projection).
- ``project_patterns_per_s``: :func:`ebsd_keras.data.simulate.project_patterns` (kikuchipy projection with one dask
  chunk per core, per-pattern rescaling to uint8), batches of ``batch_size``.
- ``clahe_patterns_per_s``: OpenCV CLAHE (clip 10, 4 x 4) alone.
- ``build_train_patterns_per_s``: the builder's streaming stage for the training split (projection + rescaling +
  CLAHE + gzip HDF5 writing), i.e. the steady-state rate that sets the time of a large build.
- ``build_end_to_end_patterns_per_s``: :func:`build_dataset` wall clock over all its patterns, fixed costs included
  (master-pattern loading, grids for val/test, split disjointness checks, file set-up).

Default geometry: the embedded EMsoft Ni 20 kV master pattern, 60 x 60 detector, PC (0.5, 0.5, 0.6), tilts 10/70 deg.

    python benchmarks/dataset_build.py --n 5000 --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def run(n: int = 5000, batch_size: int = 2048, shape=(60, 60), seed: int = 0) -> dict:
    """Measure dataset-building and bare kikuchipy projection throughput.

    Parameters
    ----------
    n
        Number of random orientations (training patterns) to build.
    batch_size
        Builder batch size.
    shape
        Detector (rows, columns).
    seed
        Orientation seed.

    Returns
    -------
    dict
        Rates in patterns per second, their ratios, and the estimated time of EMsoft's N = 100 training set.
    """
    from orix.quaternion import Rotation

    from ebsd_keras.data.build import build_dataset
    from ebsd_keras.data.preprocess import CLAHEConfig, clahe
    from ebsd_keras.data.sampling import random_orientations
    from ebsd_keras.data.simulate import load_master_pattern, make_detector, project_patterns

    mp = load_master_pattern()
    det = make_detector(shape=shape)
    q = random_orientations(n, seed=seed)
    rot = Rotation(q)

    # warm-up: numba compilation of the projection and first use of OpenCV
    warm = q[: min(64, n)]
    mp.get_patterns(Rotation(warm), det, 20.0, dtype_out=np.float32, compute=True, show_progressbar=False)
    for _, p in project_patterns(mp, warm, det, 20.0, progress=False):
        clahe(p)

    t = time.perf_counter()
    sim = mp.get_patterns(rot, det, 20.0, dtype_out=np.float32, compute=True, show_progressbar=False)
    kp_rate = n / (time.perf_counter() - t)
    del sim

    t = time.perf_counter()
    stack = [p for _, p in project_patterns(mp, q, det, 20.0, batch_size=batch_size, progress=False)]
    project_rate = n / (time.perf_counter() - t)

    pats = np.concatenate(stack)
    t = time.perf_counter()
    clahe(pats, CLAHEConfig())
    clahe_rate = n / (time.perf_counter() - t)
    del stack, pats

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        summary = build_dataset(
            os.path.join(tmp, "bench"),
            train_orientations=q,
            max_per_split={"val": max(1, n // 10), "test": max(1, n // 10)},
            detector={"shape": shape},
            batch_size=batch_size,
            progress=False,
        )
        wall = time.perf_counter() - t
    n_all = sum(s["n_patterns"] for s in summary["splits"].values())
    train_s = summary["timing"]["projection_and_writing_s"]["train@20kV"]
    train_rate = n / train_s
    end_to_end = n_all / wall

    # EMsoft's N = 100 set as the builder makes it: train grid 333,227; val grid N = 51 (44,073) and test grid
    # N = 49 (39,337), each minus the identity shared with the training grid. Fixed costs (grids, disjointness
    # checks, master pattern) measured at ~30 s on 2 cores.
    n100 = {"train": 333_227, "val": 44_072, "test": 39_336}
    total_100 = sum(n100.values())
    return {
        "n": n,
        "shape": list(shape),
        "batch_size": batch_size,
        "cpu_count": os.cpu_count(),
        "kikuchipy_patterns_per_s": round(kp_rate, 1),
        "project_patterns_per_s": round(project_rate, 1),
        "clahe_patterns_per_s": round(clahe_rate, 1),
        "build_train_patterns_per_s": round(train_rate, 1),
        "build_end_to_end_patterns_per_s": round(end_to_end, 1),
        "build_end_to_end_patterns": n_all,
        "build_end_to_end_s": round(wall, 2),
        "ratio_build_train_to_kikuchipy": round(train_rate / kp_rate, 3),
        "ratio_project_to_kikuchipy": round(project_rate / kp_rate, 3),
        "n100_patterns": n100,
        "n100_estimated_minutes": round((total_100 / train_rate + 30.0) / 60.0, 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000, help="patterns (default 5000)")
    parser.add_argument("--batch-size", type=int, default=2048, help="builder batch size (default 2048)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results here")
    args = parser.parse_args(argv)
    result = run(n=args.n, batch_size=args.batch_size)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
