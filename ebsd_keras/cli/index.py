"""``ebsd-keras index``: index an experimental map through a model (dictionary indexing + gradient refinement)."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Index an experimental EBSD map through a trained model: read it with kikuchipy (its h5ebsd, EDAX/Oxford/Bruker
h5ebsd, NORDIF, EMsoft EMEBSD, ...), remove the static and dynamic backgrounds (optionally average neighbours),
re-aim the model at the map's detector (projecting models: physics, field), index against a dictionary the model
generates on a cubochoric grid, then refine every orientation (and optionally the pattern centre) by Gauss-Newton
steps on the NCC through the model. The dictionary's patterns are raw (min-max rescaled) projections by default,
matched to the background-corrected patterns as kikuchipy does; --contrast model uses the model's own CLAHE (the
experimental patterns then get the same CLAHE) -- less accurate on every map measured (docs/detectors.md).

Output, written atomically (both files or neither): an orix CrystalMap HDF5 file (-o, .h5; kikuchipy and orix read
it; scores = refined NCC, di_scores = dictionary NCC, pc_x/y/z with --refine-pc; the settings and every
preprocessing step under ebsd_keras/metadata) and an .ang file for MTEX (--ang, default beside it).

examples:
  ebsd-keras index patterns.h5 -o xmap.h5
  ebsd-keras index Pattern.dat --static-background mean --average 3 --resolution 2 --refine-pc -o xmap.h5
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "index",
        help="index an experimental map through a model (dictionary indexing + refinement)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("patterns", type=Path, help="experimental map (any format kikuchipy reads)")
    p.add_argument("-o", "--output", type=Path, required=True, help="orix CrystalMap HDF5 file (.h5)")
    p.add_argument("--ang", type=Path, help=".ang file (default: the output's name with .ang)")
    p.add_argument("-m", "--model", type=Path, help="model file or folder (default: the shipped model of the kV)")
    p.add_argument("--kv", type=float, help="accelerating voltage, kV (default: the file's beam energy, else 20)")
    g = p.add_argument_group("preprocessing (kikuchipy)")
    g.add_argument("--static-background", choices=("file", "mean", "none"), default="file", help="(file)")
    g.add_argument("--dynamic-background", choices=("gaussian", "none"), default="gaussian", help="(gaussian)")
    g.add_argument("--dynamic-std", type=float, metavar="PX", help="Gaussian std, pixels (default: width / 8)")
    g.add_argument("--average", type=int, default=0, metavar="N", help="average neighbours in N x N (odd; 0: none)")
    g.add_argument("--window", choices=("circular", "rectangular", "gaussian"), default="circular", help="(circular)")
    d = p.add_argument_group("detector (default: the file's)")
    d.add_argument("--pc", type=float, nargs=3, metavar=("PCX", "PCY", "PCZ"), help="Bruker pattern centre")
    d.add_argument("--tilt", type=float, metavar="DEG", help="detector tilt, degrees")
    d.add_argument("--sample-tilt", type=float, metavar="DEG", help="sample tilt, degrees")
    d.add_argument(
        "--contrast", choices=("model", "clahe", "raw"), default="raw", help="dictionary contrast (raw; model: CLAHE)"
    )
    r = p.add_argument_group("indexing")
    r.add_argument("--resolution", type=float, default=3.0, metavar="DEG", help="dictionary grid (3 deg)")
    r.add_argument("--no-refine", action="store_true", help="dictionary indexing only")
    r.add_argument(
        "--refine-pc",
        action="store_true",
        help="then refine orientation and pattern centre jointly, per pattern (forward-mode Gauss-Newton)",
    )
    r.add_argument("--method", choices=("gauss-newton-fd", "gauss-newton", "adam"), default="gauss-newton-fd")
    r.add_argument("--iterations", type=int, help="refinement iterations at most")
    r.add_argument("--batch-size", type=int, default=256, help="dictionary patterns per model call (256)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _check(args):
    from ebsd_keras._atomic import check_writable
    from ebsd_keras.errors import EBSDInputError
    from ebsd_keras.serving.models import inspect_model_file

    if args.output.suffix.lower() not in (".h5", ".hdf5"):
        raise EBSDInputError("the crystal map is written as orix HDF5: give a .h5 file", args.output, "-o/--output")
    ang = args.ang or args.output.with_suffix(".ang")
    if ang.suffix.lower() != ".ang":
        raise EBSDInputError("must end in .ang", ang, "--ang")
    check_writable(args.output, "file", args.overwrite, "-o/--output")
    check_writable(ang, "file", args.overwrite, "--ang")
    for value, name in ((args.batch_size, "--batch-size"), (args.iterations, "--iterations")):
        if value is not None and value < 1:
            raise EBSDInputError(f"must be >= 1, got {value}", None, name)
    if args.model is not None:
        inspect_model_file(args.model)  # a bad model fails before the map is read
    if not args.patterns.exists():
        raise FileNotFoundError(f"{args.patterns}: no such file")
    return ang


def run(args) -> int:
    import numpy as np

    from ebsd_keras.indexing.workflow import IndexRequest, index_map
    from ebsd_keras.io.experimental import ExperimentalSettings

    ang = _check(args)
    outcome = index_map(
        IndexRequest(
            patterns=args.patterns,
            output=args.output,
            ang=ang,
            model=args.model,
            kv=args.kv,
            experimental=ExperimentalSettings(
                static_background=args.static_background,
                dynamic_background=args.dynamic_background,
                dynamic_std=args.dynamic_std,
                average=args.average,
                window=args.window,
                pc=None if args.pc is None else tuple(args.pc),
                tilt_deg=args.tilt,
                sample_tilt_deg=args.sample_tilt,
            ),
            contrast=args.contrast,
            resolution_deg=args.resolution,
            refine=not args.no_refine,
            refine_pc=args.refine_pc,
            method=args.method,
            iterations=args.iterations,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    )
    n = len(outcome.score)
    t = outcome.timing
    rec = outcome.record
    print(f"model {rec['model']['name']} at {rec['voltage_kv']:g} kV, detector {rec['detector']['shape']} "
          f"PC {', '.join(f'{v:.4f}' for v in rec['detector']['pc'])}")  # fmt: skip
    print(
        f"dictionary indexing: {n} patterns against {rec['dictionary']['size']} in {t['dictionary_indexing_s']:.1f} s, "
        f"NCC {np.mean(outcome.di_score):.4f}"
    )
    if "refinement_s" in t:
        print(f"refined in {t['refinement_s']:.1f} s ({1e3 * t['refinement_s'] / n:.1f} ms/pattern), "
              f"NCC {np.mean(outcome.score):.4f}")  # fmt: skip
    print(f"written to {args.output} and {ang}")
    return 0
