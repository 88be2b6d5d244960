"""`ebsd-keras train`: help, flag/config merging, warnings and exit status 2 with a clear message on bad input.

(Successful CLI runs, including a SIGKILL and resume, are in tests/training/test_resume.py.)
"""

import json
import logging
import shutil

import numpy as np
import pytest

from ebsd_keras.cli import build_parser, main
from ebsd_keras.cli.train import config_from_args
from ebsd_keras.io.emsoft import write_emebsd
from ebsd_keras.io.tfrecord import write_tfrecords


def _dataset(tmp, shape, n=16):
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    euler = rng.uniform([0, 0, 0], [2 * np.pi, np.pi, 2 * np.pi], size=(n, 3))
    write_emebsd(tmp / "train.h5", patterns, euler, voltage_kv=20.0)
    write_emebsd(tmp / "val.h5", patterns[:8], euler[:8], voltage_kv=20.0)
    write_tfrecords([("train", tmp / "train.h5"), ("val", tmp / "val.h5")], tmp / "rec", progress=False)
    return tmp / "rec"


@pytest.fixture(scope="module")
def data30(tmp_path_factory):
    """30x30 patterns: a shape the (60x60) tiny preset cannot take."""
    return _dataset(tmp_path_factory.mktemp("cli30"), (30, 30))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained 60x60 tiny CVAEGAN saved as .keras."""
    from ebsd_keras.models.cvaegan import CVAEGAN

    path = tmp_path_factory.mktemp("cli_model") / "model.keras"
    CVAEGAN(config="tiny", seed=0).save(str(path))
    return path


def _fails(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ebsd-keras train: error:"), err
    for needle in needles:
        assert needle in err, err
    return err


def test_help_explains_phases_and_output_files(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("cvae", "critic", "gan", "--init-from", "model.keras", "best.keras", "history.csv", "summary.json",
                 "logs/", "config.json", "--no-resume"):  # fmt: skip
        assert word in out, word


def test_flags_override_config_file(tmp_path):
    cfg_file = tmp_path / "c.json"
    # a CNN preset: the default (physics) preset refuses mixed precision
    file_cfg = {"data_dir": "d", "output_dir": "o", "epochs": 7, "batch_size": 4, "seed": 3, "preset": "compact"}
    cfg_file.write_text(json.dumps(file_cfg))
    argv = ["train", "--config", str(cfg_file), "--epochs", "2", "--phase", "gan", "--kv", "20",
            "--loss-weight", "orientation=5", "--no-resume", "--mixed-precision", "--update-freq", "10"]  # fmt: skip
    cfg = config_from_args(build_parser().parse_args(argv))
    assert (cfg.epochs, cfg.batch_size, cfg.seed, cfg.phase) == (2, 4, 3, "gan")
    assert cfg.voltages == [20.0] and cfg.loss_weights == {"orientation": 5.0}
    assert cfg.resume is False and cfg.mixed_precision is True and cfg.tensorboard_update_freq == 10


def test_missing_data_dir(tmp_path, capsys):
    _fails(["train", "--data", str(tmp_path / "nope"), "-o", str(tmp_path / "out")], capsys, "not an ebsd_keras")


def test_missing_required_options(tmp_path, capsys):
    _fails(["train", "-o", str(tmp_path / "out")], capsys, "--data")
    _fails(["train", "--data", str(tmp_path)], capsys, "--output")


def test_schema_mismatch(data30, tmp_path, capsys):
    bad = tmp_path / "rec"
    shutil.copytree(data30, bad)
    meta = json.loads((bad / "metadata.json").read_text())
    meta["schema_version"] = 999
    (bad / "metadata.json").write_text(json.dumps(meta))
    _fails(["train", "--data", str(bad), "-o", str(tmp_path / "out")], capsys, "schema_version")


def test_unknown_config_key(data30, tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"data_dir": str(data30), "learnin_rate": 1e-3}))
    _fails(["train", "--config", str(cfg), "-o", str(tmp_path / "out")], capsys, "learnin_rate", str(cfg))


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--batch-size", "0"], "batch_size"),
        (["--loss-weight", "orientaton=1"], "orientaton"),
        (["--loss-weight", "orientation"], "--loss-weight"),
        (["--preset", "huge"], "huge"),
        (["--update-freq", "often"], "--update-freq"),
    ],
)
def test_bad_values(data30, tmp_path, capsys, argv, needle):
    _fails(["train", "--data", str(data30), "-o", str(tmp_path / "out"), *argv], capsys, needle)


def test_gan_from_model_of_other_image_shape(data30, tiny_model, tmp_path, capsys):
    argv = ["train", "--data", str(data30), "--phase", "gan", "--init-from", str(tiny_model), "-o", str(tmp_path / "o")]
    _fails(argv, capsys, "pattern_shape", "30x30")


def test_missing_init_from_file(data30, tmp_path, capsys):
    argv = ["train", "--data", str(data30), "--phase", "gan", "--init-from", str(tmp_path / "x.keras"), "-o",
            str(tmp_path / "o")]  # fmt: skip
    _fails(argv, capsys, "x.keras")


def test_init_from_a_non_model_file(data30, tmp_path, capsys):
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    argv = ["train", "--data", str(data30), "--phase", "gan", "--init-from", str(junk), "-o", str(tmp_path / "o")]
    _fails(argv, capsys, "junk.keras", "init_from")


def test_shape_mismatch_is_refused_before_any_model_is_built(data30, tmp_path, capsys, caplog):
    # The tiny preset takes 60x60: refused from metadata.json alone, before the (critic-from-scratch) model is built,
    # and nothing is left in OUT.
    argv = ["train", "--data", str(data30), "--phase", "critic", "--preset", "tiny", "-o", str(tmp_path / "o")]
    with caplog.at_level(logging.WARNING):
        _fails(argv, capsys, "pattern_shape")
    assert not any("without init_from" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "o").exists()


def test_critic_without_init_from_warns(caplog):
    from ebsd_keras.training import TrainConfig
    from ebsd_keras.training.phases import build_model

    cfg = TrainConfig(data_dir="d", output_dir="o", phase="critic", preset="tiny", seed=0).resolved()
    with caplog.at_level(logging.WARNING):
        build_model(cfg)  # trains from scratch, after a warning
    assert any("without init_from" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
