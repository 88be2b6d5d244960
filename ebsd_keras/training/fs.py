"""File operations of a training run, through ``tf.io.gfile``: outputs may live on cloud or network storage.

Every path a run writes or reads (``output_dir``, ``init_from``, ``config.json``, checkpoints, history, TensorBoard
logs) goes through these helpers, so ``gs://bucket/run``, ``s3://...``, ``hdfs://...`` and TensorFlow's in-memory
``ram://`` work as well as local paths. (The TFRecord input goes through ``tf.io.gfile`` in
:mod:`ebsd_keras.io.tfrecord`; HDF5 inputs of ``dataset`` / ``convert`` / ``evaluate`` are read with h5py and must
be local files.)

Atomic replacement: a file is written to a temporary name in the target directory and renamed. On a local or POSIX
file system the rename is atomic; object stores (GCS, S3) have no rename, so there a reader may briefly see a
missing file, never a truncated one (the copy is whole before the temporary object is deleted).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager

__all__ = [
    "is_remote",
    "join",
    "exists",
    "isdir",
    "makedirs",
    "rmtree",
    "remove",
    "read_text",
    "write_text",
    "copy",
    "glob",
    "isfile",
    "local_copy",
    "atomic_target",
]


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def is_remote(path) -> bool:
    """A URL-style path (``scheme://...``) rather than a local file name."""
    return "://" in str(path)


def join(directory, *names: str) -> str:
    """``directory/name/...`` with "/" for URLs and the OS separator locally."""
    directory = str(directory)
    if is_remote(directory):
        return "/".join([directory.rstrip("/"), *names])
    return os.path.join(directory, *names)


def exists(path) -> bool:
    return _gfile().exists(str(path))


def isdir(path) -> bool:
    return _gfile().isdir(str(path))


def isfile(path) -> bool:
    return exists(path) and not isdir(path)


def makedirs(path) -> None:
    _gfile().makedirs(str(path))


def rmtree(path) -> None:
    """Remove a directory tree; nothing if it does not exist."""
    if exists(path):
        _gfile().rmtree(str(path))


def remove(path) -> None:
    """Remove a file; nothing if it does not exist."""
    if exists(path):
        _gfile().remove(str(path))


def read_text(path) -> str:
    with _gfile().GFile(str(path), "r") as f:
        return f.read()


def glob(pattern) -> list[str]:
    return sorted(_gfile().glob(str(pattern)))


def _tmp_name(target: str, suffix: str = "") -> str:
    """A temporary name beside ``target`` (:func:`ebsd_keras._atomic.temp_name`: writer pid and host in the name,
    so the next write of ``target`` removes the orphan of a killed writer); stale ones are removed first."""
    from ebsd_keras._atomic import clean_stale_temps, temp_name

    target = str(target)
    head, tail = (target.rsplit("/", 1) if is_remote(target) else os.path.split(target)) or ("", target)
    if not is_remote(target):
        clean_stale_temps(head or ".", tail)
    return join(head, temp_name(tail, suffix)) if head else temp_name(tail, suffix)


def _replace(tmp: str, target: str) -> None:
    try:
        _gfile().rename(tmp, str(target), overwrite=True)
    except BaseException:
        remove(tmp)
        raise


def write_text(path, text: str) -> None:
    """Write ``text`` to ``path``, replacing it atomically (see the module docstring)."""
    tmp = _tmp_name(path)
    with _gfile().GFile(tmp, "w") as f:
        f.write(text)
    _replace(tmp, path)


def copy(src, dst) -> None:
    """Copy ``src`` over ``dst``, atomically."""
    tmp = _tmp_name(dst)
    _gfile().copy(str(src), tmp, overwrite=True)
    _replace(tmp, dst)


@contextmanager
def atomic_target(target, suffix: str = ""):
    """Yield a *local* temporary file name ending in ``suffix``; on success its file replaces ``target`` (local or
    remote) atomically. For writers that need a local path with the real suffix (Keras ``save``, h5py, csv)."""
    target = str(target)
    if not is_remote(target):  # written next to the target, renamed into place (no extra copy)
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        tmp = _tmp_name(target, suffix)
        try:
            yield tmp
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    with tempfile.TemporaryDirectory(prefix="ebsd_keras_") as tmpdir:
        local = os.path.join(tmpdir, "file" + suffix)
        yield local
        makedirs(target.rsplit("/", 1)[0])
        copy(local, target)


@contextmanager
def local_copy(path, suffix: str = ""):
    """Yield a local file name holding ``path``'s content (``path`` itself when it is local)."""
    if not is_remote(path):
        yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="ebsd_keras_") as tmpdir:
        local = os.path.join(tmpdir, "file" + suffix)
        _gfile().copy(str(path), local, overwrite=True)
        yield local
