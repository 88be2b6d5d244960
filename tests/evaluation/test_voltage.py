"""Voltage evaluation: band widths follow the Bragg angle; the wrong-voltage table and its figures."""

import json

import numpy as np
import pytest

from ebsd_keras.data.build import build_dataset
from ebsd_keras.evaluation.report import load_test_set, true_pattern_generator
from ebsd_keras.evaluation.voltage import (
    band_profile_widths,
    band_width_curve,
    evaluate_voltage,
    save_voltage_figures,
    wrong_voltage_table,
)
from ebsd_keras.models.physics import bragg_angle_rad


@pytest.fixture(scope="module")
def two_kv(tmp_path_factory):
    out = tmp_path_factory.mktemp("voltage") / "kin"
    build_dataset(
        out,
        n_train=6,
        n_test=25,
        voltages=[10.0, 30.0],
        max_per_split={"train": 4, "val": 4, "test": 200},
        batch_size=256,
        progress=False,
    )
    return out


def test_band_widths_follow_the_bragg_angle(two_kv):
    ts = load_test_set(two_kv, n=None)
    curve = band_width_curve([ts], generate_fn=true_pattern_generator(ts))
    assert curve["voltages_kv"] == [10.0, 30.0] and curve["n"] == {"10": 200, "30": 200}
    for fam, hkl2 in (("111", 3), ("220", 8)):
        w10, w30 = curve["true"]["10"][fam], curve["true"]["30"][fam]
        theory = 2 * np.degrees(bragg_angle_rad(np.array([10.0, 30.0]), 0.35236 / np.sqrt(hkl2)))
        # the steepest fall of the mean profile of 200 CLAHE'd 60 x 60 patterns: within 20 % of 2 theta_B
        np.testing.assert_allclose([w10, w30], theory, rtol=0.2)
        assert w30 < 0.8 * w10  # bands narrow as the voltage rises
        # identical patterns measure identically
        assert curve["generated"]["10"][fam] == pytest.approx(w10)
    assert curve["max_abs_relative_error"] < 1e-6  # float32 generator vs uint8 truth


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
    assert res["figures"][0].endswith("band_width_vs_kv.png")
