"""Any detector at generation time: a projecting model re-aimed at other detectors reproduces kikuchipy's projection
of the same master pattern; CLAHE tiles scale with the pattern; detectors from files and kikuchipy objects; CNN
decoders refuse; generate, export and refine take the detector."""

import json
import sys
import types
from pathlib import Path

import h5py
import kikuchipy as kp
import numpy as np
import pytest
from orix.quaternion import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # --import-mode=importlib: the shared helper
from _gen_models import PHYSICS_SINGLE, save_model  # noqa: E402

from ebsd_keras.data.simulate import embedded_master_pattern_path  # noqa: E402
from ebsd_keras.errors import EBSDInputError  # noqa: E402
from ebsd_keras.io.emsoft import read_master_pattern  # noqa: E402
from ebsd_keras.serving.detector import (  # noqa: E402
    DetectorSettings,
    detector_from_kikuchipy,
    for_detector,
    read_detector,
    resolve_detector,
    scaled_tiles,
)
from ebsd_keras.serving.generate import generate  # noqa: E402
from ebsd_keras.serving.models import load_generator  # noqa: E402
from ebsd_keras.simulations.geometry import DetectorGeometry  # noqa: E402

KP_DATA = Path(kp.data.__file__).parent
#: Three detectors unlike the models' (60 x 60, PC (0.5, 0.5, 0.6), tilt 10, sample tilt 70).
GEOMETRIES = [
    DetectorGeometry((60, 60), (0.425, 0.213, 0.501), 0.0, 70.0),  # kikuchipy's experimental Ni map
    DetectorGeometry((48, 64), (0.45, 0.3, 0.55), 5.0, 65.0),
    DetectorGeometry((120, 90), (0.5, 0.55, 0.7), -3.0, 72.0),
]


def _ncc(a, b):
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


@pytest.fixture(scope="module")
def emsoft_model():
    """A physics decoder whose texture is the EMsoft Ni 20 kV master pattern, as a model-like object."""
    from ebsd_keras.models.physics import PhysicsDecoder
    from ebsd_keras.models.presets import get_preset

    em = read_master_pattern(embedded_master_pattern_path())
    cfg = get_preset("physics", physics_npx=200, physics_symmetry="4/mmm")
    decoder = PhysicsDecoder(cfg)
    decoder.master_pattern.set_master_pattern(em.north[0], em.south[0])
    return types.SimpleNamespace(decoder=decoder, model_config=cfg)


@pytest.fixture(scope="module")
def rotations():
    np.random.seed(5)  # orix draws from numpy's global generator
    return Rotation.random(6)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=["kikuchipy-ni", "48x64", "120x90"])
def test_reaimed_model_reproduces_kikuchipy_projections(emsoft_model, rotations, geometry):
    mp = kp.load(embedded_master_pattern_path(), projection="lambert", hemisphere="both")
    g = geometry
    det = kp.detectors.EBSDDetector(g.shape, pc=g.pc, tilt=g.tilt_deg, sample_tilt=g.sample_tilt_deg)
    ref = mp.get_patterns(rotations, det, energy=20, compute=True, dtype_out=np.float32, show_progressbar=False)
    ref = np.asarray(ref.data).reshape(rotations.size, *g.shape)
    model = for_detector(emsoft_model, g, contrast="raw")
    out = np.asarray(model.generate({"quaternion": rotations.data.astype(np.float32)}))[..., 0]
    assert out.shape == (rotations.size, *g.shape)
    assert _ncc(out, ref).min() >= 0.999
    # the model's own detector gives other patterns: the geometry really changed
    own = np.asarray(emsoft_model.decoder.generate({"quaternion": rotations.data.astype(np.float32)}))[..., 0]
    if own.shape == out.shape:
        assert _ncc(own, ref).mean() < 0.99


def test_clahe_tiles_scale_with_the_pattern_and_raw_skips_clahe(emsoft_model, rotations):
    from ebsd_keras.data.preprocess import CLAHEConfig, clahe

    assert scaled_tiles((4, 4), (60, 60), (480, 640)) == (4, 5)
    assert scaled_tiles((4, 4), (60, 60), (120, 90)) == (4, 3)
    g = GEOMETRIES[2]
    q = rotations.data.astype(np.float32)
    clahed = for_detector(emsoft_model, g)  # the model's CLAHE, tiles scaled
    raw = for_detector(emsoft_model, g, contrast="raw")
    assert tuple(clahed.model_config.physics_clahe_tiles) == (4, 3) and raw.model_config.physics_contrast == "rescale"
    p_raw = np.asarray(raw.generate({"quaternion": q}))[..., 0]
    p_clahe = np.asarray(clahed.generate({"quaternion": q}))[..., 0]
    # the in-graph CLAHE equals the dataset's (OpenCV) CLAHE of the 8-bit raw projection with the scaled tiles
    projected = np.asarray(raw.decoder.project({"quaternion": q}), np.float64)
    lo, hi = projected.min(axis=(1, 2), keepdims=True), projected.max(axis=(1, 2), keepdims=True)
    grey = np.rint((projected - lo) / (hi - lo) * 255).astype(np.uint8)
    expected = clahe(grey, CLAHEConfig(10.0, (4, 3))).astype(np.float32)
    assert np.abs(p_clahe * 255 - expected).max() <= 1.5
    assert np.abs(p_clahe - p_raw).mean() > 0.02  # CLAHE did something


def test_cnn_decoders_refuse_another_detector_in_one_line(tmp_path):
    path = save_model(tmp_path / "cnn.keras")
    cnn, _ = load_generator(path)
    with pytest.raises(EBSDInputError, match="cannot project onto another") as err:
        for_detector(cnn, DetectorGeometry((48, 64)), path=path)
    assert "\n" not in str(err.value) and err.value.field == "detector"
    assert for_detector(cnn, None) is cnn  # nothing asked: the model itself
    with pytest.raises(EBSDInputError, match="cannot project"):
        generate(path, euler=[[0.1, 0.2, 0.3]], detector=DetectorSettings(shape=(40, 40)))


def test_detectors_from_files_objects_and_flags():
    emsoft = read_detector(KP_DATA / "emsoft_ebsd" / "EBSD_TEST_Ni.h5")  # EMsoft EMEBSD, through kikuchipy
    assert emsoft.shape == (480, 640) and emsoft.tilt_deg == 10.0 and emsoft.sample_tilt_deg == 70.0
    np.testing.assert_allclose(emsoft.pc, (0.46875, 0.458333, 0.625), atol=1e-5)
    h5ebsd = read_detector(KP_DATA / "kikuchipy_h5ebsd" / "patterns.h5")  # kikuchipy h5ebsd (binning 8)
    assert h5ebsd.shape == (60, 60) and h5ebsd.tilt_deg == 0.0
    np.testing.assert_allclose(h5ebsd.pc, (0.4251, 0.2134, 0.5007), atol=1e-4)
    det = kp.detectors.EBSDDetector((30, 40), pc=(0.4, 0.3, 0.6), tilt=2.0, sample_tilt=68.0)
    assert detector_from_kikuchipy(det) == DetectorGeometry((30, 40), (0.4, 0.3, 0.6), 2.0, 68.0)
    with pytest.raises(EBSDInputError, match="PCz must be > 0"):  # EDAX h5ebsd without a pattern centre
        read_detector(KP_DATA / "edax_h5ebsd" / "patterns.h5")
    # flags override the file; binning divides the unbinned shape
    cfg = types.SimpleNamespace(
        decoder="physics",
        image_shape=(60, 60),
        physics_detector_pc=(0.5, 0.5, 0.6),
        physics_detector_tilt_deg=10.0,
        physics_sample_tilt_deg=70.0,
    )
    s = DetectorSettings(source=KP_DATA / "emsoft_ebsd" / "EBSD_TEST_Ni.h5", binning=8, tilt_deg=0.0)
    g = resolve_detector(s, cfg)
    assert g.shape == (60, 80) and g.tilt_deg == 0.0 and g.pc == emsoft.pc
    assert resolve_detector(DetectorSettings(shape=(480, 480), binning=8, pc=(0.4, 0.4, 0.5)), cfg).shape == (60, 60)
    with pytest.raises(EBSDInputError, match="binning"):
        DetectorSettings(shape=(60, 60), binning=40)


def test_generate_records_the_detector_and_exports_for_one_detector(tmp_path):
    from ebsd_keras.serving.export import export_saved_model

    path = save_model(tmp_path / "m" / "model.keras", "physics", **PHYSICS_SINGLE)
    ni = KP_DATA / "kikuchipy_h5ebsd" / "patterns.h5"
    out = tmp_path / "g.h5"
    r = generate(path, euler=[[0.1, 0.2, 0.3], [1.0, 0.5, 2.0]], detector=DetectorSettings(source=ni), output=out)
    assert r.patterns is None and "detector 60x60, PC (0.4251" in r.info["model_line"]
    with h5py.File(out, "r") as f:
        meta = json.loads(f["ebsd_keras"].attrs["metadata"])
    assert meta["detector"]["tilt_deg"] == 0.0 and abs(meta["detector"]["pc"][1] - 0.2134) < 1e-3
    assert meta["source"]["detector"]["contrast"] == "model"
    # a kikuchipy EBSDDetector object, at another shape
    det = kp.detectors.EBSDDetector((40, 50), pc=(0.5, 0.4, 0.6), tilt=0.0, sample_tilt=70.0)
    r2 = generate(path, euler=[[0.1, 0.2, 0.3]], detector=det, contrast="raw")
    assert r2.patterns.shape == (1, 40, 50) and "raw" in r2.info["model_line"]
    target = export_saved_model(
        path, tmp_path / "serving", detector=DetectorSettings(shape=(40, 50), pc=(0.5, 0.4, 0.6))
    )
    meta = json.loads((target / "assets.extra" / "ebsd_keras.json").read_text())
    assert meta["detector"]["shape"] == [40, 50] and meta["detector"]["pc"] == [0.5, 0.4, 0.6]
    assert "one" in meta["detector"]["note"] and "40, 50" in meta["signatures"]["outputs"]["patterns"]
    assert meta["image_shape"] == [40, 50]
