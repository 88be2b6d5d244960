"""Voltage evaluation: band widths follow the Bragg angle; the wrong-voltage table and its figures."""

import json

import numpy as np
import pytest

from ebsd_keras.data.build import build_dataset
from ebsd_keras.evaluation.run import true_pattern_generator
from ebsd_keras.evaluation.voltage import (
    band_profile_widths,
    band_width_curve,
    evaluate_voltage,
    save_voltage_figures,
    wrong_voltage_table,
)
from ebsd_keras.io.testset import load_test_set
from ebsd_keras.simulations.physics import bragg_angle_rad


@pytest.fixture(scope="module")
def two_kv(tmp_path_factory):
    out = tmp_path_factory.mktemp("voltage") / "kin"
    build_dataset(
        out,
        n_train=6,
        n_test=25,
        voltages=[10.0, 30.0],
        max_per_split={"train": 4, "val": 4, "test": 200},
        kinematical_half_size=200,  # fast; the default (1000) takes ~15 s per voltage
        batch_size=256,
        progress=False,
    )
    return out


def _theory(kv, hkl2):
    return 2 * np.degrees(bragg_angle_rad(np.asarray(kv, np.float64), 0.35236 / np.sqrt(hkl2)))


DET = {"shape": [60, 60], "pc": [0.5, 0.5, 0.6], "tilt_deg": 10.0, "sample_tilt_deg": 70.0}


def _ideal_bands(q, kv, families, blur_deg=0.0):
    """Kinematical top-hat bands of half-width theta_B at the detector pixels (|F| weights; optional edge blur)."""
    from scipy.special import erfc

    from ebsd_keras.evaluation.voltage import _geometry
    from ebsd_keras.simulations.geometry import direction_cosines
    from ebsd_keras.simulations.physics import cubic_plane_normals
    from ebsd_keras.simulations.projection import quaternion_to_matrix

    rot = np.asarray(quaternion_to_matrix(np.asarray(q, np.float64)))
    crystal = np.einsum("nij,pj->npi", rot, direction_cosines(_geometry(DET)))
    img = np.zeros(crystal.shape[:2])
    for hkl, weight in families:
        normals, _, _ = cubic_plane_normals([hkl])
        angle = np.degrees(np.arcsin(np.clip(np.abs(crystal @ normals.T), 0, 1)))
        half = _theory(kv, sum(i * i for i in hkl)) / 2
        inside = angle < half if blur_deg == 0 else 0.5 * erfc((angle - half) / (np.sqrt(2) * blur_deg))
        img += weight * inside.sum(-1)
    return img.reshape(len(q), 60, 60)


@pytest.mark.parametrize("kv", [10.0, 30.0])
def test_band_width_of_known_bands_is_exact_raw_and_clahed(kv):
    from ebsd_keras.data.preprocess import clahe, rescale_to_uint8

    rng = np.random.default_rng(1)
    q = rng.normal(size=(150, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    fams = [((1, 1, 1), 3.0), ((2, 0, 0), 2.6), ((2, 2, 0), 1.9), ((3, 1, 1), 1.6), ((2, 2, 2), 1.5)]  # Ni |F|
    sharp = _ideal_bands(q, kv, fams)
    blurred = _ideal_bands(q, kv, fams, blur_deg=0.15)  # like a 0.45-deg-pixel master pattern's edges
    theory = {"111": _theory(kv, 3), "200": _theory(kv, 4), "220": _theory(kv, 8)}
    for x in (sharp, np.stack([clahe(rescale_to_uint8(p)) for p in sharp]), blurred):
        widths = band_profile_widths(x, q, DET)
        for fam, w in theory.items():
            # overlapping bands ({222} on {111}) and CLAHE leave a sharp or blurred edge where it is
            assert widths[fam]["width_deg"] == pytest.approx(w, rel=0.02), (fam, kv)


def test_band_widths_follow_the_bragg_angle(two_kv):
    ts = load_test_set(two_kv, n=None)
    curve = band_width_curve([ts], generate_fn=true_pattern_generator(ts))
    assert curve["voltages_kv"] == [10.0, 30.0] and curve["n"] == {"10": 200, "30": 200}
    assert curve["intensities"] == "as stored"
    for fam, hkl2 in (("111", 3), ("220", 8)):
        w10, w30 = curve["true"]["10"][fam], curve["true"]["30"][fam]
        # CLAHE'd 60 x 60 patterns of a kinematical master pattern: CLAHE moves the blurred edges (< 10 %)
        np.testing.assert_allclose([w10, w30], _theory([10.0, 30.0], hkl2), rtol=0.1)
        assert w30 < 0.8 * w10  # bands narrow as the voltage rises
        # identical patterns measure identically
        assert curve["generated"]["10"][fam] == pytest.approx(w10)
    assert curve["max_abs_relative_error"] < 1e-6  # float32 generator vs uint8 truth


def test_raw_band_widths_reproject_the_master_pattern(two_kv):
    from ebsd_keras.evaluation.voltage import _raw_true_patterns

    ts = load_test_set(two_kv, n=None)
    rows = np.flatnonzero(ts.voltage_kv == 30.0)[:60]
    sub = ts.subset(rows)
    raw = _raw_true_patterns(sub, sub.quaternion, 30.0)
    assert raw.shape == (60, 60, 60) and raw.dtype == np.float32
    # the re-projection is the stored pattern before its contrast step: same structure
    a = raw.reshape(60, -1) - raw.reshape(60, -1).mean(1, keepdims=True)
    b = sub.patterns.reshape(60, -1).astype(float)
    b -= b.mean(1, keepdims=True)
    assert np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)) > 0.8
    table = {tuple(np.round(q, 6)): p for q, p in zip(sub.quaternion, raw, strict=True)}

    def raw_fn(q, v):  # a "model" whose raw projections are the true ones
        return np.stack([table[tuple(np.round(x, 6))] for x in np.asarray(q, np.float64)])

    curve = band_width_curve([sub], generate_fn=true_pattern_generator(sub), raw_generate_fn=raw_fn)
    assert curve["intensities"] == "raw" and curve["max_abs_relative_error"] < 1e-6
    for fam, hkl2 in (("111", 3), ("220", 8)):
        # raw kinematical bands: within 5 % of 2 theta_B (60 patterns); CLAHE'd {111} sits ~9 % wide at 30 kV
        assert curve["true"]["30"][fam] == pytest.approx(_theory(30.0, hkl2), rel=0.05)


def test_band_profile_needs_the_detector_of_the_patterns():
    from ebsd_keras.errors import EBSDInputError

    det = {"shape": [60, 60], "pc": [0.5, 0.5, 0.6], "tilt_deg": 10.0, "sample_tilt_deg": 70.0}
    with pytest.raises(EBSDInputError, match="pixels"):
        band_profile_widths(np.zeros((2, 30, 30)), np.tile([1.0, 0, 0, 0], (2, 1)), det)


def test_wrong_voltage_table_and_figures(two_kv, tmp_path):
    ts = load_test_set(two_kv, n=None)
    ts = ts.subset(np.concatenate([np.flatnonzero(ts.voltage_kv == kv)[:8] for kv in (10.0, 30.0)]))
    table = wrong_voltage_table(ts, true_pattern_generator(ts), resolution_deg=4.0, refine=False)
    assert table["rows_kv"] == table["columns_kv"] == [10.0, 30.0]
    true = np.asarray(table["true"]["mean"])
    assert true.shape == (2, 2) and np.isfinite(true).all()
    np.testing.assert_allclose(table["generated"]["mean"], true)  # the same patterns
    assert true[0, 0] < 4.0 and true[1, 1] < 4.0  # right voltage: within the dictionary spacing
    figures = save_voltage_figures({"wrong_voltage": table, "band_widths": band_width_curve([ts])}, tmp_path)
    assert [p.name for p in figures] == ["wrong_voltage_table.png", "band_width_vs_kv.png"]
    assert all(p.stat().st_size > 1000 for p in figures)


def test_evaluate_voltage_writes_json_markdown_and_png(two_kv, tmp_path):
    res = evaluate_voltage(None, two_kv, tmp_path / "v", band_n_per_voltage=30, table=False)
    saved = json.loads((tmp_path / "v" / "voltage.json").read_text())
    assert saved["band_widths"]["voltages_kv"] == [10.0, 30.0] and "wrong_voltage" not in saved
    assert "Band width" in (tmp_path / "v" / "voltage.md").read_text()
    assert "as stored" in (tmp_path / "v" / "voltage.md").read_text()
    assert res["figures"][0].endswith("band_width_vs_kv.png")
