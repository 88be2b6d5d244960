"""TFRecord conversion records the crystal (phase) of the files and refuses to mix phases."""

import numpy as np
import pytest

from ebsd_keras.crystal import load_phase, phase_record
from ebsd_keras.errors import EBSDInputError
from ebsd_keras.io.emsoft import write_emebsd
from ebsd_keras.io.tfrecord import read_metadata, write_tfrecords


def _file(path, phase_name):
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 256, size=(4, 8, 8), dtype=np.uint8)
    euler = rng.uniform(0, 1, size=(4, 3))
    meta = {"preprocessing": "none"}
    if phase_name is not None:
        meta["phase"] = phase_record(load_phase(phase_name))
    write_emebsd(path, patterns, euler, voltage_kv=20.0, metadata=meta, detector={"shape": (8, 8)})
    return path


def test_phase_is_recorded_and_mixing_phases_is_refused(tmp_path):
    ti_a, ti_b = _file(tmp_path / "a.h5", "ti"), _file(tmp_path / "b.h5", "ti")
    meta = write_tfrecords([("train", ti_a), ("val", ti_b)], tmp_path / "tfr", progress=False)
    assert meta["phase"]["laue_group"] == "6/mmm" and meta["phase"]["space_group"] == 194
    assert read_metadata(tmp_path / "tfr")["phase"]["name"] == "ti"
    fe = _file(tmp_path / "fe.h5", "fe")
    with pytest.raises(EBSDInputError, match=r"fe\.h5: phase: data of different phases cannot be mixed: ti .* fe"):
        write_tfrecords([("train", ti_a), ("val", fe)], tmp_path / "mixed", progress=False)
    assert not (tmp_path / "mixed").exists()
    # files without a phase record are Ni (the only crystal before phases were recorded)
    old = _file(tmp_path / "old.h5", None)
    with pytest.raises(EBSDInputError, match="different phases"):
        write_tfrecords([("train", ti_a), ("val", old)], tmp_path / "mixed2", progress=False)
    ni = _file(tmp_path / "ni.h5", "ni")
    assert write_tfrecords([("train", old), ("val", ni)], tmp_path / "ni", progress=False)["phase"]["name"] == "ni"
    assert write_tfrecords([("train", old)], tmp_path / "none", progress=False)["phase"] is None
