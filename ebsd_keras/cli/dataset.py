"""``ebsd-keras dataset``: build train / val / test EBSD pattern sets from master patterns (needs the emsoft extra)."""

from __future__ import annotations

import argparse
import json
import logging

from ebsd_keras.errors import EBSDInputError

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Build train.h5, val.h5 and test.h5 (EMsoft EMEBSD layout, uint8 patterns; kikuchipy.load opens them) and dataset.json
(what was built) in DIR, by projecting a master pattern with kikuchipy for orientations sampled on cubochoric grids of
the crystal's fundamental zone (its Laue group's: m-3m for Ni).

Crystal:
  default         the master pattern's crystal (Ni for the embedded master pattern and the kinematical simulator).
  --phase FILE.cif|NAME
                  another crystal: a CIF file (space group, lattice, atoms) or a shipped one: ni, fe (bcc), ti (hcp),
                  tio2 (rutile), al2o3 (corundum). Without --master-pattern it is simulated kinematically (reflectors
                  chosen by structure factor, relativistic Bragg angles); a master-pattern file must be of the same
                  crystal. Its name, space group, point and Laue group are recorded in dataset.json and every file.

Orientations:
  --density N     training grid: N cubochoric semi-edge steps (EMsoft's N = 100 -> 333,227 orientations, about
                  1.4 deg apart; the count grows as N^3: N = 50 -> 41,625). Default 100.
  --angles FILE   training orientations from an EMsoft angle file instead (line 1 'eu' = Bunge Euler in DEGREES, or
                  'qu' = quaternions; line 2 the count; one entry per line).
  Validation and test grids use other, co-prime densities (default: about N/2, e.g. 100 -> 51 and 49, each ~12% of
  the training count). Orientations equal (up to cubic symmetry) to one of an earlier split are dropped, so no
  orientation is in two splits. --max-train/--max-val/--max-test keep a deterministic random subset (--seed).

Master pattern and voltage (kV):
  default         the real EMsoft 5 Ni 20 kV dynamical master pattern embedded in kikuchipy (no download).
  --master-pattern FILE
                  an EMsoft EMEBSDmaster file; every --kv must be one of its energies (EkeVs) -- a file with several
                  energy bins serves several voltages.
  --master-pattern KV=FILE [KV=FILE ...]
                  one EMsoft master-pattern file per voltage (each file must hold that energy).
  --kv KV [KV ...]
                  accelerating voltage(s) in kV (default 20). Without a master-pattern file, voltages other than
                  20 kV use kikuchipy's kinematical Ni simulator for ALL voltages. Several voltages repeat each
                  split's orientation list in consecutive blocks, one per voltage, with a per-pattern
                  EMData/EBSD/AcceleratingVoltage dataset (kV).
  --source ebsdsim
                  dynamical Ni master patterns simulated at each voltage by the optional ebsdsim package (needs a
                  Vulkan/WebGPU device; CPU-only machines: apt-get install mesa-vulkan-drivers; minutes per voltage).
  Sources (EMsoft dynamical, ebsdsim dynamical, kinematical) are never mixed silently: files for only some
  voltages are refused unless --allow-mixed-sources; dataset.json and every file's metadata record the source of
  each voltage.

Detector (defaults: 60 x 60 px, PC (0.5, 0.5, 0.6), detector tilt 10 deg, sample tilt 70 deg, 50 um px, binning 1):
  --pc PCX PCY PCZ  Bruker pattern centre as fractions: PCx of the width from the left, PCy of the height from the
                    top, PCz (detector distance) of the height.
  Tilts are in degrees; the pixel size (um, unbinned) only sets EMsoft's L and delta in the files.

Preprocessing: each pattern is rescaled on its own to [0, 255] (uint8), then CLAHE (OpenCV, clip limit 10, 4 x 4
tiles) unless --no-clahe.

DIR is written under a temporary name and appears only when complete; an existing DIR is replaced only with
--overwrite. Bad input (unreadable master pattern, voltage not in the file or outside 1-60 kV, NaN in an angle file)
gives exit status 2 and no output.
"""

EPILOG = """\
examples:
  ebsd-keras dataset -o data/ni20kv                       # EMsoft N=100 training grid, 20 kV, CLAHE
  ebsd-keras dataset -o data/small --density 20 --max-train 2000 --max-val 200 --max-test 200
  ebsd-keras dataset -o data/ti20 --phase ti --density 20 --max-train 4000   # alpha-Ti (6/mmm), kinematical
  ebsd-keras dataset -o data/x --phase my_crystal.cif --density 30
  ebsd-keras dataset -o data/volt --density 30 --kv 10 15 20 25 30      # kinematical, 5 voltage blocks
  ebsd-keras dataset -o data/mp --master-pattern Ni-master-10-30kV.h5 --kv 10 20 30
  ebsd-keras dataset -o data/mp2 --kv 10 20 --master-pattern 10=Ni-10kV.h5 20=Ni-20kV.h5
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dataset",
        help="build train/val/test EBSD pattern sets from a master pattern (kikuchipy)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument(
        "--density",
        type=int,
        default=None,
        metavar="N",
        help="training grid: cubochoric semi-edge steps (default 100 = 333,227 orientations)",
    )
    grid.add_argument("--angles", default=None, metavar="FILE", help="training orientations from an EMsoft angle file")
    p.add_argument(
        "--phase",
        default=None,
        metavar="FILE.cif|NAME",
        help="crystal: a CIF file or a shipped name (ni, fe, ti, tio2, al2o3); default the master pattern's (Ni)",
    )
    p.add_argument("--val-density", type=int, default=None, metavar="N", help="validation grid semi-edge steps")
    p.add_argument("--test-density", type=int, default=None, metavar="N", help="test grid semi-edge steps")
    p.add_argument("--max-train", type=int, default=None, metavar="N", help="at most N training orientations")
    p.add_argument("--max-val", type=int, default=None, metavar="N", help="at most N validation orientations")
    p.add_argument("--max-test", type=int, default=None, metavar="N", help="at most N test orientations")
    p.add_argument(
        "--master-pattern",
        default=None,
        nargs="+",
        metavar="FILE|KV=FILE",
        help="EMsoft master-pattern HDF5 (every voltage), or one KV=FILE per voltage (default: kikuchipy's "
        "embedded Ni 20 kV)",
    )
    p.add_argument(
        "--source",
        choices=("auto", "emsoft", "kinematical", "ebsdsim"),
        default="auto",
        help="master-pattern source (default auto: EMsoft dynamical if available, else kinematical)",
    )
    p.add_argument(
        "--allow-mixed-sources",
        action="store_true",
        help="allow different master-pattern sources at different voltages (recorded per voltage)",
    )
    p.add_argument(
        "--master-half-size",
        type=int,
        default=None,
        metavar="N",
        help="half side of simulated (kinematical: default 1000; ebsdsim: default 60) master patterns",
    )
    p.add_argument(
        "--kv", type=float, nargs="+", default=[20.0], metavar="KV", help="accelerating voltage(s) in kV (default 20)"
    )
    p.add_argument(
        "--pc",
        type=float,
        nargs=3,
        default=[0.5, 0.5, 0.6],
        metavar=("PCX", "PCY", "PCZ"),
        help="Bruker pattern centre, fractions (default 0.5 0.5 0.6)",
    )
    p.add_argument(
        "--detector-shape",
        type=int,
        nargs=2,
        default=[60, 60],
        metavar=("ROWS", "COLS"),
        help="pattern size in pixels (default 60 60)",
    )
    p.add_argument("--detector-tilt", type=float, default=10.0, metavar="DEG", help="detector tilt, deg (default 10)")
    p.add_argument("--sample-tilt", type=float, default=70.0, metavar="DEG", help="sample tilt, deg (default 70)")
    p.add_argument(
        "--px-size", type=float, default=50.0, metavar="UM", help="unbinned detector pixel size, um (default 50)"
    )
    p.add_argument("--binning", type=int, default=1, metavar="B", help="detector binning (default 1)")
    p.add_argument("--no-clahe", action="store_true", help="do not apply CLAHE")
    p.add_argument("--clip-limit", type=float, default=10.0, metavar="C", help="CLAHE clip limit (default 10)")
    p.add_argument(
        "--tiles", type=int, nargs=2, default=[4, 4], metavar=("ROWS", "COLS"), help="CLAHE tile grid (default 4 4)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-* subsets (default 0)")
    p.add_argument("--batch-size", type=int, default=2048, metavar="N", help="patterns per batch (default 2048)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _positive(value, option: str) -> None:
    if value is not None and value < 1:
        raise EBSDInputError(f"must be a positive integer, got {value}", None, option)


def _master_patterns(values):
    """``--master-pattern`` values -> None, one file, or {kV: file}."""
    if not values:
        return None
    pairs = [v.partition("=") for v in values]
    if len(values) == 1 and not pairs[0][1]:
        return values[0]
    if any(not sep for _, sep, _ in pairs):
        raise EBSDInputError("give one FILE, or KV=FILE for every file", None, "--master-pattern")
    out = {}
    for kv, _, path in pairs:
        try:
            key = float(kv)
        except ValueError:
            raise EBSDInputError(
                f"{kv!r} is not a voltage in kV (expected KV=FILE)", None, "--master-pattern"
            ) from None
        if key in out:
            raise EBSDInputError(f"two files for {key:g} kV", None, "--master-pattern")
        out[key] = path
    return out


def run(args) -> int:
    for option in ("density", "val_density", "test_density", "max_train", "max_val", "max_test", "batch_size"):
        _positive(getattr(args, option), "--" + option.replace("_", "-"))
    if args.clip_limit <= 0 or min(args.tiles) < 1:
        raise EBSDInputError("CLAHE needs a clip limit > 0 and tiles >= 1", None, "--clip-limit/--tiles")

    from ebsd_keras.data.build import build_dataset
    from ebsd_keras.data.preprocess import CLAHEConfig

    summary = build_dataset(
        args.output,
        n_train=100 if args.density is None else args.density,
        n_val=args.val_density,
        n_test=args.test_density,
        train_orientations=args.angles,
        max_per_split={"train": args.max_train, "val": args.max_val, "test": args.max_test},
        master_pattern=_master_patterns(args.master_pattern),
        voltages=args.kv,
        source=args.source,
        allow_mixed_sources=args.allow_mixed_sources,
        detector={
            "shape": tuple(args.detector_shape),
            "pc": tuple(args.pc),
            "tilt_deg": args.detector_tilt,
            "sample_tilt_deg": args.sample_tilt,
            "px_size_um": args.px_size,
            "binning": args.binning,
        },
        clahe=None if args.no_clahe else CLAHEConfig(args.clip_limit, tuple(args.tiles)),
        seed=args.seed,
        batch_size=args.batch_size,
        phase=args.phase,
        overwrite=args.overwrite,
        progress=not args.quiet,
        **(
            {}
            if args.master_half_size is None
            else {"kinematical_half_size": args.master_half_size, "ebsdsim_half_size": args.master_half_size}
        ),
    )
    counts = {s: v["n_patterns"] for s, v in summary["splits"].items()}
    print(
        json.dumps(
            {
                "output": str(args.output),
                "patterns": counts,
                "voltages_kv": summary["voltages_kv"],
                "source": summary["source_kind"],
                "phase": {k: summary["phase"][k] for k in ("name", "space_group", "point_group", "laue_group")},
                "seconds": summary["timing"]["total_s"],
            }
        )
    )
    return 0
