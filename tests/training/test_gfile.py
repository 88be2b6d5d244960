"""A run whose outputs live on a non-local file system (TensorFlow's in-memory ``ram://``, standing in for
``gs://`` / ``s3://`` / ``hdfs://``): every output and the resume/init paths go through ``tf.io.gfile``."""

import json

import tensorflow as tf

from ebsd_keras.training import fs, train
from ebsd_keras.training.phases import OUTPUT_FILES, build_model

from .conftest import train_config


def test_training_writes_every_output_through_gfile(tiny_data):
    out = "ram://ebsd_keras_test/run"
    summary = train(train_config(tiny_data, out, epochs=2, steps_per_epoch=2), verbose=0)
    assert summary["status"] == "finished"
    for name in OUTPUT_FILES:
        assert tf.io.gfile.exists(f"{out}/{name}"), name
    assert not tf.io.gfile.exists(f"{out}/backup")  # removed at the end, like a local run's
    assert json.loads(fs.read_text(f"{out}/config.json"))["output_dir"] == out
    rows = fs.read_text(f"{out}/history.csv").strip().splitlines()
    assert len(rows) == 3  # header + 2 epochs
    assert tf.io.gfile.glob(f"{out}/logs/train/events.out.tfevents.*")
    # A later phase starts from the remote model.keras.
    model = build_model(train_config(tiny_data, "-", "gan", init_from=f"{out}/model.keras").resolved())
    assert model.model_config.name == "tiny"


def test_atomic_text_and_copy_helpers(tmp_path):
    for base in (str(tmp_path), "ram://ebsd_keras_test/helpers"):
        fs.makedirs(base)
        target = fs.join(base, "a.txt")
        fs.write_text(target, "one")
        fs.write_text(target, "two")  # replaces
        fs.copy(target, fs.join(base, "b.txt"))
        assert fs.read_text(fs.join(base, "b.txt")) == "two"
        assert sorted(p.rsplit("/", 1)[-1] for p in fs.glob(fs.join(base, "*"))) == ["a.txt", "b.txt"]  # no temps
        with fs.atomic_target(fs.join(base, "c.bin"), ".bin") as local:
            open(local, "wb").write(b"x")
        with fs.local_copy(fs.join(base, "c.bin"), ".bin") as local:
            assert open(local, "rb").read() == b"x"
        fs.remove(target)
        assert not fs.exists(target)
