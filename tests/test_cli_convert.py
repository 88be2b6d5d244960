"""``ebsd-keras convert`` and ``ebsd-keras inspect``: input forms, exit codes, atomic output, JSON summaries."""

import json
import os

import h5py
import numpy as np
import pytest

from ebsd_keras.cli import main
from ebsd_keras.cli.convert import resolve_inputs
from ebsd_keras.errors import EBSDInputError
from ebsd_keras.io.emsoft import write_emebsd
from ebsd_keras.io.tfrecord import read_metadata

SHAPE = (6, 8)


def make_h5(path, n=6, shape=SHAPE, voltage=20.0, seed=0):
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    euler = rng.uniform([0, 0, 0], [2 * np.pi, np.pi, 2 * np.pi], size=(n, 3))
    write_emebsd(path, patterns, euler, voltage_kv=voltage)
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def hidden(parent):
    return [p for p in os.listdir(parent) if p.startswith(".")]


def test_resolve_inputs(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    for s in ("train", "test"):
        make_h5(ds / f"{s}.h5")
    make_h5(tmp_path / "val.h5")
    make_h5(tmp_path / "exp.h5")
    assert resolve_inputs([str(ds)]) == [("train", str(ds / "train.h5")), ("test", str(ds / "test.h5"))]
    assert resolve_inputs([str(tmp_path / "val.h5"), str(tmp_path / "exp.h5")]) == [
        ("val", str(tmp_path / "val.h5")),
        ("train", str(tmp_path / "exp.h5")),
    ]
    assert resolve_inputs([str(tmp_path / "exp.h5")], split="test") == [("test", str(tmp_path / "exp.h5"))]
    assert resolve_inputs([f"val={tmp_path / 'exp.h5'}"]) == [("val", str(tmp_path / "exp.h5"))]
    loose = tmp_path / "loose"
    loose.mkdir()
    make_h5(loose / "exp.h5")
    with pytest.raises(EBSDInputError, match="none of train.h5"):
        resolve_inputs([str(loose)])  # only a dataset directory's train/val/test.h5 are taken


def test_convert_dataset_dir_and_inspect(tmp_path, capsys):
    ds = tmp_path / "ds"
    ds.mkdir()
    make_h5(ds / "train.h5", n=7)
    make_h5(ds / "val.h5", n=3, seed=1, voltage=15.0)
    out = tmp_path / "rec"
    code, stdout, err = run_cli(capsys, "convert", ds, "-o", out, "--shard-size", "4", "--gzip", "-q")
    assert code == 0, err
    assert "train: 7" in stdout and "val: 3" in stdout
    meta = read_metadata(out)
    assert meta["count"] == {"train": 7, "val": 3} and meta["compression"] == "GZIP"
    assert [s["count"] for s in meta["shards"]["train"]] == [4, 3]

    code, stdout, err = run_cli(capsys, "inspect", out, "--verify", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["count"] == {"train": 7, "val": 3} and summary["verified_shards"] == 3
    assert summary["voltages_kv"] == [15.0, 20.0] and summary["schema_version"] == 1

    code, stdout, err = run_cli(capsys, "inspect", ds / "train.h5", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["n_patterns"] == 7 and summary["pattern_shape"] == list(SHAPE)
    assert summary["euler_range_deg"]["stored_unit"] == "radians"
    assert 0 <= summary["euler_range_deg"]["Phi"][0] <= summary["euler_range_deg"]["Phi"][1] <= 180
    assert summary["voltage_kv"]["values"] == 20.0

    code, stdout, _ = run_cli(capsys, "inspect", out)  # text form
    assert code == 0 and "pattern_shape" in stdout


def test_convert_clahe_option(tmp_path, capsys):
    make_h5(tmp_path / "a.h5", shape=(16, 16))
    out = tmp_path / "rec"
    code, _, err = run_cli(capsys, "convert", f"train={tmp_path / 'a.h5'}", "-o", out, "--clahe", "--clip-limit",
                           "3", "--tiles", "2", "2", "-q")  # fmt: skip
    assert code == 0, err
    prep = read_metadata(out)["preprocessing"]
    assert prep["clip_limit"] == 3.0 and prep["tiles"] == [2, 2]
    code, _, err = run_cli(capsys, "convert", tmp_path / "a.h5", "-o", tmp_path / "r2", "--clip-limit", "3")
    assert code == 2 and "--clahe" in err


def test_corrupt_second_input_exit_2_and_no_output(tmp_path, capsys):
    make_h5(tmp_path / "a.h5")
    (tmp_path / "b.h5").write_bytes(b"this is not HDF5" * 10)
    out = tmp_path / "rec"
    code, _, err = run_cli(capsys, "convert", f"train={tmp_path / 'a.h5'}", f"val={tmp_path / 'b.h5'}", "-o", out)
    assert code == 2
    assert "ebsd-keras convert: error:" in err and "b.h5" in err
    assert not out.exists() and hidden(tmp_path) == []


def test_nan_angles_mid_conversion_exit_2_and_no_output(tmp_path, capsys):
    make_h5(tmp_path / "a.h5", n=9)
    make_h5(tmp_path / "b.h5", seed=1)
    with h5py.File(tmp_path / "b.h5", "r+") as f:
        f["EMData/EBSD/EulerAngles"][0, 0] = np.nan
    out = tmp_path / "rec"
    code, _, err = run_cli(capsys, "convert", f"train={tmp_path / 'a.h5'}", f"test={tmp_path / 'b.h5'}", "-o", out,
                           "--shard-size", "2", "-q")  # fmt: skip
    assert code == 2
    assert "b.h5" in err and "EulerAngles" in err and "non-finite" in err
    assert not out.exists() and hidden(tmp_path) == []


def test_wrong_pattern_size_exit_2(tmp_path, capsys):
    make_h5(tmp_path / "a.h5")
    make_h5(tmp_path / "b.h5", shape=(6, 6))
    code, _, err = run_cli(capsys, "convert", tmp_path / "a.h5", f"val={tmp_path / 'b.h5'}", "-o", tmp_path / "rec")
    assert code == 2 and "b.h5" in err and "EBSDPatterns" in err
    assert not (tmp_path / "rec").exists()


def test_existing_output_needs_overwrite(tmp_path, capsys):
    make_h5(tmp_path / "a.h5", n=4)
    out = tmp_path / "rec"
    assert run_cli(capsys, "convert", tmp_path / "a.h5", "-o", out, "-q")[0] == 0
    before = {p: (out / p).read_bytes() for p in os.listdir(out)}
    make_h5(tmp_path / "b.h5", n=5, seed=2)
    code, _, err = run_cli(capsys, "convert", tmp_path / "b.h5", "-o", out, "-q")
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before
    code, _, err = run_cli(capsys, "convert", tmp_path / "b.h5", "-o", out, "-q", "--overwrite")
    assert code == 0, err
    assert read_metadata(out)["count"] == {"train": 5} and hidden(tmp_path) == []


def test_empty_and_missing_inputs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "convert", tmp_path / "empty", "-o", tmp_path / "rec")
    assert code == 2 and "none of train.h5" in err
    code, _, err = run_cli(capsys, "convert", tmp_path / "nope.h5", "-o", tmp_path / "rec")
    assert code == 2 and "nope.h5" in err
    assert not (tmp_path / "rec").exists()


def test_inspect_schema_mismatch_exit_2(tmp_path, capsys):
    make_h5(tmp_path / "a.h5", n=2)
    out = tmp_path / "rec"
    assert run_cli(capsys, "convert", tmp_path / "a.h5", "-o", out, "-q")[0] == 0
    meta = json.loads((out / "metadata.json").read_text())
    meta["schema_version"] = 99
    (out / "metadata.json").write_text(json.dumps(meta))
    code, _, err = run_cli(capsys, "inspect", out)
    assert code == 2 and "metadata.json" in err and "schema_version" in err
