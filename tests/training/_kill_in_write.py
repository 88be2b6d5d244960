"""Run ``ebsd-keras ARGV...`` and SIGKILL the process in the middle of writing the file named NAME.

    python _kill_in_write.py NAME ARGV...

The kill comes after the temporary file of NAME was written and cut to half its size, before it is renamed into
place: what a crash during that write leaves on disk. Used by tests/training/test_resume.py (issue 16: resume must
be bit-identical after a kill during every kind of write)."""

import os
import signal
import sys
from contextlib import contextmanager


def main() -> int:
    name, argv = sys.argv[1], sys.argv[2:]
    from ebsd_keras.training import fs

    atomic_target, replace = fs.atomic_target, fs._replace

    def die(tmp) -> None:
        if os.path.exists(tmp):
            os.truncate(tmp, os.path.getsize(tmp) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

    @contextmanager
    def killing_atomic_target(target, suffix=""):
        with atomic_target(target, suffix) as tmp:
            yield tmp
            if os.path.basename(str(target)) == name:
                die(tmp)

    def killing_replace(tmp, target):
        if os.path.basename(str(target)) == name:
            die(tmp)
        return replace(tmp, target)

    fs.atomic_target, fs._replace = killing_atomic_target, killing_replace
    from ebsd_keras.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
