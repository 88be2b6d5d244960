"""``ebsd-keras refine``: refines perturbed start angles through a saved physics model, writes HDF5 / angle files
atomically, and refuses bad input with exit status 2 and no output."""

import json

import h5py
import numpy as np
import pytest

from ebsd_keras.cli import main
from ebsd_keras.io.emsoft import read_angle_file, write_angle_file, write_emebsd
from ebsd_keras.orientation import disorientation, quaternion_multiply, quaternion_to_euler

N = 6


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny physics-decoder model (random master-pattern texture) and patterns it generated at known angles."""
    import tensorflow as tf

    from ebsd_keras.indexing.dictionary import rotvec_to_quaternion
    from ebsd_keras.models.cvaegan import CVAEGAN
    from ebsd_keras.models.presets import get_preset

    d = tmp_path_factory.mktemp("refine")
    model = CVAEGAN(config=get_preset("physics", physics_npx=16, physics_residual=(0, 0)), seed=0)
    model.save(d / "model.keras")
    rng = np.random.default_rng(0)
    q = rng.normal(size=(N, 4))
    q = q / np.linalg.norm(q, axis=1, keepdims=True) * np.sign(q[:, :1])
    pats = np.asarray(model.generate({"quaternion": tf.constant(q, tf.float32)}))[..., 0]
    pats = np.rint(pats * 255).astype(np.uint8)
    det = {"pc": [0.5, 0.5, 0.6], "shape": [60, 60], "tilt_deg": 10.0, "sample_tilt_deg": 70.0, "px_size_um": 50.0}
    write_emebsd(d / "patterns.h5", pats, quaternion_to_euler(q), voltage_kv=20.0, detector=det)
    axis = rng.normal(size=(N, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    start = quaternion_multiply(rotvec_to_quaternion(axis * np.radians(0.6)), q)
    write_angle_file(d / "start.txt", quaternion_to_euler(start))
    return d, q, start


def test_refine_writes_hdf5_and_prints_accuracy(files, capsys):
    d, q, start = files
    out = d / "refined.h5"
    rc = main(["refine", str(d / "patterns.h5"), "--model", str(d / "model.keras"), "--start", str(d / "start.txt"),
               "-o", str(out), "--truth", "--quiet"])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "refined:" in text and "start:" in text
    with h5py.File(out) as f:
        euler = f["EMData/EBSD/EulerAngles"][()]
        q_ref = f["refinement/quaternion"][()]
        assert euler.shape == (N, 3) and f["refinement/score"].shape == (N,)
        settings = json.loads(f["ebsd_keras"].attrs["metadata"])
    assert settings["refinement"]["method"] == "gauss-newton-fd"  # the fastest, most accurate one is the default
    # the file names its model and patterns, not paths of this machine
    assert len(settings["model"]["sha256"]) == 64 and "/" not in settings["patterns"]
    assert "/" not in json.dumps(settings["model"])
    err = disorientation(q, q_ref)
    assert disorientation(q, start).mean() > 0.5
    assert err.mean() < 0.1, err  # float32 generator, 60 x 60 patterns of a coarse texture


def test_refine_writes_angle_file_with_pc(files):
    d, q, _ = files
    out = d / "refined.txt"
    # PC calibration with the orientations held: the angles come back unchanged (to the file's 8 decimals)
    rc = main(["refine", str(d / "patterns.h5"), "--model", str(d / "model.keras"), "--start", str(d / "start.txt"),
               "--pc", "0.5", "0.5", "0.6", "--refine-pc", "--pc-only", "-o", str(out), "--quiet",
               "--iterations", "3"])  # fmt: skip
    assert rc == 0
    assert len(read_angle_file(out)) == N
    assert disorientation(read_angle_file(out), read_angle_file(d / "start.txt")).max() < 1e-4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pc", "30", "20", "15000"], "--pc"),
        (["--kv", "20000"], "--kv"),
        (["--batch-size", "0"], "--batch-size"),
        (["--pc-only"], "--pc-only"),
        (["--hessian-every", "0"], "--hessian-every"),
    ],
)
def test_bad_arguments_exit_2_without_output(files, capsys, extra, message):
    d, _, _ = files
    out = d / "bad.h5"
    rc = main(["refine", str(d / "patterns.h5"), "--model", str(d / "model.keras"), "--start", str(d / "start.txt"),
               "-o", str(out), "--quiet", *extra])  # fmt: skip
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bad_files_exit_2_naming_the_file(files, capsys, tmp_path):
    d, _, start = files
    short = tmp_path / "short.txt"
    write_angle_file(short, quaternion_to_euler(start[:2]))
    out = tmp_path / "out.h5"
    rc = main(["refine", str(d / "patterns.h5"), "--model", str(d / "model.keras"), "--start", str(short),
               "-o", str(out), "--quiet"])  # fmt: skip
    assert rc == 2 and "short.txt" in capsys.readouterr().err and not out.exists()
    junk = tmp_path / "junk.keras"
    junk.write_text("not a model")
    rc = main(["refine", str(d / "patterns.h5"), "--model", str(junk), "--start", str(d / "start.txt"),
               "-o", str(out), "--quiet"])  # fmt: skip
    assert rc == 2 and "junk.keras" in capsys.readouterr().err and not out.exists()
    out.write_text("keep me")
    rc = main(["refine", str(d / "patterns.h5"), "--model", str(d / "model.keras"), "--start", str(d / "start.txt"),
               "-o", str(out), "--quiet"])  # fmt: skip
    assert rc == 2 and out.read_text() == "keep me"
