"""Atomic writes: nothing half-written is ever left under the final name, and nothing orphaned stays behind.

Files and directories are written under a temporary name beside the target and renamed into place only when complete;
on any error the temporary is removed. All paths go through ``tf.io.gfile`` where TensorFlow is needed (TFRecords);
this module handles local files, which is what h5py and PNG writers need.

Temporary names
---------------
``.NAME.<pid>@<host>-<random>.tmp[SUFFIX]`` (and ``.old`` instead of ``.tmp`` for the previous version of a replaced
directory): the writing process and machine are part of the name, so a later run can tell a temporary orphaned by a
killed process (``kill -9``, power loss: no cleanup ran) from one a live process is still writing.
:func:`clean_stale_temps` removes the orphans of a target whenever it is written again; names without a process
(written by older versions) are removed once older than :data:`LEGACY_STALE_S`.

Pre-flight
----------
:func:`check_writable` is what every writing subcommand calls before any work: the output must not be a directory
where a file is expected (and the reverse), must not exist unless overwriting, and its nearest existing ancestor must
be a directory in which a file can actually be created (a probe, so read-only mounts are caught even as root).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path

import numpy as np

from ebsd_keras.errors import EBSDInputError

__all__ = [
    "atomic_path",
    "atomic_dir",
    "atomic_npy",
    "NpyWriter",
    "temp_name",
    "clean_stale_temps",
    "check_writable",
    "describe_os_error",
    "LEGACY_STALE_S",
]

#: Age (s) after which a temporary without a process id in its name (written by an older ebsd_keras) counts as
#: orphaned. Such files cannot be attributed to a live process; an hour is far longer than any single atomic write.
LEGACY_STALE_S = 3600.0
#: Largest block handed to one ``write`` call of the .npy writer (bytes): bounded memory, prompt ENOSPC.
NPY_CHUNK_BYTES = 16 << 20


def _host_tag() -> str:
    # 4 hex digits of the host name: two machines sharing a network directory do not judge each other's pids.
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:4]


def temp_name(name: str, suffix: str = "", kind: str = "tmp") -> str:
    """The temporary name (no directory) for writing ``name``: ``.NAME.<pid>@<host>-<random>.tmp[SUFFIX]``."""
    return f".{name}.{os.getpid()}@{_host_tag()}-{secrets.token_hex(4)}.{kind}{suffix}"


_TAG = r"(?:(?P<pid>\d+)@(?P<host>[0-9a-f]{4})-[0-9a-f]{8}|(?P<legacy>[A-Za-z0-9_]{8}))\.(?:tmp|old)(?:\..*)?"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _is_stale(directory: Path, entry: str, name: str | None, now: float) -> bool:
    """Whether ``entry`` is one of our temporaries (of target ``name``, or of any) whose writer is gone."""
    prefix = r"\." + (re.escape(name) if name is not None else r".+") + r"\."
    m = re.fullmatch(prefix + _TAG, entry, flags=re.S)
    if m is None:  # the fixed ".NAME.old" of older versions' atomic_dir
        return name is not None and entry == f".{name}.old" and _age(directory / entry, now) > LEGACY_STALE_S
    if m["pid"] is not None and m["host"] == _host_tag():
        return not _pid_alive(int(m["pid"]))
    return _age(directory / entry, now) > LEGACY_STALE_S


def _age(path: Path, now: float) -> float:
    try:
        return now - path.lstat().st_mtime
    except OSError:
        return 0.0


def clean_stale_temps(directory, name: str | None = None) -> list[Path]:
    """Remove temporaries orphaned by killed writers in ``directory`` (only ours, only stale ones).

    Parameters
    ----------
    directory
        A local directory (nothing happens for URLs or a missing directory).
    name
        Only the temporaries of this target name (e.g. "best.keras"); None: of any target.

    Returns
    -------
    list of Path
        What was removed.
    """
    directory = Path(directory)
    if "://" in str(directory) or not directory.is_dir():
        return []
    now = time.time()
    removed = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    for entry in entries:
        if _is_stale(directory, entry, name, now):
            path = directory / entry
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
    return removed


def _nearest_existing(path: Path) -> Path:
    p = path
    while not (p.exists() or p.is_symlink()):
        if p.parent == p:
            break
        p = p.parent
    return p


def check_writable(target, kind: str = "file", overwrite: bool = False, field: str | None = "-o/--output",
                   need_bytes: int | None = None) -> None:  # fmt: skip
    """Fail now, with one line, if ``target`` cannot be written -- before any work that would be lost.

    Parameters
    ----------
    target
        The output path (local; URLs are not checked).
    kind
        "file" (a file is written there), "dir" (a new directory; an existing one only with ``overwrite``) or
        "rundir" (a directory that may already exist, e.g. a training run to resume).
    overwrite
        Whether an existing output may be replaced.
    field
        The option named in the message.
    need_bytes
        If given, the free space (bytes) the output needs on its file system.

    Raises
    ------
    EBSDInputError
        A directory where a file is expected (or the reverse), a parent that is a file, a directory in which no
        file can be created (permissions, read-only file system), too little free space.
    FileExistsError
        The output exists and ``overwrite`` is False.
    """
    if "://" in str(target):
        return
    p = Path(target)
    if p.exists():
        if kind == "file" and p.is_dir():
            raise EBSDInputError("is a directory; give a file name to write", p, field)
        if kind == "rundir" and not p.is_dir():
            raise EBSDInputError("is a file, not a directory (the run's files are written in it)", p, field)
        if kind != "rundir" and not overwrite:
            raise FileExistsError(f"{p}: already exists (use --overwrite to replace it)")
    anc = _nearest_existing(p.parent if not (p.exists() and p.is_dir()) else p)
    if not anc.is_dir():
        raise EBSDInputError(f"cannot be created: {anc} is a file, not a directory", p, field)
    probe = anc / temp_name("write-probe")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise EBSDInputError(f"cannot write in {anc}: {exc.strerror or exc}", p, field) from None
    if need_bytes:
        free = shutil.disk_usage(anc).free
        if free < need_bytes:
            raise EBSDInputError(
                f"needs about {need_bytes / 1e6:.1f} MB but only {free / 1e6:.1f} MB are free on that disk", p, field
            )


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError (full disk, permissions, a directory in the way), naming the file."""
    what = exc.strerror or str(exc)
    where = exc.filename if exc.filename is not None else None
    hint = ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = " (the disk is full or the file too large: free space or write elsewhere; nothing partial was kept)"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = " (choose a writable output location)"
    return f"{where}: {what}{hint}" if where else f"{what}{hint}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory; give a file name to write", str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(target.parent, target.name)
    # Not created here: writers such as h5py want to create the file themselves.
    tmp = target.parent / temp_name(target.name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename in (None, str(tmp)):
            # name the file the user asked for (not our temporary, nor nothing: np.savez, PNG writers)
            raise type(exc)(exc.errno, exc.strerror, str(target)) from None
        raise


@contextlib.contextmanager
def atomic_dir(target, overwrite: bool = False):
    """Yield a temporary directory beside ``target``; move it to ``target`` on success.

    An existing ``target`` (a directory, or a file in the way) is replaced only when ``overwrite`` is True, and only
    after the new directory is complete. The directory gets the mode a plain ``mkdir`` would give (0777 less the
    umask), not ``mkdtemp``'s owner-only 0700.
    """
    target = Path(target)
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise FileExistsError(f"{target}: already exists (use --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(target.parent, target.name)
    tmp = target.parent / temp_name(target.name)
    os.mkdir(tmp)
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if target.exists() or target.is_symlink():
            old = target.parent / temp_name(target.name, kind="old")
            os.replace(target, old)
            os.replace(tmp, target)
            _remove(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class _Whole:
    """A file whose write() writes everything (numpy's header writer assumes a buffered file)."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        data = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else data
        while len(data):
            n = self.f.write(data)
            data = data[n if n is not None else len(data) :]


class NpyWriter:
    """Write a ``.npy`` array row block by row block through an open file: no memory map.

    A memory-mapped output turns a full disk into SIGBUS (the process dies without a message, the partial file
    stays); plain ``write`` calls report ENOSPC as an ``OSError`` that the caller can turn into one line.

    Parameters
    ----------
    f
        A binary file opened for writing (positioned at 0).
    shape
        Full array shape; rows are along axis 0.
    dtype
        Array dtype.
    path
        The final path, named in errors.
    """

    def __init__(self, f, shape, dtype=np.float32, path=None):
        self.f, self.shape, self.dtype, self.path = f, tuple(int(s) for s in shape), np.dtype(dtype), path
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        self._guard(lambda: np.lib.format.write_array_header_1_0(_Whole(f), header))
        self.offset = f.tell()
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.total = self.offset + self.shape[0] * self.row_bytes if self.shape else self.offset + self.dtype.itemsize

    def _guard(self, fn):
        try:
            return fn()
        except OSError as exc:
            if exc.filename is None and self.path is not None:
                raise type(exc)(exc.errno, exc.strerror, str(self.path)) from None
            raise

    def write(self, start: int, rows) -> None:
        """Write ``rows`` (shape (k, *shape[1:])) at rows ``start : start + k``."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or start < 0 or start + len(rows) > self.shape[0]:
            raise ValueError(f"rows {rows.shape} at {start} do not fit the array {self.shape}")
        data = memoryview(rows.reshape(-1).view(np.uint8))
        self._guard(lambda: self.f.seek(self.offset + start * self.row_bytes))
        for i in range(0, len(data), NPY_CHUNK_BYTES):
            self._guard(lambda i=i: self._write_all(data[i : i + NPY_CHUNK_BYTES]))

    def _write_all(self, block) -> None:
        while len(block):  # an unbuffered write may take part of the block
            n = self.f.write(block)
            block = block[n if n is not None else len(block) :]

    def close(self) -> None:
        """Give the file its full length (rows never written read as zeros) and flush it to the disk."""
        self._guard(lambda: self.f.truncate(self.total))
        self._guard(self.f.flush)
        self._guard(lambda: os.fsync(self.f.fileno()))


@contextlib.contextmanager
def atomic_npy(target, shape, dtype=np.float32, overwrite: bool = True):
    """Yield an :class:`NpyWriter` for ``target``; the file appears under its name only when complete.

    Raises
    ------
    OSError
        Full disk (ENOSPC) and other write errors, naming ``target``; the temporary file is removed.
    """
    # Unbuffered: every write error surfaces in write(), none is deferred to close().
    with atomic_path(target, overwrite=overwrite) as tmp, open(tmp, "wb", buffering=0) as f:
        writer = NpyWriter(f, shape, dtype, path=target)
        free = shutil.disk_usage(Path(tmp).parent).free
        if free < writer.total:  # the size is exact (no compression): a disk too full fails before any work
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: needs {writer.total / 1e6:.1f} MB, "
                          f"{free / 1e6:.1f} MB free", str(target))  # fmt: skip
        yield writer
        writer.close()
