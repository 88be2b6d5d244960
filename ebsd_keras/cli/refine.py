"""``ebsd-keras refine``: gradient-based orientation (and pattern-centre) refinement through a trained generator."""

from __future__ import annotations

import argparse
from pathlib import Path

from ebsd_keras.cli._detector import add_detector_arguments, detector_settings

DESCRIPTION = """\
Refine the orientations of EBSD patterns by maximising the normalised cross-correlation (NCC) between each pattern
and the generator's pattern, by Gauss-Newton (Levenberg-Marquardt) steps on a rotation-vector perturbation
q = exp(v) * q_start, batches of patterns at once. The default method (gauss-newton-fd) takes the Jacobian by
forward differences at every iteration (through the physics decoder's CLAHE with its tile LUTs held fixed);
gauss-newton takes it by forward-mode differentiation through the CLAHE's surrogate gradient. Optionally also the
pattern centre (--refine-pc).

Start orientations: dictionary indexing (DI) against the master pattern, detector and preprocessing recorded in
the pattern file's provenance (or --master-pattern), or --start ANGLES (an EMsoft angle file, 'eu' degrees or 'qu',
or an EMsoft-layout .h5 whose EMData/EBSD/EulerAngles are used).

Output (atomic; nothing is written on error): an EMsoft 'eu' angle file (Bunge Euler, degrees), or with a .h5
suffix an HDF5 file with EulerAngles (radians), quaternions, NCC scores, start orientations, pattern centres and
the settings. When the pattern file's EulerAngles are the true orientations (simulated data), --truth prints the
DI and refined disorientation to them.

Detector: a projecting model (physics, field) refines patterns of any detector: when the patterns' shape differs
from the model's, the model is re-aimed at the pattern file's detector (its recorded provenance, else kikuchipy's
reading of it); --detector-from, --shape/--binning, --tilt, --sample-tilt and --contrast override it (--pc stays the
start pattern centre).

examples:
  ebsd-keras refine data/ni20/test.h5 --model saved_models/ni20-physics/model.keras -n 1000 -o refined.h5 --truth
  ebsd-keras refine patterns.h5 --model model.keras --start di_angles.txt --pc 0.5 0.5 0.6 --refine-pc -o out.txt
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "refine",
        help="gradient-based orientation / pattern-centre refinement through a trained generator",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("patterns", type=Path, help="EMsoft-layout pattern file (.h5)")
    p.add_argument("--model", type=Path, required=True, help="trained generator (.keras CVAEGAN file or model folder)")
    p.add_argument("-o", "--output", type=Path, required=True, help="refined angles: .h5, else an EMsoft 'eu' file")
    p.add_argument("--start", type=Path, help="start orientations: EMsoft angle file or .h5 (default: run DI)")
    p.add_argument("-n", "--n", type=int, default=None, help="refine a seeded random subset of N patterns")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset (0)")
    p.add_argument("--kv", type=float, help="accelerating voltage in kV (default: from the file)")
    p.add_argument(
        "--pc", type=float, nargs=3, metavar=("PCX", "PCY", "PCZ"), help="Bruker pattern centre (default: the file's)"
    )
    p.add_argument("--refine-pc", action="store_true", help="also refine the pattern centre, per pattern")
    p.add_argument(
        "--pc-only",
        action="store_true",
        help="with --refine-pc: keep the start orientations and calibrate the pattern centre alone (per pattern, a "
        "PC shift and a rotation are nearly interchangeable, so joint refinement pins the PC down poorly)",
    )
    p.add_argument(
        "--method",
        choices=("gauss-newton-fd", "gauss-newton", "adam"),
        default="gauss-newton-fd",
        help="optimiser (gauss-newton-fd: the fastest, as accurate as BOBYQA; gauss-newton: slower, a little more "
        "accurate through a trained model)",
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="iterations at most (10 gauss-newton-fd, 12 gauss-newton, 150 adam)",
    )
    p.add_argument(
        "--clahe-gradient",
        choices=("lut", "histogram"),
        default="lut",
        help="method gauss-newton: CLAHE surrogate gradient of a physics model, lut (fast) or histogram (the "
        "training one: slower, fewer outliers through a learned master pattern)",
    )
    p.add_argument(
        "--hessian-every",
        type=int,
        default=None,
        metavar="K",
        help="method gauss-newton: recompute the Gauss-Newton matrix every K steps",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="patterns refined together (64 gauss-newton-fd, else 256)"
    )
    p.add_argument("--trust-region", type=float, default=2.0, metavar="DEG", help="box half-width, degrees (2)")
    p.add_argument("--dictionary-resolution", type=float, default=2.0, metavar="DEG", help="DI grid (2 deg)")
    p.add_argument("--master-pattern", type=Path, help="EMsoft master pattern for DI (default: the provenance's)")
    p.add_argument("--truth", action="store_true", help="print errors against the file's EulerAngles")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_detector_arguments(p, pc=False)
    p.set_defaults(func=run)


def _check_args(args) -> None:
    from ebsd_keras.errors import EBSDInputError

    if args.n is not None and args.n < 1:
        raise EBSDInputError(f"must be >= 1, got {args.n}", None, "--n")
    if args.batch_size is not None and args.batch_size < 1:
        raise EBSDInputError(f"must be >= 1, got {args.batch_size}", None, "--batch-size")
    if args.iterations is not None and args.iterations < 1:
        raise EBSDInputError(f"must be >= 1, got {args.iterations}", None, "--iterations")
    if args.hessian_every is not None and args.hessian_every < 1:
        raise EBSDInputError(f"must be >= 1, got {args.hessian_every}", None, "--hessian-every")
    if args.pc_only and not args.refine_pc:
        raise EBSDInputError("--pc-only calibrates the pattern centre: give --refine-pc too", None, "--pc-only")
    if not 0 < args.trust_region <= 20:
        raise EBSDInputError(f"must be within (0, 20] degrees, got {args.trust_region}", None, "--trust-region")
    from ebsd_keras._atomic import check_writable
    from ebsd_keras.serving.models import inspect_model_file

    check_writable(args.output, "file", args.overwrite, "-o/--output")  # before DI and refinement
    if not args.patterns.exists():
        raise FileNotFoundError(f"{args.patterns}: no such file")
    inspect_model_file(args.model)  # a bad model file fails before any pattern is read
    if args.start is not None and not args.start.exists():
        raise FileNotFoundError(f"{args.start}: no such file")


def run(args) -> int:
    import numpy as np

    from ebsd_keras.evaluation.metrics import summarize
    from ebsd_keras.indexing.workflow import RefineRequest, refine_patterns
    from ebsd_keras.orientation import disorientation

    _check_args(args)
    outcome = refine_patterns(
        RefineRequest(
            patterns=args.patterns,
            model=args.model,
            output=args.output,
            start=args.start,
            n=args.n,
            seed=args.seed,
            kv=args.kv,
            pc=args.pc,
            refine_pc=args.refine_pc,
            pc_only=args.pc_only,
            method=args.method,
            iterations=args.iterations,
            hessian_every=args.hessian_every,
            trust_region_deg=args.trust_region,
            batch_size=args.batch_size,
            dictionary_resolution=args.dictionary_resolution,
            master_pattern=args.master_pattern,
            clahe_gradient=args.clahe_gradient,
            overwrite=args.overwrite,
            progress=not args.quiet,
            detector=detector_settings(args, pc_option=False),
        )
    )
    result, data = outcome.result, outcome.data
    if outcome.dictionary_size is not None:
        print(
            f"dictionary indexing: {len(data)} patterns in {outcome.dictionary_seconds:.1f} s "
            f"({outcome.dictionary_size} entries)"
        )
    print(
        f"refined {len(data)} patterns in {result.seconds:.2f} s ({1e3 * result.seconds / len(data):.2f} ms/pattern), "
        f"NCC {np.mean(result.score):.4f}"
    )
    if result.pc is not None and args.refine_pc:
        lo, hi = np.percentile(result.pc, [5, 95], axis=0)
        print(
            "pattern centre: mean "
            + " ".join(f"{v:.5f}" for v in result.pc.mean(axis=0))
            + " (5-95 %: "
            + ", ".join(f"{a:.4f}..{b:.4f}" for a, b in zip(lo, hi, strict=True))
            + ")"
        )
    if args.truth:
        for name, q in (("start", outcome.q_start), ("refined", result.quaternion)):
            s = summarize(disorientation(data.quaternion, q))
            print(f"{name}: {s['mean']:.4f} ± {s['std']:.4f} deg (median {s['median']:.4f}, p95 {s['p95']:.4f})")
    print(f"written to {args.output}")
    return 0
