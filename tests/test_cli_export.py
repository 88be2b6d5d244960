"""``ebsd-keras export``: TF Serving layout with increasing versions; foreign files exit 2 without output."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: make the shared helper importable
from _gen_models import save_model  # noqa: E402

from ebsd_keras.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("m") / "model.keras", use_voltage=True)


def test_export_writes_versions(model, tmp_path, capsys):
    out = tmp_path / "serving" / "tiny"
    assert main(["export", str(model), "-o", str(out)]) == 0
    assert "SavedModel written to" in capsys.readouterr().out
    assert (out / "1" / "saved_model.pb").is_file()
    meta = json.loads((out / "1" / "assets.extra" / "ebsd_keras.json").read_text())
    assert meta["source_model"] == str(model) and meta["use_voltage"] is True
    assert main(["export", str(model), "-o", str(out), "--version", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["1"]  # nothing half-written beside it


def test_export_refuses_foreign_files(tmp_path, capsys):
    bad = tmp_path / "x.keras"
    bad.write_text("nope")
    assert main(["export", str(bad), "-o", str(tmp_path / "serving")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ebsd-keras export: error:") and str(bad) in err
    assert not (tmp_path / "serving").exists()
    assert main(["export", str(tmp_path / "missing.keras"), "-o", str(tmp_path / "serving")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_export_with_another_contrast_saves_a_switched_model(tmp_path, capsys):
    from _gen_models import PHYSICS_SINGLE, random_quaternions

    from ebsd_keras.serving.models import load_generator

    raw = save_model(tmp_path / "raw.keras", preset="physics", physics_contrast="rescale", **PHYSICS_SINGLE)
    out, switched = tmp_path / "serving", tmp_path / "clahe.keras"
    argv = ["export", str(raw), "-o", str(out), "--contrast", "clahe", "--clip-limit", "5", "--keras", str(switched)]
    assert main(argv) == 0
    assert (out / "1" / "saved_model.pb").is_file()
    a, _ = load_generator(raw)
    b, _ = load_generator(switched)
    assert b.model_config.physics_contrast == "clahe" and b.model_config.physics_clahe_clip_limit == 5.0
    for x, y in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)
    q = random_quaternions(3)
    assert not np.allclose(np.asarray(a.generate({"quaternion": q})), np.asarray(b.generate({"quaternion": q})))
    # a CNN model has no contrast step to switch: exit 2, nothing written
    tiny = save_model(tmp_path / "tiny.keras")
    assert main(["export", str(tiny), "-o", str(tmp_path / "s2"), "--contrast", "clahe"]) == 2
    assert "physics" in capsys.readouterr().err and not (tmp_path / "s2").exists()
    assert main(["export", str(raw), "-o", str(tmp_path / "s3"), "--keras", str(tmp_path / "k.keras")]) == 2
    assert "--contrast" in capsys.readouterr().err and not (tmp_path / "k.keras").exists()


def test_export_for_another_detector_records_it_and_cnn_refuses(model, tmp_path, capsys):
    from _gen_models import PHYSICS_SINGLE

    physics = save_model(tmp_path / "p" / "model.keras", "physics", **PHYSICS_SINGLE)
    out = tmp_path / "served"
    argv = ["export", str(physics), "-o", str(out), "--shape", "96", "128", "--binning", "2", "--tilt", "0"]
    assert main(argv) == 0
    assert "for one detector: 48x64" in capsys.readouterr().out
    meta = json.loads((out / "1" / "assets.extra" / "ebsd_keras.json").read_text())
    assert meta["detector"]["shape"] == [48, 64] and meta["detector"]["tilt_deg"] == 0.0
    assert meta["contrast"]["tiles"] == [4, 5] and meta["image_shape"] == [48, 64]
    assert main(["export", str(model), "-o", str(tmp_path / "cnn"), "--shape", "48", "64"]) == 2
    assert "cannot project onto another" in capsys.readouterr().err
    assert not (tmp_path / "cnn" / "1").exists()
