"""Atomic writers: the chunked .npy writer (no memory map; a full disk is an OSError naming the file and leaves
nothing), orphaned temporaries of killed writers cleaned on the next write, directory modes, overwriting a file
with a directory, and the pre-flight writability check."""

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from ebsd_keras import _atomic
from ebsd_keras._atomic import (
    LEGACY_STALE_S,
    NpyWriter,
    atomic_dir,
    atomic_npy,
    atomic_path,
    check_writable,
    clean_stale_temps,
    temp_name,
)
from ebsd_keras.errors import EBSDInputError


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _orphan(directory, name, pid, suffix="", kind="tmp", is_dir=False):
    path = directory / f".{name}.{pid}@{_atomic._host_tag()}-0123abcd.{kind}{suffix}"
    path.mkdir() if is_dir else path.write_bytes(b"partial")
    return path


# ------------------------------------------------------------------------------------------------------ .npy writer
def test_npy_writer_writes_blocks_in_any_order_and_equals_np_save(tmp_path):
    data = np.random.default_rng(0).random((7, 5, 3)).astype(np.float32)
    with atomic_npy(tmp_path / "a.npy", data.shape) as w:
        w.write(4, data[4:])
        w.write(0, data[:4])
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), data)
    np.save(tmp_path / "ref.npy", data)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "ref.npy"]


def test_npy_writer_splits_large_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(_atomic, "NPY_CHUNK_BYTES", 64)  # many write calls per block
    data = np.arange(300, dtype=np.float32).reshape(10, 30)
    with atomic_npy(tmp_path / "a.npy", data.shape) as w:
        w.write(0, data)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), data)


def test_npy_writer_refuses_rows_that_do_not_fit(tmp_path):
    with pytest.raises(ValueError, match="do not fit"), atomic_npy(tmp_path / "a.npy", (3, 2)) as w:
        w.write(2, np.zeros((2, 2)))
    assert list(tmp_path.iterdir()) == []


class _FullDisk:
    """A binary file whose disk fills after ``room`` bytes (write raises ENOSPC, as a real full disk does)."""

    def __init__(self, path, mode, room, **kw):
        self.f = open(path, mode, **kw)  # noqa: SIM115 - closed in __exit__
        self.room = room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_full_disk_is_an_oserror_naming_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(_atomic, "open", lambda p, m, **kw: _FullDisk(p, m, room=4000, **kw), raising=False)
    target = tmp_path / "g.npy"
    with pytest.raises(OSError) as info, atomic_npy(target, (100, 10, 10)) as w:
        for i in range(0, 100, 10):
            w.write(i, np.ones((10, 10, 10)))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert "disk is full" in _atomic.describe_os_error(info.value)
    assert list(tmp_path.iterdir()) == []


def test_file_size_limit_gives_efbig_not_a_signal(tmp_path):
    """A real limit (RLIMIT_FSIZE, SIGXFSZ ignored as a shell would not): write() fails with EFBIG; no SIGBUS, the
    temporary is removed."""
    code = textwrap.dedent(f"""
        import errno, resource, signal, sys
        import numpy as np
        from ebsd_keras._atomic import atomic_npy
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
            with atomic_npy({str(tmp_path / "big.npy")!r}, (64, 64, 64)) as w:
                for i in range(64):
                    w.write(i, np.ones((1, 64, 64)))
        except OSError as exc:
            sys.exit(10 if exc.errno == errno.EFBIG and exc.filename.endswith('big.npy') else 11)
        sys.exit(0)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 10, proc.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------- orphaned temporaries
def test_orphans_of_dead_writers_are_removed_on_the_next_write(tmp_path):
    dead, me = _dead_pid(), os.getpid()
    orphan = _orphan(tmp_path, "best.keras", dead, ".keras")
    orphan_dir = _orphan(tmp_path, "ds", dead, is_dir=True)
    live = _orphan(tmp_path, "best.keras", me, ".keras")  # a writer still at work (this process)
    other = _orphan(tmp_path, "model.keras", dead, ".keras")  # another target's: not this write's business
    user = tmp_path / ".best.keras.notes"  # not our pattern
    user.write_text("mine")
    with atomic_path(tmp_path / "best.keras") as tmp:
        tmp.write_bytes(b"x")
    assert not orphan.exists() and live.exists() and other.exists() and user.exists()
    with atomic_dir(tmp_path / "ds") as tmp:
        (tmp / "f").write_text("x")
    assert not orphan_dir.exists() and (tmp_path / "ds" / "f").is_file()
    assert clean_stale_temps(tmp_path) == [other]  # any target's orphans, on request
    assert live.exists() and user.exists()


def test_legacy_temporaries_without_a_pid_are_removed_only_when_old(tmp_path):
    fresh = tmp_path / ".best.keras.ab12cd34.tmp.keras"
    old = tmp_path / ".best.keras.zz98yx76.tmp.keras"
    old_dir = tmp_path / ".ds.old"
    for p in (fresh, old):
        p.write_bytes(b"x")
    old_dir.mkdir()
    past = time.time() - LEGACY_STALE_S - 10
    os.utime(old, (past, past))
    os.utime(old_dir, (past, past))
    assert sorted(clean_stale_temps(tmp_path, "best.keras")) == [old]
    assert clean_stale_temps(tmp_path, "ds") == [old_dir]
    assert fresh.exists()


def test_kill_during_write_leaves_an_orphan_that_the_next_run_removes(tmp_path):
    code = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from ebsd_keras._atomic import atomic_dir, atomic_npy
        with atomic_dir({str(tmp_path / "ds")!r}) as d:
            (d / 'train.h5').write_bytes(b'half')
            with atomic_npy({str(tmp_path / "g.npy")!r}, (10, 4)) as w:
                w.write(0, np.ones((5, 4)))
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(n.startswith((".ds.", ".g.npy.")) and ".tmp" in n for n in left), left
    with atomic_npy(tmp_path / "g.npy", (2, 2)) as w:
        w.write(0, np.zeros((2, 2)))
    with atomic_dir(tmp_path / "ds") as d:
        (d / "train.h5").write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "g.npy"]


# ---------------------------------------------------------------------------------------------- directories
@pytest.mark.parametrize("mask, mode", [(0o022, 0o755), (0o002, 0o775), (0o077, 0o700)])
def test_atomic_dir_gets_the_umask_mode_not_0700(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        with atomic_dir(tmp_path / "ds") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ds").stat().st_mode) == mode


def test_overwrite_replaces_a_file_or_a_directory_and_leaves_no_old_copy(tmp_path):
    target = tmp_path / "ds"
    target.write_text("a file where the directory goes")
    for _ in range(2):  # onto the file, then onto the directory it became
        with atomic_dir(target, overwrite=True) as tmp:
            (tmp / "train.h5").write_text("new")
        assert (target / "train.h5").read_text() == "new"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_refused_overwrite_and_failed_build_keep_the_old_output(tmp_path):
    target = tmp_path / "ds"
    target.mkdir()
    (target / "keep").write_text("old")
    with pytest.raises(FileExistsError, match="--overwrite"), atomic_dir(target):
        pass
    with pytest.raises(RuntimeError), atomic_dir(target, overwrite=True) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("build failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"] and (target / "keep").read_text() == "old"


def test_atomic_path_refuses_a_directory_target(tmp_path):
    (tmp_path / "g.npy").mkdir()
    with pytest.raises(IsADirectoryError), atomic_path(tmp_path / "g.npy"):
        pass


# --------------------------------------------------------------------------------------------- pre-flight
def test_check_writable_accepts_a_new_path_under_a_new_directory(tmp_path):
    check_writable(tmp_path / "a" / "b" / "out.npy")
    check_writable(tmp_path / "run", "rundir")
    assert list(tmp_path.iterdir()) == []  # the probe is gone, nothing created


@pytest.mark.parametrize(
    "make, target, kind, overwrite, error, needle",
    [
        ("file:blocker", "blocker/out.npy", "file", False, EBSDInputError, "blocker is a file, not a directory"),
        ("file:blocker", "blocker/a/b/out", "dir", False, EBSDInputError, "blocker is a file, not a directory"),
        ("dir:out.npy", "out.npy", "file", True, EBSDInputError, "is a directory"),
        ("file:run", "run", "rundir", False, EBSDInputError, "is a file, not a directory"),
        ("file:out.npy", "out.npy", "file", False, FileExistsError, "--overwrite"),
        ("dir:ds", "ds", "dir", False, FileExistsError, "--overwrite"),
    ],
)  # fmt: skip
def test_check_writable_refuses(tmp_path, make, target, kind, overwrite, error, needle):
    what, name = make.split(":")
    (tmp_path / name).mkdir() if what == "dir" else (tmp_path / name).write_text("x")
    with pytest.raises(error, match=needle):
        check_writable(tmp_path / target, kind, overwrite)


def test_check_writable_overwrite_allows_existing_outputs(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    check_writable(tmp_path / "f", "file", overwrite=True)
    check_writable(tmp_path / "d", "dir", overwrite=True)
    check_writable(tmp_path / "f", "dir", overwrite=True)  # a file in the way of a directory: replaced


def test_check_writable_reports_a_directory_it_cannot_write_in(tmp_path, monkeypatch):
    """Root ignores permission bits, so the refusal of the file system (here read-only) is injected at os.open."""

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(_atomic.os, "open", read_only)
    with pytest.raises(EBSDInputError, match="cannot write in .*Read-only file system"):
        check_writable(tmp_path / "out.npy")


def test_check_writable_needs_free_space(tmp_path):
    with pytest.raises(EBSDInputError, match="MB are free"):
        check_writable(tmp_path / "out.npy", need_bytes=1 << 62)


def test_temp_names_carry_pid_and_are_unique():
    a, b = temp_name("x.npy"), temp_name("x.npy", ".keras")
    assert a != b and a.startswith(f".x.npy.{os.getpid()}@") and a.endswith(".tmp") and b.endswith(".tmp.keras")


def test_npy_writer_header_is_readable_before_any_row(tmp_path):
    with open(tmp_path / "a.npy", "wb") as f:
        w = NpyWriter(f, (4, 2), np.int16)
        w.close()
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.zeros((4, 2), np.int16))


def test_npy_larger_than_the_free_space_fails_before_writing(tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(_atomic.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(OSError, match="needs 0.0 MB, 0.0 MB free") as info, atomic_npy(tmp_path / "g.npy", (50, 50)):
        pytest.fail("the block must not run")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "g.npy")
    assert list(tmp_path.iterdir()) == []
