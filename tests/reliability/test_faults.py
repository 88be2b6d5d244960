"""Faults the table cannot express as a command line: a disk that fills while writing, ``--overwrite`` onto a
file, temporaries orphaned by ``kill -9`` in a run directory. Each ends in one line (or success) and leaves nothing
partial or orphaned behind."""

import errno
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest

from ebsd_keras import _atomic
from ebsd_keras.cli import main
from ebsd_keras.io.emsoft import write_emebsd

EULER = ["--euler", *["0.1", "0.2", "0.3"] * 40, "--kv", "20"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import keras

    from ebsd_keras.models.cvaegan import CVAEGAN

    path = tmp_path_factory.mktemp("faults") / "tiny.keras"
    keras.utils.set_random_seed(0)
    CVAEGAN(config="tiny", seed=0).save(str(path))
    return path


class _FullDisk:
    """A file whose disk fills after ``room`` bytes: write() raises ENOSPC (what write(2) does on a full disk)."""

    def __init__(self, path, mode, room=20_000, **kw):
        self.f, self.room = open(path, mode, **kw), room  # noqa: SIM115 - closed with the wrapper

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_generate_npy_on_a_full_disk_is_one_line_and_leaves_nothing(model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_atomic, "open", _FullDisk, raising=False)
    out = tmp_path / "g.npy"
    assert main(["generate", "-m", str(model), *EULER, "-o", str(out), "--no-progress"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith(("INFO", "WARNING"))]
    assert len(err) == 1 and str(out) in err[0] and "No space left on device" in err[0], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".npy", ".h5"])
def test_generate_under_a_file_size_limit_exits_2_not_sigbus(model, tmp_path, suffix):
    """The issue's reproduction, without a tmpfs: RLIMIT_FSIZE makes write(2) fail with EFBIG once the file
    reaches 20 kB (SIGXFSZ ignored, as a full disk sends no signal); the memory-mapped .npy writer died with SIGBUS,
    the HDF5 writer printed its line and then crashed the interpreter at exit (exit -11)."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / f"g{suffix}"
    proc = subprocess.run([sys.executable, "-m", "ebsd_keras", "generate", "-m", str(model), *EULER, "-o", str(out),
                           "--no-progress"], preexec_fn=limit, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith(("INFO", "WARNING"))]
    assert len(lines) == 1 and str(out) in lines[0] and "File too large" in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


def _h5(path, n=8, seed=0):
    rng = np.random.default_rng(seed)
    write_emebsd(path, rng.integers(0, 255, (n, 60, 60), dtype=np.uint8), rng.uniform(0, 1, (n, 3)), voltage_kv=20.0)
    return path


def test_overwrite_onto_a_file_works_twice_and_leaves_no_old_copy(tmp_path, capsys):
    src = _h5(tmp_path / "train.h5")
    out = tmp_path / "rec"
    out.write_text("a file where the dataset goes")
    argv = ["convert", f"train={src}", "-o", str(out), "-q", "--overwrite"]
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "metadata.json").is_file()
    assert main(argv) == 0, capsys.readouterr().err  # and again, onto the directory it became
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec", "train.h5"]


def test_orphans_of_a_killed_dataset_build_are_removed_by_the_next_one(tmp_path, capsys):
    src = _h5(tmp_path / "train.h5")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = _atomic._host_tag()
    orphan = tmp_path / f".rec.{dead.pid}@{host}-0badc0de.tmp"  # what kill -9 during convert leaves
    orphan.mkdir()
    (orphan / "train-00000.tfrecord").write_bytes(b"\0" * 1000)
    assert main(["convert", f"train={src}", "-o", str(tmp_path / "rec"), "-q"]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec", "train.h5"]
