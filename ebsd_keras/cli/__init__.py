"""The ``ebsd-keras`` command line: thin subcommands over the Python API.

Each subcommand lives in its own module ``ebsd_keras/cli/<name>.py`` exposing

- ``register(subparsers)`` that adds its ``argparse`` parser and sets ``func`` to a callable ``func(args) -> int``;
- heavy imports (TensorFlow, kikuchipy) inside ``func`` so that ``--help`` stays fast.

Errors about user input (:class:`ebsd_keras.errors.EBSDInputError`), missing files and refused overwrites are printed
as one line on stderr and give exit status 2; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ebsd_keras import __version__
from ebsd_keras.errors import EBSDInputError

#: Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = ("demo", "dataset", "convert", "inspect", "train", "evaluate", "tune", "generate", "export", "refine")

EPILOG = """\
conventions: Euler angles are Bunge (phi1, Phi, phi2), passive (sample -> crystal), in radians unless --degrees is
given, as in EMsoft 4/5 HDF5 files; quaternions are (q0, q1, q2, q3), EMsoft P = +1, q0 >= 0; voltages are in kV;
pattern centres are Bruker (PCx, PCy, PCz) fractions unless stated otherwise.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ebsd-keras",
        description="Generate EBSD patterns from crystal orientation and accelerating voltage (CVAE/WGAN, Keras 3).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"ebsd_keras.cli.{name}").register(sub)
    return parser


def main(argv=None) -> int:
    # TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) is noise on the command line.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("hyperspy").setLevel(logging.WARNING)  # kikuchipy's host library announces itself at INFO
    try:
        return int(args.func(args) or 0)
    except (EBSDInputError, FileNotFoundError, FileExistsError) as exc:
        print(f"ebsd-keras {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ebsd-keras {args.command}: interrupted; no partial output was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
