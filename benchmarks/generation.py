"""Generation throughput of the shipped model (Keras and its SavedModel) against kikuchipy's projection, and the
SavedModel's single-pattern latency.

All in one process, on the same random orientations, batch 256, deterministic path (z = 0):

- ``keras``: :func:`ebsd_keras.generate`'s compiled function on the ``.keras`` model (``tf.function``, no XLA — the
  same graph the SavedModel holds); ``keras_xla``: the same with XLA (``jit_compile=True``);
- ``savedmodel``: ``tf.saved_model.load(saved_models/ni20-physics/<latest>)`` signature ``serving_default``;
- ``kikuchipy``: ``EBSDMasterPattern.get_patterns`` of the embedded EMsoft Ni 20 kV master pattern (raw float32
  projections), and ``kikuchipy_clahe``: the same + per-pattern 8-bit rescale + OpenCV CLAHE — what the model's
  output corresponds to (the dataset's preprocessing).

Each is warmed up (tracing, XLA compilation, numba compilation), then timed ``repeats`` times, interleaved so that
load from other processes hits all alike; the best time of each is kept. Ratios are ours / kikuchipy.
Latency: ``serving_default`` on one pattern, ``latency_calls`` calls after warm-up, p50 / p95 in milliseconds.

Run: ``python benchmarks/generation.py [--quick]``; ``benchmarks/run.py`` calls :func:`run`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO / "saved_models" / "ni20-physics"


def _latest_version(folder: Path) -> Path | None:
    versions = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
    return max(versions, key=lambda p: int(p.name)) if versions else None


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 1e6


def run(
    quick: bool = False,
    n: int | None = None,
    batch: int = 256,
    repeats: int | None = None,
    latency_calls: int | None = None,
    seed: int = 0,
) -> dict:
    """Patterns per second of the Keras model, its SavedModel and kikuchipy; SavedModel latency.

    Parameters
    ----------
    quick
        Small sizes (a smoke run): n 512, 2 repeats, 50 latency calls (else 2048, 3, 300).
    n
        Orientations per timed pass.
    batch
        Patterns per call (256).
    repeats
        Timed passes per method (best kept).
    latency_calls
        Single-pattern calls timed for the latency percentiles.
    seed
        Seed of the random orientations.

    Returns
    -------
    dict
        ``patterns_per_s`` (keras, keras_xla, savedmodel, kikuchipy, kikuchipy_clahe), ``ratios``,
        ``savedmodel_latency_ms`` (p50, p95, mean), the model and SavedModel paths and sizes (MB), settings.
    """
    import kikuchipy as kp
    import tensorflow as tf
    from orix.quaternion import Rotation

    from ebsd_keras.data.preprocess import clahe
    from ebsd_keras.data.simulate import rescale_per_pattern
    from ebsd_keras.serving.export import export_saved_model
    from ebsd_keras.serving.generate import _generator_fn
    from ebsd_keras.serving.models import load_generator

    n = n or (512 if quick else 2048)
    repeats = repeats or (2 if quick else 3)
    latency_calls = latency_calls or (50 if quick else 300)
    model_path = MODEL_DIR / "model.keras"
    model, _ = load_generator(model_path)
    saved = _latest_version(MODEL_DIR)
    if saved is None:  # not exported yet: export to a scratch folder
        saved = export_saved_model(model, REPO / "benchmarks" / "out" / "ni20-physics", overwrite=True)
    module = tf.saved_model.load(str(saved))
    serving = module.signatures["serving_default"]

    np.random.seed(seed)  # orix draws from numpy's global generator
    rot = Rotation.random(n)
    q = rot.data.astype(np.float32)
    q = np.where(q[:, :1] < 0, -q, q)
    v = np.full(n, 20.0, np.float32)
    batches = [(q[s : s + batch], v[s : s + batch]) for s in range(0, n, batch)]

    keras_fn = _generator_fn(model)
    xla_fn = tf.function(lambda qq: model.generate({"quaternion": qq}), jit_compile=True, reduce_retracing=True)
    mp = kp.data.nickel_ebsd_master_pattern_small(projection="lambert", hemisphere="both")
    cfg = model.model_config
    detector = kp.detectors.EBSDDetector(
        tuple(cfg.image_shape),
        pc=cfg.physics_detector_pc,
        tilt=cfg.physics_detector_tilt_deg,
        sample_tilt=cfg.physics_sample_tilt_deg,
    )

    def keras_pass():
        for qq, vv in batches:
            keras_fn(qq, vv)

    def xla_pass():
        for qq, _ in batches:
            np.asarray(xla_fn(tf.constant(qq)))

    def savedmodel_pass():
        for qq, vv in batches:
            serving(quaternion=tf.constant(qq), voltage_kv=tf.constant(vv))["patterns"].numpy()

    def kikuchipy_pass(with_clahe: bool):
        for s in range(0, n, batch):
            p = mp.get_patterns(
                rot[s : s + batch], detector, energy=20, compute=True, dtype_out=np.float32, show_progressbar=False
            ).data
            if with_clahe:
                clahe(rescale_per_pattern(p.reshape(-1, *cfg.image_shape)))

    passes = {
        "keras": keras_pass,
        "keras_xla": xla_pass,
        "savedmodel": savedmodel_pass,
        "kikuchipy": lambda: kikuchipy_pass(False),
        "kikuchipy_clahe": lambda: kikuchipy_pass(True),
    }
    for fn in passes.values():  # warm-up: tracing, XLA and numba compilation are not throughput
        fn()
    times = {k: [] for k in passes}
    for _ in range(repeats):
        for name, fn in passes.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    pps = {k: n / min(t) for k, t in times.items()}

    one_q, one_v = tf.constant(q[:1]), tf.constant(v[:1])
    for _ in range(10):
        serving(quaternion=one_q, voltage_kv=one_v)["patterns"].numpy()
    lat = []
    for i in range(latency_calls):
        qi = tf.constant(q[i % n : i % n + 1])
        t0 = time.perf_counter()
        serving(quaternion=qi, voltage_kv=one_v)["patterns"].numpy()
        lat.append((time.perf_counter() - t0) * 1e3)
    lat = np.asarray(lat)

    result = {
        "n": n,
        "batch": batch,
        "repeats": repeats,
        "model": str(model_path.relative_to(REPO)),
        "savedmodel": str(Path(saved).resolve().relative_to(REPO)) if str(saved).startswith(str(REPO)) else str(saved),
        "model_size_mb": round(_size_mb(model_path), 2),
        "savedmodel_size_mb": round(_size_mb(Path(saved)), 2),
        "patterns_per_s": {k: round(x, 1) for k, x in pps.items()},
        "ratios": {
            "keras_vs_kikuchipy": pps["keras"] / pps["kikuchipy"],
            "keras_xla_vs_kikuchipy": pps["keras_xla"] / pps["kikuchipy"],
            "savedmodel_vs_kikuchipy": pps["savedmodel"] / pps["kikuchipy"],
            "savedmodel_vs_kikuchipy_clahe": pps["savedmodel"] / pps["kikuchipy_clahe"],
            "keras_vs_kikuchipy_clahe": pps["keras"] / pps["kikuchipy_clahe"],
            "savedmodel_vs_keras": pps["savedmodel"] / pps["keras"],
        },
        "savedmodel_latency_ms": {
            "calls": int(latency_calls),
            "p50": float(np.percentile(lat, 50)),
            "p95": float(np.percentile(lat, 95)),
            "mean": float(lat.mean()),
        },
    }
    p, r, lt = result["patterns_per_s"], result["ratios"], result["savedmodel_latency_ms"]
    print(
        f"{n} patterns, batch {batch}, best of {repeats}: keras {p['keras']:.0f}/s (x{r['keras_vs_kikuchipy']:.2f}) | "
        f"keras+XLA {p['keras_xla']:.0f}/s (x{r['keras_xla_vs_kikuchipy']:.2f}) | SavedModel {p['savedmodel']:.0f}/s "
        f"(x{r['savedmodel_vs_kikuchipy']:.2f}) | kikuchipy {p['kikuchipy']:.0f}/s | kikuchipy+CLAHE "
        f"{p['kikuchipy_clahe']:.0f}/s\n"
        f"SavedModel single-pattern latency: p50 {lt['p50']:.2f} ms, p95 {lt['p95']:.2f} ms"
    )
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
