"""Exact resume: the backup holds model + both optimizers + seed-generator states, and a run killed with SIGKILL
and rerun ends with the same weights, history and best checkpoint as an uninterrupted run."""

import json
import os
import signal

import numpy as np
import pytest

from ebsd_keras.cli import main
from ebsd_keras.errors import EBSDInputError
from ebsd_keras.models.cvaegan import CVAEGAN
from ebsd_keras.training import TrainConfig, train
from ebsd_keras.training.callbacks import (
    KILL_ENV_VAR,
    EpochBackup,
    read_backup_state,
    restore_backup,
    seed_generator_states,
)

from .conftest import EPOCHS, keras_file_arrays, same_arrays


def _compiled(seed):
    model = CVAEGAN(config="tiny", seed=seed)
    model.compile(phase="gan", n_critic=1)
    return model


def _state(model):
    """Every variable a resume must restore: model (incl. seed generators), both optimizers."""
    vs = model.variables + model.encoder_decoder_optimizer.variables + model.critic_optimizer.variables
    return [np.asarray(v.numpy()) for v in vs]


def test_backup_restores_weights_both_optimizers_and_seed_generators(tmp_path):
    src = _compiled(seed=1)
    rng = np.random.default_rng(0)
    # Give every variable a distinctive value (optimizer slots and iteration counters included).
    for v in src.variables + src.encoder_decoder_optimizer.variables + src.critic_optimizer.variables:
        kind = "int" if "int" in str(v.dtype) else "float"
        value = rng.integers(1, 1000, v.shape) if kind == "int" else rng.normal(size=v.shape)
        v.assign(value.astype(v.dtype))
    paths = [s["path"] for s in seed_generator_states(src)]
    assert any("training_noise" in p for p in paths)  # the CVAEGAN's training noise is covered

    backup = EpochBackup(tmp_path / "backup")
    backup.set_model(src)
    backup.on_epoch_end(4, {"loss": 1.0})
    state = read_backup_state(tmp_path / "backup")
    assert state["epoch"] == 4 and (tmp_path / "backup" / state["weights"]).is_file()

    dst = _compiled(seed=2)
    restore_backup(dst, tmp_path / "backup", state)
    a, b = _state(src), _state(dst)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    # ... and the restored noise stream continues identically.
    np.testing.assert_array_equal(src._normal((3, 2)).numpy(), dst._normal((3, 2)).numpy())


def test_nan_epoch_is_not_backed_up(tmp_path):
    backup = EpochBackup(tmp_path / "backup")  # returns before it would touch a model
    backup.on_epoch_end(0, {"loss": float("nan")})
    assert read_backup_state(tmp_path / "backup") is None


def test_sigkill_resume_equals_uninterrupted_run(chain, tiny_data, capsys):
    """Uninterrupted: the chain's gan phase (train() in this process). Interrupted: the same settings through
    `python -m ebsd_keras train` in a subprocess (started by the chain fixture) that SIGKILLs itself during epoch 2
    after STEPS + 1 steps; then the same command is run again, without the kill hook (here, through main())."""
    full, killed = chain["gan"]["dir"], chain["killed"]["dir"]
    proc = chain["killed"]["proc"]
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, output
    state = read_backup_state(killed / "backup")
    assert state is not None and state["epoch"] == 0  # one finished epoch backed up
    assert not (killed / "model.keras").exists()

    # Resuming with other settings is refused (they would not reproduce the interrupted run).
    cfg = TrainConfig.from_dict(json.loads((killed / "config.json").read_text()))
    with pytest.raises(EBSDInputError, match="learning_rate"):
        train(cfg.replace(learning_rate=1e-3), verbose=0)

    assert KILL_ENV_VAR not in os.environ
    assert main(chain["killed"]["argv"]) == 0, capsys.readouterr().err  # the same command again
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["initial_epoch"] == 1 and summary["epochs"] == EPOCHS
    assert not (killed / "backup").exists()
    # Same seed, same settings: identical weights and optimizer states, history and best checkpoint.
    for name in ("model.keras", "best.keras"):
        assert same_arrays(keras_file_arrays(full / name), keras_file_arrays(killed / name)), name
    assert (full / "history.csv").read_text() == (killed / "history.csv").read_text()
    assert chain["gan"]["summary"]["best"] == summary["best"]
