"""Multi-worker training (``--distributed``, MultiWorkerMirroredStrategy from TF_CONFIG) matches single-process
training with the same global batch and seed; TF_CONFIG and shard-count errors.

Two worker processes on 127.0.0.1 (free ports) run `ebsd-keras train --distributed` while this process runs the same
configuration without distribution. The comparison is made exact up to floating-point summation order by choosing
an objective without training noise: the critic phase with only the orientation loss (adversarial and
gradient-penalty weights 0; the prior samples are still drawn but get no weight), started from the same saved model.
The training split is 2 shard files of 8 patterns and the global batch is 16, so every step sees the same 16 patterns
in both runs: each worker's replica gets one whole shard (file auto-sharding), the single process gets both.
Tolerance: the weights differ by less than 1e-4 of the distance they moved in training (measured: 5e-8).
(The noisy objectives — reparameterisation, prior samples — draw different noise per replica by design, so they
cannot match exactly; tests/models/test_cvaegan.py checks their distribution with MirroredStrategy.)
"""

import json
import socket

import numpy as np
import pytest

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.training import TrainConfig, train
from ebsd_keras.training.distribute import (
    WorkerRole,
    check_shards,
    read_tf_config,
    worker_output_dir,
)

from .conftest import keras_file_arrays, make_tfrecord_dataset, start_cli

STEPS, EPOCHS, GLOBAL_BATCH = 4, 1, 16
LOSS_WEIGHTS = {"adversarial_critic": 0.0, "gradient_penalty": 0.0}


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _argv(data, out, init):
    argv = [
        "train", "--distributed", "--data", str(data), "-o", str(out), "--phase", "critic", "--init-from", str(init),
        "--epochs", str(EPOCHS), "--steps-per-epoch", str(STEPS), "--batch-size", str(GLOBAL_BATCH),
        "--lipschitz", "clip", "--lr", "1e-3", "--critic-lr", "1e-3", "--image-every", "0", "--seed", "0", "-q",
    ]  # fmt: skip
    for k, v in LOSS_WEIGHTS.items():
        argv += ["--loss-weight", f"{k}={v}"]
    return argv


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two workers (background) and the single-process reference (here), same settings; their output dirs."""
    from ebsd_keras.models.cvaegan import CVAEGAN

    tmp = tmp_path_factory.mktemp("dist")
    data = make_tfrecord_dataset(tmp, n_train=16, n_val=8, shard_size=8)
    init = tmp / "init.keras"
    CVAEGAN(config="tiny", seed=0).save(str(init))
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    try:
        for i in range(2):
            tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
            procs.append(start_cli(_argv(data, tmp / "dist", init), TF_CONFIG=json.dumps(tf_config)))
        single = train(
            TrainConfig(
                data_dir=str(data), output_dir=str(tmp / "single"), phase="critic", init_from=str(init),
                preset="tiny", epochs=EPOCHS, steps_per_epoch=STEPS, batch_size=GLOBAL_BATCH, lipschitz="clip",
                learning_rate=1e-3, critic_learning_rate=1e-3, image_every_steps=0, seed=0, loss_weights=LOSS_WEIGHTS,
            ),
            verbose=0,
        )  # fmt: skip
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text
    return {"tmp": tmp, "init": init, "single": single, "outputs": outputs}


def test_two_workers_match_single_process(runs):
    tmp = runs["tmp"]
    init = keras_file_arrays(runs["init"], "critic")
    single = keras_file_arrays(tmp / "single" / "model.keras", "critic")
    dist = keras_file_arrays(tmp / "dist" / "model.keras", "critic")
    assert dist.keys() == single.keys()
    moved = np.sqrt(sum(np.sum((single[k] - init[k]) ** 2) for k in single))
    differ = np.sqrt(sum(np.sum((dist[k] - single[k]) ** 2) for k in single))
    assert moved > 1e-3  # training did change the weights
    print(f"distributed vs single: |dw| {differ:.3g}, moved {moved:.3g}, ratio {differ / moved:.3g}")
    assert differ < 1e-4 * moved, (differ, moved)


def test_only_the_chief_writes_and_reports(runs):
    tmp = runs["tmp"]
    out = tmp / "dist"
    for name in ("model.keras", "best.keras", "config.json", "history.csv", "summary.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".worker-*"))  # the other worker's scratch copy is gone
    summary = json.loads((out / "summary.json").read_text())
    assert summary["workers"] == 2 and summary["chief"] is True and summary["status"] == "finished"
    assert json.loads((out / "config.json").read_text())["distributed"] is True
    chief_out, other_out = runs["outputs"]
    assert "critic: finished" in chief_out and "critic: finished" not in other_out
    # Same logged training metric (global means over both replicas) as the single process.
    final = runs["single"]["final_metrics"]["disorientation_real_deg"]
    assert summary["final_metrics"]["disorientation_real_deg"] == pytest.approx(final, rel=1e-3)


@pytest.mark.parametrize(
    "value, field",
    [
        (None, None),
        ("{not json", None),
        ('{"cluster": {}, "task": {"type": "worker", "index": 0}}', "cluster"),
        ('{"cluster": {"worker": ["a:1", "b"]}, "task": {"type": "worker", "index": 0}}', "cluster.worker"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "task"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "task.index"),
    ],
)
def test_bad_tf_config_is_named(value, field):
    env = {} if value is None else {"TF_CONFIG": value}
    with pytest.raises(EBSDInputError) as err:
        read_tf_config(env)
    assert err.value.path == "TF_CONFIG" and err.value.field == field


def test_roles_and_output_dirs():
    conf = read_tf_config(
        {"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}'}
    )
    assert conf["task"]["index"] == 1
    assert worker_output_dir("gs://b/run", WorkerRole("worker", 1, 2, False)) == "gs://b/run/.worker-worker-1"
    assert worker_output_dir("runs/x", WorkerRole("worker", 0, 2, True)) == "runs/x"


def test_fewer_shards_than_workers_is_refused():
    check_shards(2, WorkerRole("worker", 0, 2, True), "d")
    with pytest.raises(EBSDInputError, match="1 TFRecord shard file.*2 workers") as err:
        check_shards(1, WorkerRole("worker", 0, 2, True), "d")
    assert err.value.field == "shards"
