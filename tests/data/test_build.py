"""Dataset builder: counts, disjoint splits, CLAHE, determinism, multi-voltage layout, kikuchipy round trip,
atomic output."""

import json
import os

import h5py
import kikuchipy as kp
import numpy as np
import pytest
from orix.quaternion import Orientation, symmetry

from ebsd_keras.data import build as build_mod
from ebsd_keras.data.build import build_dataset, resolve_sources
from ebsd_keras.data.preprocess import CLAHEConfig, clahe
from ebsd_keras.data.sampling import split_densities
from ebsd_keras.errors import EBSDInputError
from ebsd_keras.io.emsoft import write_angle_file
from ebsd_keras.orientation import euler_to_quaternion

SPLITS = ("train", "val", "test")
TINY = dict(n_train=6, max_per_split=30, batch_size=16, progress=False)


def read(path):
    with h5py.File(path, "r") as f:
        out = {
            "patterns": f["EMData/EBSD/EBSDPatterns"][()],
            "euler": f["EMData/EBSD/EulerAngles"][()].astype(np.float64),
            "meta": json.loads(f["ebsd_keras"].attrs["metadata"]),
            "energymax": float(f["NMLparameters/EBSDNameList/energymax"][0]),
        }
        if "EMData/EBSD/AcceleratingVoltage" in f:
            out["voltage"] = f["EMData/EBSD/AcceleratingVoltage"][()]
    return out


def leftovers(parent):
    return sorted(p for p in os.listdir(parent) if p.startswith("."))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "ni"
    summary = build_dataset(out, **TINY)
    return out, summary


def test_counts_files_and_summary(built):
    out, summary = built
    assert sorted(os.listdir(out)) == ["dataset.json", "test.h5", "train.h5", "val.h5"]
    assert json.loads((out / "dataset.json").read_text()) == summary
    d = split_densities(6)
    assert [summary["splits"][s]["sampling"]["semi_edge_steps"] for s in SPLITS] == list(d)
    for split in SPLITS:
        info = summary["splits"][split]
        data = read(out / f"{split}.h5")
        grid = info["sampling"]["grid_size"] - info["sampling"]["removed_shared_with_earlier_splits"]
        assert info["n_patterns"] == info["n_orientations"] == min(30, grid) == len(data["patterns"])
        assert data["patterns"].shape[1:] == (60, 60) and data["patterns"].dtype == np.uint8
        assert data["energymax"] == 20.0 and "voltage" not in data
    assert summary["source_kind"] == "emsoft-dynamical" and summary["voltages_kv"] == [20.0]
    assert summary["detector"]["pc"] == [0.5, 0.5, 0.6] and summary["detector"]["tilt_deg"] == 10.0
    assert summary["timing"]["patterns_per_s"] > 0 and summary["versions"]["kikuchipy"]


def test_no_orientation_in_two_splits(built):
    out, _ = built
    q = {s: euler_to_quaternion(read(out / f"{s}.h5")["euler"]) for s in SPLITS}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        angles = Orientation(q[a], symmetry=symmetry.Oh).angle_with_outer(Orientation(q[b], symmetry=symmetry.Oh))
        assert np.rad2deg(angles).min() > 1e-3, (a, b)


def test_kikuchipy_opens_the_files_with_our_orientations(built):
    out, _ = built
    s = kp.load(out / "train.h5")
    data = read(out / "train.h5")
    np.testing.assert_array_equal(s.data, data["patterns"])
    assert s.detector.shape == (60, 60)
    np.testing.assert_allclose(s.detector.pc.reshape(-1), [0.5, 0.5, 0.6], atol=1e-6)
    assert s.xmap.phases[0].point_group.name == "m-3m"
    q_file = euler_to_quaternion(data["euler"])
    dot = np.abs(np.sum(s.xmap.rotations.data * q_file, axis=1))
    np.testing.assert_allclose(dot, 1.0, atol=1e-6)


def test_clahe_recorded_and_applied_deterministically(built, tmp_path):
    out, summary = built
    assert summary["preprocessing"]["clahe"] == CLAHEConfig().to_dict()
    meta = read(out / "train.h5")["meta"]
    assert meta["preprocessing"]["clahe"]["clip_limit"] == 10.0 and meta["sampling"]["semi_edge_steps"] == 6
    assert meta["source"]["kind"] == "emsoft-dynamical" and meta["source"]["per_voltage"][0]["embedded"] is True

    raw_summary = build_dataset(tmp_path / "raw", clahe=None, **TINY)
    assert raw_summary["preprocessing"]["clahe"] == "none"
    again = build_dataset(tmp_path / "again", **TINY)
    for split in SPLITS:
        with_clahe = read(out / f"{split}.h5")["patterns"]
        raw = read(tmp_path / "raw" / f"{split}.h5")["patterns"]
        # same seed -> identical bytes
        np.testing.assert_array_equal(read(tmp_path / "again" / f"{split}.h5")["patterns"], with_clahe)
        # the stored patterns are exactly CLAHE(raw), and CLAHE spreads the histogram of these low-contrast patterns
        np.testing.assert_array_equal(clahe(raw, CLAHEConfig()), with_clahe)
        assert with_clahe.std() > raw.std() + 5
    assert again["splits"] == summary["splits"]


def test_seed_changes_the_subset(built, tmp_path):
    out, _ = built
    summary = build_dataset(tmp_path / "s1", **{**TINY, "seed": 1})
    assert summary["seed"] == 1
    assert not np.array_equal(read(out / "train.h5")["euler"], read(tmp_path / "s1" / "train.h5")["euler"])


def test_multi_voltage_layout_kinematical(tmp_path):
    out = tmp_path / "volt"
    summary = build_dataset(
        out, n_train=4, voltages=[10.0, 30.0], max_per_split=8, kinematical_half_size=60, batch_size=5, progress=False
    )
    assert summary["source_kind"] == "kinematical" and [s["kind"] for s in summary["sources"]] == ["kinematical"] * 2
    assert summary["voltages_kv"] == [10.0, 30.0]
    for split in SPLITS:
        data = read(out / f"{split}.h5")
        m = summary["splits"][split]["n_orientations"]
        assert len(data["patterns"]) == summary["splits"][split]["n_patterns"] == 2 * m
        np.testing.assert_array_equal(data["voltage"], np.repeat([10.0, 30.0], m))
        np.testing.assert_array_equal(data["euler"][:m], data["euler"][m:])  # one orientation list, two blocks
        assert not np.array_equal(data["patterns"][:m], data["patterns"][m:])
        assert data["energymax"] == 30.0
        assert [v["energy_kv"] for v in data["meta"]["source"]["per_voltage"]] == [10.0, 30.0]
        assert data["meta"]["source"]["kind"] == "kinematical" and data["meta"]["layout"].startswith("voltage blocks")
    assert kp.load(out / "train.h5").data.shape == (2 * summary["splits"]["train"]["n_orientations"], 60, 60)


def test_train_orientations_from_angle_file(tmp_path):
    rng = np.random.default_rng(0)
    euler = rng.uniform([0, 0, 0], [2 * np.pi, np.pi, 2 * np.pi], size=(25, 3))
    angle_file = tmp_path / "angles.txt"
    write_angle_file(angle_file, euler)
    summary = build_dataset(tmp_path / "ang", train_orientations=angle_file, max_per_split=10, progress=False)
    assert summary["splits"]["train"]["sampling"]["method"] == "angle-file"
    assert summary["splits"]["train"]["n_patterns"] == 10
    assert (
        summary["splits"]["val"]["sampling"]["semi_edge_steps"]
        != summary["splits"]["test"]["sampling"]["semi_edge_steps"]
    )


def test_failure_mid_build_leaves_nothing(tmp_path, monkeypatch):
    from ebsd_keras.data import simulate

    real = simulate.project_patterns

    def failing(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs)):
            if i == 1:
                raise RuntimeError("disk full")
            yield item

    monkeypatch.setattr(simulate, "project_patterns", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        build_dataset(tmp_path / "ds", **TINY)
    assert os.listdir(tmp_path) == []

    # an existing dataset survives a failed --overwrite build untouched
    keep = tmp_path / "ds"
    keep.mkdir()
    (keep / "dataset.json").write_text("{}")
    with pytest.raises(RuntimeError, match="disk full"):
        build_dataset(keep, overwrite=True, **TINY)
    assert os.listdir(tmp_path) == ["ds"] and (keep / "dataset.json").read_text() == "{}"


def test_bad_inputs_raise_before_anything_is_written(tmp_path):
    nan_file = tmp_path / "nan.txt"
    nan_file.write_text("eu\n2\n10 20 30\nnan 1 2\n")
    cases = [
        (dict(energy_kv=200.0), "voltage out of range"),
        (dict(energy_kv=15.0, source="emsoft"), "20 kV only"),
        (dict(voltages=[20.0, 20.0]), "repeat"),
        (dict(master_pattern=str(nan_file)), "HDF5"),
        (dict(master_pattern={20.0: None, 15.0: None}, voltages=[10.0]), "no master-pattern file for 10 kV"),
        (dict(train_orientations=nan_file), "non-finite"),
        (dict(detector={"pc": (0.5, 0.5, -1)}), "PCz > 0"),
        (dict(detector={"shape": (60, 60), "distance": 3}), "unknown detector"),
    ]
    for kwargs, message in cases:
        with pytest.raises(EBSDInputError, match=message):
            build_dataset(tmp_path / "out", **{**TINY, **kwargs})
        assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError):
        build_dataset(tmp_path / "exists", **TINY)


def test_resolve_sources_never_mixes():
    assert resolve_sources([20.0]) == [(20.0, "emsoft-dynamical", None)]
    assert [k for _, k, _ in resolve_sources([20.0, 25.0])] == ["kinematical", "kinematical"]
    assert [k for _, k, _ in resolve_sources([20.0], source="kinematical")] == ["kinematical"]
    files = resolve_sources([10.0, 20.0], {10: "a.h5", 20: "b.h5"})
    assert files == [(10.0, "emsoft-dynamical", "a.h5"), (20.0, "emsoft-dynamical", "b.h5")]
    with pytest.raises(EBSDInputError):
        resolve_sources([20.0], "a.h5", source="kinematical")
    assert build_mod.SOURCES == ("auto", "emsoft", "kinematical", "ebsdsim")


def test_sources_per_voltage_are_refused_when_mixed_unless_allowed():
    # a file for only some voltages would mix EMsoft dynamical with kinematical: refused, naming the option
    with pytest.raises(EBSDInputError, match="no master-pattern file for 20 kV"):
        resolve_sources([10.0, 20.0], {10: "a.h5"})
    with pytest.raises(EBSDInputError, match="not among the voltages"):
        resolve_sources([10.0], {10: "a.h5", 30: "c.h5"})
    mixed = resolve_sources([10.0, 20.0, 30.0], {10: "a.h5"}, allow_mixed=True)
    assert mixed == [(10.0, "emsoft-dynamical", "a.h5"), (20.0, "emsoft-dynamical", None), (30.0, "kinematical", None)]
    # without files, auto never mixes (all kinematical); with mixing allowed, the embedded 20 kV pattern is used
    assert [k for _, k, _ in resolve_sources([10.0, 20.0])] == ["kinematical"] * 2
    assert [k for _, k, _ in resolve_sources([10.0, 20.0], allow_mixed=True)] == ["kinematical", "emsoft-dynamical"]
    with pytest.raises(EBSDInputError, match="no EMsoft master pattern for 10 kV"):
        resolve_sources([10.0, 20.0], source="emsoft", allow_mixed=True)
    assert resolve_sources([10.0, 25.0], source="ebsdsim") == [(10.0, "ebsdsim-dynamical", None),
                                                               (25.0, "ebsdsim-dynamical", None)]  # fmt: skip
    with pytest.raises(EBSDInputError, match="source='ebsdsim'"):
        resolve_sources([10.0], "a.h5", source="ebsdsim")


def test_mixed_build_records_each_voltage_source(tmp_path):
    summary = build_dataset(
        tmp_path / "mixed", **{**TINY, "voltages": [20.0, 30.0]}, allow_mixed_sources=True, kinematical_half_size=40
    )
    assert summary["source_kind"] == "mixed"
    assert [(s["energy_kv"], s["kind"]) for s in summary["sources"]] == [
        (20.0, "emsoft-dynamical"),
        (30.0, "kinematical"),
    ]
    with h5py.File(tmp_path / "mixed" / "test.h5") as f:
        meta = json.loads(f["ebsd_keras"].attrs["metadata"])
    assert meta["source"]["kind"] == "mixed" and len(meta["source"]["per_voltage"]) == 2


def test_ebsdsim_source_without_the_package_is_a_clear_error(monkeypatch):
    import builtins

    from ebsd_keras.data.simulate import ebsdsim_master_pattern

    real_import = builtins.__import__

    def no_ebsdsim(name, *args, **kwargs):
        if name == "ebsdsim" or name.startswith("ebsdsim."):
            raise ImportError("No module named 'ebsdsim'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ebsdsim)
    with pytest.raises(EBSDInputError, match="pip install ebsdsim"):
        ebsdsim_master_pattern(20.0)


def test_constant_simulated_patterns_are_refused_when_all_and_warned_when_some(caplog, tmp_path):
    """A broken master pattern or geometry projects flat patterns: all of them is an error, some a warning."""
    with pytest.raises(EBSDInputError, match="all 6 simulated patterns are constant"):
        build_mod._check_constant(6, 6, tmp_path / "ds")
    with caplog.at_level("WARNING"):
        build_mod._check_constant(2, 6, tmp_path / "ds")
    assert "2 of 6 simulated patterns are constant" in caplog.text
    build_mod._check_constant(0, 6, tmp_path / "ds")  # nothing to say


def test_master_pattern_files_are_checked_before_kikuchipy(tmp_path):
    (tmp_path / "mp.h5").write_text("not HDF5")
    (tmp_path / "d").mkdir()
    with pytest.raises(EBSDInputError, match="not an HDF5 file"):
        build_mod._check_master_file(tmp_path / "mp.h5")
    with pytest.raises(EBSDInputError, match="is a directory"):
        build_mod._check_master_file(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_mod._check_master_file(tmp_path / "missing.h5")
