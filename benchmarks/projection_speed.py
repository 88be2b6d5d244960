"""Throughput of the keras.ops master-pattern projection against kikuchipy's ``EBSDMasterPattern.get_patterns``.

Both project the embedded EMsoft Ni 20 kV master pattern (401 x 401 per hemisphere) onto the default 60 x 60
detector (Bruker PC (0.5, 0.5, 0.6), detector tilt 10 deg, sample tilt 70 deg) for the same random orientations,
in the same process. kikuchipy is warmed up first (numba compiles on first call), our function is traced and
compiled first; each side is then timed ``repeats`` times, interleaved so that load from other processes on a
shared machine hits both alike, and the best time of each is kept.

Run: ``python benchmarks/projection_speed.py [n] [batch]``.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def _times(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def run(n: int = 2048, batch: int = 256, repeats: int = 3, seed: int = 0) -> dict:
    """Patterns per second of our projection (eager-free ``tf.function``, with and without XLA) and of kikuchipy.

    Parameters
    ----------
    n
        Patterns per timed pass.
    batch
        Patterns per call of our projection.
    repeats
        Timed passes per method (best kept).
    seed
        Seed of the random orientations.

    Returns
    -------
    dict
        ``ours_xla_pps``, ``ours_graph_pps``, ``kikuchipy_pps`` (patterns/s), ``ratio_xla`` and ``ratio_graph``
        (ours / kikuchipy), and the settings.
    """
    import kikuchipy as kp
    import tensorflow as tf
    from orix.quaternion import Rotation

    from ebsd_keras.simulations.geometry import DetectorGeometry
    from ebsd_keras.simulations.projection import LambertProjector

    mp = kp.data.nickel_ebsd_master_pattern_small(projection="lambert", hemisphere="both")
    geometry = DetectorGeometry()
    detector = kp.detectors.EBSDDetector(
        geometry.shape, pc=geometry.pc, tilt=geometry.tilt_deg, sample_tilt=geometry.sample_tilt_deg
    )
    np.random.seed(seed)  # orix draws from numpy's global generator
    rot = Rotation.random(n)
    quats = rot.data.astype(np.float32)
    north = tf.constant(mp.data[0].astype(np.float32))
    south = tf.constant(mp.data[1].astype(np.float32))
    projector = LambertProjector(geometry, npx=(mp.data.shape[-1] - 1) // 2)

    def kikuchipy_pass():
        mp.get_patterns(rot, detector, energy=20, compute=True, dtype_out=np.float32, show_progressbar=False)

    funcs = {
        jit: tf.function(lambda q: projector(north, south, q), jit_compile=jit, reduce_retracing=True)
        for jit in (True, False)
    }

    def ours_pass(jit):
        f = funcs[jit]
        for start in range(0, n, batch):
            f(quats[start : start + batch]).numpy()

    # Warm-up: numba compilation, tracing and XLA compilation are not part of the throughput.
    mp.get_patterns(rot[:batch], detector, energy=20, compute=True, dtype_out=np.float32, show_progressbar=False)
    for jit in funcs:
        ours_pass(jit)

    times = {"kikuchipy": [], "xla": [], "graph": []}
    for _ in range(repeats):
        times["kikuchipy"] += _times(kikuchipy_pass, 1)
        times["xla"] += _times(lambda: ours_pass(True), 1)
        times["graph"] += _times(lambda: ours_pass(False), 1)
    pps = {k: n / min(v) for k, v in times.items()}
    result = {
        "n": n,
        "batch": batch,
        "repeats": repeats,
        "detector": list(geometry.shape),
        "master_pattern_side": int(mp.data.shape[-1]),
        "kikuchipy_pps": pps["kikuchipy"],
        "ours_xla_pps": pps["xla"],
        "ours_graph_pps": pps["graph"],
        "ratio_xla": pps["xla"] / pps["kikuchipy"],
        "ratio_graph": pps["graph"] / pps["kikuchipy"],
    }
    print(
        f"{n} patterns {geometry.shape[0]}x{geometry.shape[1]}, batch {batch}, best of {repeats}: "
        f"kikuchipy {pps['kikuchipy']:.0f}/s | ours tf.function+XLA {pps['xla']:.0f}/s "
        f"(x{result['ratio_xla']:.2f}) | ours tf.function {pps['graph']:.0f}/s (x{result['ratio_graph']:.2f})"
    )
    return result


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    run(*args)
