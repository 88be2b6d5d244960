"""``ebsd-keras train``: one training phase of the CVAE/GAN on a TFRecord dataset."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil

from ebsd_keras.errors import EBSDInputError

DESCRIPTION = """\
Train one phase of the CVAE/GAN on a TFRecord dataset (made by `ebsd-keras convert`; "train" split, optional "val").

Phases (run them in this order, each starting from the previous one's model with --init-from):
  cvae    CVAE pretraining: encoder + decoder on KL (adaptive coefficient) + reconstruction BCE; attribute and
          adversarial weights 0.
  critic  critic/classifier pretraining: orientation(+voltage) indexing of real patterns, and the critic head against
          prior samples of the frozen decoder. Start from the cvae model.
  gan     joint fine-tuning: n_critic critic updates (WGAN, clipping or gradient penalty) per encoder/decoder update,
          all loss terms active. Start from the critic model.
A critic or gan phase without --init-from trains from scratch (with a warning).

Files written in OUT:
  model.keras     final model (the next phase's --init-from)
  best.keras      model at the epoch with the lowest validation metric (val_bce_gap for cvae/gan,
                  val_disorientation_real_deg for critic; the training metric if there is no val split)
  config.json     the resolved settings (phase defaults filled in)    history.csv   metrics per epoch
  summary.json    final/best metrics, wall time, patterns/s           logs/         TensorBoard (scalars, images)
  backup/         resume state while the run is unfinished (removed at the end)

An interrupted run (crash, kill, preemption) is resumed by rerunning the same command: it continues after the last
completed epoch and ends with the same weights as an uninterrupted run (same seed, deterministic ops). --no-resume
starts over and replaces the run's files. A finished run in OUT is not overwritten unless --no-resume is given.

A damaged resume point (corrupt backup/state.json, truncated checkpoint) is refused with one line naming it; rerun
with --no-resume to start over. Before anything is built, the run directory must be writable and every TFRecord
shard of the train and val splits must match the SHA-256 recorded in metadata.json (a damaged, truncated or missing
shard is named); a refused run leaves no run directory or config.json behind. Temporaries orphaned by a killed run
(.best.keras.*.tmp.keras, backup/.ckpt-*.tmp.weights.h5) are removed when the same OUT is trained again.

Training stops with exit status 1 (status "terminated_on_nan" or "diverged" in summary.json, no model.keras) when
the loss becomes NaN/Inf, or diverges: the training loss, val_loss or the (val_)bce_gap at an epoch end is finite but
more than 1e6 times its value at the first epoch of this process. The diverged epoch is neither backed up nor saved
as best.keras: both keep the last good epoch.

Settings come from --config FILE (JSON with TrainConfig fields) and the flags below; flags win.
"""

EPILOG = """\
examples:
  ebsd-keras train --data tfrecords/ni20kv --phase cvae -o runs/cvae --epochs 30
  ebsd-keras train --data tfrecords/ni20kv --phase critic --init-from runs/cvae/model.keras -o runs/critic
  ebsd-keras train --data tfrecords/ni20kv --phase gan --init-from runs/critic/model.keras -o runs/gan --n-critic 5
  ebsd-keras train --config runs/gan/config.json --epochs 40        (continue/redo with recorded settings)
  TF_CONFIG='{"cluster": {"worker": ["node0:12345", "node1:12345"]}, "task": {"type": "worker", "index": 0}}' \
    ebsd-keras train --distributed --data gs://bucket/ni20-tfr -o gs://bucket/runs/cvae --batch-size 256
                                                      (on every node, with its own task index)
"""

_KV_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.+)$")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one phase (cvae, critic, gan) of the generative model",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--data", dest="data_dir", metavar="DIR", help="TFRecord dataset directory (ebsd-keras convert)")
    a("--phase", choices=("cvae", "critic", "gan"), help="training phase (default cvae)")
    a("-o", "--output", dest="output_dir", metavar="OUT", help="run directory (created)")
    a("--config", metavar="FILE", help="JSON file of TrainConfig fields (flags override it)")
    a("--preset", metavar="NAME",
      help="model preset for a new model: physics (default; detector and contrast from the data), compact, paper, "
           "tiny")  # fmt: skip
    a("--use-voltage", action="store_const", const=True, default=None,
      help="new model: take the accelerating voltage as an attribute (multi-voltage data)")  # fmt: skip
    a("--init-from", metavar="MODEL.keras", help="start from this model (a previous phase's model.keras)")
    a("--epochs", type=int, metavar="N", help="total epochs (default 10)")
    a("--steps-per-epoch", type=int, metavar="N", help="training steps per epoch (default: one pass over the data)")
    a("--validation-steps", type=int, metavar="N", help="validation batches per epoch (default: the whole val split)")
    a("--batch-size", type=int, metavar="N", help="patterns per step (default 64)")
    a("--lr", dest="learning_rate", type=float, metavar="LR",
      help="encoder/decoder Adam learning rate (default 1e-4 cvae/critic, 5e-5 gan)")  # fmt: skip
    a("--critic-lr", dest="critic_learning_rate", type=float, metavar="LR", help="critic Adam learning rate")
    a("--beta-1", dest="beta_1", type=float, metavar="B", help="Adam beta_1 (default 0.5)")
    a("--n-critic", type=int, metavar="N", help="critic updates per generator update, gan phase (default 5)")
    a(
        "--lipschitz",
        choices=("clip", "gp"),
        help="critic Lipschitz constraint: clip (default for --preset paper) or gp (gradient penalty, otherwise)",
    )
    a("--clip-value", type=float, metavar="C", help="weight clipping bound c (default 0.01)")
    a("--loss-weight", action="append", default=[], metavar="NAME=VALUE",
      help="override one loss weight (kl, reconstruction, orientation, voltage, adversarial_generator, "
           "adversarial_critic, gradient_penalty); repeatable")  # fmt: skip
    a("--seed", type=int, metavar="S", help="seed of weights, data order and noise (default 0)")
    a("--jit-compile", action="store_const", const=True, default=None,
      help="compile steps with XLA (default: XLA on a GPU, not on the CPU, where it measured slower; README "
           "Benchmarks)")  # fmt: skip
    a("--mixed-precision", nargs="?", const=True, default=None, metavar="POLICY",
      choices=("mixed_float16", "mixed_bfloat16"),
      help="mixed precision (default policy mixed_float16, with loss scaling; or mixed_bfloat16). For GPUs with "
           "tensor cores; slower on the CPU; not for --preset physics")  # fmt: skip
    a("--kv", dest="voltages", type=float, nargs="+", metavar="KV", help="train only on these voltages (kV)")
    a("--exclude-kv", dest="exclude_voltages", type=float, nargs="+", metavar="KV", help="leave these voltages out")
    a("--cache", action="store_const", const=True, default=None, help="cache the training records in memory")
    a("--image-every", dest="image_every_steps", type=int, metavar="N",
      help="TensorBoard pattern grids every N steps (default 500, 0 = off)")  # fmt: skip
    a("--update-freq", dest="tensorboard_update_freq", metavar="N|epoch", help="TensorBoard scalar frequency")
    a("--no-resume", dest="resume", action="store_const", const=False, default=None,
      help="do not resume an interrupted run in OUT: start over, replacing its files")  # fmt: skip
    a("--distributed", action="store_const", const=True, default=None,
      help="multi-worker data-parallel training (tf.distribute.MultiWorkerMirroredStrategy) configured by the "
           "TF_CONFIG environment variable; run the same command on every worker; --batch-size is the global "
           "batch; only the chief writes OUT (README: Running on a cluster)")  # fmt: skip
    a("-q", "--quiet", action="store_true", help="no progress bar (one line per epoch)")
    p.set_defaults(func=run)


_OVERRIDES = (
    "data_dir", "phase", "output_dir", "preset", "init_from", "epochs", "steps_per_epoch", "validation_steps",
    "batch_size", "learning_rate", "critic_learning_rate", "beta_1", "n_critic", "lipschitz", "clip_value", "seed",
    "jit_compile", "mixed_precision", "voltages", "exclude_voltages", "cache", "image_every_steps",
    "tensorboard_update_freq", "resume", "distributed",
)  # fmt: skip


def config_from_args(args):
    """The :class:`~ebsd_keras.training.config.TrainConfig` of the command line (file, then flags), validated.

    Raises
    ------
    EBSDInputError
        Unknown config key, bad value, missing --data / -o.
    """
    from ebsd_keras.training.config import TrainConfig, load_train_config

    overrides = {k: getattr(args, k) for k in _OVERRIDES}
    freq = overrides["tensorboard_update_freq"]
    if freq is not None and freq not in ("epoch", "batch"):
        try:
            overrides["tensorboard_update_freq"] = int(freq)
        except ValueError:
            raise EBSDInputError(f"must be 'epoch' or a step count, got {freq!r}", None, "--update-freq") from None
    config = load_train_config(args.config, **overrides) if args.config else TrainConfig().replace(**overrides)
    if args.use_voltage:
        config = config.replace(model={**config.model, "use_voltage": True})
    if args.loss_weight:
        config = config.replace(loss_weights={**config.loss_weights, **_parse_weights(args.loss_weight)})
    if not config.data_dir:
        raise EBSDInputError("required (or data_dir in --config)", None, "--data")
    if not config.output_dir:
        raise EBSDInputError("required (or output_dir in --config)", None, "-o/--output")
    try:
        config.validate()
    except ValueError as exc:
        raise EBSDInputError(str(exc), args.config, None) from exc
    return config


def _parse_weights(items) -> dict:
    out = {}
    for item in items:
        m = _KV_RE.match(item)
        try:
            out[m.group(1)] = float(m.group(2))
        except (AttributeError, ValueError):
            raise EBSDInputError(f"expected NAME=NUMBER, got {item!r}", None, "--loss-weight") from None
    return out


def preflight(config) -> None:
    """Cheap checks before anything is built or written: the run directory can be written (not a file, parent not a
    file, writable), the ``init_from`` file is a Keras archive. Orphaned temporaries of killed runs are removed."""
    from ebsd_keras._atomic import check_writable, clean_stale_temps
    from ebsd_keras.checks import check_keras_file
    from ebsd_keras.training import fs

    out = str(config.output_dir)
    if not fs.is_remote(out):
        check_writable(out, "rundir", field="-o/--output")
        for d in (out, os.path.join(out, "backup")):
            clean_stale_temps(d)
    if config.init_from:
        check_keras_file(config.init_from, "--init-from")
    from ebsd_keras.io.tfrecord import verify_shards

    verify_shards(config.data_dir, ("train", "val"))  # a damaged shard is the first thing to know about
    _check_data_fits(config)


def _check_data_fits(config) -> None:
    """What train() would find only after building the model, checked from metadata.json alone: voltage filters
    that keep patterns, a batch no larger than the training split, a preset whose pattern size is the data's."""
    from ebsd_keras.data.pipeline import dataset_size
    from ebsd_keras.io.tfrecord import read_metadata
    from ebsd_keras.training.phases import check_data_shape, steps_per_epoch_of

    meta = read_metadata(config.data_dir)
    cfg = config.resolved()
    image_shape = _model_image_shape(cfg)
    if image_shape is not None:
        check_data_shape(cfg, meta, image_shape)
    n = dataset_size(config.data_dir, "train", voltages=config.voltages, exclude_voltages=config.exclude_voltages)
    if n == 0:
        raise EBSDInputError(
            f"no training patterns left after the voltage filters (the data has {meta['voltages_kv']} kV)",
            config.data_dir,
            "--kv/--exclude-kv",
        )
    steps_per_epoch_of(config, dataset_size)  # batch larger than the split


def _model_image_shape(cfg):
    """The pattern size (H, W) the run's model will take: the preset's, or the one recorded in ``init_from``'s
    config (read from the archive, nothing deserialised); None when it cannot be read here (train() will say)."""
    from ebsd_keras.models.presets import get_preset

    if cfg.init_from is None:
        return tuple(get_preset(cfg.preset, **cfg.model).image_shape)
    try:
        from ebsd_keras.serving.models import inspect_model_file

        shape = inspect_model_file(cfg.init_from)["model_config"].get("image_shape")
    except Exception:  # noqa: BLE001 - a foreign file: train() loads it and names the problem
        return None
    return tuple(int(s) for s in shape) if shape else None


def _outputs_before(out: str):
    """What the run directory held before this command (None: it did not exist, or is remote)."""
    if "://" in out or not os.path.isdir(out):
        return None
    return set(os.listdir(out))


def _remove_new_outputs(out: str, before) -> None:
    """After a run failed before its first backup: remove what this command created, so that a refused input
    leaves neither a run directory nor a config.json. A run with a backup (a resume point) is kept whole."""
    if "://" in out or not os.path.isdir(out) or os.path.exists(os.path.join(out, "backup", "state.json")):
        return
    if before is None:
        shutil.rmtree(out, ignore_errors=True)
        return
    for name in set(os.listdir(out)) - before:
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def run(args) -> int:
    from ebsd_keras.checks import check_input_file
    from ebsd_keras.training.phases import train

    if args.config:
        check_input_file(args.config, "--config", "training config file")
    config = config_from_args(args)
    preflight(config)
    out = str(config.output_dir)
    before = _outputs_before(out)
    try:
        summary = train(config, verbose=2 if args.quiet else "auto")
    except BaseException:
        _remove_new_outputs(out, before)
        raise
    if not summary.get("chief", True):
        return 0 if summary["status"] == "finished" else 1  # the chief reports (and writes OUT)
    best = summary["best"]
    rate = summary["patterns_per_s"]
    best_txt = (
        f"best {best['monitor']} {best['value']:.4g} at epoch {best['epoch'] + 1}"
        if best["epoch"] is not None
        else "no best"
    )
    print(
        f"{summary['phase']}: {summary['status']} after {summary['epochs']} epoch(s); {best_txt}; "
        f"{f'{rate:.0f} patterns/s' if rate else 'throughput n/a'}; wrote {config.output_dir}"
    )
    return 0 if summary["status"] == "finished" else 1
