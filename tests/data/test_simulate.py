"""Projection from master patterns: agreement with a real EMsoft pattern, rescaling, batching, sources, errors."""

from pathlib import Path

import kikuchipy as kp
import numpy as np
import pytest
from orix.quaternion import Rotation

from ebsd_keras.data.sampling import random_orientations
from ebsd_keras.data.simulate import (
    detector_to_dict,
    kinematical_master_pattern,
    load_master_pattern,
    make_detector,
    master_pattern_source,
    project_patterns,
    rescale_per_pattern,
)
from ebsd_keras.errors import EBSDInputError

EMSOFT_PATTERN = Path(kp.__file__).parent / "data" / "emsoft_ebsd" / "EBSD_TEST_Ni.h5"


def ncc(a, b):
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


@pytest.fixture(scope="module")
def mp():
    return load_master_pattern()


@pytest.fixture(scope="module")
def det():
    return make_detector()


def _project(mp, q, det, **kw):
    return list(project_patterns(mp, q, det, 20.0, progress=False, **kw))


def test_projection_matches_real_emsoft_pattern(mp):
    # EMEBSD 4.2 output: one 480 x 640 Ni pattern of (120, 45, 60) deg; xpc = ypc = 20 px (EMsoft 4 sign),
    # L = 15000 um, delta = 50 um, detector tilt 10 deg. Measured NCC 0.947 (kikuchipy's own test asks >= 0.935; the
    # embedded master pattern is a uint8 copy, EMEBSD used the float original).
    reference = kp.load(EMSOFT_PATTERN).data[0]
    detector = kp.detectors.EBSDDetector(
        shape=(480, 640), px_size=50, pc=(20, 20, 15000), convention="emsoft4", tilt=10, sample_tilt=70
    )
    q = Rotation.from_euler(np.radians([[120, 45, 60]])).data
    [(start, patterns)] = _project(mp, q, detector)
    assert start == 0 and patterns.shape == (1, 480, 640) and patterns.dtype == np.uint8
    assert ncc(patterns[0], reference) > 0.94
    # the pattern centre convention matters: EMsoft 5's sign of xpc gives an unrelated pattern
    wrong = kp.detectors.EBSDDetector(shape=(480, 640), px_size=50, pc=(20, 20, 15000), convention="emsoft5", tilt=10)
    assert ncc(_project(mp, q, wrong)[0][1][0], reference) < 0.5


def test_master_pattern_source_is_recorded(mp):
    src = master_pattern_source(mp)
    assert src["kind"] == "emsoft-dynamical" and src["embedded"] is True
    assert src["energy_kv"] == 20.0 and src["space_group"] == 225 and src["npx"] == 200
    # named by package, never by this machine's absolute path (files the package writes travel)
    assert src["file"].startswith("kikuchipy:") and src["file"].endswith(".h5")
    assert mp.data.shape == (2, 401, 401) and mp.projection == "lambert"


def test_batches_are_consecutive_rescaled_and_independent_of_batch_size(mp, det):
    q = random_orientations(20, seed=0)
    batches = _project(mp, q, det, batch_size=7)
    assert [s for s, _ in batches] == [0, 7, 14] and [len(p) for _, p in batches] == [7, 7, 6]
    stacked = np.concatenate([p for _, p in batches])
    np.testing.assert_array_equal(stacked, _project(mp, q, det, batch_size=64)[0][1])
    assert stacked.shape == (20, 60, 60) and stacked.dtype == np.uint8
    assert np.all(stacked.min(axis=(1, 2)) == 0) and np.all(stacked.max(axis=(1, 2)) == 255)
    # the same as kikuchipy's raw float projection, rescaled per pattern
    raw = mp.get_patterns(Rotation(q[:3]), det, 20, dtype_out=np.float32, compute=True, show_progressbar=False)
    for a, b in zip(stacked[:3], raw.data, strict=True):
        assert ncc(a, b) > 0.9999


def test_rescale_per_pattern():
    x = np.stack([np.linspace(-3, 5, 12).reshape(3, 4), np.full((3, 4), 7.0)]).astype(np.float32)
    out = rescale_per_pattern(x)
    assert out.dtype == np.uint8
    assert out[0].min() == 0 and out[0].max() == 255 and np.all(np.diff(out[0].ravel()) >= 0)
    assert np.all(out[1] == 0)  # constant pattern


def test_energy_mismatch_is_refused(mp, det):
    with pytest.raises(EBSDInputError, match="20 kV"):
        list(project_patterns(mp, random_orientations(2, 0), det, 15.0, progress=False))


def test_load_master_pattern_errors(tmp_path):
    with pytest.raises(EBSDInputError, match="15 kV is not among"):
        load_master_pattern(None, 15.0)
    with pytest.raises(EBSDInputError, match="voltage out of range"):
        load_master_pattern(None, 200.0)
    bad = tmp_path / "not-a-master-pattern.h5"
    bad.write_bytes(b"this is not HDF5")
    with pytest.raises(EBSDInputError, match=str(bad.name)):
        load_master_pattern(bad, 20.0)
    with pytest.raises(FileNotFoundError):
        load_master_pattern(tmp_path / "missing.h5", 20.0)
    # an EMsoft *pattern* file is not a master pattern
    with pytest.raises(EBSDInputError, match="mLPNH"):
        load_master_pattern(EMSOFT_PATTERN, 20.0)


def test_kinematical_master_patterns_depend_on_voltage(det):
    q = random_orientations(4, seed=5)
    out = {}
    for kv in (10.0, 30.0):
        km = kinematical_master_pattern(kv, half_size=100)
        src = master_pattern_source(km)
        assert src["kind"] == "kinematical" and src["energy_kv"] == kv and src["file"] is None
        assert km.projection == "lambert" and km.data.shape == (2, 201, 201)
        out[kv] = np.concatenate([p for _, p in project_patterns(km, q, det, kv, progress=False)])
    # same orientations, different voltages: band widths (Bragg angles) differ
    assert not np.array_equal(out[10.0], out[30.0])
    assert np.mean([ncc(a, b) for a, b in zip(out[10.0], out[30.0], strict=True)]) < 0.99


def test_make_detector_and_dict():
    d = make_detector(shape=(40, 50), pc=(0.45, 0.55, 0.7), tilt_deg=5, sample_tilt_deg=68, px_size_um=40, binning=2)
    assert detector_to_dict(d) == {
        "pc": [0.45, 0.55, 0.7], "shape": [40, 50], "tilt_deg": 5.0, "sample_tilt_deg": 68.0, "px_size_um": 40.0,
        "binning": 2, "convention": "bruker",
    }  # fmt: skip
    for kwargs in (
        {"pc": (0.5, 0.5, 0)},
        {"pc": (0.5, np.nan, 0.6)},
        {"pc": (30, 20, 15000)},
        {"tilt_deg": 170},
        {"shape": (1, 60)},
        {"binning": 0},
    ):
        with pytest.raises(EBSDInputError):
            make_detector(**kwargs)


def test_unknown_source_is_refused(det):
    bare = kp.signals.EBSDMasterPattern(np.zeros((2, 11, 11), dtype=np.float32))
    with pytest.raises(EBSDInputError, match="unknown source"):
        master_pattern_source(bare)


def test_kinematical_nickel_default_is_unchanged_and_records_its_phase():
    from ebsd_keras.data.simulate import NICKEL_REFLECTORS

    src = master_pattern_source(kinematical_master_pattern(20.0, half_size=50))
    assert src["reflectors"] == [list(r) for r in NICKEL_REFLECTORS] and src["space_group"] == 225
    assert src["lattice_parameters_nm"] == [0.35236] * 3 + [90.0] * 3
    assert src["laue_group"] == "m-3m" and src["phase"]["name"] == "ni"


@pytest.mark.parametrize(("phase", "group"), [("ti", "6/mmm"), ("al2o3", "-3m")])
def test_kinematical_master_pattern_of_any_phase_has_its_laue_symmetry(det, phase, group):
    from ebsd_keras.orientation import quaternion_multiply, symmetry_operators

    km = kinematical_master_pattern(20.0, half_size=300, phase=phase)
    src = master_pattern_source(km)
    assert src["laue_group"] == group and src["phase"]["laue_group"] == group
    assert (
        src["space_group"] == {"ti": 194, "al2o3": 167}[phase] and src["crystal"]["space_group"] == src["space_group"]
    )
    assert km.phase.point_group.laue.name == group and len(src["reflectors"]) >= 5
    q = random_orientations(6, seed=8, symmetry=group)
    base = np.concatenate([p for _, p in project_patterns(km, q, det, 20.0, progress=False)])
    ops = symmetry_operators(group)
    # a 2-fold axis along a (in the group) and one along b (not in -3m; in 622 too) / a 90 deg turn about c (in neither)
    not_in_group = np.array([np.sqrt(0.5), 0.0, 0.0, np.sqrt(0.5)])
    # (3- and 6-fold turns do not map the square Lambert grid onto itself: hard kinematical band edges interpolate
    # differently, NCC ~0.99 at half size 300 -- 0.88 when a family's planes were counted twice; turns that are not
    # symmetries give ~0.3)
    for s, lo, hi in ((ops[1], 0.97, 1.0), (ops[-1], 0.97, 1.0), (not_in_group, -1.0, 0.5)):
        other = np.concatenate(
            [p for _, p in project_patterns(km, quaternion_multiply(s[None], q), det, 20.0, progress=False)]
        )
        score = np.mean([ncc(a, b) for a, b in zip(base, other, strict=True)])
        assert lo <= score <= hi + 1e-9, (s, score)
