"""``ebsd-keras tune``: hyper-parameter search of the CVAEGAN with KerasTuner (local or distributed)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """\
Search hyper-parameters of the CVAE/GAN (latent size, loss weights, adaptive-KL thresholds, learning rates, ...)
with KerasTuner. SPACE is a TOML search-space file (tuning/default.toml, tuning/small.toml); it is validated before
anything runs. Each trial trains the cvae, critic and gan phases on the budget in the file's [trial] table and is
scored by val_fidelity = gen_bce_gap / bce_gap_scale + gen_disorientation_deg / disorientation_scale_deg on the
validation split (lower is better; see tuning/README.md).

Files written in OUT: <project>/ (KerasTuner state), space.json, tensorboard/ (per trial, with HParams),
trials.csv and trials.md (summary table), best/ (hyperparameters.json and cvae.json, critic.json, gan.json for
`ebsd-keras train --config`), baseline/metrics.json (--baseline).

Rerunning the same command continues the search (finished trials are kept; an interrupted trial is rerun).

Distributed: set KERASTUNER_TUNER_ID (chief / tuner0, tuner1, ...), KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT
and run the same command on every machine; the chief serves trials and writes the summary when all are done.
"""

EPILOG = """\
examples:
  ebsd-keras tune tuning/small.toml --data data/ni20-tfr -o runs/tuning-small --tuner random --baseline
  ebsd-keras tune tuning/default.toml --data data/ni20-tfr -o runs/tuning --tuner bayesian --max-trials 50
  ebsd-keras tune tuning/small.toml --data data/ni20-tfr -o runs/tuning-small --summary-only
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tune",
        help="hyper-parameter search with KerasTuner (random, bayesian, hyperband; local or distributed)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("space", metavar="SPACE", help="TOML search-space file (tuning/*.toml)")
    a("--data", dest="data_dir", required=True, metavar="DIR", help="TFRecord dataset with train and val splits")
    a("-o", "--output", dest="output_dir", required=True, metavar="OUT", help="search directory (created)")
    a(
        "--tuner",
        choices=("random", "bayesian", "hyperband"),
        default="random",
        help="search algorithm (default random)",
    )
    a("--max-trials", type=int, metavar="N", help="override [search] max_trials (random, bayesian)")
    a("--project", metavar="NAME", help="KerasTuner project name (default SPACE-stem-TUNER)")
    a("--overwrite", action="store_true", help="start the search over (deletes the project's trials)")
    a("--baseline", action="store_true", help="also train the package defaults on the same budget and compare")
    a("--summary-only", action="store_true", help="run no trials: write the table and best config of the project")
    a("-q", "--quiet", action="store_true", help="no per-epoch output")
    p.set_defaults(func=run)


def _check_data(space, data_dir) -> None:
    """Fail before any trial on a missing dataset, a missing val split, or patterns the preset cannot take."""
    from ebsd_keras.errors import EBSDInputError
    from ebsd_keras.io.tfrecord import read_metadata, verify_shards
    from ebsd_keras.models.presets import get_preset

    meta = read_metadata(data_dir)
    verify_shards(data_dir, ("train", "val"), meta)  # a damaged shard fails here, not in trial 1 after minutes
    if int(meta.get("count", {}).get("val", 0)) < 1:
        raise EBSDInputError("the search needs a non-empty 'val' split (its objective)", data_dir, "val")
    shape = tuple(int(s) for s in meta["pattern_shape"])
    want = tuple(get_preset(space.preset, **space.model).image_shape)
    if shape != want:
        raise EBSDInputError(
            f"dataset patterns are {shape[0]}x{shape[1]} but preset {space.preset!r} takes {want[0]}x{want[1]}",
            data_dir,
            "pattern_shape",
        )


def run(args) -> int:
    from ebsd_keras._atomic import check_writable
    from ebsd_keras.checks import check_input_file
    from ebsd_keras.errors import EBSDInputError
    from ebsd_keras.tuning.space import load_search_space

    space = load_search_space(check_input_file(args.space, "SPACE", "search-space file"))
    if args.max_trials is not None and args.max_trials < 1:
        raise EBSDInputError(f"must be >= 1, got {args.max_trials}", None, "--max-trials")
    check_writable(args.output_dir, "rundir", field="-o/--output")  # an existing search directory is resumed
    if not Path(args.data_dir).is_dir():
        if Path(args.data_dir).exists():
            raise EBSDInputError("is a file, not a TFRecord dataset directory", args.data_dir, "--data")
        raise FileNotFoundError(f"{args.data_dir}: no such dataset directory (--data)")
    _check_data(space, args.data_dir)

    from ebsd_keras.tuning import search

    verbose = 0 if args.quiet else 2
    search.check_distributed_env()
    search.check_same_space(space, Path(args.output_dir), args.overwrite)
    # Locally the baseline runs first (a search cut short still has its reference); a chief trains it after serving.
    base = None
    if args.baseline and not search.is_chief() and not search.is_worker():
        base = search.run_baseline(space, args.data_dir, args.output_dir, verbose=verbose)
    project = args.project or f"{space.name}-{args.tuner}"
    if args.summary_only:
        if not (Path(args.output_dir) / project).is_dir():
            raise FileNotFoundError(f"{Path(args.output_dir) / project}: no such search project")
        tuner = search.make_tuner(space, _hypermodel(space, args), args.tuner, args.output_dir, project,
                                  max_trials=args.max_trials)  # fmt: skip
    else:
        tuner = search.run_search(space, args.data_dir, args.output_dir, args.tuner, project, args.overwrite,
                                  args.max_trials, verbose=verbose)  # fmt: skip
    if search.is_worker():
        ran = sorted(p.name.removeprefix("trial_") for p in Path(tuner.project_dir).glob("trial_*"))
        print(f"worker {tuner.tuner_id}: no trials left; trained here: {', '.join(ran) or 'none'} "
              "(results are with the chief)")  # fmt: skip
        return 0
    rows = search.trial_rows(tuner)
    if args.baseline:
        base = base or search.run_baseline(space, args.data_dir, args.output_dir, verbose=verbose)
        rows.append({"trial_id": "default", "status": "BASELINE", "score": base["metrics"].get("val_fidelity"),
                     **base["metrics"], **base["values"]})  # fmt: skip
    paths = search.write_summary(rows, args.output_dir)
    print(search.markdown_table(rows), end="")
    best = search.export_best(tuner, space, args.data_dir, args.output_dir)
    if best is None:
        print("no trial completed; nothing exported")
        return 1
    print(f"best trial {best['trial_id']}: val_fidelity {best['score']:.4g}; wrote {paths['csv']}, {paths['md']}")
    print("train it: " + " && ".join(f"ebsd-keras train --config {p}" for p in best["configs"].values()))
    if args.baseline:
        d = base["metrics"]["val_fidelity"]
        verdict = "beats" if best["score"] < d else "does not beat"
        print(f"best {best['score']:.4g} {verdict} the default configuration ({d:.4g}) on val_fidelity")
    print(json.dumps(best["hyperparameters"], sort_keys=True))
    return 0


def _hypermodel(space, args):
    from ebsd_keras.tuning.hypermodel import CVAEGANHyperModel

    return CVAEGANHyperModel(space, args.data_dir)
