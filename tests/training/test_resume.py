"""Exact resume: the backup holds model + both optimizers + seed-generator states, and a run killed with SIGKILL
and rerun ends with the same weights, history and best checkpoint as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from ebsd_keras import _atomic
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

from .conftest import EPOCHS, KILLED_WRITES, cli_argv, keras_file_arrays, same_arrays, train_config


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



@pytest.mark.parametrize("name", KILLED_WRITES)
def test_sigkill_during_a_write_then_resume_equals_uninterrupted_run(chain, name, capsys):
    """Killed while writing ``name`` (its temporary file half written, not yet renamed): the same command again
    ends bit-identical to the uninterrupted run, and no temporary file is left anywhere in the run directory."""
    full, run = chain["gan"]["dir"], chain[f"killed-{name}"]
    output, _ = run["proc"].communicate(timeout=300)
    assert run["proc"].returncode == -signal.SIGKILL, output
    killed = run["dir"]
    assert list(killed.rglob(f".{name}*")), "the kill left no half-written temporary (it came at the wrong time)"
    assert not (killed / "model.keras").exists()
    assert main(run["argv"]) == 0, capsys.readouterr().err
    for file in ("model.keras", "best.keras"):
        assert same_arrays(keras_file_arrays(full / file), keras_file_arrays(killed / file)), file
    assert (full / "history.csv").read_text() == (killed / "history.csv").read_text()
    assert [p.name for p in killed.rglob("*") if ".tmp" in p.name] == []

# ---------------------------------------------------------------------------------------------------------------------
# damaged resume points, NaN and divergence (issue 16)
# ---------------------------------------------------------------------------------------------------------------------
def test_corrupt_state_json_is_one_line_and_no_resume_starts_over(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "backup").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / "backup" / "state.json").write_text('{"epoch": 0, "weights": "ckpt-0.weigh')  # cut by a crash
    # what kill -9 during a checkpoint write leaves: temporaries of a process that no longer exists
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = f"{dead.pid}@{_atomic._host_tag()}-0badc0de"
    orphans = [out / f".best.keras.{tag}.tmp.keras", out / "backup" / f".ckpt-1.weights.h5.{tag}.tmp.weights.h5"]
    for p in orphans:
        p.write_bytes(b"partial")
    argv = [*cli_argv(tiny_data, out), "--epochs", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "state.json" in err[0] and "--no-resume" in err[0], err
    assert (out / "backup" / "state.json").exists()  # the refusal deleted nothing of the user's
    assert not any(p.exists() for p in orphans)  # ... but the next run of the same output removed the orphans
    assert main([*argv, "--no-resume"]) == 0, capsys.readouterr().err
    assert (out / "model.keras").is_file() and not (out / "backup").exists()


def test_truncated_checkpoint_is_one_line_naming_it(tmp_path):
    model = _compiled(seed=1)
    backup = EpochBackup(tmp_path / "backup")
    backup.set_model(model)
    backup.on_epoch_end(0, {"loss": 1.0})
    state = read_backup_state(tmp_path / "backup")
    ckpt = tmp_path / "backup" / state["weights"]
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(EBSDInputError, match="--no-resume") as info:
        restore_backup(_compiled(seed=2), tmp_path / "backup", state)
    assert info.value.path == str(ckpt) and "\n" not in str(info.value)


class _PoisonAfterFirstBatch(keras.callbacks.Callback):
    """Makes the decoder's weights NaN after the first training batch: the next loss is NaN."""

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            v = self.model.decoder.trainable_variables[0]
            v.assign(v * float("nan"))


def test_nan_in_the_first_epoch_claims_no_resume_point(tiny_data, tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level("ERROR"):
        summary = train(train_config(tiny_data, out, image_every_steps=0, epochs=1), verbose=0,
                        callbacks=[_PoisonAfterFirstBatch()])  # fmt: skip
    assert summary["status"] == "terminated_on_nan"
    assert "no resume point" in caplog.text and "kept in" not in caplog.text
    assert not (out / "backup").exists() and not (out / "model.keras").exists()


def test_divergence_rule_keeps_the_last_good_checkpoint(tmp_path):
    from ebsd_keras.training.callbacks import BestCheckpoint, NaNGuard

    model = _compiled(seed=0)
    guard, best = NaNGuard(), BestCheckpoint(tmp_path / "best.keras", "val_bce_gap")
    backup = EpochBackup(tmp_path / "backup", best=best)
    for cb in (guard, best, backup):  # train()'s order: guard first, backup last
        cb.set_model(model)

    def epoch_end(epoch, logs):
        for cb in (guard, best, backup):
            cb.on_epoch_end(epoch, dict(logs))

    epoch_end(0, {"loss": 2.0, "val_bce_gap": 0.01})
    epoch_end(1, {"loss": 3.0e5, "val_bce_gap": 0.008})  # 1.5e5x: large, but under the 1e6x rule
    assert not guard.triggered and best.best_epoch == 1
    saved = (tmp_path / "best.keras").stat().st_mtime_ns
    epoch_end(2, {"loss": 2.0e17, "val_bce_gap": 0.001})  # finite runaway (a better-looking val metric, even)
    assert guard.triggered and guard.reason == "diverged" and model.stop_training
    assert "loss" in guard.detail and "epoch 3" in guard.detail
    assert best.best_epoch == 1 and (tmp_path / "best.keras").stat().st_mtime_ns == saved
    assert read_backup_state(tmp_path / "backup")["epoch"] == 1


def test_diverged_run_exits_1_without_a_final_model(tiny_data, tmp_path, capsys, monkeypatch):
    from ebsd_keras.training import callbacks

    monkeypatch.setattr(callbacks, "DIVERGENCE_FACTOR", 1e-12)  # every epoch "diverges": the wiring, end to end
    out = tmp_path / "run"
    assert main([*cli_argv(tiny_data, out), "--epochs", "1"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and "diverged" in capsys.readouterr().out
    assert not (out / "model.keras").exists()
