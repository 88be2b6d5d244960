"""Atomic writes: nothing half-written is ever left under the final name.

Files and directories are written under a temporary name beside the target and renamed into place only when complete;
on any error the temporary is removed. All paths go through ``tf.io.gfile`` where TensorFlow is needed (TFRecords);
this module handles local files, which is what h5py and PNG writers need.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["atomic_path", "atomic_dir"]


@contextlib.contextmanager
def atomic_path(target, overwrite: bool = True):
    """Yield a temporary file path in the target's directory; rename it to ``target`` on success.

    Parameters
    ----------
    target
        Final file path.
    overwrite
        If False and ``target`` exists, raise ``FileExistsError`` before writing anything.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists (use --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.unlink(tmp)  # writers such as h5py want to create the file themselves
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(target, overwrite: bool = False):
    """Yield a temporary directory beside ``target``; move it to ``target`` on success.

    An existing ``target`` is replaced only when ``overwrite`` is True, and only after the new directory is complete.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists (use --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
