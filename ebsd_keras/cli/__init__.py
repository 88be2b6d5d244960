"""The ``ebsd-keras`` command line: thin subcommands over the Python API.

Each subcommand lives in its own module ``ebsd_keras/cli/<name>.py`` exposing

- ``register(subparsers)`` that adds its ``argparse`` parser and sets ``func`` to a callable ``func(args) -> int``;
- heavy imports (TensorFlow, kikuchipy) inside ``func`` so that ``--help`` stays fast.

Errors about user input (:class:`ebsd_keras.errors.EBSDInputError`), missing files, refused overwrites, outputs that
cannot be written (``OSError``: full disk, permissions, a directory in the way) and TensorFlow I/O errors are printed
as one line on stderr and give exit status 2; anything else is a bug and shows its traceback. TensorFlow's C++ log
lines are silenced unless ``-v`` (:func:`quiet_tensorflow`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.abc
import importlib.util
import logging
import os
import sys

from ebsd_keras import __version__
from ebsd_keras.errors import EBSDInputError

#: Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = (
    "demo", "dataset", "convert", "inspect", "train", "evaluate", "tune", "generate", "export", "refine", "index"
)  # fmt: skip

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


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ start-up chatter off the terminal (``-v`` keeps it).

    ``TF_CPP_MIN_LOG_LEVEL=3`` silences what TensorFlow logs once running (e.g. "failed call to cuInit" on a machine
    without a GPU), but the lines written while its shared libraries load ("All log messages before
    absl::InitializeLog() ...", "Could not find cuda drivers ...") bypass it: those are dropped by pointing file
    descriptor 2 at /dev/null for the duration of ``import tensorflow`` (lazily, when a subcommand first imports it;
    Python exceptions of a failed import still show).
    """
    # forced, not defaulted: an inherited level of 2 (common in CI scripts) still lets "failed call to cuInit" through
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport("tensorflow"))


class _QuietImport:
    """A one-shot meta-path finder: the first import of ``name`` runs with stderr (fd 2) sent to /dev/null."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        inner = spec.loader

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return inner.create_module(spec)

            def exec_module(self, module):
                with _stderr_to_devnull():
                    inner.exec_module(module)

        spec.loader = _Loader()
        return spec


@contextlib.contextmanager
def _stderr_to_devnull():
    try:
        sys.stderr.flush()
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters): nothing to silence
        yield
        return
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _one_line(exc: BaseException) -> str:
    """The message of an environmental failure (disk, permissions, TensorFlow I/O), on one line."""
    from ebsd_keras._atomic import describe_os_error

    if isinstance(exc, OSError):
        text = describe_os_error(exc)
    else:  # tf.errors.OpError: the first line of its message (the rest is the graph node and a stack)
        text = f"{type(exc).__name__}: {str(getattr(exc, 'message', exc)).strip()}"
    return " ".join(text.split("\n")[0].split())


def _is_tf_error(exc: BaseException) -> bool:
    tf = sys.modules.get("tensorflow")
    errors = getattr(tf, "errors", None)
    return errors is not None and isinstance(exc, errors.OpError)


def main(argv=None) -> int:
    """Run ``ebsd-keras`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Exit status: 0 success; 1 a run that ended unfinished (e.g. training stopped on NaN or divergence); 2 bad input,
    an output that cannot be written (permissions, a file or directory in the way, a full disk) or a damaged file
    found while working -- each as one line "ebsd-keras CMD: error: ..." on stderr, with nothing partial left;
    130 interrupted (Ctrl-C).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet_tensorflow()
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
    except Exception as exc:
        # Full disk, permissions, a directory in the way, a shard damaged after the checks: the environment, not a
        # bug -- one line (``-v`` shows the traceback too).
        if not (isinstance(exc, OSError) or _is_tf_error(exc)):
            raise
        if args.verbose:
            logging.getLogger(__name__).exception("traceback")
        print(f"ebsd-keras {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
