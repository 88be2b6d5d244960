"""generate's request object and its writer registry (no model needed)."""

import pytest

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.serving.generate import (
    OUTPUT_SUFFIXES,
    WRITERS,
    GenerationRequest,
    H5Writer,
    NpyWriter,
    NpzWriter,
    PngWriter,
    euler_label,
    writer_for,
)


def test_one_writer_per_output_format():
    assert writer_for("a.H5") is H5Writer and writer_for("a.hdf5") is H5Writer and writer_for("a.npy") is NpyWriter
    assert writer_for("a.npz") is NpzWriter and writer_for("a.png") is PngWriter
    assert OUTPUT_SUFFIXES == {".h5": "h5", ".hdf5": "h5", ".npy": "npy", ".npz": "npz", ".png": "png"}
    assert {cls.needs_patterns for cls in WRITERS.values()} == {False, True}  # npz / png write at the end
    with pytest.raises(EBSDInputError, match="unknown output suffix") as err:
        writer_for("a.tiff")
    assert err.value.field == "output"


def test_generation_request_validates_before_any_model_is_loaded():
    req = GenerationRequest(euler=[[0, 0, 0]], samples=3)
    assert req.samples_per_orientation == 3 and req.path_text().startswith("prior samples")
    assert GenerationRequest(euler=[[0, 0, 0]]).path_text() == "deterministic (z = 0)"
    for bad, field in (
        ({"samples": 0}, "samples"),
        ({"batch_size": True}, "batch_size"),
        ({"samples": 2, "latent": [[0.0]]}, "latent"),
        ({"output": "x.jpg"}, "output"),
    ):
        with pytest.raises(EBSDInputError) as err:
            GenerationRequest(euler=[[0, 0, 0]], **bad)
        assert err.value.field == field


def test_euler_labels_say_degrees():
    assert euler_label([0.0, 3.14159265 / 2, 3.14159265]) == "(0°, 90°, 180°)"
    assert euler_label([0.0, 0.0, 0.0], 12.5) == "(0°, 0°, 0°) 12.5 kV"
