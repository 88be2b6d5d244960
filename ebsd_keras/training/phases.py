"""Run one training phase (cvae, critic or gan) from a :class:`~ebsd_keras.training.config.TrainConfig`.

Files a run writes in ``output_dir``
------------------------------------
``config.json``
    The resolved configuration (phase defaults filled in, the seed drawn if none was given).
``model.keras``
    The final model (written atomically at the end); the next phase's ``init_from``.
``best.keras``
    The model at the epoch with the lowest validation metric (:data:`~ebsd_keras.training.config.BEST_METRIC`:
    ``val_bce_gap`` for cvae and gan, ``val_disorientation_real_deg`` for critic; the training metric when the
    dataset has no "val" split).
``history.csv``
    One row of metrics per epoch (``keras.callbacks.CSVLogger``).
``logs/``
    TensorBoard: ``train/`` and ``validation/`` scalars (every tracker), ``images/`` pattern grids.
``summary.json``
    Final metrics, best validation metric, wall time, patterns/s.
``backup/``
    Resume state while a run is unfinished (removed at the end).

Determinism and exact resume
----------------------------
The batch sequence is a function of the seed only: ``make_dataset(seed=seed, repeat=True, drop_remainder=True)``
with a fixed ``steps_per_epoch`` (Keras keeps one iterator across epochs). Weights, data order and the training
noise (the CVAEGAN's ``SeedGenerator``) are seeded, and with ``deterministic=True``
``tf.config.experimental.enable_op_determinism()`` makes kernels reproducible. A run killed at any point resumes
from its last epoch-end backup (weights, both optimizers, seed-generator states, best value) and skips the
``initial_epoch * steps_per_epoch`` batches already consumed, so it ends with the same weights as an uninterrupted
run (tests/training/test_resume.py kills a run with SIGKILL to check this).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import time

import numpy as np

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.training import fs
from ebsd_keras.training.callbacks import (
    KILL_ENV_VAR,
    BestCheckpoint,
    EpochBackup,
    HistoryCSV,
    ImageGridCallback,
    KillAfterSteps,
    NaNGuard,
    ThroughputMeter,
    atomic_keras_save,
    read_backup_state,
    restore_backup,
)
from ebsd_keras.training.config import BEST_METRIC, RESUME_MUTABLE, TrainConfig
from ebsd_keras.training.distribute import check_shards, make_strategy, worker_output_dir, worker_role

__all__ = [
    "train",
    "OUTPUT_FILES",
    "build_model",
    "compile_model",
    "train_dataset",
    "val_dataset",
    "check_data_shape",
    "steps_per_epoch_of",
]

logger = logging.getLogger(__name__)

#: Files (and directories) a finished run leaves in its output directory.
OUTPUT_FILES = ("config.json", "model.keras", "best.keras", "history.csv", "summary.json", "logs")
_BATCH_KEYS = ("pattern", "quaternion", "voltage_kv")
_GRID_SIZE = 8


def train(config: TrainConfig, verbose="auto", callbacks=None, strategy=None) -> dict:
    """Train one phase and write the run's files (see the module docstring).

    Parameters
    ----------
    config
        The run's :class:`TrainConfig`.
    verbose
        ``fit``'s verbosity (progress bar: "auto" / 1; 2 one line per epoch; 0 silent).
    callbacks
        Extra Keras callbacks (appended after ours).
    strategy
        A ``tf.distribute`` strategy to train under (e.g. ``MirroredStrategy`` over local devices). None: with
        ``config.distributed`` a ``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``
        (:mod:`ebsd_keras.training.distribute`; only the chief writes ``output_dir``), else the default strategy.

    Returns
    -------
    dict
        The summary also written to ``summary.json``: ``status`` ("finished" or "terminated_on_nan"), ``phase``,
        ``epochs`` (completed), ``initial_epoch`` (where this process started; > 0 after a resume),
        ``steps_per_epoch``, ``final_metrics`` (last epoch's logs), ``best`` (``monitor``, ``value``, ``epoch``),
        ``wall_time_s`` (this process), ``train_time_s`` and ``patterns_per_s`` (steady-state training throughput
        of this process, tracing and validation excluded), ``model_config``.

    Raises
    ------
    EBSDInputError
        Bad dataset (missing, schema, voltage filter, pattern shape differing from the model's), an
        ``init_from`` file that is not a CVAEGAN, a resume whose configuration differs from the interrupted run's.
    FileExistsError
        ``output_dir`` holds a finished run and ``resume`` is True (use ``resume=False`` to train again).
    ValueError
        Invalid configuration values.
    """
    t_start = time.perf_counter()
    config.validate()
    # The multi-worker strategy must exist before the process runs any TensorFlow op.
    if strategy is None and config.distributed:
        strategy, role = make_strategy()
    else:
        role = worker_role(strategy)
    import keras
    import tensorflow as tf

    from ebsd_keras.data.pipeline import dataset_size
    from ebsd_keras.io.tfrecord import read_metadata, shard_paths, verify_shards

    meta = read_metadata(config.data_dir)  # fail on a bad dataset before writing or building anything
    verify_shards(config.data_dir, ("train", "val"), meta)  # damaged/missing shards: one line, nothing written
    config = _with_data_geometry(config, meta)
    check_shards(len(shard_paths(config.data_dir, "train", meta)), role, config.data_dir)
    replicas = 1 if strategy is None else int(strategy.num_replicas_in_sync)
    if config.batch_size % replicas:
        raise ValueError(
            f"TrainConfig field 'batch_size': the global batch {config.batch_size} must be a multiple of the "
            f"{replicas} replicas"
        )
    if not role.is_chief:
        verbose = 0
    out = worker_output_dir(config.output_dir, role)
    fs.makedirs(out)
    backup_dir = fs.join(out, "backup")
    state = _prepare_output(config, out, backup_dir)
    if state is not None:
        config = _check_resume_config(config, out)
    elif config.seed is None:
        config = config.replace(seed=int(np.random.SeedSequence().generate_state(1)[0] >> 1))
    cfg = config.resolved()
    cfg.save(fs.join(out, "config.json"))
    initial_epoch = 0 if state is None else state["epoch"] + 1
    if initial_epoch:
        logger.info("resuming %s after epoch %d (of %d) from %s", cfg.phase, initial_epoch, cfg.epochs, backup_dir)

    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    previous_policy = keras.mixed_precision.global_policy().name
    if cfg.mixed_precision_policy:
        keras.mixed_precision.set_global_policy(cfg.mixed_precision_policy)
    try:
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            model = build_model(cfg)
            compile_model(model, cfg)
            if state is not None:
                restore_backup(model, backup_dir, state)
        if strategy is not None:
            _skip_symbolic_build(model)
        if role.num_workers > 1:
            _vector_logs(model)

        image_shape = tuple(model.model_config.image_shape)
        check_data_shape(cfg, meta, image_shape)
        steps = steps_per_epoch_of(cfg, dataset_size)
        train_ds = train_dataset(cfg, image_shape, skip_batches=initial_epoch * steps)
        val_ds = val_dataset(cfg, meta, image_shape, dataset_size)
        if len(meta["voltages_kv"]) > 1 and not model.model_config.use_voltage and cfg.voltages is None:
            logger.warning(
                "the dataset has several voltages (%s kV) but the model does not take the voltage as an attribute "
                "(set model.use_voltage or filter with voltages)",
                ", ".join(f"{v:g}" for v in meta["voltages_kv"]),
            )

        monitor = ("val_" if val_ds is not None else "") + BEST_METRIC[cfg.phase]
        cbs, best, throughput, nan_guard = _callbacks(cfg, out, meta, image_shape, monitor, state, steps)
        cbs.extend(callbacks or [])

        t_fit = time.perf_counter()
        history = model.fit(
            train_ds,
            epochs=cfg.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            validation_data=val_ds,
            callbacks=cbs,
            verbose=verbose,
            shuffle=False,  # the dataset shuffles itself (seeded)
        )
        train_time = time.perf_counter() - t_fit
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    epochs_done = initial_epoch + len(history.epoch)
    status = ("terminated_on_nan" if nan_guard.reason == "nan" else "diverged") if nan_guard.triggered else "finished"
    if status == "finished":
        _save_final(model, out, best, trained_last_epoch=bool(history.epoch) and best.best_epoch == epochs_done - 1)
    else:
        kept = (
            f"resume point (last good epoch) kept in {backup_dir}"
            if fs.exists(fs.join(backup_dir, "state.json"))
            else "no epoch completed before it, so there is no resume point"
        )
        logger.error("%s; model.keras not written; %s", nan_guard.detail, kept)
        epochs_done = initial_epoch + max(0, len(history.epoch) - 1)
    summary = {
        "status": status,
        "phase": cfg.phase,
        "epochs": epochs_done,
        "initial_epoch": initial_epoch,
        "steps_per_epoch": steps,
        "batch_size": cfg.batch_size,
        "final_metrics": _final_metrics(history, state),
        "best": best.get_state(),
        "wall_time_s": time.perf_counter() - t_start,
        "train_time_s": train_time,
        "patterns_per_s": throughput.patterns_per_s,
        "model_config": model.model_config.to_dict(),
        "init_from": cfg.init_from,
        "workers": role.num_workers,
        "chief": role.is_chief,
    }
    from ebsd_keras.training.callbacks import write_json

    write_json(fs.join(out, "summary.json"), summary)
    if status == "finished":
        EpochBackup.remove(backup_dir)
        if not role.is_chief:
            fs.rmtree(out)  # scratch copy of the chief's outputs
    return summary


def _callbacks(cfg: TrainConfig, out: str, meta: dict, image_shape, monitor: str, state, steps: int):
    """The run's callbacks, in the order they must run at an epoch end, and the ones train() reads afterwards."""
    import keras

    initial_epoch = 0 if state is None else state["epoch"] + 1
    best = BestCheckpoint(fs.join(out, "best.keras"), monitor)
    if state is not None:
        best.set_state(state.get("best"))
        _truncate_history(fs.join(out, "history.csv"), initial_epoch)
    throughput = ThroughputMeter(cfg.batch_size)
    nan_guard = NaNGuard()
    cbs = [
        nan_guard,
        throughput,
        best,
        HistoryCSV(fs.join(out, "history.csv"), append=True),  # Keras opens it through gfile
        keras.callbacks.TensorBoard(
            log_dir=fs.join(out, "logs"), update_freq=cfg.tensorboard_update_freq, write_graph=False, profile_batch=0
        ),
    ]
    if cfg.image_every_steps:
        grid = _grid_batch(cfg, meta, image_shape)
        images = fs.join(out, "logs", "images")
        cbs.append(ImageGridCallback(images, grid, cfg.image_every_steps, cfg.seed, initial_step=initial_epoch * steps))
    # Last: the epoch's best value and CSV row are final when the backup is written.
    cbs.append(EpochBackup(fs.join(out, "backup"), best=best, final_epoch=cfg.epochs - 1))
    if os.environ.get(KILL_ENV_VAR):
        cbs.append(KillAfterSteps(int(os.environ[KILL_ENV_VAR])))  # test hook, see callbacks.KILL_ENV_VAR
    return cbs, best, throughput, nan_guard


def _save_final(model, out: str, best: BestCheckpoint, trained_last_epoch: bool) -> None:
    """model.keras (and best.keras when no epoch had a finite metric), atomically."""
    if trained_last_epoch:
        fs.copy(fs.join(out, "best.keras"), fs.join(out, "model.keras"))  # the same state, saved at the last epoch end
    else:
        atomic_keras_save(model.save, fs.join(out, "model.keras"), ".keras")
    if best.best_epoch is None:
        fs.copy(fs.join(out, "model.keras"), fs.join(out, "best.keras"))


# ----------------------------------------------------------------------------------------------------------------
# output directory and resume
# ----------------------------------------------------------------------------------------------------------------
def _prepare_output(cfg: TrainConfig, out: str, backup_dir: str) -> dict | None:
    """The backup state to resume from (None: a fresh start, after removing a previous run's outputs)."""
    state = read_backup_state(backup_dir) if cfg.resume else None  # --no-resume: even a corrupt backup goes
    if state is not None and cfg.resume:
        if not fs.exists(fs.join(out, "config.json")):
            raise EBSDInputError("backup/ without config.json: not a resumable run; use --no-resume", out, "backup")
        return state
    finished = fs.exists(fs.join(out, "summary.json")) and fs.exists(fs.join(out, "model.keras"))
    if state is None and cfg.resume and finished:
        raise FileExistsError(
            f"{out}: holds a finished run (summary.json, model.keras); use --no-resume to train again from scratch "
            "(replaces its files) or another output directory"
        )
    # A fresh start: remove only what a run writes, never other files the user keeps there.
    fs.rmtree(backup_dir)
    fs.rmtree(fs.join(out, "logs"))
    for name in ("history.csv", "summary.json", "best.keras", "model.keras", "config.json"):
        fs.remove(fs.join(out, name))
    return None


def _check_resume_config(config: TrainConfig, out: str) -> TrainConfig:
    """The config to resume with: the interrupted run's, with the fields that may change taken from ``config``."""
    import json

    path = fs.join(out, "config.json")
    saved = TrainConfig.from_dict(json.loads(fs.read_text(path)))
    new, old = config.resolved().to_dict(), saved.resolved().to_dict()
    # seed None means "whatever the interrupted run drew"
    differ = [
        k for k in new if k not in RESUME_MUTABLE and new[k] != old[k] and not (k == "seed" and config.seed is None)
    ]
    if differ:
        detail = "; ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in differ)
        raise EBSDInputError(
            f"differs from the interrupted run's configuration ({detail}); resume with the same settings, or "
            "start over with --no-resume",
            path,
            differ[0],
        )
    return saved.replace(**{k: getattr(config, k) for k in RESUME_MUTABLE})


def _truncate_history(path: str, initial_epoch: int) -> None:
    """Drop CSV rows of epochs >= initial_epoch (written before the kill, they will be recomputed)."""
    if not fs.exists(path):
        return
    rows = list(csv.reader(io.StringIO(fs.read_text(path))))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) < initial_epoch]
    text = io.StringIO(newline="")
    csv.writer(text).writerows(kept)
    fs.write_text(path, text.getvalue())


# ----------------------------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------------------------
def physics_data_overrides(meta: dict, data_dir=None) -> dict:
    """The physics decoder's detector and contrast fields implied by a TFRecord dataset's metadata.

    The physics decoder projects its master pattern onto a detector fixed in its config, so that detector must be
    the data's: Bruker pattern centre, detector and sample tilts (degrees) and CLAHE settings come from the sources
    recorded by ``ebsd-keras convert``; a point group other than m-3m drops the cubic texture symmetry.

    Returns
    -------
    dict
        ``ModelConfig`` field overrides; empty when the metadata records no detector.

    Raises
    ------
    EBSDInputError
        When the sources disagree on the detector (one physics model cannot fit both) or the recorded
        preprocessing cannot be read (:func:`~ebsd_keras.data.preprocess.clahe_from_metadata`).
    """
    from ebsd_keras.data.preprocess import clahe_from_metadata

    detectors, groups = set(), set()
    for src in meta.get("sources") or []:
        det = src.get("detector")
        if det:
            detectors.add((tuple(float(v) for v in det["pc"]), float(det["tilt_deg"]), float(det["sample_tilt_deg"])))
        group = ((src.get("provenance") or {}).get("sampling") or {}).get("point_group")
        if group:
            groups.add(group)
    if len(detectors) > 1:
        raise EBSDInputError(
            f"the sources were recorded with {len(detectors)} different detectors {sorted(detectors)}; the physics "
            "decoder fits one (train on one geometry, or pass the pattern centre per pattern)",
            data_dir,
            "sources.detector",
        )
    if not detectors:
        return {}
    ((pc, tilt, sample_tilt),) = detectors
    out = {"physics_detector_pc": list(pc), "physics_detector_tilt_deg": tilt, "physics_sample_tilt_deg": sample_tilt}
    if meta.get("preprocessing") is not None:
        clahe = clahe_from_metadata(meta, data_dir)  # the record forms of the builder and of convert
        if clahe is None:
            out["physics_contrast"] = "rescale"  # no CLAHE on the targets: none in the model either
        else:
            out["physics_contrast"] = "clahe"
            out["physics_clahe_clip_limit"] = float(clahe.clip_limit)
            out["physics_clahe_tiles"] = [int(t) for t in clahe.tiles]
    if groups and groups != {"m-3m"}:
        out["physics_symmetry"] = "none"
    return out


def _with_data_geometry(config: TrainConfig, meta: dict) -> TrainConfig:
    """A new physics-decoder model takes the data's detector and contrast (fields the user set win)."""
    from ebsd_keras.models.presets import get_preset

    # the neural field ("field") shares the physics decoder's detector and contrast fields
    if config.init_from is not None or get_preset(config.preset).decoder not in ("physics", "field"):
        return config
    derived = physics_data_overrides(meta, config.data_dir)
    missing = {k: v for k, v in derived.items() if k not in config.model}
    if missing:
        logger.info("physics decoder: detector and contrast from the dataset's metadata: %s", missing)
    return config.replace(model={**missing, **config.model}) if missing else config


def build_model(cfg: TrainConfig):
    """A new CVAEGAN from the preset, or the networks of ``init_from`` in a fresh CVAEGAN (fresh noise seed)."""
    import keras

    from ebsd_keras.models.cvaegan import CVAEGAN
    from ebsd_keras.models.presets import get_preset

    if cfg.init_from is None:
        if cfg.phase != "cvae":
            logger.warning(
                "phase %r without init_from: training from scratch (normally %s starts from the %s phase's "
                "model.keras)",
                cfg.phase,
                cfg.phase,
                "cvae" if cfg.phase == "critic" else "critic",
            )
        return CVAEGAN(config=get_preset(cfg.preset, **cfg.model), seed=cfg.seed)
    path = str(cfg.init_from)
    if not fs.isfile(path):
        raise FileNotFoundError(f"{path}: no such model file (init_from)")
    if cfg.model:
        raise EBSDInputError("model overrides cannot change a loaded model; drop them or init_from", path, "model")
    try:
        with fs.local_copy(path, ".keras") as local:
            loaded = keras.saving.load_model(local, compile=False)  # safe_mode stays on
    except Exception as exc:  # a corrupt or foreign file: say which and why
        raise EBSDInputError(f"cannot load as a Keras model ({type(exc).__name__}: {exc})", path, "init_from") from exc
    if not isinstance(loaded, CVAEGAN):
        raise EBSDInputError(f"is a {type(loaded).__name__}, not an ebsd_keras CVAEGAN", path, "init_from")
    # Fresh wrapper: the networks' weights are kept; trackers and the training-noise seed start anew for this phase.
    return CVAEGAN(
        encoder=loaded.encoder, decoder=loaded.decoder, critic=loaded.critic, config=loaded.model_config, seed=cfg.seed
    )


def _skip_symbolic_build(model) -> None:
    """Skip Keras's pre-fit symbolic build under a tf.distribute strategy (the model is already fully built).

    Keras 3.15's TensorFlow trainer, under any strategy, takes one batch from the training iterator before the first
    step (``_maybe_symbolic_build``) only to build unbuilt layers: that batch is lost to training (the data stream
    would then differ from a single-process run's and from a resumed run's), and under MultiWorkerMirroredStrategy
    the call fails (``strategy.reduce`` of a dict batch). The CVAEGAN builds its networks and both optimizers' slots
    in ``__init__`` / ``compile``, so there is nothing left to build.
    """
    if all(layer.built for layer in model._flatten_layers()):
        model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def _vector_logs(model) -> None:
    """Make train/test steps return each metric as shape (1,) instead of a scalar (multi-worker runs only).

    Keras 3's TensorFlow trainer reduces step outputs under MultiWorkerMirroredStrategy with
    ``strategy.reduce("MEAN", v, axis=0)``, which fails on scalars ("Invalid reduction dimension 0 for input with 0
    dimensions", tensorflow/tensorflow#72388). With one element per replica the same call returns the mean over
    replicas, a scalar, which is what single-device training logs.
    """
    from keras import ops

    def vector(step):
        return lambda data: {k: ops.reshape(v, (1,)) for k, v in step(data).items()}

    model.train_step = vector(model.train_step)
    model.test_step = vector(model.test_step)


def _optimizer(learning_rate: float, cfg: TrainConfig, bce_scale: float = 1.0):
    import keras

    opt = keras.optimizers.Adam(learning_rate=learning_rate, beta_1=cfg.beta_1, beta_2=0.999)
    if cfg.mixed_precision_policy == "mixed_float16":
        # float16 gradients underflow without loss scaling, and overflow with too much of it.
        opt = keras.optimizers.LossScaleOptimizer(opt, initial_scale=initial_loss_scale(cfg.loss_weights, bce_scale))
    return opt


def initial_loss_scale(loss_weights: dict, bce_scale: float = 1.0) -> float:
    """Initial dynamic loss scale for mixed_float16: 2**10 divided by the largest loss weight, as a power of two
    (at least 1). The reconstruction weight counts ``bce_scale`` times (the pixel count when the BCE is summed per
    pattern, ``bce_reduction="sum"``: a ~2,500-nat cvae loss at initialisation).

    Keras's default, 2**15, overflows float16 (max 65504) in the backward pass of every phase at initialisation:
    the compact cvae loss starts near 32 (KL), the critic and gan losses near 700 (orientation weight 1e4). Each
    overflow skips an update while the dynamic scale halves (5 skipped cvae steps, ~13 of each optimizer in the
    critic and gan phases). Starting here, the first updates are applied and their gradients match float32's
    (cosine >= 0.997 on the tiny and compact presets, benchmarks/precision_check.py); the scale then
    adapts as usual (doubles after 2000 finite steps, halves on an overflow).
    """
    weights = {k: abs(float(w)) * (float(bce_scale) if k == "reconstruction" else 1.0) for k, w in loss_weights.items()}
    largest = max([1.0, *weights.values()])
    return float(2.0 ** max(0, int(np.floor(np.log2(2.0**10 / largest)))))


def compile_model(model, cfg: TrainConfig) -> None:
    from ebsd_keras.losses import KLSchedule, LossWeights

    bce_scale = float(model.pixels_per_pattern) if cfg.bce_reduction == "sum" else 1.0
    model.compile(
        encoder_decoder_optimizer=_optimizer(cfg.learning_rate, cfg, bce_scale),
        critic_optimizer=_optimizer(cfg.critic_learning_rate, cfg),
        loss_weights=LossWeights.from_dict(cfg.loss_weights),
        kl_schedule=KLSchedule.from_config(cfg.kl_schedule) if cfg.kl_schedule else KLSchedule(),
        lipschitz=cfg.lipschitz,
        clip_value=cfg.clip_value,
        n_critic=cfg.n_critic,
        phase=cfg.phase,
        bce_reduction=cfg.bce_reduction,
        sampled_validation=cfg.sampled_validation,
        jit_compile=cfg.jit_compile,
    )


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------
def _select(d: dict) -> dict:
    return {k: d[k] for k in _BATCH_KEYS}


def check_data_shape(cfg: TrainConfig, meta: dict, image_shape) -> None:
    """The model's pattern size must be the dataset's (a loaded model cannot be resized)."""
    data_shape = tuple(int(s) for s in meta["pattern_shape"])
    if data_shape != tuple(image_shape):
        source = f"the model {cfg.init_from}" if cfg.init_from else f"preset {cfg.preset!r}"
        raise EBSDInputError(
            f"dataset patterns are {data_shape[0]}x{data_shape[1]} but {source} takes "
            f"{image_shape[0]}x{image_shape[1]}",
            cfg.data_dir,
            "pattern_shape",
        )


def steps_per_epoch_of(cfg: TrainConfig, dataset_size) -> int:
    if cfg.steps_per_epoch is not None:
        return int(cfg.steps_per_epoch)
    n = dataset_size(cfg.data_dir, "train", voltages=cfg.voltages, exclude_voltages=cfg.exclude_voltages)
    if n < cfg.batch_size:
        raise EBSDInputError(
            f"the training split has {n} pattern(s) (after voltage filters), fewer than batch_size {cfg.batch_size}",
            cfg.data_dir,
            "count",
        )
    return n // cfg.batch_size


def train_dataset(cfg: TrainConfig, image_shape, skip_batches: int):
    """Endless, seeded, deterministic batches; ``skip_batches`` drops those an interrupted run already used."""
    from ebsd_keras.data.pipeline import make_dataset

    ds = make_dataset(
        cfg.data_dir,
        "train",
        batch_size=cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        repeat=True,
        cache=cfg.cache,
        drop_remainder=True,
        voltages=cfg.voltages,
        exclude_voltages=cfg.exclude_voltages,
        image_shape=image_shape,
    )
    ds = ds.map(_select)
    # Skipping replays the (cheap) input pipeline, not training: the resumed stream continues exactly.
    return ds.skip(skip_batches) if skip_batches else ds


def _has_val(cfg: TrainConfig, meta: dict, dataset_size) -> bool:
    if "val" not in meta["shards"]:
        logger.warning("the dataset has no 'val' split: best.keras is chosen on the training metric")
        return False
    return dataset_size(cfg.data_dir, "val", voltages=cfg.voltages, exclude_voltages=cfg.exclude_voltages) > 0


def val_dataset(cfg: TrainConfig, meta: dict, image_shape, dataset_size):
    """The same validation batches every epoch (unshuffled, finite), or None without a "val" split."""
    import tensorflow as tf

    from ebsd_keras.data.pipeline import make_dataset

    if not _has_val(cfg, meta, dataset_size):
        return None
    ds = make_dataset(
        cfg.data_dir,
        "val",
        batch_size=cfg.batch_size,
        shuffle=False,
        repeat=False,
        cache=True,
        voltages=cfg.voltages,
        exclude_voltages=cfg.exclude_voltages,
        image_shape=image_shape,
    ).map(_select)
    # A finite dataset (take, not fit's validation_steps) of declared length: Keras restarts it every epoch and
    # knows its end (no "ran out of data" warning).
    n = dataset_size(cfg.data_dir, "val", voltages=cfg.voltages, exclude_voltages=cfg.exclude_voltages)
    batches = -(-n // cfg.batch_size)
    if cfg.validation_steps:
        batches = min(batches, cfg.validation_steps)
        ds = ds.take(batches)
    return ds.apply(tf.data.experimental.assert_cardinality(batches))


def _grid_batch(cfg: TrainConfig, meta: dict, image_shape) -> dict:
    """The first patterns of the validation split (else of the training split), for the image grids."""
    from ebsd_keras.data.pipeline import make_dataset

    split = "val" if "val" in meta["shards"] and int(meta["count"].get("val", 0)) else "train"
    ds = make_dataset(
        cfg.data_dir,
        split,
        batch_size=_GRID_SIZE,
        shuffle=False,
        voltages=cfg.voltages,
        exclude_voltages=cfg.exclude_voltages,
        image_shape=image_shape,
    )
    batch = next(iter(ds.take(1)))
    return {k: np.asarray(batch[k]) for k in _BATCH_KEYS}


def _final_metrics(history, state) -> dict:
    logs = {k: v[-1] for k, v in history.history.items() if v}
    if not logs and state is not None:  # killed after the last backup: nothing left to train
        logs = state.get("logs", {})
    return {k: float(v) for k, v in logs.items()}
