"""``ebsd-keras export``: TF Serving layout with increasing versions; foreign files exit 2 without output."""

import json
import sys
from pathlib import Path

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
