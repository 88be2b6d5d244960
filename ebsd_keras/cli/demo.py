"""``ebsd-keras demo``: the main job on the embedded default, end to end, in a few minutes on 2 CPU cores."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DESCRIPTION = """\
Run the whole data path on the embedded default — the real EMsoft 5 Ni 20 kV dynamical master pattern that ships
inside the kikuchipy wheel (no download):

  1. build a small dataset (cubochoric grids, disjoint train/val/test densities, 60 x 60 detector, PC (0.5, 0.5,
     0.6), detector tilt 10 deg, sample tilt 70 deg, CLAHE clip 10 / 4 x 4 tiles) as EMsoft-layout HDF5;
  2. convert it to sharded TFRecords and stream it back with tf.data, reporting the read rate;
  3. write a PNG grid of test patterns and a summary (summary.json) to DIR.

Every file goes under DIR; an existing DIR is replaced only with --overwrite.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the main job on the embedded Ni 20 kV EMsoft master pattern",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-o", "--output", type=Path, default=Path("demo_output"), help="output directory (demo_output)")
    p.add_argument("--density", type=int, default=20, help="training grid, cubochoric semi-edge steps (20)")
    p.add_argument("--max-train", type=int, default=4000, help="at most this many training patterns (4000)")
    p.add_argument("--max-test", type=int, default=256, help="at most this many val/test patterns each (256)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling and shuffling (0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from ebsd_keras._atomic import atomic_path
    from ebsd_keras.data.build import build_dataset
    from ebsd_keras.data.pipeline import make_dataset
    from ebsd_keras.evaluation.figures import save_pattern_grid
    from ebsd_keras.io.tfrecord import write_tfrecords
    from ebsd_keras.orientation import quaternion_to_euler

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out}: already exists (use --overwrite to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    summary = {}

    t0 = time.perf_counter()
    print("[1/3] building a small Ni 20 kV dataset from the embedded EMsoft master pattern")
    built = build_dataset(
        out / "dataset",
        n_train=args.density,
        max_per_split={"train": args.max_train, "val": args.max_test, "test": args.max_test},
        seed=args.seed,
        overwrite=True,
    )
    summary["dataset"] = {s: v["n_patterns"] for s, v in built["splits"].items()}
    summary["dataset_seconds"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    print("[2/3] converting to TFRecords")
    write_tfrecords(
        [
            ("train", out / "dataset" / "train.h5"),
            ("val", out / "dataset" / "val.h5"),
            ("test", out / "dataset" / "test.h5"),
        ],
        out / "tfrecords",
        overwrite=True,
    )
    summary["convert_seconds"] = round(time.perf_counter() - t0, 2)
    ds = make_dataset(out / "tfrecords", split="train", batch_size=64, seed=args.seed, cache=True)
    n = sum(int(b["pattern"].shape[0]) for b in ds)  # first pass fills the cache
    t0 = time.perf_counter()
    for _ in range(3):
        for _b in ds:
            pass
    summary["tfdata_read_patterns_per_s"] = round(3 * n / (time.perf_counter() - t0))

    print("[3/3] writing a grid of test patterns")
    test = next(iter(make_dataset(out / "tfrecords", split="test", batch_size=8, shuffle=False)))
    euler = np.rad2deg(quaternion_to_euler(test["quaternion"].numpy().astype(np.float64)))
    titles = [f"({e[0]:.0f}, {e[1]:.0f}, {e[2]:.0f})" for e in euler]
    save_pattern_grid(out / "test_patterns.png", {"EMsoft Ni 20 kV": test["pattern"].numpy()}, titles=titles)
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"outputs in {out}/: dataset/ (EMsoft HDF5), tfrecords/, test_patterns.png, summary.json")
    return 0
