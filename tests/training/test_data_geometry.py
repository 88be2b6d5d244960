"""The physics decoder (the default preset) takes its detector and contrast from the dataset's metadata."""

import pytest

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.training.config import TrainConfig
from ebsd_keras.training.phases import _with_data_geometry, physics_data_overrides


def source(pc=(0.45, 0.52, 0.63), tilt=5.0, sample_tilt=68.0, group="m-3m"):
    det = {"pc": list(pc), "tilt_deg": tilt, "sample_tilt_deg": sample_tilt, "shape": [60, 60]}
    return {"detector": det, "provenance": {"sampling": {"point_group": group}}}


def meta(*sources, clahe=(7.0, (2, 3))):
    """Metadata as the dataset builder records it: CLAHE settings, or "none"."""
    pre = {"rescale": "per pattern", "clahe": "none"}
    if clahe:
        pre["clahe"] = {"clip_limit": clahe[0], "tiles": list(clahe[1])}
    return {"sources": list(sources), "preprocessing": pre}


def test_detector_and_clahe_come_from_the_metadata():
    out = physics_data_overrides(meta(source(), source()))
    assert out == {
        "physics_detector_pc": [0.45, 0.52, 0.63],
        "physics_detector_tilt_deg": 5.0,
        "physics_sample_tilt_deg": 68.0,
        "physics_contrast": "clahe",
        "physics_clahe_clip_limit": 7.0,
        "physics_clahe_tiles": [2, 3],
    }


def test_clahe_applied_by_convert_is_read_too():
    m = {"sources": [source()], "preprocessing": {"method": "clahe-opencv", "clip_limit": 4.0, "tiles": [8, 8]}}
    out = physics_data_overrides(m)
    assert out["physics_contrast"] == "clahe" and out["physics_clahe_clip_limit"] == 4.0
    assert out["physics_clahe_tiles"] == [8, 8]
    with pytest.raises(EBSDInputError, match="cannot be reproduced"):
        physics_data_overrides({"sources": [source()], "preprocessing": {"rescale": "x"}}, "DATA")


def test_no_clahe_means_rescale_and_other_point_groups_drop_the_cubic_symmetry():
    out = physics_data_overrides(meta(source(group="6/mmm"), clahe=None))
    assert out["physics_contrast"] == "rescale" and out["physics_symmetry"] == "none"
    assert physics_data_overrides({"sources": [{}]}) == {}  # nothing recorded: the preset's own detector


def test_sources_with_different_detectors_are_refused():
    with pytest.raises(EBSDInputError, match="different detectors") as err:
        physics_data_overrides(meta(source(), source(pc=(0.5, 0.5, 0.6))), "DATA")
    assert err.value.field == "sources.detector" and "DATA" in str(err.value)


def test_user_fields_win_and_other_presets_are_untouched():
    m = meta(source())
    cfg = _with_data_geometry(TrainConfig(data_dir="d", model={"physics_detector_tilt_deg": 9.0}), m)
    assert TrainConfig().preset == "physics"  # the default preset
    assert cfg.model["physics_detector_tilt_deg"] == 9.0 and cfg.model["physics_detector_pc"] == [0.45, 0.52, 0.63]
    cfg.resolved()  # the overrides make a valid model config
    assert _with_data_geometry(TrainConfig(data_dir="d", preset="tiny"), m).model == {}
    assert _with_data_geometry(TrainConfig(data_dir="d", init_from="m.keras"), m).model == {}


def test_the_neural_field_takes_the_data_detector_and_contrast_too():
    """The field decoder projects through the same detector fields: raw data must give it the rescale contrast (and
    so pixel-subset training), CLAHE'd data the in-graph CLAHE."""
    from ebsd_keras.models.presets import get_preset

    raw = _with_data_geometry(TrainConfig(data_dir="d", preset="field"), meta(source(), clahe=None))
    assert raw.model["physics_contrast"] == "rescale" and raw.model["physics_detector_pc"] == [0.45, 0.52, 0.63]
    clahe = _with_data_geometry(TrainConfig(data_dir="d", preset="field"), meta(source()))
    assert clahe.model["physics_contrast"] == "clahe" and clahe.model["physics_clahe_tiles"] == [2, 3]
    assert get_preset("field", **raw.model).decoder == "field"
