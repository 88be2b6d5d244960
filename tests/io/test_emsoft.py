"""EMsoft HDF5 / text I/O: round trips, kikuchipy compatibility, real EMsoft files and every bad-input path."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import h5py
import kikuchipy as kp
import numpy as np
import pytest

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.io.emsoft import (
    EULER,
    NML,
    NUMANGLES,
    PATTERNS,
    VOLTAGE,
    EMEBSDWriter,
    bruker_pc_to_emsoft,
    emsoft_pc_to_bruker,
    iter_emebsd,
    pattern_intensity_range,
    read_angle_file,
    read_emebsd_info,
    read_master_pattern,
    write_angle_file,
    write_emebsd,
)
from ebsd_keras.orientation import euler_to_quaternion

KP_DATA = Path(kp.__file__).parent / "data"
EMSOFT_TEST_FILE = KP_DATA / "emsoft_ebsd" / "EBSD_TEST_Ni.h5"
MASTER_FILE = KP_DATA / "emsoft_ebsd_master_pattern" / "ni_mc_mp_20kv_uint8_gzip_opts9.h5"

DETECTOR = {
    "pc": (0.42, 0.31, 0.61),
    "shape": (12, 16),
    "tilt_deg": 10.0,
    "sample_tilt_deg": 70.0,
    "px_size_um": 50.0,
    "binning": 1,
}


# ----------------------------------------------------------------------------------------------------------------
# fixtures and helpers
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def rng():
    return np.random.default_rng(42)


@pytest.fixture
def small_data(rng):
    n = 10
    patterns = rng.integers(0, 256, size=(n, 12, 16), dtype=np.uint8)
    euler = rng.uniform([0, 0, 0], [2 * np.pi, np.pi, 2 * np.pi], size=(n, 3))
    return patterns, euler


@pytest.fixture
def small_file(tmp_path, small_data):
    patterns, euler = small_data
    path = tmp_path / "small.h5"
    write_emebsd(path, patterns, euler, voltage_kv=20.0, detector=DETECTOR, metadata={"source": "test"})
    return path


def _raw_file(path, patterns, euler, voltage=None, nml=None, numangles=True):
    """A minimal EMsoft-layout file written with h5py directly (for dtypes and defects the writer refuses)."""
    with h5py.File(path, "w") as f:
        f.create_dataset(PATTERNS, data=patterns)
        f.create_dataset(EULER, data=np.asarray(euler, dtype=np.float32))
        if numangles:
            f.create_dataset(NUMANGLES, data=np.array([len(euler)], dtype=np.int32))
        if voltage is not None:
            f.create_dataset(VOLTAGE, data=np.asarray(voltage, dtype=np.float32))
        group = f.create_group(NML)
        for key, value in {"energymax": 20.0, **(nml or {})}.items():
            data = np.array([value.encode()]) if isinstance(value, str) else np.array([value])
            group.create_dataset(key, data=data)
    return path


def _same_rotation(q1, q2, atol=1e-4):
    q1, q2 = np.atleast_2d(q1), np.atleast_2d(q2)
    return np.all(np.minimum(np.abs(q1 - q2).max(axis=1), np.abs(q1 + q2).max(axis=1)) < atol)


def _all_chunks(path, **kw):
    chunks = list(iter_emebsd(path, **kw))
    return chunks, np.concatenate([c.patterns for c in chunks]), np.concatenate([c.euler for c in chunks])


# ----------------------------------------------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------------------------------------------


def test_roundtrip_per_file_voltage(small_file, small_data):
    patterns, euler = small_data
    info = read_emebsd_info(small_file)
    assert (info.n_patterns, info.pattern_shape, info.dtype, info.bitdepth) == (10, (12, 16), "uint8", "8bit")
    assert not info.has_voltage and info.voltage_kv == 20.0
    assert info.euler_convention == "tsl"
    assert info.metadata == {"source": "test"}
    assert np.allclose(info.detector["pc"], DETECTOR["pc"])
    assert info.nml["numsx"] == 16 and info.nml["numsy"] == 12

    chunks, pats, eul = _all_chunks(small_file, chunk_size=4)
    assert [c.start for c in chunks] == [0, 4, 8]
    np.testing.assert_array_equal(pats, patterns)
    np.testing.assert_allclose(eul, euler, atol=1e-6)  # float32 storage
    quats = np.concatenate([c.quaternion for c in chunks])
    assert _same_rotation(quats, euler_to_quaternion(euler), atol=1e-6)
    assert np.all(np.concatenate([c.voltage_kv for c in chunks]) == 20.0)
    assert all(c.patterns.dtype == np.uint8 and c.euler.dtype == np.float64 for c in chunks)


def test_roundtrip_per_pattern_voltage(tmp_path, small_data):
    patterns, euler = small_data
    volts = np.linspace(10, 30, len(patterns))
    path = tmp_path / "v.h5"
    write_emebsd(path, patterns, euler, voltage_kv=volts)
    info = read_emebsd_info(path)
    assert info.has_voltage and info.voltage_kv is None
    assert info.nml["energymax"] == pytest.approx(30.0) and info.nml["energymin"] == pytest.approx(10.0)
    chunks, pats, _ = _all_chunks(path, chunk_size=3)
    np.testing.assert_allclose(np.concatenate([c.voltage_kv for c in chunks]), volts, rtol=1e-6)
    np.testing.assert_array_equal(pats, patterns)


def test_writer_streams_chunks_and_stores_compressed(tmp_path, small_data):
    patterns, euler = small_data
    path = tmp_path / "w.h5"
    with EMEBSDWriter(path, 10, (12, 16), detector=DETECTOR, voltage_kv=15.0) as w:
        w.write(5, patterns[5:], euler[5:])
        w.write(0, patterns[:5], euler[:5])
    with h5py.File(path) as f:
        ds = f[PATTERNS]
        assert ds.chunks == (10, 12, 16) and ds.compression == "gzip" and ds.compression_opts == 4
    np.testing.assert_array_equal(_all_chunks(path)[1], patterns)


def test_kikuchipy_loads_written_file(small_file, small_data):
    patterns, euler = small_data
    s = kp.load(small_file)
    np.testing.assert_array_equal(s.data, patterns)
    assert _same_rotation(s.xmap.rotations.data, euler_to_quaternion(euler), atol=1e-6)
    np.testing.assert_allclose(s.detector.pc.reshape(-1, 3)[0], DETECTOR["pc"], rtol=1e-5)
    assert s.detector.tilt == pytest.approx(10.0)
    assert s.detector.shape == (12, 16)
    assert s.xmap.phases[0].space_group.number == 225


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("binning", [1, 2])
def test_pc_conversion_matches_kikuchipy(version, binning):
    pc, shape, delta = (0.41, 0.27, 0.63), (60, 80), 70.0
    det = kp.detectors.EBSDDetector(shape=shape, pc=pc, px_size=delta, binning=binning)
    ours = bruker_pc_to_emsoft(pc, shape, delta, binning, version=version)
    np.testing.assert_allclose(ours, det.pc_emsoft(version=version).reshape(-1, 3)[0], rtol=1e-12)
    np.testing.assert_allclose(emsoft_pc_to_bruker(*ours, shape, delta, binning, version=version), pc, rtol=1e-12)


def test_metadata_and_overwrite(tmp_path, small_data, small_file):
    patterns, euler = small_data
    meta = {"preprocessing": {"method": "clahe-opencv", "tiles": [4, 4]}, "n": np.int64(3)}
    path = tmp_path / "m.h5"
    write_emebsd(path, patterns, euler, voltage_kv=20, metadata=meta)
    assert read_emebsd_info(path).metadata == {"preprocessing": {"method": "clahe-opencv", "tiles": [4, 4]}, "n": 3}
    with pytest.raises(FileExistsError):
        write_emebsd(small_file, patterns, euler, voltage_kv=20, overwrite=False)


# ----------------------------------------------------------------------------------------------------------------
# real EMsoft files shipped with kikuchipy
# ----------------------------------------------------------------------------------------------------------------


def test_real_emsoft_pattern_file():
    info = read_emebsd_info(EMSOFT_TEST_FILE)
    assert info.n_patterns == 1 and info.pattern_shape == (480, 640) and info.dtype == "uint8"
    assert info.voltage_kv == 20.0 and info.nml["L"] == 15000.0
    # EMsoft 4.2 file: xpc sign flipped, xpc = ypc = 20 px, L = 15000 um, delta = 50 um
    np.testing.assert_allclose(info.detector["pc"], (0.5 + 20 / 640, 0.5 - 20 / 480, 15000 / (480 * 50)))
    (chunk,) = list(iter_emebsd(EMSOFT_TEST_FILE))
    assert chunk.patterns.shape == (1, 480, 640)
    np.testing.assert_allclose(np.rad2deg(chunk.euler[0]), (120, 45, 60), atol=1e-4)
    assert _same_rotation(chunk.quaternion, (0, -0.33141, -0.19134, -0.92388), atol=1e-4)
    with h5py.File(EMSOFT_TEST_FILE) as f:
        np.testing.assert_array_equal(chunk.patterns[0], f[PATTERNS][0])


def test_real_master_pattern():
    mp = read_master_pattern(MASTER_FILE)
    assert mp.north.shape == (1, 401, 401) and mp.south.shape == (1, 401, 401)
    assert mp.north.dtype == np.float32 and mp.npx == 200
    assert 20.0 in mp.energies_kev.tolist()
    assert mp.space_group == 225 and mp.lattice_parameters[0] == pytest.approx(0.35236)
    assert mp.program_name == "EMEBSDmaster.f90" and mp.sample_tilt_deg == 70.0
    ref = kp.load(MASTER_FILE, projection="lambert", hemisphere="both")
    np.testing.assert_array_equal(mp.north[0], ref.data[0])
    np.testing.assert_array_equal(mp.south[0], ref.data[1])


def test_master_pattern_crystal_goes_into_writer(tmp_path, small_data):
    patterns, euler = small_data
    mp = read_master_pattern(MASTER_FILE)
    path = tmp_path / "c.h5"
    write_emebsd(path, patterns, euler, voltage_kv=20, crystal=mp.crystal, xtalname="ni.xtal")
    s = kp.load(path)
    assert s.xmap.phases[0].name == "ni"
    assert s.xmap.phases[0].structure.lattice.a == pytest.approx(0.35236)


def test_master_pattern_sites_summed_and_npx_checked(tmp_path):
    north = np.arange(2 * 3 * 5 * 5, dtype=np.float32).reshape(2, 3, 5, 5)  # (numset, n_energies, S, S)
    path = tmp_path / "mp.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("EMData/EBSDmaster/mLPNH", data=north)
        f.create_dataset("EMData/EBSDmaster/mLPSH", data=-north)
        f.create_dataset("EMData/EBSDmaster/EkeVs", data=np.array([10.0, 15.0, 20.0], np.float32))
        f.create_dataset("NMLparameters/EBSDMasterNameList/npx", data=np.array([2], np.int32))
        f.create_dataset("CrystalData/LatticeParameters", data=np.array([0.4, 0.4, 0.4, 90, 90, 90.0]))
        f.create_dataset("CrystalData/SpaceGroupNumber", data=np.array([221], np.int32))
    mp = read_master_pattern(path)
    assert mp.north.shape == (3, 5, 5) and mp.energies_kev.tolist() == [10.0, 15.0, 20.0]
    np.testing.assert_array_equal(mp.north, north.sum(axis=0))
    np.testing.assert_array_equal(mp.south, -north.sum(axis=0))
    assert mp.program_name is None and mp.space_group == 221
    with h5py.File(path, "a") as f:
        f["NMLparameters/EBSDMasterNameList/npx"][0] = 3
    with pytest.raises(EBSDInputError, match="npx"):
        read_master_pattern(path)


def test_master_pattern_bad_file(tmp_path):
    path = tmp_path / "mp.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("EMData/EBSDmaster/mLPNH", data=np.zeros((1, 1, 5, 5), np.float32))
    with pytest.raises(EBSDInputError, match="mLPSH"):
        read_master_pattern(path)


# ----------------------------------------------------------------------------------------------------------------
# pattern dtypes
# ----------------------------------------------------------------------------------------------------------------


def test_int32_patterns_rescaled_with_whole_file_range(tmp_path):
    # values far beyond 255: a cast would wrap; per-pattern scaling would lose the relative intensities
    values = np.linspace(0, 100000, 6 * 4 * 4).astype(np.int32).reshape(6, 4, 4)
    path = _raw_file(tmp_path / "i.h5", values, np.zeros((6, 3)), nml={"bitdepth": "NNbit"})
    assert read_emebsd_info(path).dtype == "int32" and read_emebsd_info(path).bitdepth == "NNbit"
    assert pattern_intensity_range(path, chunk_size=2) == (0.0, 100000.0)
    _, pats, _ = _all_chunks(path, chunk_size=2)
    flat = pats.reshape(-1).astype(int)
    assert flat[0] == 0 and flat[-1] == 255
    assert np.all(np.diff(flat) >= 0)  # monotonic over the whole file, across chunks
    np.testing.assert_array_equal(pats, np.rint(values / 100000 * 255).astype(np.uint8))


def test_float32_patterns_rescaled(tmp_path):
    values = np.linspace(-3.5, 7.25, 4 * 5 * 5, dtype=np.float32).reshape(4, 5, 5)
    path = _raw_file(tmp_path / "f.h5", values, np.zeros((4, 3)), nml={"bitdepth": "float"})
    lo, hi = pattern_intensity_range(path)
    assert (lo, hi) == (-3.5, 7.25)
    _, pats, _ = _all_chunks(path, chunk_size=3)
    assert pats.min() == 0 and pats.max() == 255 and np.all(np.diff(pats.reshape(-1).astype(int)) >= 0)


def test_float_patterns_with_nan_refused(tmp_path):
    values = np.ones((3, 4, 4), np.float32)
    values[2, 1, 1] = np.nan
    path = _raw_file(tmp_path / "nan.h5", values, np.zeros((3, 3)))
    with pytest.raises(EBSDInputError, match="pattern 2") as err:
        iter_emebsd(path)
    assert err.value.field == PATTERNS and err.value.path == str(path)


@pytest.mark.parametrize(
    "data",
    [
        np.ones((2, 3, 3), np.complex64),
        np.ones((2, 3, 3), bool),
        np.full((2, 3, 3), -5, np.int8),
        np.full((2, 3, 3), b"ab", dtype="S2"),
    ],
    ids=["complex", "bool", "int8", "bytes"],
)
def test_uninterpretable_dtypes_refused(tmp_path, data):
    path = _raw_file(tmp_path / "bad.h5", data, np.zeros((2, 3)))
    with pytest.raises(EBSDInputError) as err:
        read_emebsd_info(path)
    assert err.value.field == PATTERNS and str(path) in str(err.value)


def test_writer_refuses_non_uint8(tmp_path, small_data):
    patterns, euler = small_data
    with pytest.raises(EBSDInputError, match="uint8"):
        write_emebsd(tmp_path / "x.h5", patterns.astype(np.float32), euler, voltage_kv=20)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------------
# Euler angles
# ----------------------------------------------------------------------------------------------------------------


def test_degrees_refused_or_converted(tmp_path, caplog):
    deg = np.array([[120.0, 45.0, 60.0], [10.0, 20.0, 30.0]])
    path = _raw_file(tmp_path / "deg.h5", np.zeros((2, 4, 4), np.uint8), deg)
    with pytest.raises(EBSDInputError, match="degrees") as err:
        iter_emebsd(path)
    assert err.value.field == EULER
    with pytest.raises(EBSDInputError, match="degrees"):
        iter_emebsd(path, degrees="refuse")
    with caplog.at_level(logging.WARNING, logger="ebsd_keras.io.emsoft"):
        (chunk,) = list(iter_emebsd(path, degrees="convert"))
    assert "DEGREES" in caplog.text  # the conversion is never silent
    np.testing.assert_allclose(chunk.euler, np.deg2rad(deg), atol=1e-6)
    assert _same_rotation(chunk.quaternion[0], (0, -0.33141, -0.19134, -0.92388))
    with pytest.raises(ValueError):
        iter_emebsd(path, degrees="guess")


def test_nan_euler_refused(tmp_path):
    euler = np.array([[0.1, 0.2, 0.3], [np.nan, 0.2, 0.3]])
    path = _raw_file(tmp_path / "nan.h5", np.zeros((2, 4, 4), np.uint8), euler)
    with pytest.raises(EBSDInputError, match="non-finite") as err:
        iter_emebsd(path)
    assert err.value.field == EULER
    with pytest.raises(EBSDInputError):
        write_emebsd(tmp_path / "w.h5", np.zeros((2, 4, 4), np.uint8), euler, voltage_kv=20)
    with pytest.raises(EBSDInputError, match="degrees"):
        write_emebsd(tmp_path / "w.h5", np.zeros((1, 4, 4), np.uint8), [[120.0, 45.0, 60.0]], voltage_kv=20)
    assert not (tmp_path / "w.h5").exists()


def test_hkl_convention_subtracts_90_degrees_from_phi1(tmp_path):
    euler = np.deg2rad([[120.0 + 90.0, 45.0, 60.0], [30.0, 10.0, 0.0]])
    path = _raw_file(tmp_path / "hkl.h5", np.zeros((2, 4, 4), np.uint8), euler, nml={"eulerconvention": "hkl"})
    assert read_emebsd_info(path).euler_convention == "hkl"
    (chunk,) = list(iter_emebsd(path))
    np.testing.assert_allclose(np.rad2deg(chunk.euler), [[120, 45, 60], [300, 10, 0]], atol=1e-4)
    bad = _raw_file(tmp_path / "xyz.h5", np.zeros((2, 4, 4), np.uint8), euler, nml={"eulerconvention": "xyz"})
    with pytest.raises(EBSDInputError, match="eulerconvention"):
        read_emebsd_info(bad)


# ----------------------------------------------------------------------------------------------------------------
# counts and voltages
# ----------------------------------------------------------------------------------------------------------------


def test_count_mismatches_name_the_field(tmp_path):
    pats = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(EBSDInputError, match="3 Euler angle rows for 4 patterns") as err:
        read_emebsd_info(_raw_file(tmp_path / "a.h5", pats, np.zeros((3, 3))))
    assert err.value.field == EULER
    path = _raw_file(tmp_path / "b.h5", pats, np.zeros((4, 3)), numangles=False)
    with h5py.File(path, "a") as f:
        f.create_dataset(NUMANGLES, data=np.array([5], np.int32))
    with pytest.raises(EBSDInputError) as err:
        read_emebsd_info(path)
    assert err.value.field == NUMANGLES
    with pytest.raises(EBSDInputError) as err:
        read_emebsd_info(_raw_file(tmp_path / "c.h5", pats, np.zeros((4, 3)), voltage=np.full(3, 20.0)))
    assert err.value.field == VOLTAGE
    with pytest.raises(EBSDInputError) as err:
        read_emebsd_info(_raw_file(tmp_path / "d.h5", pats, np.zeros((4, 3)), nml={"numsx": 5, "numsy": 4}))
    assert err.value.field == PATTERNS


def test_authors_voltage_blocks_over_one_orientation_list(tmp_path, rng):
    m, kvs = 3, [10.0, 15.0, 20.0, 25.0, 30.0]
    euler = rng.uniform(0, 1, size=(m, 3))
    pats = rng.integers(0, 256, size=(m * 5, 4, 4), dtype=np.uint8)
    path = _raw_file(tmp_path / "blocks.h5", pats, euler, voltage=np.repeat(kvs, m))
    info = read_emebsd_info(path)
    assert info.n_patterns == 15 and info.n_orientations == 3 and info.has_voltage
    chunks, got, eul = _all_chunks(path, chunk_size=4)
    np.testing.assert_allclose(eul, np.tile(euler, (5, 1)), atol=1e-6)
    np.testing.assert_allclose(np.concatenate([c.voltage_kv for c in chunks]), np.repeat(kvs, m))
    np.testing.assert_array_equal(got, pats)
    mixed = _raw_file(tmp_path / "mixed.h5", pats, euler, voltage=np.tile(kvs, m))
    with pytest.raises(EBSDInputError, match="blocks") as err:
        read_emebsd_info(mixed)
    assert err.value.field == VOLTAGE


@pytest.mark.parametrize("bad", [0.0, -20.0, 20000.0, np.nan])
def test_bad_voltages_refused(tmp_path, bad):
    pats = np.zeros((2, 4, 4), np.uint8)
    with pytest.raises(EBSDInputError) as err:
        read_emebsd_info(_raw_file(tmp_path / "v.h5", pats, np.zeros((2, 3)), voltage=[20.0, bad]))
    assert err.value.field == VOLTAGE
    path = _raw_file(tmp_path / "e.h5", pats, np.zeros((2, 3)), nml={"energymax": bad})
    with pytest.raises(EBSDInputError) as err:
        iter_emebsd(path)
    assert err.value.field == f"{NML}/energymax"
    assert list(iter_emebsd(path, voltage_kv=12.5))[0].voltage_kv.tolist() == [12.5, 12.5]  # argument wins
    with pytest.raises(EBSDInputError):
        iter_emebsd(path, voltage_kv=bad)
    with pytest.raises(EBSDInputError):
        write_emebsd(tmp_path / "w.h5", pats, np.zeros((2, 3)), voltage_kv=bad)


def test_no_voltage_anywhere(tmp_path):
    path = _raw_file(tmp_path / "nv.h5", np.zeros((2, 4, 4), np.uint8), np.zeros((2, 3)))
    with h5py.File(path, "a") as f:
        del f[f"{NML}/energymax"]
    with pytest.raises(EBSDInputError, match="voltage"):
        iter_emebsd(path)
    assert list(iter_emebsd(path, voltage_kv=20))[0].voltage_kv.tolist() == [20.0, 20.0]


# ----------------------------------------------------------------------------------------------------------------
# broken files
# ----------------------------------------------------------------------------------------------------------------


def test_truncated_and_garbage_files(tmp_path, rng):
    pats = rng.integers(0, 256, size=(50, 32, 32), dtype=np.uint8)
    path = tmp_path / "t.h5"
    write_emebsd(path, pats, np.zeros((50, 3)), voltage_kv=20)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(EBSDInputError) as err:
        list(iter_emebsd(path))
    assert str(path) in str(err.value)
    garbage = tmp_path / "g.h5"
    garbage.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for func in (read_emebsd_info, read_master_pattern, pattern_intensity_range):
        with pytest.raises(EBSDInputError) as err:
            func(garbage)
        assert err.value.path == str(garbage)
    with pytest.raises(FileNotFoundError):
        read_emebsd_info(tmp_path / "missing.h5")


def test_missing_datasets_and_empty_file(tmp_path):
    path = _raw_file(tmp_path / "m.h5", np.zeros((2, 4, 4), np.uint8), np.zeros((2, 3)))
    with h5py.File(path, "a") as f:
        del f[EULER]
    with pytest.raises(EBSDInputError, match="missing dataset") as err:
        read_emebsd_info(path)
    assert err.value.field == EULER
    with h5py.File(path, "a") as f:
        del f[PATTERNS]
    with pytest.raises(EBSDInputError, match="missing dataset") as err:
        read_emebsd_info(path)
    assert err.value.field == PATTERNS
    empty = _raw_file(tmp_path / "e.h5", np.zeros((0, 4, 4), np.uint8), np.zeros((0, 3)))
    with pytest.raises(EBSDInputError, match="empty") as err:
        read_emebsd_info(empty)
    assert err.value.field == PATTERNS


# ----------------------------------------------------------------------------------------------------------------
# atomic writing
# ----------------------------------------------------------------------------------------------------------------


def test_aborted_writer_leaves_nothing(tmp_path, small_data):
    patterns, euler = small_data
    path = tmp_path / "out.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with EMEBSDWriter(path, 10, (12, 16), voltage_kv=20) as w:
            w.write(0, patterns[:5], euler[:5])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_writer_leaves_nothing(tmp_path, small_data):
    patterns, euler = small_data
    path = tmp_path / "out.h5"
    with pytest.raises(EBSDInputError, match="never written") as err:
        with EMEBSDWriter(path, 10, (12, 16), voltage_kv=20) as w:
            w.write(0, patterns[:5], euler[:5])
    assert err.value.field == PATTERNS
    assert list(tmp_path.iterdir()) == []


def test_writer_argument_checks(tmp_path, small_data):
    patterns, euler = small_data
    with pytest.raises(ValueError, match="voltage"):
        EMEBSDWriter(tmp_path / "a.h5", 10, (12, 16))
    with pytest.raises(ValueError, match="shape"):
        EMEBSDWriter(tmp_path / "a.h5", 10, (12, 16), voltage_kv=20, detector={"shape": (16, 12)})
    with pytest.raises(ValueError, match="JSON"):
        EMEBSDWriter(tmp_path / "a.h5", 10, (12, 16), voltage_kv=20, metadata={"x": object()})
    with EMEBSDWriter(tmp_path / "b.h5", 10, (12, 16), voltage_kv=20) as w:
        with pytest.raises(EBSDInputError, match="outside"):
            w.write(8, patterns[:5], euler[:5])
        with pytest.raises(EBSDInputError, match="per_pattern_voltage"):
            w.write(0, patterns, euler, voltage_kv=25.0)
        w.write(0, patterns, euler, voltage_kv=20.0)
    assert (tmp_path / "b.h5").exists()


# ----------------------------------------------------------------------------------------------------------------
# angle files
# ----------------------------------------------------------------------------------------------------------------


def test_angle_file_eu_roundtrip(tmp_path, small_data):
    _, euler = small_data
    path = tmp_path / "angles.txt"
    write_angle_file(path, euler)
    lines = path.read_text().splitlines()
    assert lines[0] == "eu" and lines[1] == "10"
    np.testing.assert_allclose([float(v) for v in lines[2].split()], np.rad2deg(euler[0]), atol=1e-6)
    assert _same_rotation(read_angle_file(path), euler_to_quaternion(euler), atol=1e-7)
    with pytest.raises(EBSDInputError, match="degrees"):
        write_angle_file(tmp_path / "deg.txt", np.rad2deg(euler))
    assert not (tmp_path / "deg.txt").exists()


def test_angle_file_qu(tmp_path):
    q = np.array([[1.0, 0, 0, 0], [0.0, -0.33141, -0.19134, -0.92388]])
    path = tmp_path / "q.txt"
    path.write_text("qu\n2\n" + "\n".join(", ".join(str(v) for v in row) for row in q) + "\n")
    got = read_angle_file(path)
    assert got.shape == (2, 4) and _same_rotation(got, q, atol=1e-5)


@pytest.mark.parametrize(
    "text, field",
    [
        ("ro\n1\n0 0 1 0\n", "line 1"),
        ("", "line 1"),
        ("eu\nthree\n1 2 3\n", "line 2"),
        ("eu\n2\n1 2 3\n", "line 2"),
        ("eu\n1\n1 2\n", "line 3"),
        ("qu\n1\n1 1 0 0\n", "line 3"),
    ],
    ids=["type", "empty", "count-text", "count-wrong", "short-row", "non-unit"],
)
def test_angle_file_errors(tmp_path, text, field):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(EBSDInputError) as err:
        read_angle_file(path)
    assert err.value.field == field and err.value.path == str(path)


# ----------------------------------------------------------------------------------------------------------------
# streaming
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stored", [np.uint8, np.uint16])
def test_streaming_reads_at_most_chunk_size_rows(tmp_path, monkeypatch, rng, stored):
    n = 1000
    pats = rng.integers(0, 200, size=(n, 4, 4)).astype(stored)
    path = _raw_file(tmp_path / "s.h5", pats, rng.uniform(0, 1, (n, 3)))
    rows_read = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        out = original(self, key)
        if self.name == "/" + PATTERNS:
            rows_read.append(np.shape(out)[0] if np.ndim(out) == 3 else 1)
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    chunks = list(iter_emebsd(path, chunk_size=64))
    assert len(chunks) == 16
    assert [len(c.patterns) for c in chunks] == [64] * 15 + [40]
    assert [c.start for c in chunks] == list(range(0, 1000, 64))
    assert rows_read and max(rows_read) <= 64
    # one pass for uint8; two (range, then data) otherwise
    assert sum(rows_read) == (n if stored == np.uint8 else 2 * n)


def test_module_does_not_import_kikuchipy():
    # the core must work without kikuchipy (GPL): importing the EMsoft I/O must not pull it in
    code = "import sys, ebsd_keras.io.emsoft; sys.exit('kikuchipy' in sys.modules or 'orix' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
