"""``ebsd-keras convert``: EMsoft-layout HDF5 pattern files -> sharded TFRecord dataset for training."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from ebsd_keras.errors import EBSDInputError

DESCRIPTION = """\
Convert EMsoft-layout HDF5 pattern files (EMData/EBSD/EBSDPatterns + EulerAngles, as written by EMsoft EMEBSD or by
`ebsd-keras dataset`) into a sharded TFRecord dataset with metadata.json, ready for `make_dataset` / training.

INPUT may be:
  SPLIT=path.h5      put this file into split SPLIT (e.g. train=a.h5 val=b.h5 test=c.h5)
  path.h5            split from --split, else the file stem if it is train/val/test, else 'train'
  DIR                a directory made by `ebsd-keras dataset`: its train.h5, val.h5 and test.h5 (those present)

Units and conventions:
  - patterns: stored as uint8 (H x W rows x cols); uint8 files are kept as they are, int32/float EMsoft files are
    rescaled to 0-255 with the min/max of the whole file; then optional --clahe. All inputs must share one size;
  - Euler angles: Bunge (phi1, Phi, phi2), passive, RADIANS in the file (EMsoft 4/5). Files holding degrees
    (some EMsoft 6 programs) are refused unless --degrees convert;
  - quaternions: (q0, q1, q2, q3) computed from the Euler angles, EMsoft P = +1, q0 >= 0;
  - voltage: kV, per pattern from EMData/EBSD/AcceleratingVoltage if present, else --voltage-kv, else the file's
    NMLparameters/EBSDNameList/energymax.

CLAHE is refused for files whose provenance says it was already applied. The output directory is written under a
temporary name and appears only when the conversion succeeded; an existing one is replaced only with --overwrite.
"""

EPILOG = """\
examples:
  ebsd-keras convert data/ni20kv/ -o tfrecords/ni20kv
  ebsd-keras convert train=sim_train.h5 val=sim_val.h5 -o tfrecords/sim --gzip
  ebsd-keras convert EBSD_TEST_Ni.h5 --split test --clahe --voltage-kv 20 -o tfrecords/exp
"""

SPLIT_FILES = ("train", "val", "test")
_SPLIT_RE = re.compile(r"^([A-Za-z0-9_]+)=(.+)$")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert EMsoft HDF5 pattern files to a TFRecord dataset",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="SPLIT=file.h5, file.h5, or a dataset directory")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory (local or gs://...)")
    p.add_argument("--split", default=None, metavar="NAME", help="split for plain file inputs (default: see above)")
    p.add_argument("--shard-size", type=int, default=10000, metavar="N", help="records per shard (default 10000)")
    p.add_argument("--gzip", action="store_true", help="GZIP-compress the shards (smaller, slower to read)")
    p.add_argument("--clahe", action="store_true", help="apply CLAHE now (refused if the files already had it)")
    p.add_argument("--clip-limit", type=float, default=None, metavar="C", help="CLAHE clip limit (default 10)")
    p.add_argument("--tiles", type=int, nargs=2, default=None, metavar=("ROWS", "COLS"), help="CLAHE tiles (4 4)")
    p.add_argument("--voltage-kv", type=float, default=None, metavar="KV",
                   help="accelerating voltage in kV for files without per-pattern voltages")  # fmt: skip
    p.add_argument("--degrees", choices=("refuse", "convert"), default="refuse",
                   help="Euler angles that look like degrees: refuse (default) or convert to radians")  # fmt: skip
    p.add_argument("--chunk-size", type=int, default=4096, metavar="N", help="patterns read at a time (4096)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def resolve_inputs(inputs, split: str | None = None) -> list[tuple[str, str]]:
    """Turn CLI INPUT arguments into (split, path) pairs.

    Raises
    ------
    EBSDInputError
        A directory without train.h5/val.h5/test.h5, or a missing file.
    """
    pairs = []
    for arg in inputs:
        m = _SPLIT_RE.match(arg)
        if m and not os.path.exists(arg):  # a real path may contain '='
            pairs.append((m.group(1), m.group(2)))
            continue
        path = Path(arg)
        if path.is_dir():
            found = [(s, str(path / f"{s}.h5")) for s in SPLIT_FILES if (path / f"{s}.h5").is_file()]
            if not found:
                raise EBSDInputError(
                    "directory has none of train.h5, val.h5, test.h5 (made by `ebsd-keras dataset`)", path, "INPUT"
                )
            pairs.extend(found)
            continue
        pairs.append((split or (path.stem if path.stem in SPLIT_FILES else "train"), str(path)))
    from ebsd_keras.checks import check_input_file

    for _, path in pairs:
        check_input_file(path, "INPUT", "file")  # a directory says so ("no such file" would mislead)
    return pairs


def run(args) -> int:
    from ebsd_keras.data.preprocess import CLAHEConfig
    from ebsd_keras.io.tfrecord import write_tfrecords

    if not args.clahe and (args.clip_limit is not None or args.tiles is not None):
        raise EBSDInputError("--clip-limit/--tiles only make sense with --clahe", None, "--clahe")
    if args.shard_size < 1:
        raise EBSDInputError(f"must be >= 1, got {args.shard_size}", None, "--shard-size")
    preprocess = None
    if args.clahe:
        preprocess = CLAHEConfig(
            clip_limit=10.0 if args.clip_limit is None else args.clip_limit,
            tiles=(4, 4) if args.tiles is None else tuple(args.tiles),
        )
    pairs = resolve_inputs(args.inputs, args.split)
    meta = write_tfrecords(
        pairs,
        args.output,
        shard_size=args.shard_size,
        compression="GZIP" if args.gzip else None,
        overwrite=args.overwrite,
        preprocess=preprocess,
        voltage_kv=args.voltage_kv,
        degrees=args.degrees,
        progress=not args.quiet,
        chunk_size=args.chunk_size,
    )
    counts = ", ".join(f"{s}: {n}" for s, n in meta["count"].items())
    volts = ", ".join(f"{v:g}" for v in meta["voltages_kv"])
    shape = "x".join(str(s) for s in meta["pattern_shape"])
    print(f"wrote {args.output}: {counts} patterns ({shape}, voltages {volts} kV)")
    return 0
