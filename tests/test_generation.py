"""ebsd_keras.generate: inputs, voltages against the trained range, samples, outputs (atomic), foreign model files.

Models are tiny and untrained (tests/_gen_models.py): a "tiny" CNN voltage model and a small physics decoder with
voltage knots 15-25 kV; loaded once per module.
"""

import json
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: make the shared helper importable
from _gen_models import PHYSICS_SINGLE, PHYSICS_VOLTAGE, build_model, random_quaternions, save_model  # noqa: E402

import ebsd_keras
from ebsd_keras.errors import EBSDInputError
from ebsd_keras.io.emsoft import iter_emebsd, write_angle_file
from ebsd_keras.orientation import euler_to_quaternion
from ebsd_keras.serving import generate as generation
from ebsd_keras.serving.generate import VoltageRangeWarning, generate
from ebsd_keras.serving.models import (
    default_model_path,
    inspect_model_file,
    load_generator,
    shipped_models,
    trained_voltage_range,
)

EULER = np.array([[2.0944, 0.7854, 1.0472], [0.1, 0.2, 0.3], [4.0, 1.5, 5.5]])


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"cnn": save_model(root / "cnn" / "model.keras", use_voltage=True)}


@pytest.fixture(scope="module")
def cnn(paths):
    return load_generator(paths["cnn"])[0]


@pytest.fixture(scope="module")
def physics():
    return build_model("physics", **PHYSICS_VOLTAGE)  # in memory: loading is covered by the CNN model


def test_import_is_cheap_and_generate_is_exposed():
    code = (
        "import sys, ebsd_keras; assert 'tensorflow' not in sys.modules and 'kikuchipy' not in sys.modules; "
        "from ebsd_keras.serving.generate import generate; assert ebsd_keras.generate is generate; "
        "assert 'tensorflow' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(_repo()))
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def _repo():
    return Path(ebsd_keras.__file__).resolve().parent.parent


def test_deterministic_path_matches_the_model_and_ignores_batch_size(cnn):
    q = random_quaternions(5)
    v = np.array([10, 15, 20, 25, 30], np.float32)
    a = generate(cnn, quaternion=q, voltage_kv=v, batch_size=2)
    b = generate(cnn, quaternion=q, voltage_kv=v, batch_size=256)
    ref = np.asarray(cnn.generate({"quaternion": q, "voltage_kv": v}))[..., 0]
    assert a.patterns.shape == (5, 60, 60) and a.patterns.dtype == np.float32
    np.testing.assert_allclose(a.patterns, ref, atol=1e-6)
    # batch size changes the order of float32 reductions (BLAS blocking), so equal to float32 rounding, not bitwise
    np.testing.assert_allclose(a.patterns, b.patterns, rtol=0, atol=2e-6)
    assert 0.0 <= a.patterns.min() and a.patterns.max() <= 1.0
    np.testing.assert_array_equal(a.voltage_kv, v)
    assert a.info["path"].startswith("deterministic")


def test_euler_degrees_and_quaternions_agree(cnn):
    a = generate(cnn, euler=EULER, voltage_kv=20)
    b = generate(cnn, euler=np.rad2deg(EULER), degrees=True, voltage_kv=20)
    c = generate(cnn, quaternion=euler_to_quaternion(EULER), voltage_kv=20)
    np.testing.assert_allclose(a.patterns, b.patterns, atol=1e-6)
    np.testing.assert_allclose(a.patterns, c.patterns, atol=1e-6)
    np.testing.assert_allclose(a.euler, EULER)
    flat = generate(cnn, euler=EULER.ravel().tolist(), voltage_kv=20)  # a flat list of triples, as on the CLI
    np.testing.assert_array_equal(flat.patterns, a.patterns)


def test_prior_samples_are_seeded_batch_independent_and_ordered(cnn):
    q = random_quaternions(3)
    a = generate(cnn, quaternion=q, voltage_kv=20, samples=4, seed=7, batch_size=5)
    b = generate(cnn, quaternion=q, voltage_kv=20, samples=4, seed=7, batch_size=64)
    c = generate(cnn, quaternion=q, voltage_kv=20, samples=4, seed=8)
    assert len(a) == 12
    np.testing.assert_array_equal(a.orientation_index, np.repeat(np.arange(3), 4))
    np.testing.assert_array_equal(a.sample_index, np.tile(np.arange(4), 3))
    np.testing.assert_allclose(a.patterns, b.patterns, atol=1e-6)
    assert np.abs(a.patterns - c.patterns).max() > 1e-4  # another seed, other samples
    assert np.abs(a.patterns[0] - a.patterns[1]).max() > 1e-4  # samples of one orientation differ


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"euler": [[0.1, np.nan, 0.2]]}, "euler"),
        ({"euler": [[120.0, 45.0, 60.0]]}, "euler"),  # degrees passed as radians
        ({"euler": [0.1, 0.2]}, "euler"),  # not a whole triple
        ({"quaternion": [[0, 0, 0, 0]]}, "quaternion"),
        ({"euler": EULER, "voltage_kv": [20, 20]}, "voltage_kv"),  # 2 voltages for 3 orientations
        ({"euler": EULER, "voltage_kv": 20000}, "voltage_kv"),  # volts, not kV
        ({"euler": EULER, "voltage_kv": [20, np.nan, 20]}, "voltage_kv"),
        ({"euler": EULER, "quaternion": [[1, 0, 0, 0]]}, "orientations"),
        ({"euler": EULER, "samples": 0}, "samples"),
        ({"euler": EULER, "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_input_raises_naming_the_field_and_writes_nothing(cnn, tmp_path, kwargs, field):
    out = tmp_path / "out.h5"
    with pytest.raises(EBSDInputError) as err:
        generate(cnn, output=out, **kwargs)
    assert err.value.field == field
    assert list(tmp_path.iterdir()) == []


def test_voltage_outside_the_trained_range_warns_or_is_refused(physics, cnn):
    assert trained_voltage_range(physics.model_config) == (15.0, 25.0)  # the knots
    assert trained_voltage_range(cnn.model_config) == (10.0, 30.0)  # voltage_norm_kv centre +- scale
    q = random_quaternions(2)
    with pytest.warns(VoltageRangeWarning, match=r"30 kV.*15-25 kV"):
        r = generate(physics, quaternion=q, voltage_kv=[20, 30])
    np.testing.assert_array_equal(r.voltage_kv, [20, 30])
    with pytest.raises(EBSDInputError, match="strict") as err:
        generate(physics, quaternion=q, voltage_kv=[20, 30], strict=True)
    assert err.value.field == "voltage_kv"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(physics, quaternion=q, voltage_kv=[15, 25], strict=True)  # the range is inclusive


def test_voltage_model_interpolates_between_knots(physics):
    q = random_quaternions(1)
    p = {kv: generate(physics, quaternion=q, voltage_kv=kv).patterns for kv in (15.0, 20.0)}
    assert np.abs(p[15.0] - p[20.0]).mean() > 0.01  # each knot has its own texture: the voltage reaches the model


def test_single_voltage_model_records_its_own_voltage():
    model = build_model("physics", **PHYSICS_SINGLE)
    assert trained_voltage_range(model.model_config) == (20.0, 20.0)
    with pytest.warns(VoltageRangeWarning, match="single-voltage model"):
        r = generate(model, euler=EULER[:1], voltage_kv=15)
    np.testing.assert_array_equal(r.voltage_kv, [20.0])
    with pytest.raises(EBSDInputError):
        generate(model, euler=EULER[:1], voltage_kv=15, strict=True)


def test_model_card_overrides_the_trained_range():
    cfg = {"use_voltage": False}
    assert trained_voltage_range(cfg, {"trained_voltage_kv": 15}) == (15.0, 15.0)
    assert trained_voltage_range(cfg, {"trained_voltage_kv": [10, 30]}) == (10.0, 30.0)


def test_h5_output_is_emsoft_layout_and_kikuchipy_loadable(cnn, tmp_path):
    import kikuchipy as kp

    out = tmp_path / "gen.h5"
    v = [10.0, 20.0, 30.0]
    r = generate(cnn, euler=EULER, voltage_kv=v, output=out, keep_patterns=True)
    chunks = list(iter_emebsd(out))
    np.testing.assert_array_equal(np.concatenate([c.patterns for c in chunks]), r.to_uint8())
    np.testing.assert_allclose(np.concatenate([c.euler for c in chunks]), EULER, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([c.voltage_kv for c in chunks]), v)
    with h5py.File(out) as f:
        meta = json.loads(f["ebsd_keras"].attrs["metadata"])
    assert meta["source"]["kind"] == "generated" and meta["detector"]["pc"] == [0.5, 0.5, 0.6]
    s = kp.load(out)
    assert s.data.shape == (3, 60, 60) and s.data.dtype == np.uint8
    np.testing.assert_allclose(s.xmap.rotations.to_euler(), EULER, atol=1e-5)
    assert r.patterns is not None
    assert generate(cnn, euler=EULER, output=tmp_path / "b.h5").patterns is None  # streamed, not kept


def test_npy_npz_and_png_outputs(cnn, tmp_path):
    r = generate(cnn, euler=EULER, output=tmp_path / "g.npy", keep_patterns=True)
    np.testing.assert_array_equal(np.load(tmp_path / "g.npy"), r.patterns)
    generate(cnn, euler=EULER, output=tmp_path / "g.npz", samples=2)
    with np.load(tmp_path / "g.npz") as z:
        assert z["patterns"].shape == (6, 60, 60) and z["euler"].shape == (6, 3)
        np.testing.assert_array_equal(z["sample_index"], [0, 1] * 3)
    generate(cnn, euler=EULER, output=tmp_path / "g.png")
    generate(cnn, euler=EULER, output=tmp_path / "s.png", samples=3)
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "s.png").stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npy", "g.npz", "g.png", "s.png"]  # no temporaries


def test_bad_suffix_and_existing_output(cnn, tmp_path):
    with pytest.raises(EBSDInputError, match="suffix") as err:
        generate(cnn, euler=EULER, output=tmp_path / "g.tiff")
    assert err.value.field == "output"
    (tmp_path / "g.npy").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        generate(cnn, euler=EULER, output=tmp_path / "g.npy", overwrite=False)
    assert (tmp_path / "g.npy").read_bytes() == b"keep"


@pytest.mark.parametrize("suffix", [".h5", ".npy"])
def test_failure_mid_request_leaves_no_partial_file(cnn, tmp_path, monkeypatch, suffix):
    real = generation._generator_fn

    def failing(model):
        fn, calls = real(model), []

        def wrapped(*a):
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("interrupted")
            return fn(*a)

        return wrapped

    monkeypatch.setattr(generation, "_generator_fn", failing)
    with pytest.raises(RuntimeError):
        generate(cnn, quaternion=random_quaternions(6), output=tmp_path / f"g{suffix}", batch_size=2)
    assert list(tmp_path.iterdir()) == []


def test_angles_from_an_angle_file_and_from_an_emebsd_file(cnn, tmp_path):
    write_angle_file(tmp_path / "angles.txt", EULER)
    a = generate(cnn, angles=tmp_path / "angles.txt", voltage_kv=20)
    ref = generate(cnn, euler=EULER, voltage_kv=20)
    np.testing.assert_allclose(a.patterns, ref.patterns, atol=1e-5)
    generate(cnn, euler=EULER, voltage_kv=[10, 20, 30], output=tmp_path / "src.h5")
    b = generate(cnn, angles=tmp_path / "src.h5")  # the file's angles and per-pattern voltages
    np.testing.assert_allclose(b.voltage_kv, [10, 20, 30])
    np.testing.assert_allclose(b.euler, EULER, atol=1e-6)
    with pytest.raises(FileNotFoundError):
        generate(cnn, angles=tmp_path / "missing.txt")


def test_foreign_model_files_are_refused_before_loading(tmp_path):
    import keras

    text = tmp_path / "text.keras"
    text.write_text("not a model")
    other = tmp_path / "dense.keras"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(other)
    for path, match in ((text, "not a Keras"), (other, "not an ebsd_keras CVAEGAN")):
        with pytest.raises(EBSDInputError, match=match) as err:
            generate(path, euler=EULER, output=tmp_path / "out.h5")
        assert err.value.path == str(path) and err.value.field == "model"
    with pytest.raises(FileNotFoundError):
        inspect_model_file(tmp_path / "missing.keras")
    assert not (tmp_path / "out.h5").exists()


def test_default_model_is_the_narrowest_one_covering_the_voltages(paths, tmp_path, monkeypatch):
    root = tmp_path / "saved_models"
    (root / "ni20-physics").mkdir(parents=True)
    with zipfile.ZipFile(paths["cnn"]) as src, zipfile.ZipFile(root / "ni20-physics" / "model.keras", "w") as dst:
        cfg = json.loads(src.read("config.json"))
        cfg["config"]["config"]["use_voltage"] = False
        dst.writestr("config.json", json.dumps(cfg))
    (root / "junk").mkdir()
    (root / "junk" / "model.keras").write_text("not ours")  # skipped
    monkeypatch.setenv("EBSD_KERAS_MODELS", str(root))
    assert default_model_path() == root / "ni20-physics" / "model.keras"
    assert default_model_path(15.0) == root / "ni20-physics" / "model.keras"  # the only one: generation warns
    (root / "ni-voltage").mkdir()
    (root / "ni-voltage" / "model.keras").write_bytes(paths["cnn"].read_bytes())
    lo, hi = shipped_models()[1]["voltage_range_kv"]
    assert shipped_models()[1]["name"] == "ni-voltage" and lo < 20.0 < hi
    assert default_model_path() == root / "ni20-physics" / "model.keras"  # 20 kV: the model made for it
    assert default_model_path([20.0, 20.0]) == root / "ni20-physics" / "model.keras"
    assert default_model_path([lo, 20.0]) == root / "ni-voltage" / "model.keras"  # only the wider one covers both
    assert default_model_path(hi + 100.0) == root / "ni-voltage" / "model.keras"  # none covers: the widest


def test_shipped_model_generates(tmp_path):
    path = default_model_path(20.0)
    assert path.parent.name == "ni20-physics" and path.stat().st_size < 20e6
    assert inspect_model_file(path)["model_config"]["decoder"] == "physics"


def test_default_model_is_chosen_per_pattern_not_per_request(tmp_path, monkeypatch):
    """A 20 kV pattern is the same whether or not the request also holds 25 kV: each voltage picks its own model."""
    root = tmp_path / "saved_models"
    save_model(root / "ni20-physics" / "model.keras", "physics", **PHYSICS_SINGLE)
    save_model(root / "ni-voltage-physics" / "model.keras", "physics", seed=1, **PHYSICS_VOLTAGE)
    (root / "ni20-physics" / "model_card.json").write_text(json.dumps({"source": "dynamical (EMsoft)"}))
    (root / "ni-voltage-physics" / "model_card.json").write_text(json.dumps({"source": "kinematical (kikuchipy)"}))
    monkeypatch.setenv("EBSD_KERAS_MODELS", str(root))
    alone = generate(euler=EULER[:1], voltage_kv=20.0)
    mixed = generate(euler=np.concatenate([EULER[:1], EULER[:1], EULER[:1]]), voltage_kv=[20.0, 25.0, 20.0])
    np.testing.assert_array_equal(mixed.patterns[0], alone.patterns[0])
    np.testing.assert_array_equal(mixed.patterns[2], alone.patterns[0])
    assert np.abs(mixed.patterns[1] - alone.patterns[0]).max() > 0.05  # 25 kV: the voltage model's pattern
    served = {m["model"]["name"]: (m["voltages_kv"], m["patterns"]) for m in mixed.info["models"]}
    assert served == {"ni20-physics": ([20.0], 2), "ni-voltage-physics": ([25.0], 1)}
    line = mixed.info["model_line"]
    assert "\n" not in line and "ni20-physics" in line and "dynamical" in line and "kinematical" in line
    assert "here: 25 kV" in line and "here: 20 kV" in line
    assert alone.info["models"][0]["model"]["name"] == "ni20-physics"
