"""Datasets of any crystal: ``build_dataset(phase=...)`` / ``ebsd-keras dataset --phase``."""

import json

import h5py
import kikuchipy as kp
import numpy as np
import pytest

from ebsd_keras.cli import main
from ebsd_keras.data.build import build_dataset
from ebsd_keras.data.simulate import embedded_master_pattern_path
from ebsd_keras.errors import EBSDInputError
from ebsd_keras.orientation import euler_to_quaternion, quaternion_multiply, symmetry_operators

TINY = dict(n_train=6, max_per_split={"train": 24, "val": 8, "test": 8}, kinematical_half_size=60, progress=False)


def _in_zone(q, group):
    equiv = np.abs(quaternion_multiply(symmetry_operators(group)[None], q[:, None])[..., 0])
    return np.abs(q[:, 0]) >= equiv.max(axis=1) - 1e-6


def test_hexagonal_dataset_samples_its_zone_and_records_the_phase(tmp_path):
    summary = build_dataset(tmp_path / "ti", phase="ti", **TINY)
    phase = summary["phase"]
    assert (phase["name"], phase["space_group"], phase["point_group"], phase["laue_group"]) == (
        "ti",
        194,
        "6/mmm",
        "6/mmm",
    )
    assert summary["source_kind"] == "kinematical" and summary["sources"][0]["reflectors"]
    assert json.loads((tmp_path / "ti" / "dataset.json").read_text())["phase"] == phase
    for split in ("train", "val", "test"):
        path = tmp_path / "ti" / f"{split}.h5"
        with h5py.File(path) as f:
            meta = json.loads(f["ebsd_keras"].attrs["metadata"])
            euler = f["EMData/EBSD/EulerAngles"][()]
            assert int(f["CrystalData/SpaceGroupNumber"][()].reshape(-1)[0]) == 194
        assert meta["phase"] == phase and meta["sampling"]["point_group"] == "6/mmm"
        assert np.all(_in_zone(euler_to_quaternion(euler), "6/mmm"))  # float32 angles: 1e-6 tolerance
        assert not np.all(_in_zone(euler_to_quaternion(euler), "m-3m"))
    signal = kp.load(tmp_path / "ti" / "train.h5")
    assert signal.xmap.phases[0].point_group.name == "6/mmm" and signal.data.shape == (24, 60, 60)


def test_master_pattern_of_another_crystal_is_refused(tmp_path):
    with pytest.raises(EBSDInputError, match=r"phase: data of different phases cannot be mixed: fe .* ni"):
        build_dataset(tmp_path / "x", phase="fe", master_pattern=embedded_master_pattern_path(), **TINY)
    with pytest.raises(EBSDInputError, match="source: the ebsdsim source without a master-pattern file is Ni only"):
        build_dataset(tmp_path / "y", phase="al2o3", source="ebsdsim", **TINY)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_phase_option(tmp_path, capsys):
    code = main(["dataset", "-o", str(tmp_path / "bad"), "--phase", "unobtainium", "--density", "4"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "unknown phase 'unobtainium'" in err
    assert "Traceback" not in err and not (tmp_path / "bad").exists()
    code = main(
        [
            "dataset", "-o", str(tmp_path / "rutile"), "--phase", "rutile", "--density", "6", "--max-train", "8",
            "--max-val", "4", "--max-test", "4", "--master-half-size", "60", "-q",
        ]
    )  # fmt: skip
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and printed["phase"] == {
        "name": "rutile",
        "space_group": 136,
        "point_group": "4/mmm",
        "laue_group": "4/mmm",
    }
