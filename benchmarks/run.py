"""Run every benchmark in one process and write ``benchmarks/results.json``.

Each benchmark module exposes ``run(...) -> dict`` and measures its ratios inside one run (this machine is noisy:
only ratios measured side by side mean anything). Select some with ``--only NAME ...``; ``--quick`` shrinks sizes.

    python benchmarks/run.py                 # everything
    python benchmarks/run.py --only tfrecord_io dataset_build --quick
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: name -> (full-size kwargs, quick kwargs)
BENCHMARKS = {
    "dataset_build": ({"n": 20000}, {"n": 2000}),
    "tfrecord_io": ({"n": 50000}, {"n": 5000}),
    "projection_speed": ({"n": 2048, "batch": 256}, {"n": 512, "batch": 256}),
    "training_throughput": ({}, {"preset": "tiny", "steps": 5}),
    "evaluation_speed": ({"n": 1000, "resolution": 2.0}, {"n": 50, "resolution": 4.0, "compare_n": 10}),
}


def _machine() -> dict:
    import tensorflow as tf

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not for the README)")
    parser.add_argument("-o", "--output", type=Path, default=HERE / "results.json", help="results file")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    results = {"machine": _machine(), "quick": args.quick, "benchmarks": {}}
    for name in args.only or BENCHMARKS:
        full, quick = BENCHMARKS[name]
        print(f"=== {name}", flush=True)
        t0 = time.perf_counter()
        out = importlib.import_module(name).run(**(quick if args.quick else full))
        results["benchmarks"][name] = {"result": out, "wall_s": round(time.perf_counter() - t0, 1)}
    from ebsd_keras._atomic import atomic_path

    with atomic_path(args.output) as tmp:
        tmp.write_text(json.dumps(results, indent=2, default=float))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
