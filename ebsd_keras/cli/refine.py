"""``ebsd-keras refine``: gradient-based orientation (and pattern-centre) refinement through a trained generator."""

from __future__ import annotations

import argparse
from pathlib import Path

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
    p.add_argument("--model", type=Path, required=True, help="trained generator (.keras CVAEGAN)")
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


def read_start(path: Path, n_total: int, rows):
    """Start quaternions (len(rows), 4) from an EMsoft angle file or an EMsoft-layout .h5 with one row per pattern."""
    import h5py
    import numpy as np

    from ebsd_keras.errors import EBSDInputError
    from ebsd_keras.io.emsoft import read_angle_file
    from ebsd_keras.orientation import check_euler_radians, euler_to_quaternion

    if path.suffix.lower() in (".h5", ".hdf5"):
        try:
            with h5py.File(path, "r") as f:
                if "EMData/EBSD/EulerAngles" not in f:
                    raise EBSDInputError("no EulerAngles dataset", path, "EMData/EBSD/EulerAngles")
                euler = np.asarray(f["EMData/EBSD/EulerAngles"][()], dtype=np.float64)
        except OSError as exc:
            raise EBSDInputError(f"not a readable HDF5 file: {exc}", path, "file") from None
        if euler.ndim != 2 or euler.shape[1] != 3:
            raise EBSDInputError(f"expected (N, 3) Euler angles, got {euler.shape}", path, "EMData/EBSD/EulerAngles")
        q = euler_to_quaternion(check_euler_radians(euler, path, "EMData/EBSD/EulerAngles"))
        field = "EMData/EBSD/EulerAngles"
    else:
        q = read_angle_file(path)
        field = "line 2"
    if len(q) != n_total:
        raise EBSDInputError(f"{len(q)} start orientations for {n_total} patterns", path, field)
    return q[rows]


def _write(path: Path, result, q_start, rows, settings: dict, overwrite: bool) -> None:
    import json

    import h5py
    import numpy as np

    from ebsd_keras._atomic import atomic_path
    from ebsd_keras.io.emsoft import write_angle_file
    from ebsd_keras.orientation import quaternion_to_euler

    euler = quaternion_to_euler(result.quaternion)
    if path.suffix.lower() not in (".h5", ".hdf5"):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path}: already exists (use --overwrite to replace it)")
        write_angle_file(path, euler)
        return
    with atomic_path(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        g = f.create_group("EMData/EBSD")
        g.create_dataset("EulerAngles", data=euler.astype(np.float32))
        g.create_dataset("numangles", data=np.array([len(euler)], np.int32))
        r = f.create_group("refinement")
        r.create_dataset("quaternion", data=result.quaternion)
        r.create_dataset("start_quaternion", data=q_start)
        r.create_dataset("score", data=result.score)
        r.create_dataset("pattern_index", data=np.asarray(rows, np.int64))
        r.create_dataset("iterations", data=np.asarray(result.iterations, np.int64))
        if result.pc is not None:
            r.create_dataset("pc", data=result.pc)
        f.create_group("ebsd_keras").attrs["metadata"] = json.dumps(settings, default=str)


def run(args) -> int:
    import numpy as np

    from ebsd_keras.checks import check_voltage_kv
    from ebsd_keras.errors import EBSDInputError
    from ebsd_keras.evaluation.metrics import summarize
    from ebsd_keras.indexing.generator import model_refinement_generator
    from ebsd_keras.indexing.refinement import check_pattern_centres, refine_gradient
    from ebsd_keras.io.testset import load_test_set
    from ebsd_keras.orientation import disorientation
    from ebsd_keras.serving.models import load_model

    _check_args(args)
    data = load_test_set(args.patterns, n=args.n, seed=args.seed)
    n_total = int(data.description.get("n_total", len(data)))
    kv = float(args.kv) if args.kv is not None else float(np.median(data.voltage_kv))
    check_voltage_kv(kv, args.patterns if args.kv is None else None, "--kv")
    model = load_model(args.model)
    shape = tuple(model.model_config.image_shape)
    if tuple(data.shape) != shape:
        raise EBSDInputError(
            f"patterns are {data.shape[0]}x{data.shape[1]}, the model generates {shape[0]}x{shape[1]}",
            args.patterns,
            "EMData/EBSD/EBSDPatterns",
        )
    generator = model_refinement_generator(
        model, voltage_kv=kv if model.model_config.use_voltage else None, clahe_gradient=args.clahe_gradient
    )
    pc = None
    if args.pc is not None:
        pc = check_pattern_centres(args.pc, len(data), None, "--pc")
    elif args.refine_pc or generator.takes_pc:
        det = (data.metadata or {}).get("detector") or {}
        if "pc" in det:
            pc = check_pattern_centres(det["pc"], len(data), args.patterns, "ebsd_keras/metadata/detector/pc")
    if not generator.takes_pc:
        if args.pc is not None or args.refine_pc:
            raise EBSDInputError(
                f"{type(model.decoder).__name__} generates for one fixed detector: it cannot take --pc/--refine-pc",
                args.model,
                "model",
            )
        pc = None
    if args.start is not None:
        q_start = read_start(args.start, n_total, data.index)
        di_seconds = 0.0
    else:
        import time

        from ebsd_keras.indexing.dictionary import indexer_from_metadata

        t0 = time.perf_counter()
        indexer = indexer_from_metadata(
            data.metadata,
            kv,
            resolution_deg=args.dictionary_resolution,
            path=args.patterns,
            master_pattern=args.master_pattern,
            progress=not args.quiet,
        )
        q_start, _ = indexer.dictionary_index(data.patterns)
        di_seconds = time.perf_counter() - t0
        print(f"dictionary indexing: {len(data)} patterns in {di_seconds:.1f} s ({indexer.n_dictionary} entries)")
    result = refine_gradient(
        generator,
        data.patterns,
        q_start,
        pc_start=pc,
        refine_pc=args.refine_pc,
        refine_orientation=not args.pc_only,
        method=args.method,
        max_iterations=args.iterations,
        hessian_every=args.hessian_every,
        trust_region_deg=args.trust_region,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    settings = {
        "patterns": str(args.patterns),
        "model": str(args.model),
        "start": str(args.start) if args.start else f"dictionary indexing, {args.dictionary_resolution} deg",
        "voltage_kv": kv,
        "refinement": result.settings,
        "seconds": result.seconds,
        "dictionary_indexing_seconds": di_seconds,
    }
    _write(args.output, result, q_start, data.index, settings, args.overwrite)
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
        for name, q in (("start", q_start), ("refined", result.quaternion)):
            s = summarize(disorientation(data.quaternion, q))
            print(f"{name}: {s['mean']:.4f} ± {s['std']:.4f} deg (median {s['median']:.4f}, p95 {s['p95']:.4f})")
    print(f"written to {args.output}")
    return 0
