"""Tiny TFRecord datasets for the training tests, made with the real writers (write_emebsd -> write_tfrecords)."""

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from ebsd_keras.io.emsoft import write_emebsd
from ebsd_keras.io.tfrecord import write_tfrecords

N_TRAIN = 48
N_VAL = 8
BATCH = 8


def _patterns(rng, n, shape):
    """Smooth blobs plus noise: enough structure for the reconstruction loss to move, uint8 (N, H, W)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape)
    centers = rng.uniform(0.2, 0.8, size=(n, 2))
    blobs = np.exp(-((yy[None] - centers[:, :1, None]) ** 2 + (xx[None] - centers[:, 1:, None]) ** 2) / 0.05)
    noisy = blobs + 0.1 * rng.random((n, *shape))
    return np.clip(255 * noisy / noisy.max(), 0, 255).astype(np.uint8)


def make_tfrecord_dataset(tmp, shape=(60, 60), n_train=N_TRAIN, n_val=N_VAL, seed=0, shard_size=16):
    """Write train/val EMsoft files and convert them to TFRecords in ``tmp/rec`` (``shard_size`` records per shard
    file); return that directory."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val
    patterns = _patterns(rng, n, shape)
    euler = rng.uniform([0, 0, 0], [2 * np.pi, np.pi, 2 * np.pi], size=(n, 3))
    write_emebsd(tmp / "train.h5", patterns[:n_train], euler[:n_train], voltage_kv=20.0)
    write_emebsd(tmp / "val.h5", patterns[n_train:], euler[n_train:], voltage_kv=20.0)
    out = tmp / "rec"
    write_tfrecords([("train", tmp / "train.h5"), ("val", tmp / "val.h5")], out, shard_size=shard_size, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """60x60 patterns (the tiny preset's shape): 48 train, 8 val, 20 kV."""
    return make_tfrecord_dataset(tmp_path_factory.mktemp("train_data"))


@pytest.fixture(scope="session")
def small_shape_data(tmp_path_factory):
    """30x30 patterns: a shape the 60x60 tiny preset cannot take."""
    return make_tfrecord_dataset(tmp_path_factory.mktemp("train_data_30"), shape=(30, 30), n_train=16, n_val=8)


def keras_file_arrays(path, part=None) -> dict:
    """Every array stored in a .keras file (networks and both optimizers), ``{h5 path: array}``, read directly from
    its ``model.weights.h5`` (much faster than ``load_model``). ``part``: only "encoder", "decoder", "critic", ....
    Keras does not store SeedGenerator states in .keras files."""
    with zipfile.ZipFile(path) as z:
        assert json.loads(z.read("config.json"))["class_name"] == "CVAEGAN"
        arrays = {}
        with h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as h5:
            h5.visititems(
                lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
    return {k: v for k, v in arrays.items() if part is None or k.split("/")[0] == part}


def same_arrays(a: dict, b: dict) -> bool:
    """Same keys and bit-identical arrays."""
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------------------------------
# A cvae -> critic -> gan chain, shared by test_phases.py and test_resume.py (training is the slow part of the tests)
# ---------------------------------------------------------------------------------------------------------------------
EPOCHS, STEPS = 2, 3
#: Files whose write is interrupted by SIGKILL in the chain's "killed-<name>" runs (tests/training/_kill_in_write.py):
#: the epoch-0 resume state, the best checkpoint, the final model.
KILLED_WRITES = ("state.json", "best.keras", "model.keras")
KILL_IN_WRITE = str(Path(__file__).with_name("_kill_in_write.py"))


def train_config(data, out, phase="cvae", **kw):
    """The tests' TrainConfig: tiny preset, EPOCHS x STEPS steps of BATCH patterns, grids every 2 steps, seed 0."""
    from ebsd_keras.training import TrainConfig

    base = dict(
        data_dir=str(data),
        output_dir=str(out),
        phase=phase,
        preset="tiny",
        batch_size=BATCH,
        epochs=EPOCHS,
        steps_per_epoch=STEPS,
        n_critic=1,
        image_every_steps=2,
        seed=0,
    )
    return TrainConfig(**{**base, **kw})


def cli_argv(data, out, phase="cvae", init_from=None, seed=0):
    """`ebsd-keras train` arguments with the settings of :func:`train_config`."""
    argv = [
        "train", "--data", str(data), "-o", str(out), "--phase", phase, "--preset", "tiny", "--epochs", str(EPOCHS),
        "--steps-per-epoch", str(STEPS), "--batch-size", str(BATCH), "--n-critic", "1", "--image-every", "2",
        "--seed", str(seed), "-q",
    ]  # fmt: skip
    return argv + (["--init-from", str(init_from)] if init_from else [])


def start_cli(argv, python_script=False, **env):
    """`python -m ebsd_keras *argv` (or `python *argv` for a script) in a background subprocess (stdout + stderr
    captured)."""
    from ebsd_keras.training.callbacks import KILL_ENV_VAR

    full_env = {k: v for k, v in os.environ.items() if k != KILL_ENV_VAR}
    full_env.update({"TF_CPP_MIN_LOG_LEVEL": "3", **env})
    return subprocess.Popen(
        [sys.executable, *argv] if python_script else [sys.executable, "-m", "ebsd_keras", *argv],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="session")
def chain(tiny_data, tmp_path_factory):
    """cvae -> critic (init_from cvae) -> gan (init_from critic), through train(); ``{phase: {dir, summary}}``.

    Runs that other tests compare with this chain are started here, as CLI subprocesses running concurrently with
    the chain (training is the slow part of the tests; two cores do more than one):

    ``chain["again"]``, ``chain["seed1"]``
        the cvae phase with the same settings, seed 0 and seed 1 (test_phases.py: same seed, same weights);
    ``chain["killed"]``
        the gan phase with the same settings, killing itself after STEPS + 1 steps, i.e. during epoch 2
        (test_resume.py);
    ``chain["killed-<name>"]``
        the same, killed while writing the file ``name`` of :data:`KILLED_WRITES` (test_resume.py).

    Each is ``{"proc": Popen, "argv": list, "dir": Path}``.
    """
    from ebsd_keras.training import train
    from ebsd_keras.training.callbacks import KILL_ENV_VAR

    root = tmp_path_factory.mktemp("chain")
    runs, procs, prev = {}, [], None

    def background(name, argv, python_script=False, **env):
        proc = start_cli(argv, python_script=python_script, **env)
        runs[name] = {"proc": proc, "argv": argv[2:] if python_script else argv, "dir": root / name}
        procs.append(runs[name]["proc"])

    background("again", cli_argv(tiny_data, root / "again"))
    background("seed1", cli_argv(tiny_data, root / "seed1", seed=1))
    try:
        for phase in ("cvae", "critic", "gan"):
            if phase == "gan":
                argv = cli_argv(tiny_data, root / "killed", "gan", init_from=prev)
                background("killed", argv, **{KILL_ENV_VAR: str(STEPS + 1)})
                for name in KILLED_WRITES:
                    argv = cli_argv(tiny_data, root / f"killed-{name}", "gan", init_from=prev)
                    background(f"killed-{name}", [KILL_IN_WRITE, name, *argv], python_script=True)
            out = root / phase
            summary = train(train_config(tiny_data, out, phase, init_from=prev), verbose=0)
            runs[phase] = {"dir": out, "summary": summary}
            prev = str(out / "model.keras")
        yield runs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
