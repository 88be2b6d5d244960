"""`ebsd-keras tune`: bad input refused before any trial (exit 2), and a distributed search (chief + two workers)."""

import csv
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ebsd_keras.cli import main

# The tiny budget and data of test_tuning.py (the tests run with --import-mode=importlib: no sibling imports).
_spec = importlib.util.spec_from_file_location("_tuning_test_helpers", Path(__file__).with_name("test_tuning.py"))
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
TINY_BUDGET, make_tiny_tfrecords, write = _helpers.TINY_BUDGET, _helpers.make_tiny_tfrecords, _helpers.write

SPACE = (
    TINY_BUDGET.replace("critic_epochs = 1", "critic_epochs = 0").replace("max_trials = 2", "max_trials = 3")
    + """
[hyperparameters]
latent_dim = { type = "int", min = 8, max = 512, sampling = "log" }
kl = { type = "float", min = 0.1, max = 10.0, sampling = "log" }
learning_rate = { type = "float", min = 1e-5, max = 1e-3, sampling = "log" }
"""
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_tfrecords(tmp_path_factory.mktemp("cli_tune_data"))


@pytest.mark.parametrize(
    "entry, field",
    [
        ('latent_size = { type = "int", min = 8, max = 64 }', "hyperparameters.latent_size"),
        ('kl = { type = "float", min = 2.0, max = 1.0 }', "hyperparameters.kl.min"),
        ('learning_rate = { type = "float", min = 0.0, max = 1e-3, sampling = "log" }',
         "hyperparameters.learning_rate.min"),
    ],
)  # fmt: skip
def test_bad_space_exits_2_before_any_trial(data, tmp_path, capsys, entry, field):
    space = write(tmp_path, TINY_BUDGET + "\n[hyperparameters]\n" + entry + "\n")
    out = tmp_path / "out"
    assert main(["tune", str(space), "--data", str(data), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ebsd-keras tune: error: ") and str(space) in err and field in err
    assert not out.exists()  # nothing ran, nothing written


def test_other_bad_input_exits_2(data, tmp_path, capsys):
    space = write(tmp_path, SPACE)
    assert main(["tune", str(tmp_path / "missing.toml"), "--data", str(data), "-o", str(tmp_path / "o")]) == 2
    assert main(["tune", str(space), "--data", str(tmp_path / "nodata"), "-o", str(tmp_path / "o")]) == 2
    assert main(["tune", str(space), "--data", str(data), "-o", str(tmp_path / "o"), "--max-trials", "0"]) == 2
    env = {"KERASTUNER_TUNER_ID": "tuner0"}  # without the oracle's address
    os.environ.update(env)
    try:
        assert main(["tune", str(space), "--data", str(data), "-o", str(tmp_path / "o")]) == 2
    finally:
        del os.environ["KERASTUNER_TUNER_ID"]
    err = capsys.readouterr().err
    assert "missing.toml" in err and "nodata" in err and "--max-trials" in err and "KERASTUNER_ORACLE_IP" in err
    assert not (tmp_path / "o").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(argv, tuner_id, port, log):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERASTUNER_TUNER_ID": tuner_id,
           "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port)}  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "ebsd_keras", *argv], env=env, stdout=log, stderr=subprocess.STDOUT)


def test_distributed_chief_and_two_workers(data, tmp_path):
    """Chief and workers with separate directories (as on separate machines): every trial runs once, on one worker,
    and the chief ends up holding every trial's result, its summary table and the best configuration."""
    space = write(tmp_path, SPACE)
    port = _free_port()
    procs = {}
    try:
        for tuner_id in ("chief", "tuner0", "tuner1"):
            argv = ["tune", str(space), "--data", str(data), "-o", str(tmp_path / tuner_id), "-q"]
            procs[tuner_id] = _start(argv, tuner_id, port, open(tmp_path / f"{tuner_id}.log", "w"))
        deadline = time.monotonic() + 240
        for tuner_id, proc in procs.items():
            rc = proc.wait(timeout=max(1, deadline - time.monotonic()))
            assert rc == 0, (tmp_path / f"{tuner_id}.log").read_text()[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    ran = {w: sorted(p.name[len("trial_"):] for p in (tmp_path / w / "space-random").glob("trial_*"))
           for w in ("tuner0", "tuner1")}  # fmt: skip
    all_ran = ran["tuner0"] + ran["tuner1"]
    assert sorted(all_ran) == sorted(set(all_ran)) and len(all_ran) == 3, ran  # each trial on exactly one worker
    for w, trials in ran.items():  # a worker's trial dir holds the checkpoint it trained
        assert all((tmp_path / w / "space-random" / f"trial_{t}" / "checkpoint.weights.h5").is_file() for t in trials)

    chief = tmp_path / "chief"
    with open(chief / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["trial_id"] for r in rows) == sorted(all_ran)
    assert all(r["status"] == "COMPLETED" and float(r["val_fidelity"]) > 0 for r in rows)
    for t in all_ran:  # the chief's oracle recorded each result
        trial = json.loads((chief / "space-random" / f"trial_{t}" / "trial.json").read_text())
        assert trial["status"] == "COMPLETED" and trial["score"] == pytest.approx(
            float(next(r["val_fidelity"] for r in rows if r["trial_id"] == t))
        )
    best = json.loads((chief / "best" / "hyperparameters.json").read_text())
    assert best["score"] == pytest.approx(min(float(r["val_fidelity"]) for r in rows))
    assert (chief / "best" / "gan.json").is_file()
