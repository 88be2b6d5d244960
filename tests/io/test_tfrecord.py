"""TFRecord schema, streaming writer, metadata and checksums (tiny files, non-square patterns to catch H/W swaps)."""

import json
import os

import h5py
import numpy as np
import pytest
import tensorflow as tf

import ebsd_keras.io.emsoft as emsoft
from ebsd_keras import __version__
from ebsd_keras.data.preprocess import CLAHEConfig, clahe
from ebsd_keras.errors import EBSDInputError, SchemaError
from ebsd_keras.io.emsoft import write_emebsd
from ebsd_keras.io.tfrecord import (
    SCHEMA_VERSION,
    parse_batch,
    read_metadata,
    serialize_example,
    shard_paths,
    verify_checksums,
    write_tfrecords,
)
from ebsd_keras.orientation import euler_to_quaternion

SHAPE = (6, 8)


def make_h5(path, n=20, shape=SHAPE, voltage=20.0, seed=0, metadata=None):
    """Write a tiny EMsoft-layout file; returns (patterns, euler, voltages)."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    euler = rng.uniform([0, 0, 0], [2 * np.pi, np.pi, 2 * np.pi], size=(n, 3))
    write_emebsd(path, patterns, euler, voltage_kv=voltage, metadata=metadata)
    volts = np.broadcast_to(np.asarray(voltage, dtype=np.float64), (n,)).copy()
    return patterns, euler, volts


def read_all(data_dir, split):
    """All records of a split, in shard order, parsed with parse_batch."""
    meta = read_metadata(data_dir)
    ds = tf.data.TFRecordDataset(shard_paths(data_dir, split), compression_type=meta["compression"] or "")
    batches = [parse_batch(b, meta["pattern_shape"]) for b in ds.batch(1000)]
    return {k: np.concatenate([b[k].numpy() for b in batches]) for k in batches[0]}


def no_temp_left(parent):
    return [p for p in os.listdir(parent) if p.startswith(".")] == []


# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 127, 128, 300_000, 2**40])
def test_hand_encoded_record_equals_tf_train_example(index):
    rng = np.random.default_rng(1)
    pattern = rng.integers(0, 256, size=SHAPE, dtype=np.uint8)
    q, e = [0.5, -0.5, 0.5, -0.5], [1.0, 2.0, 3.0]
    ref = tf.train.Example(
        features=tf.train.Features(
            feature={
                "pattern": tf.train.Feature(bytes_list=tf.train.BytesList(value=[pattern.tobytes()])),
                "quaternion": tf.train.Feature(float_list=tf.train.FloatList(value=q)),
                "euler": tf.train.Feature(float_list=tf.train.FloatList(value=e)),
                "voltage_kv": tf.train.Feature(float_list=tf.train.FloatList(value=[12.5])),
                "source": tf.train.Feature(int64_list=tf.train.Int64List(value=[3])),
                "index": tf.train.Feature(int64_list=tf.train.Int64List(value=[index])),
            }
        )
    )
    got = tf.train.Example.FromString(serialize_example(pattern, q, e, 12.5, 3, index))
    assert got == ref


def test_round_trip_two_splits(tmp_path):
    p1, e1, v1 = make_h5(tmp_path / "a.h5", n=23, voltage=np.repeat([10.0, 20.0], [11, 12]), seed=1)
    p2, e2, _ = make_h5(tmp_path / "b.h5", n=9, voltage=15.0, seed=2)
    out = tmp_path / "rec"
    meta = write_tfrecords([("train", tmp_path / "a.h5"), ("val", tmp_path / "b.h5")], out, progress=False)

    assert meta == read_metadata(out)
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["pattern_shape"] == list(SHAPE) and meta["dtype"] == "uint8"
    assert meta["count"] == {"train": 23, "val": 9}
    assert meta["count_by_voltage"] == {"train": {"10": 11, "20": 12}, "val": {"15": 9}}
    assert meta["voltages_kv"] == [10.0, 15.0, 20.0]
    assert meta["created_by"]["version"] == __version__
    assert [s["split"] for s in meta["sources"]] == ["train", "val"]
    assert meta["sources"][0]["voltage"]["per_pattern"] is True
    assert meta["sources"][1]["voltage"]["values_kv"] == [15.0]
    assert verify_checksums(out) == 2

    tr = read_all(out, "train")
    np.testing.assert_array_equal(tr["pattern"], p1)
    np.testing.assert_allclose(tr["euler"], e1, atol=1e-6)
    np.testing.assert_allclose(tr["quaternion"], euler_to_quaternion(e1), atol=1e-6)
    np.testing.assert_allclose(tr["voltage_kv"], v1)
    np.testing.assert_array_equal(tr["index"], np.arange(23))
    np.testing.assert_array_equal(tr["source"], 0)
    va = read_all(out, "val")
    np.testing.assert_array_equal(va["pattern"], p2)
    np.testing.assert_array_equal(va["source"], 1)
    np.testing.assert_allclose(va["voltage_kv"], 15.0)


def test_shard_sizes_and_names(tmp_path):
    make_h5(tmp_path / "a.h5", n=12)
    make_h5(tmp_path / "b.h5", n=8, seed=3)
    out = tmp_path / "rec"
    meta = write_tfrecords([("train", tmp_path / "a.h5"), ("train", tmp_path / "b.h5")], out, shard_size=7,
                           progress=False)  # fmt: skip
    shards = meta["shards"]["train"]
    assert [s["file"] for s in shards] == ["train-00000.tfrecord", "train-00001.tfrecord", "train-00002.tfrecord"]
    assert [s["count"] for s in shards] == [7, 7, 6]  # shards continue across the two files of one split
    assert sorted(os.listdir(out)) == sorted([s["file"] for s in shards] + ["metadata.json"])
    got = read_all(out, "train")
    np.testing.assert_array_equal(got["source"], [0] * 12 + [1] * 8)
    np.testing.assert_array_equal(got["index"], list(range(12)) + list(range(8)))


def test_gzip(tmp_path):
    p, _, _ = make_h5(tmp_path / "a.h5", n=10)
    out = tmp_path / "rec"
    meta = write_tfrecords([("test", tmp_path / "a.h5")], out, compression="GZIP", progress=False)
    assert meta["compression"] == "GZIP"
    (shard,) = meta["shards"]["test"]
    assert shard["file"] == "test-00000.tfrecord.gz"
    assert (out / shard["file"]).read_bytes()[:2] == b"\x1f\x8b"  # gzip magic
    np.testing.assert_array_equal(read_all(out, "test")["pattern"], p)


def test_streams_through_iter_emebsd_chunks(tmp_path, monkeypatch):
    p, _, _ = make_h5(tmp_path / "a.h5", n=11)
    seen = []
    real = emsoft.iter_emebsd

    def spy(path, chunk_size=4096, **kw):
        for chunk in real(path, chunk_size=chunk_size, **kw):
            seen.append((chunk_size, chunk.patterns.shape[0]))
            yield chunk

    monkeypatch.setattr(emsoft, "iter_emebsd", spy)
    write_tfrecords([("train", tmp_path / "a.h5")], tmp_path / "rec", chunk_size=4, progress=False)
    assert seen == [(4, 4), (4, 4), (4, 3)]  # never more than one chunk of patterns in memory
    np.testing.assert_array_equal(read_all(tmp_path / "rec", "train")["pattern"], p)


def test_clahe_applied_at_convert_time(tmp_path):
    p, _, _ = make_h5(tmp_path / "a.h5", n=5, shape=(16, 16), metadata={"preprocessing": {"clahe": "none"}})
    cfg = CLAHEConfig(clip_limit=2.0, tiles=(2, 2))
    meta = write_tfrecords([("train", tmp_path / "a.h5")], tmp_path / "rec", preprocess=cfg, progress=False)
    assert meta["preprocessing"]["method"] == "clahe-opencv" and meta["preprocessing"]["clip_limit"] == 2.0
    np.testing.assert_array_equal(read_all(tmp_path / "rec", "train")["pattern"], clahe(p, cfg))


def test_clahe_twice_refused(tmp_path):
    make_h5(tmp_path / "a.h5", n=5, metadata={"preprocessing": CLAHEConfig().to_dict()})
    with pytest.raises(EBSDInputError, match="preprocessing") as exc:
        write_tfrecords([("train", tmp_path / "a.h5")], tmp_path / "rec", preprocess=CLAHEConfig(), progress=False)
    assert "a.h5" in str(exc.value) and "already" in str(exc.value)
    assert not (tmp_path / "rec").exists()
    # Without --clahe the recorded preprocessing is carried over.
    meta = write_tfrecords([("train", tmp_path / "a.h5")], tmp_path / "rec", progress=False)
    assert meta["preprocessing"]["method"] == "clahe-opencv"


def test_mixed_preprocessing_refused(tmp_path):
    make_h5(tmp_path / "a.h5", n=5, metadata={"preprocessing": CLAHEConfig().to_dict()})
    make_h5(tmp_path / "b.h5", n=5, metadata={"preprocessing": "none"})
    with pytest.raises(EBSDInputError, match="b.h5: preprocessing"):
        write_tfrecords([("train", tmp_path / "a.h5"), ("val", tmp_path / "b.h5")], tmp_path / "r", progress=False)


def test_schema_version_mismatch(tmp_path):
    make_h5(tmp_path / "a.h5", n=3)
    out = tmp_path / "rec"
    write_tfrecords([("train", tmp_path / "a.h5")], out, progress=False)
    meta = json.loads((out / "metadata.json").read_text())
    meta["schema_version"] = SCHEMA_VERSION + 1
    (out / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(SchemaError) as exc:
        read_metadata(out)
    assert "metadata.json" in str(exc.value) and "schema_version" in str(exc.value)


def test_missing_key_and_missing_metadata(tmp_path):
    make_h5(tmp_path / "a.h5", n=3)
    out = tmp_path / "rec"
    write_tfrecords([("train", tmp_path / "a.h5")], out, progress=False)
    meta = json.loads((out / "metadata.json").read_text())
    del meta["shards"]
    (out / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(SchemaError, match="metadata.json: shards"):
        read_metadata(out)
    with pytest.raises(EBSDInputError, match="metadata.json"):
        read_metadata(tmp_path)


def test_pattern_shape_mismatch(tmp_path):
    make_h5(tmp_path / "a.h5", n=3)
    make_h5(tmp_path / "b.h5", n=3, shape=(8, 6))
    with pytest.raises(EBSDInputError) as exc:
        write_tfrecords([("train", tmp_path / "a.h5"), ("val", tmp_path / "b.h5")], tmp_path / "rec", progress=False)
    assert "b.h5" in str(exc.value) and "EBSDPatterns" in str(exc.value)
    assert not (tmp_path / "rec").exists()


def test_failure_mid_conversion_leaves_nothing(tmp_path):
    make_h5(tmp_path / "a.h5", n=30)
    make_h5(tmp_path / "b.h5", n=4, seed=5)
    with h5py.File(tmp_path / "b.h5", "r+") as f:  # corrupt the second file after it was written validly
        f["EMData/EBSD/EulerAngles"][2, 1] = np.nan
    out = tmp_path / "rec"
    # the first file is fully written (3 shards) before the second one fails
    with pytest.raises(EBSDInputError) as exc:
        write_tfrecords([("train", tmp_path / "a.h5"), ("val", tmp_path / "b.h5")], out, shard_size=10,
                        progress=False)  # fmt: skip
    assert "b.h5" in str(exc.value) and "EulerAngles" in str(exc.value)
    assert not out.exists()
    assert no_temp_left(tmp_path)


def test_existing_output_untouched(tmp_path):
    make_h5(tmp_path / "a.h5", n=3)
    out = tmp_path / "rec"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_tfrecords([("train", tmp_path / "a.h5")], out, progress=False)
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"
    write_tfrecords([("train", tmp_path / "a.h5")], out, overwrite=True, progress=False)
    assert not (out / "keep.txt").exists() and read_metadata(out)["count"] == {"train": 3}
    assert no_temp_left(tmp_path)


def test_empty_inputs(tmp_path):
    with pytest.raises(EBSDInputError, match="no input files"):
        write_tfrecords([], tmp_path / "rec", progress=False)
    make_h5(tmp_path / "a.h5", n=2)
    with h5py.File(tmp_path / "a.h5", "r+") as f:
        del f["EMData/EBSD/EBSDPatterns"]
        f.create_dataset("EMData/EBSD/EBSDPatterns", shape=(0, *SHAPE), dtype=np.uint8)
    with pytest.raises(EBSDInputError, match="a.h5: EMData/EBSD/EBSDPatterns"):
        write_tfrecords([("train", tmp_path / "a.h5")], tmp_path / "rec", progress=False)
    assert not (tmp_path / "rec").exists()


def test_duplicate_input_and_bad_split_refused(tmp_path):
    make_h5(tmp_path / "a.h5", n=2)
    with pytest.raises(EBSDInputError, match="listed twice"):
        write_tfrecords([("train", tmp_path / "a.h5"), ("val", tmp_path / "a.h5")], tmp_path / "r", progress=False)
    with pytest.raises(EBSDInputError, match="split"):
        write_tfrecords([("tr/ain", tmp_path / "a.h5")], tmp_path / "r", progress=False)


def test_verify_checksums_detects_corruption(tmp_path):
    make_h5(tmp_path / "a.h5", n=4)
    out = tmp_path / "rec"
    write_tfrecords([("train", tmp_path / "a.h5")], out, shard_size=2, progress=False)
    shard = out / "train-00001.tfrecord"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(EBSDInputError, match="sha256") as exc:
        verify_checksums(out)
    assert "train-00001.tfrecord" in str(exc.value) and "train-00000" not in str(exc.value)


def test_gfile_url_output(tmp_path):
    """Non-local paths (here TF's in-memory ram:// filesystem) go through tf.io.gfile; failures leave nothing."""
    p, _, _ = make_h5(tmp_path / "a.h5", n=5)
    make_h5(tmp_path / "b.h5", n=3, seed=1)
    with h5py.File(tmp_path / "b.h5", "r+") as f:
        f["EMData/EBSD/EulerAngles"][1, 0] = np.inf
    url = f"ram://ebsd-test-{tmp_path.name}/rec"
    with pytest.raises(EBSDInputError, match="b.h5: EMData/EBSD/EulerAngles"):
        write_tfrecords([("train", tmp_path / "a.h5"), ("val", tmp_path / "b.h5")], url, progress=False)
    assert not tf.io.gfile.exists(url)
    write_tfrecords([("train", tmp_path / "a.h5")], url, shard_size=2, progress=False)
    assert verify_checksums(url) == 3
    np.testing.assert_array_equal(read_all(url, "train")["pattern"], p)
    with pytest.raises(FileExistsError):
        write_tfrecords([("train", tmp_path / "a.h5")], url, progress=False)
    tf.io.gfile.rmtree(url)


@pytest.mark.parametrize(
    ("recorded", "applied"),
    [
        (CLAHEConfig().to_dict(), True),
        ({"rescale": "per pattern", "clahe": CLAHEConfig().to_dict()}, True),
        ({"rescale": "per pattern", "clahe": "none"}, False),  # what `ebsd-keras dataset` writes without CLAHE
        ({"clahe": None}, False),
        ("clahe", True),
        ("none", False),
        ([{"step": "rescale"}, {"step": "clahe", "clip_limit": 10}], True),
    ],
)
def test_clahe_detection_in_provenance(recorded, applied):
    from ebsd_keras.io.tfrecord import _is_clahe

    assert _is_clahe(recorded) is applied


# ---------------------------------------------------------------------------------------------------------------------
# shard verification before training (issue 16)
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "remove"])
def test_verify_shards_names_the_damaged_shard(tmp_path, damage):
    from ebsd_keras.io.tfrecord import verify_shards

    rng = np.random.default_rng(0)
    for name in ("t.h5", "v.h5"):
        write_emebsd(tmp_path / name, rng.integers(0, 255, (12, 8, 8), dtype=np.uint8), rng.uniform(0, 1, (12, 3)),
                     voltage_kv=20.0)  # fmt: skip
    out = tmp_path / "rec"
    write_tfrecords([("train", tmp_path / "t.h5"), ("val", tmp_path / "v.h5")], out, shard_size=4, progress=False)
    assert verify_shards(out) == 6
    shard = out / "train-00002.tfrecord"
    data = shard.read_bytes()
    if damage == "flip":
        shard.write_bytes(data[:20] + bytes([data[20] ^ 1]) + data[21:])
    elif damage == "truncate":
        shard.write_bytes(data[:-7])
    elif damage == "empty":
        shard.write_bytes(b"")
    else:
        shard.unlink()
    with pytest.raises(EBSDInputError, match="missing" if damage == "remove" else "checksum mismatch") as info:
        verify_shards(out, ("train",))
    assert info.value.path == str(shard) and "ebsd-keras convert" in str(info.value)
    assert verify_shards(out, ("val", "test")) == 3  # other splits are not checked when not asked for


def test_verify_shards_counts_records_when_no_checksum_was_recorded(tmp_path):
    import json

    from ebsd_keras.io.tfrecord import verify_shards

    rng = np.random.default_rng(1)
    write_emebsd(tmp_path / "t.h5", rng.integers(0, 255, (6, 8, 8), dtype=np.uint8), rng.uniform(0, 1, (6, 3)),
                 voltage_kv=20.0)  # fmt: skip
    out = tmp_path / "rec"
    write_tfrecords([("train", tmp_path / "t.h5")], out, shard_size=3, progress=False)
    meta = json.loads((out / "metadata.json").read_text())
    for s in meta["shards"]["train"]:
        del s["sha256"]
    (out / "metadata.json").write_text(json.dumps(meta))
    assert verify_shards(out) == 2
    shard = out / "train-00001.tfrecord"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(EBSDInputError, match="records, metadata.json says 3") as info:
        verify_shards(out)
    assert info.value.field == "count"


def test_all_constant_patterns_are_refused_and_some_warned(tmp_path, caplog):
    rng = np.random.default_rng(2)
    zeros = np.zeros((4, 8, 8), np.uint8)
    write_emebsd(tmp_path / "z.h5", zeros, rng.uniform(0, 1, (4, 3)), voltage_kv=20.0)
    with pytest.raises(EBSDInputError, match="all 4 patterns are constant"):
        write_tfrecords([("train", tmp_path / "z.h5")], tmp_path / "rec", progress=False)
    assert not (tmp_path / "rec").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["z.h5"]
    some = rng.integers(0, 255, (4, 8, 8), dtype=np.uint8)
    some[1] = 7
    write_emebsd(tmp_path / "s.h5", some, rng.uniform(0, 1, (4, 3)), voltage_kv=20.0)
    with caplog.at_level("WARNING"):
        write_tfrecords([("train", tmp_path / "s.h5")], tmp_path / "rec", progress=False)
    assert "1 of 4 patterns are constant" in caplog.text
