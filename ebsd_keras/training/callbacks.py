"""Training callbacks: exact resume backups, best-on-validation checkpoint, TensorBoard pattern grids, throughput,
NaN guard and the SIGKILL test hook.

Why our own backup instead of ``keras.callbacks.BackupAndRestore``: that callback restores weights and the epoch but
(a) restarts the data iterator from scratch and (b) cannot restore ``keras.random.SeedGenerator`` states, which Keras
saving does not write (neither ``save_weights`` nor ``.keras`` files; checked in tests/training/test_resume.py). A
resumed run would then see other batches and other noise than an uninterrupted one. :class:`EpochBackup` writes, at
every epoch end and atomically, ``model.save_weights`` (model, *both* optimizers' slots and iteration counters,
metric states) plus a JSON state with the epoch, the seed-generator states and the best-checkpoint value;
:func:`ebsd_keras.training.phases.train` skips the batches already consumed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time

import keras
import numpy as np

from ebsd_keras.training import fs

__all__ = [
    "EpochBackup",
    "BestCheckpoint",
    "ImageGridCallback",
    "ThroughputMeter",
    "NaNGuard",
    "DIVERGENCE_FACTOR",
    "HistoryCSV",
    "KillAfterSteps",
    "KILL_ENV_VAR",
    "atomic_keras_save",
    "read_backup_state",
    "restore_backup",
    "seed_generator_states",
    "set_seed_generator_states",
    "pattern_grid",
]

#: Test hook: when this environment variable is set to N, the process SIGKILLs itself after N training batches
#: (used by tests/training/test_resume.py to simulate a crash; never set it otherwise).
KILL_ENV_VAR = "EBSD_KERAS_TEST_KILL_AFTER_STEPS"
STATE_FILE = "state.json"


# ----------------------------------------------------------------------------------------------------------------
# atomic Keras saves and seed-generator state
# ----------------------------------------------------------------------------------------------------------------
def atomic_keras_save(save, target, suffix: str) -> None:
    """Call ``save(tmp_path)`` and rename the result to ``target`` (Keras needs the real suffix on the temp name).

    Parameters
    ----------
    save
        Callable writing a file at the given path, e.g. ``model.save`` or ``model.save_weights``.
    target
        Final path (local or a ``tf.io.gfile`` URL; a remote target is saved locally, then copied).
    suffix
        ".keras" or ".weights.h5".
    """
    with fs.atomic_target(target, suffix) as tmp:
        save(tmp)


def write_json(target, data) -> None:
    fs.write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _seed_variables(model) -> list:
    # SeedGenerator states are ordinary (non-trainable) variables named "seed_generator_state".
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def seed_generator_states(model) -> list[dict]:
    """The state of every ``keras.random.SeedGenerator`` in ``model`` as JSON-friendly ``{path, value}`` dicts."""
    return [{"path": v.path, "value": np.asarray(v.numpy()).tolist()} for v in _seed_variables(model)]


def set_seed_generator_states(model, states: list[dict]) -> None:
    """Inverse of :func:`seed_generator_states` (matched by order; paths must agree)."""
    variables = _seed_variables(model)
    if len(variables) != len(states):
        raise ValueError(f"model has {len(variables)} seed generators, the backup {len(states)}")
    for v, s in zip(variables, states, strict=True):
        # Layer-name suffixes (_1, _2) differ between processes; compare the last two path components.
        if v.path.split("/")[-2:] != s["path"].split("/")[-2:]:
            raise ValueError(f"seed generator {v.path!r} does not match the backup's {s['path']!r}")
        v.assign(np.asarray(s["value"], dtype=v.dtype))


# ----------------------------------------------------------------------------------------------------------------
# backup / resume
# ----------------------------------------------------------------------------------------------------------------
#: What to do about a damaged resume point, appended to its one-line error.
_START_OVER = "rerun with --no-resume to start the run over (the backup is replaced)"


def read_backup_state(backup_dir) -> dict | None:
    """The last complete backup's state (``epoch``, ``weights``, ``seed_generators``, ``best``, ``logs``), or None.

    Raises
    ------
    EBSDInputError
        ``state.json`` is unreadable (not JSON, or missing keys): a one-line error naming it and the way out
        (``--no-resume``), instead of a traceback.
    """
    from ebsd_keras.errors import EBSDInputError

    path = fs.join(backup_dir, STATE_FILE)
    if not fs.exists(path):
        return None
    try:
        state = json.loads(fs.read_text(path))
        if not isinstance(state, dict):
            raise ValueError(f"a JSON {type(state).__name__}, not an object")
        missing = [k for k in ("epoch", "weights", "seed_generators") if k not in state]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        int(state["epoch"])
    except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise EBSDInputError(f"corrupt resume state ({exc}); {_START_OVER}", path, "backup") from None
    if not fs.exists(fs.join(backup_dir, str(state["weights"]))):
        return None
    return state


def restore_backup(model, backup_dir, state: dict) -> None:
    """Load the backup's weights (model + optimizers) and seed-generator states into a compiled ``model``.

    Raises
    ------
    EBSDInputError
        A truncated or foreign checkpoint file, or seed-generator states that do not fit the model.
    """
    from ebsd_keras.errors import EBSDInputError

    path = fs.join(backup_dir, state["weights"])
    try:
        with fs.local_copy(path, ".weights.h5") as local:
            model.load_weights(local)
        set_seed_generator_states(model, state["seed_generators"])
    except Exception as exc:  # noqa: BLE001 - h5py/Keras raise OSError, ValueError, KeyError... for a bad file
        detail = " ".join(str(exc).split())[:200]
        raise EBSDInputError(
            f"cannot restore the resume checkpoint ({type(exc).__name__}: {detail}); {_START_OVER}", path, "backup"
        ) from None


class EpochBackup(keras.callbacks.Callback):
    """Write a resumable backup at every epoch end: weights + optimizers + seed states + epoch, atomically.

    The weights go to ``ckpt-<epoch>.weights.h5`` (renamed into place when complete), then ``state.json`` naming it
    is replaced atomically, then older checkpoints are removed: a kill at any point leaves a consistent backup.

    Parameters
    ----------
    backup_dir
        Directory for the backup files.
    best
        Optional :class:`BestCheckpoint` whose best value is saved with the state (so a resumed run keeps it).
    final_epoch
        Index of the run's last epoch, which is not backed up: the final model is saved right after it, and a run
        killed in between redoes that epoch from the previous backup, with the same result.
    """

    def __init__(self, backup_dir, best: BestCheckpoint | None = None, final_epoch: int | None = None):
        super().__init__()
        self.backup_dir = str(backup_dir)
        self.best = best
        self.final_epoch = final_epoch

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if not math.isfinite(float(logs.get("loss", 0.0))) or _guard_stopped(self.model):
            return  # never back up NaN or diverged weights; the previous backup stays the resume point
        if self.final_epoch is not None and epoch >= self.final_epoch:
            return
        fs.makedirs(self.backup_dir)
        name = f"ckpt-{epoch}.weights.h5"
        atomic_keras_save(self.model.save_weights, fs.join(self.backup_dir, name), ".weights.h5")
        state = {
            "epoch": int(epoch),
            "weights": name,
            "seed_generators": seed_generator_states(self.model),
            "best": None if self.best is None else self.best.get_state(),
            "logs": {k: float(v) for k, v in logs.items()},
        }
        write_json(fs.join(self.backup_dir, STATE_FILE), state)
        for old in fs.glob(fs.join(self.backup_dir, "ckpt-*.weights.h5")):
            if not old.endswith("/" + name) and os.path.basename(old) != name:
                fs.remove(old)

    @staticmethod
    def remove(backup_dir) -> None:
        """Delete a backup directory (after the run finished)."""
        fs.rmtree(backup_dir)


class BestCheckpoint(keras.callbacks.Callback):
    """Save the model (.keras, atomically) whenever ``monitor`` reaches a new minimum at an epoch end.

    Unlike ``keras.callbacks.ModelCheckpoint`` its best value is part of the resume state
    (:meth:`get_state` / :meth:`set_state`), so a resumed run saves exactly the epochs an uninterrupted run would.
    """

    def __init__(self, filepath, monitor: str):
        super().__init__()
        self.filepath = str(filepath)
        self.monitor = monitor
        self.best = math.inf
        self.best_epoch = None

    def get_state(self) -> dict:
        return {
            "monitor": self.monitor,
            "value": None if self.best_epoch is None else self.best,
            "epoch": self.best_epoch,
        }

    def set_state(self, state: dict | None) -> None:
        if state and state.get("epoch") is not None:
            self.best, self.best_epoch = float(state["value"]), int(state["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)) or float(value) >= self.best or _guard_stopped(self.model):
            return
        self.best, self.best_epoch = float(value), int(epoch)
        atomic_keras_save(self.model.save, self.filepath, ".keras")


class HistoryCSV(keras.callbacks.CSVLogger):
    """``keras.callbacks.CSVLogger`` that also closes a remote (``tf.io.gfile``) file: Keras 3.15 opens remote
    paths as a ``GFile``, which has no ``closed`` attribute, and its ``on_train_end`` fails on it."""

    def on_train_end(self, logs=None):
        if self.csv_file is not None:
            self.csv_file.close()
        self.csv_file = None
        self.writer = None


#: Divergence rule (:class:`NaNGuard`): an epoch whose training loss, or a validation loss/gap metric, is finite but
#: more than this many times its first epoch's magnitude stops the run. Healthy runs of every phase stay within
#: 1e2x of their first epoch (README training tables); the runaways seen (loss 1e17, val BCE gap 3.5e11) are far
#: beyond 1e6x.
DIVERGENCE_FACTOR = 1e6
#: Metrics watched for divergence, besides "loss": those whose runaway means the decoder has blown up.
DIVERGENCE_METRICS = ("loss", "val_loss", "val_bce_gap", "bce_gap")


class NaNGuard(keras.callbacks.TerminateOnNaN):
    """Stop training on NaN/Inf loss (``TerminateOnNaN``) or on divergence, and remember why.

    Divergence: at an epoch end, a watched metric (:data:`DIVERGENCE_METRICS`) that is finite but larger in
    magnitude than :data:`DIVERGENCE_FACTOR` times its value at the first epoch this process trained (floored at
    1e-3, so a metric starting near 0 does not trip it). The diverged epoch is neither backed up nor saved as best
    (:class:`EpochBackup` and :class:`BestCheckpoint` check :attr:`triggered`), so the last good checkpoint stays.

    Attributes
    ----------
    triggered
        True once training was stopped.
    reason
        "nan" or "diverged" (None while running).
    detail
        A one-line description (metric, value, reference).
    """

    triggered = False
    reason = None
    detail = ""

    def __init__(self, factor: float | None = None):
        super().__init__()
        self.factor = float(DIVERGENCE_FACTOR if factor is None else factor)
        self.reference: dict[str, float] = {}

    def on_batch_end(self, batch, logs=None):
        super().on_batch_end(batch, logs)
        if self.model.stop_training and not self.triggered:
            self.triggered, self.reason = True, "nan"
            self.detail = f"loss became NaN/Inf at batch {batch}"
            _mark_stopped(self.model)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for name in DIVERGENCE_METRICS:
            value = logs.get(name)
            if value is None or not math.isfinite(float(value)):
                continue
            value = abs(float(value))
            ref = self.reference.setdefault(name, max(value, 1e-3))
            if value > self.factor * ref and not self.triggered:
                self.triggered, self.reason = True, "diverged"
                self.detail = f"{name} {value:.3g} at epoch {epoch + 1} is > {self.factor:g}x its first value {ref:.3g}"
                self.model.stop_training = True
                _mark_stopped(self.model)


def _mark_stopped(model) -> None:
    # Read by EpochBackup / BestCheckpoint, which run later in the same epoch end.
    object.__setattr__(model, "_ebsd_keras_guard_stopped", True)


def _guard_stopped(model) -> bool:
    return bool(getattr(model, "_ebsd_keras_guard_stopped", False))


class ThroughputMeter(keras.callbacks.Callback):
    """Training throughput excluding tracing and validation.

    Per epoch, times from the end of the first batch to the end of the last, so the first (tracing) step and the
    validation between epochs are not counted.
    """

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = int(batch_size)
        self.seconds = 0.0
        self.steps = 0
        self.total_steps = 0
        self._t0 = None
        self._last = None
        self._n = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0, self._n = None, 0

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self.total_steps += 1
        if self._t0 is None:
            self._t0 = now
        else:
            self._n += 1
            self._last = now

    def on_epoch_end(self, epoch, logs=None):
        if self._n:
            self.seconds += self._last - self._t0
            self.steps += self._n

    @property
    def patterns_per_s(self) -> float | None:
        """Patterns per second (one pattern = one element of a training batch), None if not measurable."""
        return self.steps * self.batch_size / self.seconds if self.seconds > 0 else None


class KillAfterSteps(keras.callbacks.Callback):
    """TEST HOOK: SIGKILL this process after ``steps`` training batches (simulates a crash, no cleanup runs).

    Added by :func:`~ebsd_keras.training.phases.train` only when the environment variable :data:`KILL_ENV_VAR`
    is set.
    """

    def __init__(self, steps: int):
        super().__init__()
        self.steps = int(steps)
        self._seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self._seen += 1
        if self._seen >= self.steps:
            os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------------------------------------------
# TensorBoard pattern grids
# ----------------------------------------------------------------------------------------------------------------
def pattern_grid(patterns, cols: int = 8) -> np.ndarray:
    """Tile patterns (N, H, W[, 1]) in [0, 1] into one (1, rows*H, cols*W, 1) image (blank cells are 0)."""
    p = np.asarray(patterns, dtype=np.float32)
    if p.ndim == 4:
        p = p[..., 0]
    n, h, w = p.shape
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    grid = np.zeros((rows * h, cols * w), np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = p[i]
    return np.clip(grid, 0.0, 1.0)[None, :, :, None]


class ImageGridCallback(keras.callbacks.Callback):
    """Every ``every_steps`` training steps (and at the end), write three pattern grids to TensorBoard.

    ``patterns/real`` (a fixed validation batch), ``patterns/reconstructed`` (the deterministic reconstruction,
    z = mu) and ``patterns/prior`` (the decoder at fixed latent draws z ~ N(0, I) with the batch's attributes).
    Everything is fixed and nothing draws from the model's seed generators, so the grids are comparable across
    steps and writing them never changes the training noise.

    Parameters
    ----------
    log_dir
        Directory of the image event files (e.g. ``OUT/logs/images``).
    batch
        Dict with ``pattern`` (N, H, W, 1), ``quaternion`` (N, 4) and ``voltage_kv`` (N,) numpy arrays.
    every_steps
        Step interval (>= 1).
    seed
        Seed of the fixed latent draws.
    initial_step
        Global step at which training starts (non-zero when resuming).
    """

    def __init__(self, log_dir, batch: dict, every_steps: int, seed: int = 0, initial_step: int = 0):
        super().__init__()
        self.log_dir = str(log_dir)
        self.batch = {k: np.asarray(v) for k, v in batch.items() if k in ("pattern", "quaternion", "voltage_kv")}
        self.every_steps = int(every_steps)
        self.seed = int(seed)
        self.step = int(initial_step)
        self._writer = None
        self._z = None
        self.written_steps: list[int] = []

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        self._writer = tf.summary.create_file_writer(self.log_dir)
        n = len(self.batch["pattern"])
        latent = self.model.model_config.latent_dim
        self._z = np.random.default_rng(self.seed).standard_normal((n, latent)).astype(np.float32)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every_steps == 0:
            self.write(self.step)

    def on_train_end(self, logs=None):
        if self.step not in self.written_steps:
            self.write(self.step)
        if self._writer is not None:
            self._writer.flush()

    def write(self, step: int) -> None:
        """Write the three grids at ``step``."""
        import tensorflow as tf

        attrs = {"quaternion": self.batch["quaternion"]}
        if self.model.model_config.use_voltage:
            attrs["voltage_kv"] = self.batch["voltage_kv"]
        recon = np.asarray(self.model(self.batch, training=False))
        prior = np.asarray(self.model.generate(attrs, z=self._z))
        with self._writer.as_default(step=int(step)):
            tf.summary.image("patterns/real", pattern_grid(self.batch["pattern"]))
            tf.summary.image("patterns/reconstructed", pattern_grid(recon))
            tf.summary.image("patterns/prior", pattern_grid(prior))
        self._writer.flush()
        self.written_steps.append(int(step))
