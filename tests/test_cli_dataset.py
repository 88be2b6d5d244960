"""``ebsd-keras dataset``: help text, a tiny build, exit status 2 and no output on bad input."""

import json
import os

import h5py
import pytest

from ebsd_keras.cli import main

TINY = ["--density", "4", "--max-train", "12", "--max-val", "6", "--max-test", "6", "--batch-size", "8", "-q"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_states_units_conventions_and_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["dataset", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in (
        "333,227",
        "semi-edge steps",
        "Bruker",
        "fractions",
        "degrees",
        "kV",
        "default 0.5 0.5 0.6",
        "default 60 60",
        "default 10",
        "default 70",
        "clip limit 10",
        "4 x 4",
        "kinematical",
        "--overwrite",
        "exit status 2",
    ):
        assert phrase in text, phrase


def test_tiny_build(tmp_path, capsys):
    out = tmp_path / "ds"
    code, stdout, err = run_cli(
        capsys, "dataset", "-o", out, *TINY, "--pc", 0.5, 0.45, 0.6, "--tiles", 2, 2, "--clip-limit", 4
    )
    assert code == 0, err
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["patterns"] == {"train": 12, "val": 6, "test": 6} and report["source"] == "emsoft-dynamical"
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["detector"]["pc"] == [0.5, 0.45, 0.6]
    assert summary["preprocessing"]["clahe"]["tiles"] == [2, 2] and summary["preprocessing"]["clahe"]["clip_limit"] == 4
    with h5py.File(out / "val.h5") as f:
        assert f["EMData/EBSD/EBSDPatterns"].shape == (6, 60, 60)

    # the directory exists now: refused without --overwrite, replaced with it
    code, _, err = run_cli(capsys, "dataset", "-o", out, *TINY)
    assert code == 2 and "already exists" in err
    code, _, err = run_cli(capsys, "dataset", "-o", out, *TINY, "--overwrite", "--no-clahe", "--detector-shape", 30, 40)
    assert code == 0, err
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["preprocessing"]["clahe"] == "none" and summary["pattern_shape"] == [30, 40]


def test_bad_input_exits_2_and_leaves_nothing(tmp_path, capsys):
    not_h5 = tmp_path / "inputs" / "mp.h5"
    not_h5.parent.mkdir()
    not_h5.write_text("not a master pattern")
    nan_angles = tmp_path / "inputs" / "angles.txt"
    nan_angles.write_text("eu\n2\n10 20 30\n40 nan 60\n")
    cases = [
        (["--kv", "200"], "voltage out of range"),
        (["--kv", "0.02"], "voltage out of range"),
        (["--master-pattern", not_h5], "HDF5"),
        (["--master-pattern", tmp_path / "missing.h5"], "missing.h5"),
        (["--kv", "15", "--source", "emsoft"], "20 kV only"),
        (["--angles", nan_angles], "non-finite"),
        (["--pc", "0.5", "0.5", "0"], "PCz > 0"),
        (["--max-train", "0"], "--max-train"),
    ]
    for extra, message in cases:
        grid = TINY[2:] if "--angles" in extra else TINY  # --density and --angles exclude each other
        args = ["dataset", "-o", tmp_path / "out", *grid, *extra]
        code, _, err = run_cli(capsys, *args)
        assert code == 2, (extra, err)
        assert message in err and err.startswith("ebsd-keras dataset: error:"), (extra, err)
        assert sorted(os.listdir(tmp_path)) == ["inputs"], extra


def test_kv_from_an_emsoft_master_pattern_file_must_be_in_it(tmp_path, capsys):
    from ebsd_keras.data.simulate import embedded_master_pattern_path

    code, _, err = run_cli(
        capsys,
        "dataset",
        "-o",
        tmp_path / "out",
        *TINY,
        "--master-pattern",
        embedded_master_pattern_path(),
        "--kv",
        "25",
    )
    assert code == 2 and "25 kV is not among the master pattern's energies (20 kV)" in err
    assert not (tmp_path / "out").exists()


def test_density_and_angles_are_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["dataset", "-o", str(tmp_path / "x"), "--density", "4", "--angles", "a.txt"])
    assert exc.value.code == 2
    assert not (tmp_path / "x").exists()


def test_one_master_pattern_file_per_voltage_and_refused_mixing(tmp_path, capsys):
    from ebsd_keras.data.simulate import embedded_master_pattern_path

    mp = embedded_master_pattern_path()
    # KV=FILE per voltage: the 20 kV file serves 20 kV; 30 kV has no file -> refused (would mix sources)
    code, _, err = run_cli(
        capsys, "dataset", "-o", tmp_path / "a", *TINY, "--kv", "20", "30", "--master-pattern", f"20={mp}"
    )
    assert code == 2 and "no master-pattern file for 30 kV" in err and "--allow-mixed-sources" in err
    assert not (tmp_path / "a").exists()
    code, _, err = run_cli(capsys, "dataset", "-o", tmp_path / "b", *TINY, "--master-pattern", f"x={mp}")
    assert code == 2 and "not a voltage" in err
    # explicitly allowed: EMsoft at 20 kV, kinematical at 30 kV, each recorded
    code, out, _ = run_cli(
        capsys,
        "dataset", "-o", tmp_path / "c", *TINY, "--kv", "20", "30", "--master-pattern", f"20={mp}",
        "--allow-mixed-sources", "--master-half-size", "40",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["source"] == "mixed"
    meta = json.loads((tmp_path / "c" / "dataset.json").read_text())
    assert [(s["energy_kv"], s["kind"]) for s in meta["sources"]] == [(20.0, "emsoft-dynamical"), (30.0, "kinematical")]
    with h5py.File(tmp_path / "c" / "train.h5") as f:
        assert sorted(set(f["EMData/EBSD/AcceleratingVoltage"][()].tolist())) == [20.0, 30.0]
