"""make_dataset: values, order/determinism, voltage filtering, shapes, tf.distribute options, Keras fit."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ebsd_keras.data.pipeline import dataset_size, make_dataset
from ebsd_keras.errors import EBSDInputError
from ebsd_keras.io.emsoft import write_emebsd
from ebsd_keras.io.tfrecord import write_tfrecords
from ebsd_keras.orientation import euler_to_quaternion

SHAPE = (6, 8)
N = 40
VOLTS = np.repeat([10.0, 20.0, 30.0], [12, 14, 14])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A train split of N patterns at three voltages in 4 shards, and a 5-pattern val split."""
    tmp = tmp_path_factory.mktemp("pipe")
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 256, size=(N, *SHAPE), dtype=np.uint8)
    euler = rng.uniform([0, 0, 0], [2 * np.pi, np.pi, 2 * np.pi], size=(N, 3))
    write_emebsd(tmp / "train.h5", patterns, euler, voltage_kv=VOLTS)
    write_emebsd(tmp / "val.h5", patterns[:5], euler[:5], voltage_kv=20.0)
    out = tmp / "rec"
    write_tfrecords([("train", tmp / "train.h5"), ("val", tmp / "val.h5")], out, shard_size=10, progress=False)
    return {"dir": out, "patterns": patterns, "euler": euler}


def collect(ds):
    batches = list(ds)
    return {k: np.concatenate([b[k].numpy() for b in batches]) for k in batches[0]}, [len(b["index"]) for b in batches]


def test_round_trip_values_and_types(data):
    ds = make_dataset(data["dir"], "train", batch_size=16, shuffle=False)
    spec = ds.element_spec
    assert spec["pattern"].shape.as_list() == [None, *SHAPE, 1] and spec["pattern"].dtype == tf.float32
    assert spec["quaternion"].shape.as_list() == [None, 4] and spec["quaternion"].dtype == tf.float32
    assert spec["euler"].shape.as_list() == [None, 3]
    assert spec["voltage_kv"].shape.as_list() == [None] and spec["voltage_kv"].dtype == tf.float32
    assert spec["source"].dtype == tf.int64 and spec["index"].dtype == tf.int64
    got, sizes = collect(ds)
    assert sizes == [16, 16, 8]
    np.testing.assert_array_equal(got["index"], np.arange(N))  # unshuffled: file order
    np.testing.assert_allclose(got["pattern"][..., 0], data["patterns"] / 255.0, atol=1e-6)
    assert got["pattern"].min() >= 0.0 and got["pattern"].max() <= 1.0
    np.testing.assert_allclose(got["quaternion"], euler_to_quaternion(data["euler"]), atol=1e-6)
    np.testing.assert_allclose(got["euler"], data["euler"], atol=1e-6)
    np.testing.assert_allclose(got["voltage_kv"], VOLTS)
    assert dataset_size(data["dir"], "train") == N and dataset_size(data["dir"], "val") == 5


def test_seeded_order_is_deterministic_and_seed_dependent(data):
    def order(seed, epochs=1):
        ds = make_dataset(data["dir"], "train", batch_size=8, seed=seed, shuffle_buffer=100, repeat=epochs)
        return collect(ds)[0]["index"].tolist()

    a = order(1)
    assert sorted(a) == list(range(N)) and a != list(range(N))
    assert order(1) == a
    assert order(2) != a
    two = order(1, epochs=2)
    assert two[:N] == a and sorted(two[N:]) == list(range(N)) and two[N:] != a  # reshuffled each epoch


def test_voltage_filter(data):
    got, _ = collect(make_dataset(data["dir"], "train", batch_size=5, seed=0, voltages=[20.0, 30]))
    assert set(got["voltage_kv"].tolist()) == {20.0, 30.0}
    assert sorted(got["index"].tolist()) == list(range(12, N))
    assert dataset_size(data["dir"], "train", voltages=[20, 30]) == N - 12

    ds = make_dataset(data["dir"], "train", batch_size=5, seed=0, exclude_voltages=[20], drop_remainder=True)
    assert ds.element_spec["pattern"].shape.as_list() == [5, *SHAPE, 1]
    got, sizes = collect(ds)
    assert set(got["voltage_kv"].tolist()) == {10.0, 30.0}
    assert sizes == [5] * ((N - 14) // 5)
    assert dataset_size(data["dir"], "train", exclude_voltages=[20]) == N - 14

    with pytest.raises(EBSDInputError, match="voltages") as exc:
        make_dataset(data["dir"], "train", voltages=[20000])  # volts instead of kV
    assert "rec" in str(exc.value) and "10, 20, 30" in str(exc.value)


def test_bad_arguments(data):
    with pytest.raises(EBSDInputError, match="pattern_shape") as exc:
        make_dataset(data["dir"], image_shape=(60, 60, 1))
    assert str(data["dir"]) in str(exc.value)
    with pytest.raises(EBSDInputError, match="pattern_shape"):
        make_dataset(data["dir"], image_shape=(*SHAPE, 3))  # patterns are single-channel
    make_dataset(data["dir"], image_shape=(*SHAPE, 1))  # matching shape is fine
    with pytest.raises(EBSDInputError, match="split.*available: train, val"):
        make_dataset(data["dir"], "test")


def test_distribute_options(data):
    many = make_dataset(data["dir"], "train", seed=3).options()
    assert many.experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.FILE
    assert many.deterministic is True
    one = make_dataset(data["dir"], "val").options()  # a single shard cannot be split by file
    assert one.experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA


def test_cache_and_repeat(data):
    ds = make_dataset(data["dir"], "train", batch_size=16, seed=0, cache=True, repeat=2)
    assert sum(collect(ds)[1]) == 2 * N


def test_keras_fit_one_step(data):
    ds = make_dataset(data["dir"], "train", batch_size=8, seed=0).map(lambda d: (d["pattern"], d["quaternion"]))
    model = keras.Sequential([keras.Input((*SHAPE, 1)), keras.layers.Flatten(), keras.layers.Dense(4)])
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(ds, epochs=1, steps_per_epoch=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
