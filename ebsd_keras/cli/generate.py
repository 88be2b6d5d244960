"""``ebsd-keras generate``: patterns for orientations (and voltages) from a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ebsd_keras.cli._detector import DETECTOR_HELP, add_detector_arguments, detector_settings

DESCRIPTION = """\
Generate EBSD patterns with a trained model (default: chosen per pattern, each voltage alone picking the shipped
model made for it — saved_models/ni20-physics (EMsoft Ni 20 kV, 60 x 60) at 20 kV, the default voltage; the
voltage-aware saved_models/ni-voltage-physics (10-30 kV) at other voltages — so a pattern never changes with the
other voltages of a request; one line says which model serves which voltages, from what data).

Orientations (exactly one source):
  --euler PHI1 PHI PHI2 [...]   Bunge Euler angles, radians (--degrees for degrees); several triples allowed
  --quaternion Q0 Q1 Q2 Q3 [...] quaternions (normalised if needed)
  --angles FILE                 an EMsoft angle file ('eu' degrees / 'qu') or EMEBSD HDF5 file (its angles and
                                voltages)
Voltage: --kv V (all orientations) or --kv V1 V2 ... (one per orientation); default the file's voltages, else 20.
A voltage outside the model's trained range warns (a single-voltage model then still makes its own voltage's
patterns), or is refused with --strict.

Output by suffix, written atomically: .h5/.hdf5 EMsoft EMEBSD layout (uint8 patterns, Euler radians, voltages;
opens with kikuchipy.load), .npy float32 (M, H, W) in [0, 1], .npz (patterns + angles + voltages), .png grid.

""" + DETECTOR_HELP + """
examples:
  ebsd-keras generate --euler 2.0944 0.7854 1.0472 -o one.png
  ebsd-keras generate --euler 120 45 60 0 0 0 --degrees --samples 4 --seed 1 -o samples.png
  ebsd-keras generate --angles data/ni20/test.h5 -o generated_test.h5 --batch-size 512
  ebsd-keras generate --euler 120 45 60 --degrees --shape 480 640 --pc 0.47 0.46 0.625 --tilt 10 -o big.png
  ebsd-keras generate --angles di.txt --detector-from patterns.h5 --contrast raw -o dictionary.h5
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate patterns for orientations and voltages with a trained model",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--euler", type=float, nargs="+", metavar="ANGLE", help="Bunge Euler triples (radians)")
    src.add_argument("--quaternion", type=float, nargs="+", metavar="Q", help="quaternions (q0 q1 q2 q3) ...")
    src.add_argument("--angles", type=Path, metavar="FILE", help="EMsoft angle file or EMEBSD HDF5 file")
    p.add_argument("--degrees", action="store_true", help="--euler angles are in degrees")
    p.add_argument("--kv", type=float, nargs="+", metavar="KV", help="voltage(s) in kV (one, or one per orientation)")
    p.add_argument("-m", "--model", type=Path, help="a .keras model or model folder (default: the shipped model)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output file: .h5, .hdf5, .npy, .npz or .png")
    p.add_argument("--samples", type=int, metavar="K", help="K prior samples per orientation (default: z = 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior samples (0)")
    p.add_argument("--batch-size", type=int, default=256, help="patterns per model call (256)")
    p.add_argument("--strict", action="store_true", help="refuse voltages outside the model's trained range")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_detector_arguments(p)
    p.set_defaults(func=run)


def _triples(values, width: int, option: str):
    from ebsd_keras.errors import EBSDInputError

    if values is None:
        return None
    if len(values) % width:
        raise EBSDInputError(f"{len(values)} numbers are not a whole number of {width}-tuples", None, option)
    return [values[i : i + width] for i in range(0, len(values), width)]


def run(args) -> int:
    import sys
    import warnings

    from ebsd_keras.serving.generate import VoltageRangeWarning, generate

    kv = None if args.kv is None else (args.kv[0] if len(args.kv) == 1 else args.kv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", VoltageRangeWarning)
        result = generate(
            args.model,
            euler=_triples(args.euler, 3, "--euler"),
            quaternion=_triples(args.quaternion, 4, "--quaternion"),
            angles=args.angles,
            voltage_kv=kv,
            degrees=args.degrees,
            samples=args.samples,
            seed=args.seed,
            batch_size=args.batch_size,
            strict=args.strict,
            output=args.output,
            overwrite=args.overwrite,
            progress=False if args.no_progress else None,
            detector=detector_settings(args),
        )
    for w in caught:
        if issubclass(w.category, VoltageRangeWarning):
            print(f"ebsd-keras generate: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    info = result.info
    print(info["model_line"])
    print(f"{len(result)} patterns ({info['path']}) in {info['generation_seconds']:.1f} s -> {result.output}")
    return 0
