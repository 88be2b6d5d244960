"""The CVAEGAN as a ``keras_tuner.HyperModel``: one trial = the three training phases on a fixed budget.

A trial builds the model (latent size from the hyper-parameters, seeded initial weights), trains the ``cvae`` phase,
then the ``critic`` phase, then the ``gan`` phase, each compiled exactly as ``ebsd-keras train`` compiles it from the
:class:`~ebsd_keras.training.config.TrainConfig` that :func:`trial_train_configs` makes (the same configs are exported
for the best trial). After every gan epoch, :class:`FidelityCallback` measures on the validation batches:

``val_gen_bce_gap``
    BCE of the generated pattern G(z = 0, attributes) against the true pattern, minus the optimal BCE (nats per
    pixel): the fidelity ``ebsd-keras evaluate`` reports, measured from the attributes alone (no encoder).
``val_gen_disorientation_deg``
    Cubic disorientation (degrees) between the true orientation and the trial's classifier's orientation of the
    generated pattern.
``val_fidelity`` (the objective, minimised)
    ``val_gen_bce_gap / bce_gap_scale + val_gen_disorientation_deg / disorientation_scale_deg``.

Under Hyperband the tuner's epoch budget is the number of gan epochs; a continued trial starts from its parent's
checkpoint and trains only more gan epochs.
"""

from __future__ import annotations

import math

import keras
import keras_tuner

from ebsd_keras.tuning.space import SearchSpace, default_values

__all__ = ["OBJECTIVE", "DIVERGED_SCORE", "CVAEGANHyperModel", "FidelityCallback", "trial_train_configs"]

#: The objective every tuner minimises.
OBJECTIVE = keras_tuner.Objective("val_fidelity", direction="min")
#: Objective value given to a trial whose generated patterns or metrics are not finite (a diverged run).
DIVERGED_SCORE = 1e3


def _sorted_thresholds(low: float, high: float) -> list[float]:
    """KLSchedule needs strictly increasing thresholds: sort; equal ones are 1e-3 nats apart."""
    lo, hi = sorted((float(low), float(high)))
    return [lo, hi if hi > lo else lo + 1e-3]


def trial_train_configs(space: SearchSpace, values: dict, data_dir, output_dir, gan_epochs: int | None = None) -> dict:
    """The three :class:`TrainConfig` of one trial (``{"cvae": ..., "critic": ..., "gan": ...}``), validated.

    Parameters
    ----------
    space
        The search space (budget in ``space.trial``, preset, fixed model overrides, seed).
    values
        Hyper-parameter values; names missing here take :func:`~ebsd_keras.tuning.space.default_values`.
    data_dir
        TFRecord dataset directory.
    output_dir
        Parent directory of the phases' run directories (``output_dir/cvae``, ...; the critic phase starts from
        ``output_dir/cvae/model.keras``, the gan phase from the critic's), as ``ebsd-keras train`` would run them.
    gan_epochs
        Overrides ``space.trial["gan_epochs"]`` (Hyperband's budget).
    """
    from ebsd_keras.training.config import TrainConfig

    v = {**default_values(space.preset, space.trial), **{k: values[k] for k in values if not k.startswith("tuner/")}}
    t = space.trial
    kl_schedule = {"thresholds": _sorted_thresholds(v["kl_threshold_low"], v["kl_threshold_high"])}
    weights = {
        k: float(v[k])
        for k in ("kl", "reconstruction", "orientation", "voltage", "adversarial_generator", "adversarial_critic",
                  "gradient_penalty")
    }  # fmt: skip
    common = dict(
        data_dir=str(data_dir),
        preset=space.preset,
        batch_size=int(v["batch_size"]),
        steps_per_epoch=int(t["steps_per_epoch"]),
        validation_steps=int(t["validation_steps"]),
        beta_1=float(v["beta_1"]),
        n_critic=int(v["n_critic"]),
        lipschitz=t["lipschitz"],
        seed=int(space.seed),
        image_every_steps=0,
        cache=bool(t["cache"]),
    )
    out = str(output_dir).rstrip("/")
    lr, clr = float(v["learning_rate"]), float(v["critic_learning_rate"])
    cvae = TrainConfig(
        **common,
        output_dir=f"{out}/cvae",
        phase="cvae",
        model={**space.model, "latent_dim": int(v["latent_dim"])},
        epochs=int(t["cvae_epochs"]),
        learning_rate=lr,
        critic_learning_rate=clr,
        loss_weights={"kl": weights["kl"], "reconstruction": weights["reconstruction"]},
        kl_schedule=kl_schedule,
    )
    critic_weights = {k: weights[k] for k in ("orientation", "voltage", "adversarial_critic", "gradient_penalty")}
    critic = TrainConfig(
        **common,
        output_dir=f"{out}/critic",
        phase="critic",
        init_from=f"{out}/cvae/model.keras",
        epochs=max(1, int(t["critic_epochs"])),
        learning_rate=lr,
        critic_learning_rate=clr,
        loss_weights=critic_weights,
    )
    # The gan phase halves both rates, as the phase defaults do (the authors' CVAE -> GAN halving).
    gan = TrainConfig(
        **common,
        output_dir=f"{out}/gan",
        phase="gan",
        init_from=f"{out}/critic/model.keras",
        epochs=int(gan_epochs if gan_epochs is not None else t["gan_epochs"]),
        learning_rate=lr / 2,
        critic_learning_rate=clr / 2,
        loss_weights=weights,
        kl_schedule=kl_schedule,
    )
    configs = {"cvae": cvae, "critic": critic, "gan": gan}
    for cfg in configs.values():
        cfg.validate()
    return configs


class FidelityCallback(keras.callbacks.Callback):
    """Adds ``val_gen_bce_gap``, ``val_gen_disorientation_deg``, ``val_real_disorientation_deg`` and ``val_fidelity``
    to the epoch logs (before the tuner's checkpoint and TensorBoard callbacks read them).

    Parameters
    ----------
    validation_data
        Finite dataset of batch dicts (pattern, quaternion, voltage_kv).
    bce_gap_scale, disorientation_scale_deg
        The objective's normalisations (nats per pixel, degrees).
    """

    def __init__(self, validation_data, bce_gap_scale: float, disorientation_scale_deg: float):
        super().__init__()
        self.validation_data = validation_data
        self.bce_gap_scale = float(bce_gap_scale)
        self.disorientation_scale_deg = float(disorientation_scale_deg)
        self._step = None

    def _make_step(self, model):
        import tensorflow as tf

        from ebsd_keras.losses import bce_from_logits, optimal_bce, orientation_error_deg

        def step(batch):
            x, attrs = model.split_batch(batch)
            z = tf.zeros((tf.shape(x)[0], model.model_config.latent_dim))
            logits = model.decoder({"z": z, **attrs}, training=False)
            gap = bce_from_logits(x, logits) - optimal_bce(x)
            both = model.critic(tf.concat([tf.sigmoid(logits), x], axis=0), training=False)["quaternion"]
            gen, real = tf.split(both, 2, axis=0)
            q = attrs["quaternion"]
            return gap, orientation_error_deg(q, gen), orientation_error_deg(q, real)

        return step if model.run_eagerly else tf.function(step)

    def measure(self, model) -> dict:
        """The fidelity metrics of ``model`` on the validation batches (pattern-weighted means)."""
        import numpy as np

        if self._step is None:
            self._step = self._make_step(model)
        gaps, gen, real = [], [], []
        for batch in self.validation_data:
            g, d, r = self._step({k: batch[k] for k in model.input_keys})
            gaps.append(np.asarray(g)), gen.append(np.asarray(d)), real.append(np.asarray(r))
        gap, deg = float(np.mean(np.concatenate(gaps))), float(np.mean(np.concatenate(gen)))
        fidelity = gap / self.bce_gap_scale + deg / self.disorientation_scale_deg
        return {
            "val_gen_bce_gap": gap,
            "val_gen_disorientation_deg": deg,
            "val_real_disorientation_deg": float(np.mean(np.concatenate(real))),
            "val_fidelity": fidelity if math.isfinite(fidelity) else DIVERGED_SCORE,
        }

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.measure(self.model))


class CVAEGANHyperModel(keras_tuner.HyperModel):
    """KerasTuner hyper-model of the CVAEGAN over a :class:`~ebsd_keras.tuning.space.SearchSpace`.

    Parameters
    ----------
    space
        The validated search space.
    data_dir
        TFRecord dataset ("train" and "val" splits).
    verbose
        ``fit`` verbosity of the phases (0 silent, 2 one line per epoch).
    """

    def __init__(self, space: SearchSpace, data_dir, verbose=0):
        super().__init__(name="cvaegan", tunable=True)
        self.space = space
        self.data_dir = str(data_dir)
        self.verbose = verbose

    # ------------------------------------------------------------------------------------------------------------
    def declare(self, hp) -> dict:
        """Declare the space's hyper-parameters on ``hp`` and return their values."""
        values = {}
        for name, spec in self.space.hyperparameters.items():
            kind = spec["type"]
            if kind in ("int", "float"):
                make, cast = (hp.Int, int) if kind == "int" else (hp.Float, float)
                values[name] = make(
                    name,
                    cast(spec["min"]),
                    cast(spec["max"]),
                    step=spec.get("step"),
                    sampling=spec.get("sampling", "linear"),
                    default=spec.get("default"),
                )
            elif kind == "choice":
                values[name] = hp.Choice(name, spec["values"], default=spec.get("default"))
            else:
                values[name] = hp.Fixed(name, spec["value"])
        return values

    def configs(self, hp_values: dict, output_dir="runs/tuned") -> dict:
        """:func:`trial_train_configs` of a trial's values (Hyperband's ``tuner/epochs`` sets the gan epochs)."""
        return trial_train_configs(
            self.space, hp_values, self.data_dir, output_dir, gan_epochs=hp_values.get("tuner/epochs")
        )

    def build(self, hp):
        from ebsd_keras.models.cvaegan import CVAEGAN
        from ebsd_keras.training.phases import build_model, compile_model

        values = self.declare(hp)
        cfg = self.configs(values)["cvae"].resolved()
        keras.utils.set_random_seed(cfg.seed)  # the same initial weights for the same values
        model = build_model(cfg)
        assert isinstance(model, CVAEGAN)
        compile_model(model, cfg)
        return model

    # ------------------------------------------------------------------------------------------------------------
    def _datasets(self, cfg):
        from ebsd_keras.data.pipeline import dataset_size
        from ebsd_keras.io.tfrecord import read_metadata
        from ebsd_keras.training.phases import train_dataset, val_dataset

        meta = read_metadata(cfg.data_dir)
        shape = tuple(int(s) for s in meta["pattern_shape"])
        val = val_dataset(cfg, meta, shape, dataset_size)
        if val is None:
            from ebsd_keras.errors import EBSDInputError

            raise EBSDInputError("the search needs a non-empty 'val' split for its objective", cfg.data_dir, "val")
        return train_dataset(cfg, shape, skip_batches=0), val

    def _phase(self, model, cfg, callbacks=(), initial_epoch=0, validation=None):
        from ebsd_keras.training.phases import compile_model

        cfg = cfg.resolved()
        compile_model(model, cfg)
        # Eager steps skip tf.function tracing (tens of seconds per phase on a CPU): faster for a handful of steps.
        model.run_eagerly = bool(self.space.trial["run_eagerly"])
        train_ds, val_ds = self._datasets(cfg)
        return model.fit(
            train_ds,
            epochs=cfg.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=cfg.steps_per_epoch,
            callbacks=list(callbacks),
            verbose=self.verbose,
            shuffle=False,
        ), val_ds

    def fit(self, hp, model, *args, callbacks=None, epochs=None, initial_epoch=0, **kwargs):
        """Train the trial's phases; returns the gan phase's History (``val_fidelity`` per epoch).

        ``callbacks`` (the tuner's: checkpoint, TensorBoard with HParams) run in the gan phase, after
        :class:`FidelityCallback`.
        """
        values = dict(hp.values)
        configs = self.configs(values)
        if epochs is not None:
            configs["gan"] = configs["gan"].replace(epochs=int(epochs))
        if "tuner/trial_id" not in values:  # a Hyperband continuation already holds its parent's trained weights
            keras.utils.set_random_seed(self.space.seed)
            self._phase(model, configs["cvae"])
            if self.space.trial["critic_epochs"] > 0:
                self._phase(model, configs["critic"])
        _, val_ds = self._datasets(configs["gan"].resolved())
        fidelity = FidelityCallback(val_ds, self.space.bce_gap_scale, self.space.disorientation_scale_deg)
        cbs = [keras.callbacks.TerminateOnNaN(), fidelity, *(callbacks or [])]
        history, _ = self._phase(model, configs["gan"], callbacks=cbs, initial_epoch=int(initial_epoch or 0))
        if not history.history.get("val_fidelity"):  # stopped before the first epoch end (NaN)
            return {"val_fidelity": DIVERGED_SCORE}
        return history
