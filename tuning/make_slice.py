"""Reduced random slice of an `ebsd-keras dataset` directory, as TFRecords, for a CPU-sized search.

The splits of `ebsd-keras dataset` are stored in cubochoric order (neighbouring rows have neighbouring orientations),
so "the first N patterns" would cover a small corner of orientation space; this takes seeded uniform random rows.

    PYTHONPATH=. python tuning/make_slice.py data/ni20 runs/tuning-data/ni20-slice --train 20000 --val 512 --test 1000
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import h5py
import numpy as np

from ebsd_keras.io.emsoft import write_emebsd
from ebsd_keras.io.tfrecord import write_tfrecords


def take_rows(path: Path, n: int, seed: int):
    """(patterns uint8 (n, H, W), euler (n, 3) radians): n seeded random rows, read block-wise."""
    with h5py.File(path, "r") as f:
        pats, eul = f["EMData/EBSD/EBSDPatterns"], f["EMData/EBSD/EulerAngles"]
        total = pats.shape[0]
        rows = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
        out_p, out_e, block = [], [], 20000
        for start in range(0, total, block):
            sel = rows[(rows >= start) & (rows < start + block)] - start
            if sel.size:
                out_p.append(pats[start : start + block][sel])
                out_e.append(eul[start : start + block][sel])
    return np.concatenate(out_p), np.concatenate(out_e)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="directory with train.h5, val.h5, test.h5")
    p.add_argument("output", type=Path, help="TFRecord output directory")
    p.add_argument("--train", type=int, default=20000)
    p.add_argument("--val", type=int, default=512)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--voltage-kv", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = []
        for i, (split, n) in enumerate((("train", a.train), ("val", a.val), ("test", a.test))):
            patterns, euler = take_rows(a.source / f"{split}.h5", n, a.seed + i)
            h5 = Path(tmp) / f"{split}.h5"
            write_emebsd(h5, patterns, euler, voltage_kv=a.voltage_kv)
            inputs.append((split, h5))
            print(f"{split}: {len(patterns)} random patterns of {a.source / f'{split}.h5'}")
        write_tfrecords(inputs, a.output, progress=False)
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
