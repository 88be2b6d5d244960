"""The workflows' detector handling: refine re-aims a projecting model at the pattern file's detector; the
experimental patterns get the model's contrast before matching."""

import sys
import types
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # --import-mode=importlib: the shared helper
from _gen_models import PHYSICS_SINGLE, build_model  # noqa: E402

from ebsd_keras.errors import EBSDInputError  # noqa: E402
from ebsd_keras.indexing.workflow import match_contrast, model_at_patterns_detector  # noqa: E402
from ebsd_keras.serving.detector import DetectorSettings  # noqa: E402


def test_refine_reaims_a_projecting_model_at_the_pattern_files_detector():
    model = build_model("physics", **PHYSICS_SINGLE)
    det = {"pc": [0.45, 0.3, 0.55], "tilt_deg": 0.0, "sample_tilt_deg": 70.0, "shape": [40, 50]}
    data = types.SimpleNamespace(shape=(40, 50), metadata={"detector": det})
    aimed = model_at_patterns_detector(model, None, data, "p.h5")
    cfg = aimed.model_config
    assert tuple(cfg.image_shape) == (40, 50) and tuple(cfg.physics_detector_pc) == (0.45, 0.3, 0.55)
    assert cfg.physics_detector_tilt_deg == 0.0
    same = types.SimpleNamespace(shape=(60, 60), metadata={})
    assert model_at_patterns_detector(model, None, same, "p.h5") is model  # nothing to change
    flags = model_at_patterns_detector(model, DetectorSettings(tilt_deg=3.0), same, "p.h5")
    assert flags.model_config.physics_detector_tilt_deg == 3.0
    cnn = build_model("tiny")
    with pytest.raises(EBSDInputError, match="cannot project"):
        model_at_patterns_detector(cnn, None, data, "p.h5")


def test_experimental_patterns_get_the_models_clahe():
    from ebsd_keras.data.preprocess import CLAHEConfig, clahe

    model = build_model("physics", **PHYSICS_SINGLE)
    rng = np.random.default_rng(0)
    p = rng.random((3, 60, 60)).astype(np.float32)
    out = match_contrast(p, model.model_config)
    expected = clahe(np.rint(p * 255).astype(np.uint8), CLAHEConfig(10.0, (4, 4))) / 255.0
    np.testing.assert_allclose(out, expected, atol=1e-6)
    raw = model.model_config.replace(physics_contrast="rescale")
    np.testing.assert_array_equal(match_contrast(p, raw), p)
