"""``ebsd-keras evaluate``: the paper's fidelity metrics of a trained model on a held-out test set."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Evaluate a trained generator (a .keras CVAEGAN) against a held-out test set and write a report:

  - reconstruction BCE per pattern (deterministic path z = 0 and prior samples) next to the optimal BCE (the
    entropy of the target grey levels), fraction of pixels within 15 % of the truth, pixel histograms, NCC;
  - dictionary indexing (DI) of the generated patterns against a dictionary projected from the dataset's own master
    pattern, detector and preprocessing (CLAHE), then refinement (nlopt BOBYQA, NCC objective; kikuchipy's
    refinement as a cross-check with --refiner both): disorientation to the input orientation;
  - the same DI and refinement of the TRUE test patterns (the floor the model is compared with);
  - the critic/classifier's orientation (and voltage) error on real and generated patterns, model size and
    generation throughput.

The dictionary defaults to the training split's cubochoric density when the dataset records it (the paper's
choice; N = 100 gives 333,227 patterns), else 2 degrees. --true-only evaluates only the true-pattern floor (no
model needed). Output (written atomically): REPORT_DIR/report.json, report.md and PNG figures.

examples:
  ebsd-keras evaluate --model runs/compact/model.keras --test data/ni20/test.h5 -o reports/compact
  ebsd-keras evaluate --true-only --test data/ni20-tfr --dictionary-resolution 2 -o reports/floor
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="fidelity metrics (BCE, pixel tolerance, DI + refinement) of a model on a test set",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        type=Path,
        help="trained model (.keras file or model folder); default: the shipped model for the test set's voltages; "
        "not with --true-only",
    )
    p.add_argument(
        "--test",
        type=Path,
        required=True,
        help="test set: EMsoft-layout .h5, dataset directory (<split>.h5) or TFRecord directory",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="report directory (must not exist)")
    p.add_argument("--split", default="test", help="split of a directory test source (test)")
    p.add_argument("--n", type=int, default=1000, help="number of test patterns, a seeded random subset (1000)")
    p.add_argument(
        "--dictionary-resolution",
        type=float,
        metavar="DEG",
        help="DI dictionary spacing in degrees (default: the training density, else 2)",
    )
    p.add_argument("--no-refine", action="store_true", help="dictionary indexing only")
    p.add_argument(
        "--refiner",
        choices=("bobyqa", "kikuchipy", "both"),
        default="bobyqa",
        help="bobyqa (default), kikuchipy's refine_orientation, or both (kikuchipy on a subset)",
    )
    p.add_argument(
        "--kikuchipy-subset",
        type=int,
        default=100,
        metavar="N",
        help="patterns per set refined by kikuchipy with --refiner both (100)",
    )
    p.add_argument(
        "--trust-region",
        type=float,
        metavar="DEG",
        help="refinement box half-width in degrees (2, or the dictionary resolution if coarser)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the test subset and prior samples (0)")
    p.add_argument("--true-only", action="store_true", help="evaluate only the true-pattern floor (no model)")
    p.add_argument("--no-prior-samples", action="store_true", help="skip the prior-sample (z ~ N(0, I)) metrics")
    p.add_argument(
        "--master-pattern",
        type=Path,
        help="EMsoft master-pattern file, if the one in the test set's provenance is elsewhere",
    )
    p.add_argument(
        "--preprocessing",
        choices=("auto", "clahe", "none"),
        default="auto",
        help="dictionary preprocessing: from the test set's provenance (auto), CLAHE 10/4x4, or none",
    )
    p.add_argument(
        "--voltage",
        action="store_true",
        help="also the voltage figures (ebsd_keras.evaluation.voltage): wrong-voltage indexing table (paper Fig 5) "
        "over the test set's voltages and band width vs kV, true vs generated",
    )
    p.add_argument(
        "--voltage-test",
        type=Path,
        nargs="+",
        default=[],
        metavar="SOURCE",
        help="more test sources for the band-width curve (e.g. unseen voltages)",
    )
    p.add_argument("--voltage-n", type=int, default=100, help="patterns per voltage in the wrong-voltage table (100)")
    p.add_argument("--voltage-only", action="store_true", help="only the voltage figures (skip the main report)")
    p.add_argument("--label", default=None, help="name of the model in the report (default: the file name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _check_args(args) -> None:
    from ebsd_keras.errors import EBSDInputError

    if args.true_only and args.model is not None:
        raise EBSDInputError("--true-only evaluates the test patterns alone: drop --model", None, "--model")
    if args.n < 1:
        raise EBSDInputError(f"--n must be >= 1, got {args.n}", None, "--n")
    if args.kikuchipy_subset < 1:
        raise EBSDInputError(
            f"--kikuchipy-subset must be >= 1, got {args.kikuchipy_subset}", None, "--kikuchipy-subset"
        )
    from ebsd_keras._atomic import check_writable
    from ebsd_keras.serving.models import inspect_model_file

    check_writable(args.output, "dir", args.overwrite, "-o/--output")  # before minutes of indexing
    if args.model is not None:
        inspect_model_file(args.model)  # a bad model file fails before the test set is read


def run(args) -> int:
    import sys

    from ebsd_keras.evaluation.run import assume_defaults, evaluate_generator, model_generator
    from ebsd_keras.io.testset import load_test_set
    from ebsd_keras.serving.models import describe_model, load_generator

    _check_args(args)
    test = load_test_set(args.test, args.n, args.seed, args.split)
    chosen = assume_defaults(test, args.model, args.master_pattern, args.preprocessing, need_model=not args.true_only)
    if chosen["assumed"]:
        print(f"ebsd-keras evaluate: {chosen['assumed']}", flush=True)
    model = generate_fn = None
    variants = {}
    label = args.label or "true patterns"
    if not args.true_only:
        model, info = load_generator(chosen["model"])
        print(describe_model(info), flush=True)
        label = args.label or info["identity"]["name"]
        generate_fn = model_generator(model, sample=False)
        if not args.no_prior_samples:
            variants[f"{label} (prior samples)"] = model_generator(model, sample=True, seed=args.seed)
    if args.voltage_only:
        _voltage(args, generate_fn, model)
        return 0
    results = evaluate_generator(
        generate_fn,
        test,
        n=args.n,
        dictionary_resolution=args.dictionary_resolution,
        refine=not args.no_refine,
        out_dir=args.output,
        seed=args.seed,
        label=label,
        split=args.split,
        model=model,
        variants=variants,
        refiner=args.refiner,
        trust_region_deg=args.trust_region,
        kikuchipy_subset=args.kikuchipy_subset,
        master_pattern=chosen["master_pattern"],
        preprocessing=chosen["preprocessing"],
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    _print_summary(results)
    for warning in results.get("warnings", []):
        print(f"ebsd-keras evaluate: warning: {warning}", file=sys.stderr)
    print(f"report written to {args.output}")
    if args.voltage:
        _voltage(args, generate_fn, model)
    return 0


def _voltage(args, generate_fn, model=None) -> None:
    from ebsd_keras.evaluation.voltage import evaluate_voltage, raw_model_generator

    res = evaluate_voltage(
        generate_fn,
        [args.test, *args.voltage_test],
        args.output / "voltage",
        n_per_voltage=args.voltage_n,
        resolution_deg=args.dictionary_resolution or 2.0,
        refine=not args.no_refine,
        seed=args.seed,
        progress=not args.quiet,
        raw_generate_fn=None if model is None else raw_model_generator(model),  # band widths on raw intensities
    )
    print(f"voltage figures: {', '.join(res['figures'])}")


def _print_summary(results: dict) -> None:
    def angles(s):
        return f"{s['mean']:.3f} ± {s['std']:.3f} deg (median {s['median']:.3f}, p95 {s['p95']:.3f})"

    for name, idx in results["indexing"].items():
        line = f"{name}: DI {angles(idx['di_error_deg'])}"
        if "refined_error_deg" in idx:
            line += f"; refined {angles(idx['refined_error_deg'])}"
        print(line)
    for name, pix in results["pixel"].items():
        print(
            f"{name}: BCE {pix['bce']['mean']:.4f} (optimal {pix['optimal_bce']['mean']:.4f}, gap "
            f"{pix['bce_gap']['mean']:.4f}); pixels within 15 %: {100 * pix['within_15pct']['mean']:.2f} %"
        )
