"""``ebsd-keras generate``: outputs, warnings, and exit status 2 with no partial file on bad input."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: make the shared helper importable
from _gen_models import PHYSICS_VOLTAGE, save_model  # noqa: E402

from ebsd_keras.cli import main  # noqa: E402
from ebsd_keras.io.emsoft import iter_emebsd  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("m") / "model.keras", "physics", **PHYSICS_VOLTAGE)


def _fails(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ebsd-keras generate: error:"), err
    for needle in needles:
        assert needle in err, err
    return err


def test_generate_h5_with_per_orientation_voltages_and_a_warning(model, tmp_path, capsys):
    out = tmp_path / "g.h5"
    argv = ["generate", "-m", str(model), "--euler", "120", "45", "60", "10", "20", "30", "--degrees"]
    assert main([*argv, "--kv", "15", "28", "-o", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and "28 kV" in captured.err and "15-25 kV" in captured.err
    assert "2 patterns" in captured.out
    chunk = next(iter_emebsd(out))
    np.testing.assert_allclose(np.rad2deg(chunk.euler), [[120, 45, 60], [10, 20, 30]], atol=1e-4)
    np.testing.assert_array_equal(chunk.voltage_kv, [15, 28])
    # --strict refuses the same request; the existing file is untouched, and is not replaced without --overwrite
    before = out.read_bytes()
    _fails([*argv, "--kv", "15", "28", "-o", str(tmp_path / "s.h5"), "--strict"], capsys, "strict", "voltage")
    _fails([*argv, "-o", str(out)], capsys, "already exists")
    assert out.read_bytes() == before and not (tmp_path / "s.h5").exists()


def test_generate_samples_to_npy(model, tmp_path, capsys):
    out = tmp_path / "g.npy"
    argv = ["generate", "-m", str(model), "--quaternion", "1", "0", "0", "0", "--samples", "3", "--seed", "2"]
    assert main([*argv, "-o", str(out), "--batch-size", "2"]) == 0
    assert np.load(out).shape == (3, 60, 60)


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--euler", "0.1", "nan", "0.2"], ["euler", "non-finite"]),
        (["--euler", "0.1", "0.2"], ["--euler", "3-tuples"]),
        (["--euler", "120", "45", "60"], ["look like degrees", "pass --degrees"]),
        (["--euler", "0.1", "0.2", "0.3", "--kv", "20", "25"], ["voltage_kv", "2 voltages for 1"]),
        (["--euler", "0.1", "0.2", "0.3", "--kv", "20000"], ["voltage_kv", "kV"]),
        (["--angles", "missing.txt"], ["no such file"]),
        (["--euler", "0.1", "0.2", "0.3", "--samples", "0"], ["samples"]),
    ],
)
def test_bad_input_exits_2_without_output(model, tmp_path, capsys, args, needles):
    out = tmp_path / "g.h5"
    _fails(["generate", "-m", str(model), *args, "-o", str(out)], capsys, *needles)
    assert list(tmp_path.iterdir()) == []


def test_foreign_model_and_bad_suffix_exit_2(tmp_path, capsys):
    bad = tmp_path / "model.keras"
    bad.write_text("not a model")
    _fails(
        ["generate", "-m", str(bad), "--euler", "0", "0", "0", "-o", str(tmp_path / "g.h5")], capsys, str(bad), "model"
    )
    _fails(["generate", "-m", str(bad), "--euler", "0", "0", "0", "-o", str(tmp_path / "g.jpg")], capsys, "suffix")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


def test_degrees_hint_names_generates_own_flag(model, tmp_path, capsys):
    err = _fails(["generate", "-m", str(model), "--euler", "120", "45", "60", "-o", str(tmp_path / "g.h5")], capsys)
    assert "--degrees" in err and "convert" not in err


def test_a_model_folder_works_and_files_record_the_model_not_a_path(model, tmp_path, capsys):
    """``-m FOLDER`` (what saved_models/ holds) loads the folder's .keras file; one line says which model serves
    which voltages; the HDF5 records the model's name and file hash, never a path of this machine."""
    import json

    import h5py

    from ebsd_keras.serving.models import file_sha256

    out = tmp_path / "g.h5"
    argv = ["generate", "-m", str(model.parent), "--euler", "0.1", "0.2", "0.3", "--kv", "20", "-o", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    first = printed.splitlines()[0]
    assert first.startswith("model ") and "serves 15-25 kV" in first
    with h5py.File(out, "r") as f:
        meta = json.loads(f["ebsd_keras"].attrs["metadata"])
    source = meta["source"]["model"]
    assert source["sha256"] == file_sha256(model) and source["name"] == model.parent.name
    assert str(tmp_path) not in json.dumps(meta) and "/" not in json.dumps(source)


def test_png_rows_are_labelled_by_pattern_number(model, tmp_path, monkeypatch):
    """One pattern: row "pattern 1" (not "0-0"); titles are Euler angles with the degree unit."""
    from ebsd_keras.serving import pattern_grid

    seen = {}
    real = pattern_grid.save_pattern_grid

    def spy(path, rows, titles=None, **kw):
        seen.update(rows=list(rows), titles=titles)
        return real(path, rows, titles=titles, **kw)

    monkeypatch.setattr(pattern_grid, "save_pattern_grid", spy)
    out = tmp_path / "g.png"
    assert main(["generate", "-m", str(model), "--euler", "120", "45", "60", "--degrees", "-o", str(out)]) == 0
    assert seen["rows"] == ["pattern 1"] and seen["titles"] == ["(120°, 45°, 60°) 20 kV"]
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_generate_for_another_detector_and_cnn_refusal(model, tmp_path, capsys):
    out = tmp_path / "big.npy"
    argv = ["generate", "--euler", "0.1", "0.2", "0.3", "-m", str(model), "--kv", "20", "--no-progress"]
    assert main([*argv, "--shape", "96", "128", "--binning", "2", "--pc", "0.45", "0.4", "0.6", "--tilt", "0",
                 "-o", str(out)]) == 0  # fmt: skip
    first = capsys.readouterr().out.splitlines()[0]
    assert "detector 48x64, PC (0.45, 0.4, 0.6), tilt 0 deg" in first and "4x5 tiles" in first
    assert np.load(out).shape == (1, 48, 64)
    cnn = save_model(tmp_path / "cnn.keras")
    bad = tmp_path / "bad.npy"
    _fails(["generate", "--euler", "0.1", "0.2", "0.3", "-m", str(cnn), "--shape", "48", "64", "-o", str(bad)],
           capsys, "cannot project onto another")  # fmt: skip
    assert not bad.exists()
