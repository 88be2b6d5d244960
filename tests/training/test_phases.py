"""train(): every phase writes its files, phases chain through init_from, seeds decide the weights; TrainConfig."""

import csv
import json

import keras
import numpy as np
import pytest

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.models.cvaegan import CVAEGAN
from ebsd_keras.training import PHASE_DEFAULTS, TrainConfig, load_train_config, train
from ebsd_keras.training.config import BEST_METRIC

from .conftest import EPOCHS, keras_file_arrays, same_arrays
from .conftest import train_config as _config


def _weights(path):
    return keras_file_arrays(path)


def _part(path, part):
    return keras_file_arrays(path, part)


_same = same_arrays


@pytest.mark.parametrize("phase", ["cvae", "critic", "gan"])
def test_each_phase_writes_expected_files(chain, phase):
    out, summary = chain[phase]["dir"], chain[phase]["summary"]
    for name in ("model.keras", "best.keras", "config.json", "history.csv", "summary.json"):
        assert (out / name).is_file(), name
    assert not (out / "backup").exists()  # removed once the run finished
    if phase == "gan":  # the cvae and critic models are loaded by the next phase (init_from)
        assert isinstance(keras.saving.load_model(str(out / "model.keras"), compile=False), CVAEGAN)
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    monitor = "val_" + BEST_METRIC[phase]
    assert monitor in rows[0] and all(np.isfinite(float(r[monitor])) for r in rows)
    values = [float(r[monitor]) for r in rows]
    assert summary["best"] == {"monitor": monitor, "value": pytest.approx(min(values)), "epoch": int(np.argmin(values))}
    assert summary["status"] == "finished" and summary["epochs"] == EPOCHS and summary["initial_epoch"] == 0
    assert summary["patterns_per_s"] > 0 and summary["wall_time_s"] > summary["train_time_s"] > 0
    assert json.loads((out / "summary.json").read_text())["final_metrics"] == summary["final_metrics"]
    assert summary["final_metrics"][monitor] == pytest.approx(values[-1])
    # TensorBoard: scalars for training and validation, and image grids.
    for sub in ("train", "validation", "images"):
        assert list((out / "logs" / sub).glob("events.out.tfevents.*")), sub
    saved = json.loads((out / "config.json").read_text())
    assert saved["phase"] == phase
    assert saved["loss_weights"] == PHASE_DEFAULTS[phase]["loss_weights"]
    assert saved["learning_rate"] == PHASE_DEFAULTS[phase]["learning_rate"]


def test_image_grids_hold_three_kinds_every_n_steps(chain):
    import tensorflow as tf

    tags = {}
    for f in (chain["cvae"]["dir"] / "logs" / "images").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            for v in event.summary.value:
                tags.setdefault(v.tag, set()).add(event.step)
    assert set(tags) == {"patterns/real", "patterns/reconstructed", "patterns/prior"}
    assert tags["patterns/prior"] == {2, 4, 6}  # every 2 steps of 2 x 3


def test_best_checkpoint_is_the_best_epoch(chain):
    out, best = chain["cvae"]["dir"], chain["cvae"]["summary"]["best"]
    same = _same(_weights(out / "best.keras"), _weights(out / "model.keras"))
    assert same == (best["epoch"] == EPOCHS - 1)


def test_phase_chaining_starts_from_previous_model(chain):
    cvae, critic, gan = (chain[p]["dir"] / "model.keras" for p in ("cvae", "critic", "gan"))
    # The critic phase trains only the critic: encoder and decoder are the cvae phase's.
    for part in ("encoder", "decoder"):
        assert _same(_part(cvae, part), _part(critic, part))
    assert not _same(_part(cvae, "critic"), _part(critic, "critic"))
    # The gan phase trains all three, starting from the critic phase's networks.
    for part in ("encoder", "decoder", "critic"):
        assert not _same(_part(critic, part), _part(gan, part))
    assert chain["gan"]["summary"]["init_from"] == str(critic)


def _finished(run):
    output, _ = run["proc"].communicate(timeout=300)
    assert run["proc"].returncode == 0, output
    return run["dir"]


def test_same_seed_same_weights_other_seed_different(chain):
    """The chain's cvae run (train() here) against the same settings through the CLI in other processes."""
    reference = _weights(chain["cvae"]["dir"] / "model.keras")
    assert _same(_weights(_finished(chain["again"]) / "model.keras"), reference)
    assert not _same(_weights(_finished(chain["seed1"]) / "model.keras"), reference)


def test_finished_run_is_not_overwritten_without_no_resume(chain, tiny_data):
    with pytest.raises(FileExistsError, match="finished run"):
        train(_config(tiny_data, chain["cvae"]["dir"]), verbose=0)


def test_init_from_model_with_other_image_shape_is_refused(chain, small_shape_data, tmp_path):
    model = str(chain["critic"]["dir"] / "model.keras")
    with pytest.raises(EBSDInputError, match="pattern_shape"):
        train(_config(small_shape_data, tmp_path / "gan", "gan", init_from=model), verbose=0)


# ---------------------------------------------------------------------------------------------------------------------
# TrainConfig
# ---------------------------------------------------------------------------------------------------------------------
def test_config_json_round_trip_and_resolution(tmp_path):
    cfg = TrainConfig(
        data_dir="d", output_dir="o", phase="gan", loss_weights={"orientation": 5.0}, voltages=[20], seed=None
    )
    cfg.save(tmp_path / "c.json")
    assert load_train_config(tmp_path / "c.json") == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    r = cfg.resolved()
    assert r.learning_rate == PHASE_DEFAULTS["gan"]["learning_rate"]
    assert r.loss_weights == {**PHASE_DEFAULTS["gan"]["loss_weights"], "orientation": 5.0}
    assert r.voltages == [20.0]
    cvae = TrainConfig(data_dir="d", output_dir="o").resolved().loss_weights
    assert cvae["orientation"] == cvae["adversarial_generator"] == cvae["adversarial_critic"] == 0.0


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match="'learnin_rate'"):
        TrainConfig.from_dict({"data_dir": "d", "learnin_rate": 1e-3})
    (tmp_path / "c.json").write_text(json.dumps({"data_dir": "d", "n_critc": 3}))
    with pytest.raises(EBSDInputError, match="n_critc"):
        load_train_config(tmp_path / "c.json")
    with pytest.raises(ValueError, match="unknown LossWeights"):
        TrainConfig(data_dir="d", output_dir="o", loss_weights={"orientaton": 1.0}).validate()
    with pytest.raises(ValueError, match="'nope'"):
        TrainConfig().replace(nope=1)


def test_overrides_win_over_file_and_none_keeps_file_value(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"data_dir": "d", "output_dir": "o", "epochs": 7, "batch_size": 4}))
    cfg = load_train_config(tmp_path / "c.json", epochs=2, batch_size=None, phase="critic")
    assert (cfg.epochs, cfg.batch_size, cfg.phase) == (2, 4, "critic")


@pytest.mark.parametrize(
    "field, value",
    [("phase", "vae"), ("batch_size", 0), ("lipschitz", "spectral"), ("mixed_precision", "float8"), ("n_critic", 0)],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=repr(field)):
        TrainConfig(data_dir="d", output_dir="o", **{field: value}).validate()


def _fake_keras_file(path, preset_name):
    import zipfile

    config = {"class_name": "CVAEGAN", "config": {"config": {"name": preset_name}}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
    return str(path)


def test_lipschitz_default_follows_the_model_actually_trained(tmp_path):
    """lipschitz=None: clipping (the paper's WGAN) for a paper-preset model, also when it is continued from a file
    (init_from), whatever ``preset`` says; the gradient penalty for other models."""
    paper = _fake_keras_file(tmp_path / "paper.keras", "paper")
    field = _fake_keras_file(tmp_path / "field.keras", "field")
    assert TrainConfig(preset="paper").resolved().lipschitz == "clip"
    assert TrainConfig(preset="physics").resolved().lipschitz == "gp"
    assert TrainConfig(phase="gan", init_from=paper).resolved().lipschitz == "clip"  # preset left at its default
    assert TrainConfig(phase="gan", preset="paper", init_from=field).resolved().lipschitz == "gp"
    assert TrainConfig(phase="gan", init_from=paper, lipschitz="gp").resolved().lipschitz == "gp"  # explicit wins
    (tmp_path / "broken.keras").write_text("not a zip")
    assert TrainConfig(preset="paper", init_from=str(tmp_path / "broken.keras")).model_preset() == "paper"


def test_objective_scale_is_recorded_and_checked():
    assert TrainConfig().resolved().bce_reduction == "sum"  # the authors' scale by default
    with pytest.raises(ValueError, match="'bce_reduction'"):
        TrainConfig(data_dir="d", output_dir="o", bce_reduction="median").validate()


def test_mixed_precision_policy_option():
    assert TrainConfig(mixed_precision=True).mixed_precision_policy == "mixed_float16"
    assert TrainConfig(mixed_precision="mixed_bfloat16").mixed_precision_policy == "mixed_bfloat16"
    assert TrainConfig().mixed_precision_policy is None
