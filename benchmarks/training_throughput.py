"""Benchmark: training throughput (patterns/s) per phase, with and without XLA, and the input-pipeline ratio.

For each ``jit_compile`` setting and each phase (cvae, critic, gan) one CVAEGAN is compiled for the phase, warmed up
(tracing, XLA compilation, first-run graph optimisation), then timed over ``steps`` training steps on one synthetic
in-memory batch repeated (so only the model is measured). A "pattern" is one element of a training batch; in the gan
phase each step makes ``n_critic`` critic updates and one encoder/decoder update on its batch.

Then, on a synthetic TFRecord dataset written with the real writers: the tf.data read rate of ``make_dataset``
alone, the cvae training rate fed by that pipeline, and the ratio read rate / in-memory training rate (> 1: the
input pipeline keeps up with training).

    python benchmarks/training_throughput.py --preset compact --steps 20 --batch-size 64 --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

PHASES = ("cvae", "critic", "gan")


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


def _timed_fit(model, ds, steps: int, warmup: int, batch_size: int) -> float:
    """Patterns/s of ``steps`` steps after ``warmup`` steps (tracing and compilation excluded)."""
    model.fit(ds, epochs=1, steps_per_epoch=warmup, verbose=0, shuffle=False)
    t0 = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return steps * batch_size / (time.perf_counter() - t0)


def _make_tfrecords(tmp: str, n: int, shape, seed: int = 0) -> str:
    from ebsd_keras.io.emsoft import write_emebsd
    from ebsd_keras.io.tfrecord import write_tfrecords

    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    euler = rng.uniform([0, 0, 0], [2 * np.pi, np.pi, 2 * np.pi], size=(n, 3))
    write_emebsd(os.path.join(tmp, "train.h5"), patterns, euler, voltage_kv=20.0)
    out = os.path.join(tmp, "rec")
    write_tfrecords([("train", os.path.join(tmp, "train.h5"))], out, progress=False)
    return out


def _read_rate(ds, batches: int, batch_size: int) -> float:
    it = iter(ds)
    next(it)  # warm-up
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - t0)


def run(
    preset: str = "compact",
    steps: int = 20,
    batch_size: int = 64,
    n_critic: int = 5,
    warmup: int = 2,
    jit_options=(False, True),
    seed: int = 0,
) -> dict:
    """Measure training throughput.

    Parameters
    ----------
    preset
        Model preset (``ebsd_keras.models.presets``).
    steps
        Timed training steps per measurement.
    batch_size
        Patterns per step.
    n_critic
        Critic updates per generator update in the gan phase.
    warmup
        Untimed steps before each measurement.
    jit_options
        ``jit_compile`` values to compare.
    seed
        Seed of the synthetic data and the models.

    Returns
    -------
    dict
        ``in_memory``: ``{"jit=False": {"cvae": patterns/s, ...}, ...}``; ``tfrecord``: ``read_patterns_per_s``
        (tf.data alone), ``cvae_train_patterns_per_s`` (fed by tf.data), ``in_memory_cvae_patterns_per_s`` and
        ``read_to_train_ratio``; plus the settings and the device.
    """
    import keras
    import tensorflow as tf

    from ebsd_keras.data.pipeline import make_dataset
    from ebsd_keras.models.cvaegan import CVAEGAN
    from ebsd_keras.models.presets import get_preset

    keras.utils.set_random_seed(seed)
    config = get_preset(preset)
    batch = _synthetic_batch(batch_size, config.image_shape, seed)
    ds = tf.data.Dataset.from_tensors(batch).repeat()

    in_memory = {}
    for jit in jit_options:
        model = CVAEGAN(config=config, seed=seed)
        rates = {}
        for phase in PHASES:
            model.compile(phase=phase, n_critic=n_critic, jit_compile=jit)
            rates[phase] = _timed_fit(model, ds, steps, warmup, batch_size)
        in_memory[f"jit={jit}"] = rates

    with tempfile.TemporaryDirectory() as tmp:
        n = max(4 * batch_size, (steps + warmup + 1) * batch_size)
        data_dir = _make_tfrecords(tmp, n, config.image_shape, seed)
        rec = make_dataset(data_dir, "train", batch_size=batch_size, seed=seed, repeat=True, drop_remainder=True)
        read_rate = _read_rate(rec, max(steps, 50), batch_size)
        model = CVAEGAN(config=config, seed=seed)
        model.compile(phase="cvae", jit_compile=jit_options[0])
        train_rate = _timed_fit(model, rec, steps, warmup, batch_size)
    reference = in_memory[f"jit={jit_options[0]}"]["cvae"]
    return {
        "preset": preset,
        "steps": steps,
        "batch_size": batch_size,
        "n_critic": n_critic,
        "device": "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores visible)",
        "in_memory": in_memory,
        "tfrecord": {
            "read_patterns_per_s": read_rate,
            "cvae_train_patterns_per_s": train_rate,
            "in_memory_cvae_patterns_per_s": reference,
            "read_to_train_ratio": read_rate / reference,
        },
    }


def format_table(result: dict) -> str:
    """The results as a plain-text table."""
    lines = [
        f"preset {result['preset']}, batch {result['batch_size']}, {result['steps']} timed steps, "
        f"n_critic {result['n_critic']}, {result['device']}",
        f"{'patterns/s':<14}" + "".join(f"{p:>10}" for p in PHASES),
    ]
    for key, rates in result["in_memory"].items():
        lines.append(f"{key:<14}" + "".join(f"{rates[p]:>10.1f}" for p in PHASES))
    t = result["tfrecord"]
    lines += [
        f"tf.data read rate (TFRecords)        {t['read_patterns_per_s']:>10.0f} patterns/s",
        f"cvae training fed by TFRecords       {t['cvae_train_patterns_per_s']:>10.1f} patterns/s",
        f"read rate / in-memory cvae training  {t['read_to_train_ratio']:>10.1f}x",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="compact")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-critic", type=int, default=5)
    p.add_argument("--no-jit", action="store_true", help="skip the jit_compile=True measurements")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    result = run(
        args.preset,
        args.steps,
        args.batch_size,
        n_critic=args.n_critic,
        jit_options=(False,) if args.no_jit else (False, True),
    )
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
