"""Model files and folders, the shipped-model registry and cards, and the shipped models loading in safe mode."""

import json

import keras
import numpy as np
import pytest

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.serving.models import (
    data_kind,
    describe_model,
    file_sha256,
    load_generator,
    model_identity,
    models_dir,
    resolve_model_path,
    shipped_models,
)


def _zip(path):
    """A minimal zip archive (what every .keras file is; its contents do not matter for resolving)."""
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{}")


def test_a_model_folder_resolves_to_its_keras_file(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    with pytest.raises(EBSDInputError, match="no .keras file") as err:
        resolve_model_path(folder)
    assert err.value.field == "model"
    _zip(folder / "weights.keras")
    assert resolve_model_path(folder) == folder / "weights.keras"  # the only one
    _zip(folder / "other.keras")
    with pytest.raises(EBSDInputError, match="2 .keras files"):
        resolve_model_path(folder)
    _zip(folder / "model.keras")
    assert resolve_model_path(folder) == folder / "model.keras"  # model.keras wins
    assert resolve_model_path(folder / "other.keras") == folder / "other.keras"
    with pytest.raises(FileNotFoundError):
        resolve_model_path(tmp_path / "missing")


def test_shipped_models_load_in_safe_mode_from_their_folders():
    """The registered class names did not move with the modules: every shipped .keras loads with safe_mode on."""
    names = [m["name"] for m in shipped_models()]
    assert names[:2] == ["ni20-physics", "ni-voltage-physics"]
    for name in names:
        folder = models_dir() / name
        model, info = load_generator(folder)  # keras.saving.load_model(..., safe_mode=True)
        assert type(model).__name__ == "CVAEGAN" and info["identity"]["name"] == name
        q = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)
        attrs = {"quaternion": q, "voltage_kv": np.array([20.0], np.float32)} if model.model_config.use_voltage else {
            "quaternion": q}  # fmt: skip
        p = np.asarray(model.generate(attrs))
        assert p.shape == (1, *model.model_config.image_shape, 1) and 0.0 <= p.min() <= p.max() <= 1.0
        direct = keras.saving.load_model(folder / "model.keras", safe_mode=True)
        assert type(direct).__name__ == "CVAEGAN"


def test_cards_say_what_data_each_shipped_model_learned_from():
    ni20 = model_identity(models_dir() / "ni20-physics")
    volt = model_identity(models_dir() / "ni-voltage-physics")
    assert (ni20["data"], volt["data"]) == ("dynamical", "kinematical")
    assert ni20["version"] == 1 and ni20["sha256"] == file_sha256(models_dir() / "ni20-physics" / "model.keras")
    line = describe_model({"identity": volt, "voltage_range_kv": (10.0, 30.0)})
    assert line == "model ni-voltage-physics v1 serves 10-30 kV, trained on kinematical patterns"
    assert data_kind({}) == "unknown" and data_kind({"source": "EMsoft dynamical"}) == "dynamical"
    card = json.loads((models_dir() / "ni20-physics" / "model_card.json").read_text())
    assert card["trained_voltage_kv"] == [20.0, 20.0]
