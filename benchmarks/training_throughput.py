"""Benchmark: training throughput per preset and phase, the effect of XLA and mixed precision, and the input ratio.

Throughput
    For each preset (tiny, compact, physics) and phase (cvae, critic, gan) a fresh CVAEGAN is compiled for the
    phase, warmed up (tracing, XLA compilation, first-run graph optimisation), then timed step by step over
    ``steps`` training steps of one synthetic in-memory batch (only the model is measured); the figure is the
    median step time. A "pattern" is one element of a training batch; in the gan phase each step makes ``n_critic``
    critic updates and one encoder/decoder update on its batch. Every preset is measured at the training defaults
    (TrainConfig: float32, jit_compile "auto" = no XLA on the CPU); ``matrix_preset`` also with XLA and with each
    mixed-precision policy (mixed_bfloat16, mixed_float16). Each measurement records whether the losses stayed
    finite and, for mixed_float16, the dynamic loss scale reached.

Input ratio
    The tf.data read rate of ``make_dataset`` (shuffled, batch as above) on synthetic TFRecords written with the
    real writers, divided by the fastest training consumption rate measured in the same run (must be >= 10: the
    input pipeline is then never what training waits for), plus the tiny cvae training rate fed by that pipeline.

Fidelity (``fidelity_steps > 0``)
    The cvae phase of ``matrix_preset`` trained ``fidelity_steps`` steps on the real data (``data/ni20-tfr``) with
    each option (XLA, mixed_bfloat16, mixed_float16) from seed 0, against two float32 runs with seeds 0 and 1 (the
    seed-to-seed noise): validation BCE gap and mean absolute reconstruction error on 20 validation batches.

    python benchmarks/training_throughput.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

PHASES = ("cvae", "critic", "gan")
POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, REPO)


def _synthetic_batch(batch_size: int, shape, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch_size, 4)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[:, 0] = np.abs(q[:, 0])
    return {
        "pattern": rng.random((batch_size, *shape, 1), dtype=np.float32),
        "quaternion": q,
        "voltage_kv": rng.choice([10.0, 20.0, 30.0], size=batch_size).astype(np.float32),
    }


def _compiled_model(preset: str, phase: str, jit, policy: str, n_critic: int, seed: int):
    """A fresh CVAEGAN for ``phase`` under ``policy``, compiled as ebsd_keras.training compiles it."""
    import keras

    from ebsd_keras.models.cvaegan import CVAEGAN
    from ebsd_keras.training.config import TrainConfig

    cfg = TrainConfig(data_dir="-", output_dir="-", phase=phase, preset=preset, n_critic=n_critic, jit_compile=jit,
                      mixed_precision=False if policy == "float32" else policy, seed=seed).resolved()  # fmt: skip
    from ebsd_keras.training.phases import compile_model

    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = CVAEGAN(config=preset, seed=seed)
        compile_model(model, cfg)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model


def time_steps(model, ds, steps: int, warmup: int) -> tuple[list[float], dict]:
    """Seconds of each of ``steps`` training steps after ``warmup`` untimed ones, and the last step's logs."""
    model.make_train_function()
    it = iter(ds)
    logs = None
    for _ in range(warmup):
        logs = model.train_function(it)
    float(logs["loss"])  # wait for the warm-up to finish
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        logs = model.train_function(it)
        float(logs["loss"])  # the step's result is on the host: the step is done
        times.append(time.perf_counter() - t0)
    return times, {k: float(v) for k, v in logs.items()}


def measure(preset, phase, batch_size, steps, warmup, jit, policy, n_critic=5, seed=0) -> dict:
    """Throughput of one (preset, phase, jit, policy) combination on a synthetic in-memory batch."""
    import tensorflow as tf

    from ebsd_keras.models.presets import get_preset

    shape = get_preset(preset).image_shape
    ds = tf.data.Dataset.from_tensors(_synthetic_batch(batch_size, shape, seed)).repeat()
    model = _compiled_model(preset, phase, jit, policy, n_critic, seed)
    t0 = time.perf_counter()
    times, logs = time_steps(model, ds, steps, warmup)
    step = statistics.median(times)
    out = {
        "patterns_per_s": batch_size / step,
        "step_ms": 1000 * step,
        "step_ms_min": 1000 * min(times),
        "finite": all(np.isfinite(v) for v in logs.values()),
        "wall_s": time.perf_counter() - t0,
    }
    opt = model.encoder_decoder_optimizer if phase != "critic" else model.critic_optimizer
    if hasattr(opt, "dynamic_scale"):
        out["loss_scale"] = float(opt.dynamic_scale.numpy())
    return out


def interleaved(preset: str = "tiny", phases=PHASES, settings=None, rounds: int = 5, steps: int = 2,
                batch_size: int = 64, n_critic: int = 5, seed: int = 0) -> dict:  # fmt: skip
    """XLA and mixed precision against the defaults, timed round-robin so that load changes hit every setting alike.

    All settings' models of a phase are compiled and warmed up first; then each round times ``steps`` steps of each
    setting in turn. Returns ``{phase: {setting: {"patterns_per_s", "speedup"}}}`` (median over rounds; speedup
    relative to "float32" = the defaults).
    """
    import tensorflow as tf

    from ebsd_keras.models.presets import get_preset

    settings = settings or {
        "float32": (False, "float32"),
        "xla": (True, "float32"),
        "mixed_bfloat16": (False, "mixed_bfloat16"),
        "mixed_float16": (False, "mixed_float16"),
    }
    shape = get_preset(preset).image_shape
    ds = tf.data.Dataset.from_tensors(_synthetic_batch(batch_size, shape, seed)).repeat()
    out = {}
    for phase in phases:
        models, iters = {}, {}
        for name, (jit, policy) in settings.items():
            models[name] = _compiled_model(preset, phase, jit, policy, n_critic, seed)
            models[name].make_train_function()
            iters[name] = iter(ds)
            for _ in range(2):
                logs = models[name].train_function(iters[name])
            float(logs["loss"])
        times = {name: [] for name in settings}
        for _ in range(rounds):
            for name, model in models.items():
                t0 = time.perf_counter()
                for _ in range(steps):
                    logs = model.train_function(iters[name])
                float(logs["loss"])
                times[name].append((time.perf_counter() - t0) / steps)
        base = statistics.median(times["float32"])
        out[phase] = {
            name: {"patterns_per_s": batch_size / statistics.median(t), "speedup": base / statistics.median(t)}
            for name, t in times.items()
        }
        print(f"  {preset} {phase:>6} " + "  ".join(f"{k} x{v['speedup']:.2f}" for k, v in out[phase].items()),
              flush=True)  # fmt: skip
    return {"preset": preset, "batch_size": batch_size, "rounds": rounds, "steps_per_round": steps, "phases": out}


def _make_tfrecords(tmp: str, n: int, shape, seed: int = 0, shard_size: int = 2048) -> str:
    from ebsd_keras.io.emsoft import write_emebsd
    from ebsd_keras.io.tfrecord import write_tfrecords

    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    euler = rng.uniform([0, 0, 0], [2 * np.pi, np.pi, 2 * np.pi], size=(n, 3))
    write_emebsd(os.path.join(tmp, "train.h5"), patterns, euler, voltage_kv=20.0)
    out = os.path.join(tmp, "rec")
    write_tfrecords([("train", os.path.join(tmp, "train.h5"))], out, shard_size=shard_size, progress=False)
    return out


def _read_rate(ds, batches: int, batch_size: int, repeats: int = 3) -> float:
    """Best of ``repeats`` timings of ``batches`` batches (the machine is shared; the best is the least disturbed)."""
    it = iter(ds)
    next(it)  # warm-up: fills the prefetch and shuffle buffers
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        rates.append(batches * batch_size / (time.perf_counter() - t0))
    return max(rates)


def input_ratio(train_rate: float, batch_size: int, n: int, steps: int, warmup: int, seed: int = 0) -> dict:
    """tf.data read rate on synthetic TFRecords, ÷ ``train_rate``; and the tiny cvae training rate fed by tf.data."""
    import tensorflow as tf

    from ebsd_keras.data.pipeline import make_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = _make_tfrecords(tmp, n, (60, 60), seed)
        rec = make_dataset(data_dir, "train", batch_size=batch_size, seed=seed, repeat=True, drop_remainder=True)
        read = _read_rate(rec, max(100, n // batch_size // 2), batch_size)
        fed = rec.map(lambda d: {k: d[k] for k in ("pattern", "quaternion")})
        model = _compiled_model("tiny", "cvae", False, "float32", 5, seed)
        times, _ = time_steps(model, fed, steps, warmup)
        mem = tf.data.Dataset.from_tensors(_synthetic_batch(batch_size, (60, 60), seed)).repeat()
        model = _compiled_model("tiny", "cvae", False, "float32", 5, seed)
        times_mem, _ = time_steps(model, mem, steps, warmup)
    return {
        "read_patterns_per_s": read,
        "train_patterns_per_s": train_rate,
        "read_to_train_ratio": read / train_rate,
        "tiny_cvae_fed_by_tfrecords_patterns_per_s": batch_size / statistics.median(times),
        "tiny_cvae_in_memory_patterns_per_s": batch_size / statistics.median(times_mem),
        "records": n,
    }


def fidelity(settings, steps: int, batch_size: int = 64, data_dir=None, val_batches: int = 20,
             preset: str = "compact") -> dict:  # fmt: skip
    """Validation BCE gap of the cvae phase after ``steps`` steps per setting, and the seed-to-seed noise.

    ``settings``: ``{name: (jit, policy, seed)}``. Trained on the real n = 100 Ni 20 kV TFRecords (validation: the
    first ``val_batches`` batches of the "val" split, the same for every setting).
    """
    import keras

    from ebsd_keras.data.pipeline import make_dataset

    data_dir = data_dir or os.path.join(REPO, "data", "ni20-tfr")
    if not os.path.isdir(data_dir):
        return {"skipped": f"no dataset at {os.path.relpath(data_dir, REPO)} (ebsd-keras dataset + convert)"}
    keys = ("pattern", "quaternion")
    val = make_dataset(data_dir, "val", batch_size=batch_size, shuffle=False).take(val_batches)
    val = val.map(lambda d: {k: d[k] for k in keys}).cache()
    out = {}
    for name, (jit, policy, seed) in settings.items():
        train = make_dataset(data_dir, "train", batch_size=batch_size, seed=seed, repeat=True, drop_remainder=True)
        train = train.map(lambda d: {k: d[k] for k in keys})
        model = _compiled_model(preset, "cvae", jit, policy, 5, seed)
        t0 = time.perf_counter()
        model.fit(train, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
        secs = time.perf_counter() - t0
        logs = model.evaluate(val, verbose=0, return_dict=True)
        recon = np.concatenate([np.asarray(model(b)) for b in val])
        truth = np.concatenate([np.asarray(b["pattern"]) for b in val])
        out[name] = {
            "jit_compile": jit,
            "policy": policy,
            "seed": seed,
            "val_bce_gap": float(logs["bce_gap"]),
            "val_kl": float(logs["kl"]),
            "val_mean_abs_error": float(np.mean(np.abs(recon - truth))),
            "train_s": secs,
        }
        keras.backend.clear_session()
    return out


def run(
    presets=("tiny", "compact", "physics"),
    steps: int = 10,
    batch_size: int = 64,
    n_critic: int = 5,
    warmup: int = 2,
    matrix_preset: str = "compact",
    combinations=(("False", "mixed_bfloat16"), ("False", "mixed_float16"), ("True", "float32")),
    read_records: int = 20000,
    fidelity_steps: int = 0,
    seed: int = 0,
) -> dict:
    """Measure training throughput (see the module docstring).

    Parameters
    ----------
    presets
        Presets measured at the training defaults (jit_compile "auto" = no XLA on CPU, float32).
    steps, warmup
        Timed and untimed training steps per measurement.
    batch_size
        Patterns per step (every measurement).
    n_critic
        Critic updates per generator update (gan phase).
    matrix_preset
        Preset on which the ``combinations`` are measured besides its defaults (None: skip).
    combinations
        (jit_compile, policy) pairs, as strings ("False"/"True", policy name). XLA with mixed precision is left
        out by default: each is slower than the defaults on its own on the CPU.
    read_records
        Synthetic TFRecords written for the read-rate measurement.
    fidelity_steps
        Training steps of the fidelity check (0: skip).

    Returns
    -------
    dict
        ``defaults``: ``{preset: {phase: measurement}}``; ``matrix``: ``{"jit=..,policy": {phase: measurement}}``;
        ``input``: the read/train ratio; ``fidelity``; the settings and device.
    """
    import keras
    import tensorflow as tf

    defaults = {}
    for preset in presets:
        defaults[preset] = {}
        for phase in PHASES:
            defaults[preset][phase] = measure(preset, phase, batch_size, steps, warmup, False, "float32", n_critic,
                                              seed)  # fmt: skip
            print(f"  {preset:>8} {phase:>6} {defaults[preset][phase]['patterns_per_s']:9.1f} patterns/s", flush=True)
            keras.backend.clear_session()
    matrix = {}
    if matrix_preset:
        if matrix_preset in defaults:  # the defaults are the float32, no-XLA entry
            matrix["jit=False,float32"] = defaults[matrix_preset]
        for jit_name, policy in combinations:
            jit = jit_name == "True"
            key = f"jit={jit},{policy}"
            matrix[key] = {}
            for phase in PHASES:
                try:
                    m = measure(matrix_preset, phase, batch_size, steps, warmup, jit, policy, n_critic, seed)
                except Exception as exc:  # an unsupported combination is a result, not a crash of the suite
                    m = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                matrix[key][phase] = m
                rate = m.get("patterns_per_s")
                print(f"  {matrix_preset} {key:>26} {phase:>6} "
                      f"{f'{rate:9.1f} patterns/s' if rate else m.get('error')}", flush=True)  # fmt: skip
                keras.backend.clear_session()
    rates = [m["patterns_per_s"] for by_phase in defaults.values() for m in by_phase.values()]
    rates += [m["patterns_per_s"] for by_phase in matrix.values() for m in by_phase.values() if "patterns_per_s" in m]
    fastest = max(rates)
    ratio = input_ratio(fastest, batch_size, read_records, steps, warmup, seed)
    result = {
        "batch_size": batch_size,
        "steps": steps,
        "warmup": warmup,
        "n_critic": n_critic,
        "device": "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores visible)",
        "defaults": defaults,
        "matrix_preset": matrix_preset,
        "matrix": matrix,
        "input": ratio,
    }
    if fidelity_steps:
        # The defaults (float32, no XLA) with two seeds give the seed-to-seed noise; each option from seed 0.
        settings = {"float32 seed 0": (False, "float32", seed), "float32 seed 1": (False, "float32", seed + 1)}
        for key in ("jit=True,float32", "jit=False,mixed_bfloat16", "jit=False,mixed_float16"):
            jit, policy = key.split(",")
            settings[key] = (jit == "jit=True", policy, seed)
        result["fastest_finite_setting"] = _fastest_finite(matrix)
        runs = fidelity(settings, fidelity_steps, batch_size, preset=matrix_preset or "compact")
        result["fidelity"] = {"preset": matrix_preset or "compact", "steps": fidelity_steps, "runs": runs}
    return result


def _fastest_finite(matrix: dict) -> str | None:
    """The jit x policy key with the highest mean throughput over the phases, all finite."""
    best, best_rate = None, 0.0
    for key, by_phase in matrix.items():
        if all("patterns_per_s" in m and m["finite"] for m in by_phase.values()):
            rate = statistics.mean(m["patterns_per_s"] for m in by_phase.values())
            if rate > best_rate:
                best, best_rate = key, rate
    return best


def format_table(result: dict) -> str:
    """The results as plain text."""
    lines = [f"batch {result['batch_size']}, median of {result['steps']} steps, n_critic {result['n_critic']}, "
             f"{result['device']}", f"{'patterns/s':<34}" + "".join(f"{p:>10}" for p in PHASES)]  # fmt: skip
    for preset, by_phase in result["defaults"].items():
        lines.append(
            f"{preset + ' (defaults)':<34}" + "".join(f"{by_phase[p]['patterns_per_s']:>10.1f}" for p in PHASES)
        )
    for key, by_phase in result["matrix"].items():
        cells = [f"{by_phase[p]['patterns_per_s']:>10.1f}" if "patterns_per_s" in by_phase[p] else f"{'error':>10}"
                 for p in PHASES]  # fmt: skip
        lines.append(f"{result['matrix_preset'] + ' ' + key:<34}" + "".join(cells))
    r = result["input"]
    lines += [
        f"tf.data read rate                      {r['read_patterns_per_s']:>10.0f} patterns/s",
        f"fastest training consumption           {r['train_patterns_per_s']:>10.1f} patterns/s",
        f"read rate / training consumption       {r['read_to_train_ratio']:>10.1f}x (must be >= 10)",
        f"tiny cvae fed by TFRecords / in memory {r['tiny_cvae_fed_by_tfrecords_patterns_per_s']:>10.1f} / "
        f"{r['tiny_cvae_in_memory_patterns_per_s']:.1f} patterns/s",
    ]
    for name, f in result.get("fidelity", {}).get("runs", {}).items():
        if isinstance(f, dict):
            lines.append(f"fidelity {name:<24} val bce_gap {f['val_bce_gap']:.5f}  mean |error| "
                         f"{f['val_mean_abs_error']:.4f}  ({f['train_s']:.0f} s)")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny preset only, few steps")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--fidelity-steps", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        result = run(presets=("tiny",), steps=3, warmup=1, matrix_preset="tiny", read_records=4000,
                     batch_size=args.batch_size)  # fmt: skip
    else:
        result = run(steps=args.steps, batch_size=args.batch_size, fidelity_steps=args.fidelity_steps)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
