"""Benchmark: EMsoft HDF5 -> TFRecord conversion and tf.data read throughput (patterns/s).

Builds a synthetic EMsoft-layout file of random uint8 patterns in a temporary directory, converts it with
``write_tfrecords`` and iterates ``make_dataset`` at batch 64 (one warm-up epoch, then timed epochs). Target: reading
>= 20,000 patterns/s on 2 CPU cores.

    python benchmarks/tfrecord_io.py --n 50000 --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def _make_h5(path: str, n: int, shape, seed: int = 0) -> None:
    from ebsd_keras.io.emsoft import write_emebsd

    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    euler = rng.uniform([0, 0, 0], [2 * np.pi, np.pi, 2 * np.pi], size=(n, 3))
    voltage = rng.choice([10.0, 15.0, 20.0, 25.0, 30.0], size=n)
    write_emebsd(path, patterns, euler, voltage_kv=voltage)


def _read_rate(data_dir: str, epochs: int, **kwargs) -> float:
    from ebsd_keras.data.pipeline import make_dataset

    ds = make_dataset(data_dir, "train", **kwargs)
    for _ in ds:  # warm-up: builds the graph, fills the OS page cache (and the tf.data cache if requested)
        pass
    t0 = time.perf_counter()
    count = 0
    for _ in range(epochs):
        for batch in ds:
            count += int(batch["pattern"].shape[0])
    return count / (time.perf_counter() - t0)


def run(n: int = 50000, shape=(60, 60), batch_size: int = 64, epochs: int = 3, shard_size: int = 10000) -> dict:
    """Measure conversion and read throughput.

    Parameters
    ----------
    n
        Number of synthetic patterns.
    shape
        Pattern shape (H, W).
    batch_size
        Batch size of the read benchmark.
    epochs
        Timed epochs per read configuration (after one warm-up epoch).
    shard_size
        Records per TFRecord shard.

    Returns
    -------
    dict
        ``convert_patterns_per_s``, ``read_patterns_per_s`` (shuffled, seeded: the training configuration),
        ``read_unshuffled_patterns_per_s``, ``read_cached_patterns_per_s``, ``read_voltage_filtered_patterns_per_s``
        (3 of 5 voltages kept) and the settings used.
    """
    import tensorflow as tf

    from ebsd_keras.io.tfrecord import write_tfrecords

    with tempfile.TemporaryDirectory(prefix="ebsd_tfrecord_bench_") as tmp:
        h5 = os.path.join(tmp, "train.h5")
        _make_h5(h5, n, shape)
        out = os.path.join(tmp, "records")
        t0 = time.perf_counter()
        write_tfrecords([("train", h5)], out, shard_size=shard_size, progress=False)
        convert = n / (time.perf_counter() - t0)
        result = {
            "n": n,
            "pattern_shape": list(shape),
            "batch_size": batch_size,
            "epochs": epochs,
            "shard_size": shard_size,
            "cpu_count": os.cpu_count(),
            "tensorflow": tf.__version__,
            "convert_patterns_per_s": convert,
            "read_patterns_per_s": _read_rate(out, epochs, batch_size=batch_size, shuffle=True, seed=0),
            "read_unshuffled_patterns_per_s": _read_rate(out, epochs, batch_size=batch_size, shuffle=False),
            "read_cached_patterns_per_s": _read_rate(
                out, epochs, batch_size=batch_size, shuffle=True, seed=0, cache=True
            ),
            "read_voltage_filtered_patterns_per_s": _read_rate(
                out, epochs, batch_size=batch_size, shuffle=True, seed=0, voltages=[10, 20, 30]
            ),
        }
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50000, help="synthetic patterns (default 50000)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per read configuration")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the result dict as JSON")
    args = parser.parse_args(argv)
    result = run(n=args.n, batch_size=args.batch_size, epochs=args.epochs)
    for key, value in result.items():
        print(f"{key:40s} {value:,.0f}" if isinstance(value, float) else f"{key:40s} {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
