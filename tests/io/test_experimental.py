"""Experimental maps in through kikuchipy, with background removal and neighbour averaging recorded."""

from pathlib import Path

import kikuchipy as kp
import numpy as np
import pytest

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.io.experimental import ExperimentalSettings, read_experimental

KP_DATA = Path(kp.data.__file__).parent
NI = KP_DATA / "kikuchipy_h5ebsd" / "patterns.h5"  # kikuchipy's experimental Ni map, 3 x 3 patterns of 60 x 60


def test_kikuchipy_h5ebsd_map_with_every_step_recorded():
    m = read_experimental(NI, ExperimentalSettings(average=3))
    assert m.patterns.shape == (9, 60, 60) and m.map_shape == (3, 3) and m.voltage_kv == 20.0
    assert m.patterns.dtype == np.float32 and m.patterns.min() == 0.0 and m.patterns.max() == 1.0
    assert m.detector.tilt_deg == 0.0 and abs(m.detector.pc[2] - 0.5007) < 1e-3
    steps = [s["step"] for s in m.provenance["preprocessing"]]
    assert steps == ["static background removal", "dynamic background removal", "neighbour averaging", "rescale"]
    assert m.provenance["file"] == "patterns.h5" and "/" not in m.provenance["file"]
    # the steps change the patterns: without them the raw patterns (rescaled) come back
    raw = read_experimental(NI, ExperimentalSettings(static_background="none", dynamic_background="none"))
    assert [s["step"] for s in raw.provenance["preprocessing"]] == ["rescale"]
    assert np.abs(raw.patterns - m.patterns).mean() > 0.05
    s = kp.data.nickel_ebsd_small()
    expected = s.data.reshape(9, 60, 60).astype(np.float32)
    expected = (expected - expected.min(axis=(1, 2), keepdims=True)) / np.ptp(expected, axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(raw.patterns, expected, atol=1e-6)


def test_other_formats_and_one_line_errors(tmp_path):
    nordif = read_experimental(KP_DATA / "nordif" / "Pattern.dat", ExperimentalSettings(static_background="mean"))
    assert (
        nordif.patterns.shape == (9, 60, 60) and nordif.provenance["preprocessing"][0]["background"] == "mean pattern"
    )
    emsoft = KP_DATA / "emsoft_ebsd" / "EBSD_TEST_Ni.h5"
    with pytest.raises(EBSDInputError, match="no static background"):
        read_experimental(emsoft)
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(EBSDInputError, match="kikuchipy cannot read"):
        read_experimental(bad)
    with pytest.raises(EBSDInputError, match="odd side"):
        ExperimentalSettings(average=2)
