"""A few rows of the table as a user sees them: `python -m ebsd_keras ...` in a subprocess, with TensorFlow's log
level left at its default. stderr must be exactly the one error line: no traceback, no TensorFlow C++ start-up
lines (they are silenced before TensorFlow is imported), and ``-v`` still shows them."""

import os
import subprocess
import sys

import numpy as np
import pytest

from ebsd_keras.io.emsoft import write_emebsd
from ebsd_keras.io.tfrecord import write_tfrecords


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """A TFRecord dataset with one flipped byte in its second training shard."""
    tmp = tmp_path_factory.mktemp("e2e")
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 255, (24, 60, 60), dtype=np.uint8)
    write_emebsd(tmp / "train.h5", patterns, rng.uniform(0, 1, (24, 3)), voltage_kv=20.0)
    write_tfrecords([("train", tmp / "train.h5")], tmp / "rec", shard_size=8, progress=False)
    shard = tmp / "rec" / "train-00001.tfrecord"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    (tmp / "blocker").write_text("a file")
    return tmp


def _run(*argv, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP_", "GRPC_"))}
    return subprocess.run([sys.executable, "-m", "ebsd_keras", *map(str, argv)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)  # fmt: skip


def test_damaged_shard_is_one_clean_line(damaged):
    proc = _run("train", "--data", damaged / "rec", "-o", damaged / "run", "--preset", "tiny", cwd=damaged)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr  # one line, nothing before it
    assert proc.stderr.startswith("ebsd-keras train: error: ") and "train-00001.tfrecord" in proc.stderr
    assert "checksum" in proc.stderr and "Traceback" not in proc.stderr
    assert not (damaged / "run").exists()


def test_unwritable_output_is_one_clean_line_and_verbose_keeps_tensorflow_logs(damaged):
    argv = ("generate", "--euler", "0.1", "0.2", "0.3", "-o", damaged / "blocker" / "g.npy")
    proc = _run(*argv, cwd=damaged)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "blocker is a file, not a directory" in proc.stderr
    verbose = _run("-v", "train", "--data", damaged / "rec", "-o", damaged / "run", cwd=damaged)
    assert verbose.returncode == 2 and "train-00001.tfrecord" in verbose.stderr.splitlines()[-1]
    assert len(verbose.stderr.splitlines()) > 1  # TensorFlow's own lines are there with -v
