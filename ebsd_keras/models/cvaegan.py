"""CVAEGAN: the conditional VAE whose decoder is also a WGAN generator, with a critic + attribute classifier.

Training follows paper-method.md in three phases, chosen at :meth:`CVAEGAN.compile` (recompile to switch):

``"cvae"``
    Encoder + decoder on eq 6 (KL, with the adaptive coefficient) + eq 7 (BCE).
``"critic"``
    Critic + classifier only, eq 14: attribute losses (eqs 8-10) on real patterns and the Wasserstein critic loss
    (eq 11) of real patterns against prior samples of the frozen decoder; then the Lipschitz constraint.
``"gan"``
    Joint fine-tuning. Each ``train_step`` (one batch) makes ``n_critic`` critic updates (eq 14) on that batch,
    each against fresh prior samples, then one encoder + decoder update (eq 13). The counts are visible as
    ``critic_optimizer.iterations == n_critic * encoder_decoder_optimizer.iterations``. (The same real batch is
    reused for the ``n_critic`` updates, as in the keras-io WGAN-GP example; a larger batch gives the critic more
    real data per step. The critic updates are one ``tf.while_loop``, unrolled under tf.distribute.)

Objective scale (issue 14): the reconstruction term of eqs 13 is the BCE **summed over the pixels** of a pattern
(``bce_reduction="sum"``, the default) and averaged over the batch, as in the authors' code: their KL thresholds
(15 / 5 nats), KL coefficients 0.8 x {1.5, 0.1, 0.01}, alpha3,o = 1e4 and alpha4 were tuned against that scale, so
they keep their meaning here (with a per-pixel mean, KL would weigh H x W = 3,600 times more). ``bce_reduction=
"mean"`` (per-pixel mean) is kept for models trained before the change. The *reported* metrics ``bce`` and
``bce_gap`` stay per pixel (the paper's tables); ``bce_weighted`` is the term in the loss, on the objective's scale.

Decoders with a ``subsampling`` property (the neural field, :mod:`ebsd_keras.models.field`) are trained in the
"cvae" phase on ``decoder.train_pixels`` random pixels per pattern; the summed BCE is then estimated as
H x W / P times the sum over the P pixels. Validation and every other phase use whole patterns.

Validation (``test_step``) of the CVAE terms decodes at z = mu (the deterministic path, so ``val_bce_gap``, which
selects ``best.keras``, carries no sampling noise); ``bce_sampled`` / ``bce_gap_sampled`` report the reconstruction
from a sampled z as well.

Lipschitz constraint: ``lipschitz="clip"`` (the paper's WGAN) clips *every* trainable critic weight to
``[-clip_value, clip_value]`` after each critic update; ``lipschitz="gp"`` adds the WGAN-GP penalty instead.

Models and losses compute their outputs in float32, so a ``mixed_float16`` policy works with
``keras.optimizers.LossScaleOptimizer`` optimizers (``optimizer.scale_loss`` is applied before differentiation).

Distribution (``tf.distribute``, e.g. ``MirroredStrategy``): each replica averages its terms over its local batch;
before taking gradients the loss is divided by the number of replicas, because Keras 3's TensorFlow optimizer
all-reduces gradients by **sum** (``TFOptimizer._all_reduce_sum_gradients``) — the same convention as Keras's
built-in losses (``scale_loss_for_distribution``). Metrics get the unscaled local means, and ``fit`` averages
them over replicas. The batch-mean KL that drives the adaptive coefficient is all-reduced (mean) so every replica
uses the same coefficient. Random draws fold the replica id into the seed so replicas sample different noise.
"""

from __future__ import annotations

import keras
from keras import ops

from ebsd_keras.losses import (
    KLSchedule,
    LossWeights,
    bce_from_logits,
    gradient_penalty,
    kl_divergence,
    optimal_bce,
    orientation_error_deg,
    orientation_loss,
    voltage_mse,
    wasserstein_critic_loss,
    wasserstein_generator_loss,
)
from ebsd_keras.models import field as _field  # noqa: F401 - registers decoder kind "field" (build, .keras load)
from ebsd_keras.models import physics as _physics  # noqa: F401 - registers decoder kind "physics" (build, .keras load)
from ebsd_keras.models.critic import Critic
from ebsd_keras.models.decoders import build_decoder
from ebsd_keras.models.encoder import Encoder
from ebsd_keras.models.presets import ModelConfig, get_preset

__all__ = ["CVAEGAN", "PHASES", "LIPSCHITZ_MODES", "BCE_REDUCTIONS", "default_optimizer"]

PHASES = ("cvae", "critic", "gan")
LIPSCHITZ_MODES = ("clip", "gp")

_CVAE_METRICS = ("kl", "kl_coefficient", "kl_weighted", "bce", "bce_weighted", "bce_gap")
_SAMPLED_METRICS = ("bce_sampled", "bce_gap_sampled")  # validation only: reconstruction from a sampled z
BCE_REDUCTIONS = ("sum", "mean")
_CRITIC_METRICS = (
    "critic_loss",
    "wasserstein",
    "critic_adversarial",
    "critic_adversarial_weighted",
    "critic_orientation",
    "critic_orientation_weighted",
    "disorientation_real_deg",
)
_CRITIC_VOLTAGE_METRICS = ("critic_voltage", "critic_voltage_weighted", "voltage_error_real_kv")
_GP_METRICS = ("gradient_penalty", "gradient_penalty_weighted")
_GENERATOR_METRICS = (
    "adversarial",
    "adversarial_weighted",
    "generator_orientation",
    "generator_orientation_weighted",
    "disorientation_generated_deg",
)
_GENERATOR_VOLTAGE_METRICS = ("generator_voltage", "generator_voltage_weighted", "voltage_error_generated_kv")


def default_optimizer(learning_rate: float = 1e-4) -> keras.optimizers.Optimizer:
    """Adam with beta_1 = 0.5 (the authors' and DCGAN's choice: less momentum keeps the adversarial game stable).

    The authors trained their 1.24 B model at 8e-6 (CVAE) and 4e-6 (GAN); 1e-4 suits the compact model.
    """
    return keras.optimizers.Adam(learning_rate=learning_rate, beta_1=0.5, beta_2=0.999)


def _tf():
    import tensorflow as tf

    return tf


def _num_replicas() -> int:
    return _tf().distribute.get_strategy().num_replicas_in_sync


def _global_mean(x):
    """Mean of a per-replica scalar over all replicas (identity without distribution)."""
    ctx = _tf().distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        return ctx.all_reduce("mean", x)
    return x


@keras.saving.register_keras_serializable(package="ebsd_keras")
class CVAEGAN(keras.Model):
    """Encoder, decoder (= generator) and critic, trained with ``fit`` on dict batches.

    Parameters
    ----------
    encoder, decoder, critic
        The three networks; any left out is built from ``config``.
    config
        :class:`ModelConfig` (or preset name); defaults to the encoder's config, else the default preset.
    seed
        Seed of the training noise (reparameterisation, prior samples, GP interpolation); None draws one from the
        global seed (``keras.utils.set_random_seed``).

    Batches are dicts with ``"pattern"`` (B, H, W, 1) in [0, 1], ``"quaternion"`` (B, 4) and, for voltage models,
    ``"voltage_kv"`` (B,) in kV; other keys are ignored. An optional per-pattern Bruker pattern centre ``"pc"``
    (B, 3) is passed to decoders that project with one (:attr:`takes_pattern_centre`: the physics decoder) and
    ignored by the others (the CNN decoders have one fixed detector; :meth:`generate` refuses a ``"pc"`` for them).
    """

    def __init__(self, encoder=None, decoder=None, critic=None, config=None, seed=None, **kwargs):
        kwargs.setdefault("name", "cvaegan")
        super().__init__(**kwargs)
        if isinstance(config, str):
            config = get_preset(config)
        elif isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        if config is None:
            config = encoder.model_config if encoder is not None else get_preset()
        self.model_config = config
        self.seed = seed
        self.encoder = encoder if encoder is not None else Encoder(config)
        self.decoder = decoder if decoder is not None else build_decoder(config)
        self.critic = critic if critic is not None else Critic(config)
        for part in (self.encoder, self.decoder, self.critic):
            if part.model_config.to_dict() != config.to_dict():
                raise ValueError(f"the {part.name}'s ModelConfig differs from the CVAEGAN's config")
        self.noise_seed = keras.random.SeedGenerator(seed, name="training_noise")
        names = ["loss", *_CVAE_METRICS, *_SAMPLED_METRICS, *_CRITIC_METRICS, *_GP_METRICS, *_GENERATOR_METRICS]
        if config.use_voltage:
            names += [*_CRITIC_VOLTAGE_METRICS, *_GENERATOR_VOLTAGE_METRICS]
        self.trackers = {n: keras.metrics.Mean(name=n) for n in names}
        # Uncompiled defaults, so that evaluate-free uses (call, generate, save) work before compile().
        self.phase = "cvae"
        self.loss_weights = LossWeights()
        self.kl_schedule = KLSchedule()
        self.lipschitz = "clip"
        self.clip_value = 0.01
        self.n_critic = 5
        self.bce_reduction = "sum"
        self.sampled_validation = True
        self._validating = False
        self.encoder_decoder_optimizer = None
        self.critic_optimizer = None
        self._cvaegan_compile_args = None
        self.built = True  # the three networks build themselves

    # ------------------------------------------------------------------------------------------------------------
    # compile
    # ------------------------------------------------------------------------------------------------------------
    def compile(
        self,
        encoder_decoder_optimizer=None,
        critic_optimizer=None,
        loss_weights: LossWeights | dict | None = None,
        kl_schedule: KLSchedule | dict | None = None,
        lipschitz: str = "clip",
        clip_value: float = 0.01,
        n_critic: int = 5,
        phase: str = "cvae",
        bce_reduction: str = "sum",
        sampled_validation: bool = True,
        jit_compile="auto",
        run_eagerly: bool = False,
        steps_per_execution: int = 1,
    ):
        """Choose the phase, optimizers, loss weights and Lipschitz constraint.

        Parameters
        ----------
        encoder_decoder_optimizer, critic_optimizer
            Keras optimizers (instances, names or configs); None gives :func:`default_optimizer` (Adam,
            lr 1e-4, beta_1 0.5). Pass the same instances again when switching phase to keep their state.
        loss_weights
            :class:`LossWeights` (or its dict): the alphas of eqs 13-14 and the GP weight.
        kl_schedule
            :class:`KLSchedule` (or its config): the adaptive KL coefficient (the authors' step function).
        lipschitz
            "clip" (weight clipping to ``[-clip_value, clip_value]``, the paper) or "gp" (gradient penalty).
        clip_value
            c of the weight clipping.
        n_critic
            Critic updates per generator update in phase "gan".
        phase
            "cvae", "critic" or "gan" (see the module docstring).
        bce_reduction
            "sum" (default): the reconstruction term is the BCE summed over a pattern's pixels (nats per pattern),
            the scale the authors' KL thresholds and loss weights were tuned on; "mean": per pixel (how models
            before issue 14 were trained; a compile config without this entry means "mean").
        sampled_validation
            Also validate the reconstruction from a sampled z (``bce_sampled``, ``bce_gap_sampled``); it doubles the
            decoder's validation cost (False for slow decoders such as the neural field).
        jit_compile, run_eagerly, steps_per_execution
            As in ``keras.Model.compile`` ("auto" means no XLA on CPU or under tf.distribute).
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        if lipschitz not in LIPSCHITZ_MODES:
            raise ValueError(f"lipschitz must be one of {LIPSCHITZ_MODES}, got {lipschitz!r}")
        if int(n_critic) < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        if float(clip_value) <= 0:
            raise ValueError(f"clip_value must be positive, got {clip_value}")
        if bce_reduction not in BCE_REDUCTIONS:
            raise ValueError(f"bce_reduction must be one of {BCE_REDUCTIONS}, got {bce_reduction!r}")
        if isinstance(loss_weights, dict):
            loss_weights = LossWeights.from_dict(loss_weights)
        if isinstance(kl_schedule, dict):
            kl_schedule = KLSchedule.from_config(kl_schedule)
        with self.distribute_strategy.scope():
            opt_g = keras.optimizers.get(encoder_decoder_optimizer) or default_optimizer()
            opt_c = keras.optimizers.get(critic_optimizer) or default_optimizer()
            if opt_g is opt_c:
                raise ValueError("the encoder/decoder and the critic need two different optimizer instances")
            # Build slot variables now, in the strategy's scope, not lazily inside the traced train step.
            if not opt_g.built:
                opt_g.build(self.generator_variables)
            if not opt_c.built:
                opt_c.build(self.critic.trainable_variables)
        super().compile(
            optimizer=None, jit_compile=jit_compile, run_eagerly=run_eagerly, steps_per_execution=steps_per_execution
        )
        self.encoder_decoder_optimizer = opt_g
        self.critic_optimizer = opt_c
        # `model.optimizer` (used by LR callbacks and TensorBoard's step counter) is the phase's main optimizer.
        self.optimizer = opt_c if phase == "critic" else opt_g
        self.loss_weights = loss_weights or LossWeights()
        self.kl_schedule = kl_schedule or KLSchedule()
        self.lipschitz = lipschitz
        self.clip_value = float(clip_value)
        self.n_critic = int(n_critic)
        self.phase = phase
        self.bce_reduction = bce_reduction
        self.sampled_validation = bool(sampled_validation)
        self._cvaegan_compile_args = {
            "jit_compile": jit_compile,
            "run_eagerly": run_eagerly,
            "steps_per_execution": steps_per_execution,
        }

    def get_compile_config(self):
        if not self.compiled or self._cvaegan_compile_args is None:
            return {}
        return {
            "encoder_decoder_optimizer": keras.optimizers.serialize(self.encoder_decoder_optimizer),
            "critic_optimizer": keras.optimizers.serialize(self.critic_optimizer),
            "loss_weights": self.loss_weights.to_dict(),
            "kl_schedule": self.kl_schedule.get_config(),
            "lipschitz": self.lipschitz,
            "clip_value": self.clip_value,
            "n_critic": self.n_critic,
            "phase": self.phase,
            "bce_reduction": self.bce_reduction,
            "sampled_validation": self.sampled_validation,
            **self._cvaegan_compile_args,
        }

    def compile_from_config(self, config):
        config = dict(config)
        config.setdefault("bce_reduction", "mean")  # files saved before the entry existed were trained per pixel
        for key in ("encoder_decoder_optimizer", "critic_optimizer"):
            config[key] = keras.optimizers.deserialize(config[key])
        self.compile(**config)

    # ------------------------------------------------------------------------------------------------------------
    # properties, call, generation, serialization
    # ------------------------------------------------------------------------------------------------------------
    @property
    def metrics(self):
        return list(self.trackers.values())

    @property
    def generator_variables(self):
        """Trainable variables of the encoder and the decoder (updated together)."""
        return self.encoder.trainable_variables + self.decoder.trainable_variables

    def _metric_names(self):
        cfg = self.model_config
        critic = [*_CRITIC_METRICS, *(_CRITIC_VOLTAGE_METRICS if cfg.use_voltage else ())]
        critic += list(_GP_METRICS) if self.lipschitz == "gp" else []
        generator = [*_GENERATOR_METRICS, *(_GENERATOR_VOLTAGE_METRICS if cfg.use_voltage else ())]
        cvae = [*_CVAE_METRICS, *(_SAMPLED_METRICS if self._validating and self.sampled_validation else ())]
        if self.phase == "cvae":
            return ["loss", *cvae]
        if self.phase == "critic":
            return ["loss", *critic]
        return ["loss", *cvae, *generator, *critic]

    @property
    def takes_pattern_centre(self) -> bool:
        """Whether the decoder generates at a per-pattern pattern centre ``"pc"`` (the physics decoder does)."""
        return isinstance(self.decoder, _physics.PhysicsDecoder) or bool(
            getattr(self.decoder, "accepts_pattern_centre", False)
        )

    @property
    def input_keys(self) -> tuple:
        """The batch entries the model reads; others (euler, source, index, ...) are dropped by fit/evaluate."""
        return ("pattern", "quaternion", "voltage_kv") if self.model_config.use_voltage else ("pattern", "quaternion")

    def _model_inputs(self, data):
        """A tf.data.Dataset of dicts reduced to :attr:`input_keys` (other inputs pass unchanged).

        String entries such as the pipeline's ``"source"`` cannot enter an XLA-compiled step, and unused entries
        would be copied to every replica under a distribution strategy for nothing.
        """
        tf = _tf()
        if isinstance(data, tf.data.Dataset) and isinstance(data.element_spec, dict):
            missing = [k for k in self.input_keys if k not in data.element_spec]
            if missing:
                raise ValueError(f"dataset elements lack {missing}; the model needs {list(self.input_keys)}")
            keys = self.input_keys
            if "pc" in data.element_spec and self.takes_pattern_centre:
                keys = (*keys, "pc")
            if set(data.element_spec) != set(keys):
                return data.map(lambda d: {k: d[k] for k in keys}, num_parallel_calls=tf.data.AUTOTUNE)
        return data

    def fit(self, x=None, *args, **kwargs):
        """``keras.Model.fit``; dict datasets (train and validation) are reduced to :attr:`input_keys` first."""
        if kwargs.get("validation_data") is not None:
            kwargs["validation_data"] = self._model_inputs(kwargs["validation_data"])
        return super().fit(self._model_inputs(x), *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        """``keras.Model.evaluate``; dict datasets are reduced to :attr:`input_keys` first."""
        return super().evaluate(self._model_inputs(x), *args, **kwargs)

    def split_batch(self, data):
        """(pattern (B, H, W, 1) float32, attribute dict) from a batch dict (or an (x, ...) tuple of one)."""
        if isinstance(data, (tuple, list)):
            data = data[0]
        if not isinstance(data, dict) or "pattern" not in data or "quaternion" not in data:
            raise ValueError("CVAEGAN batches must be dicts with 'pattern' and 'quaternion' (and 'voltage_kv')")
        x = ops.cast(data["pattern"], "float32")
        if len(x.shape) == 3:
            x = x[..., None]
        attrs = {"quaternion": ops.cast(data["quaternion"], "float32")}
        if self.model_config.use_voltage:
            if data.get("voltage_kv") is None:
                raise ValueError("this model uses the accelerating voltage: batches need 'voltage_kv' (B,) in kV")
            attrs["voltage_kv"] = ops.reshape(ops.cast(data["voltage_kv"], "float32"), (-1,))
        if data.get("pc") is not None and self.takes_pattern_centre:
            attrs["pc"] = ops.reshape(ops.cast(data["pc"], "float32"), (-1, 3))
        return x, attrs

    def _encoder_inputs(self, x, attrs):
        # the encoder conditions on orientation (and voltage) only; the pattern centre goes to the decoder
        return {"pattern": x, **{k: v for k, v in attrs.items() if k != "pc"}}

    def encode(self, inputs, training=False):
        """(mu, logvar) of a batch dict."""
        x, attrs = self.split_batch(inputs)
        return self.encoder(self._encoder_inputs(x, attrs), training=training)

    def call(self, inputs, training=False):
        """Deterministic reconstruction (z = mu) in [0, 1] of a batch dict with pattern and attributes."""
        x, attrs = self.split_batch(inputs)
        mu, _ = self.encoder(self._encoder_inputs(x, attrs), training=training)
        return ops.sigmoid(self.decoder({"z": mu, **attrs}, training=training))

    def generate(self, attributes: dict, z=None, sample: bool = False, seed=None):
        """Patterns in [0, 1] for attributes; see :meth:`ebsd_keras.models.decoders.BaseDecoder.generate`.

        ``attributes`` may hold a per-pattern Bruker pattern centre ``"pc"`` (B, 3) when
        :attr:`takes_pattern_centre`; other decoders raise ``ValueError`` rather than ignore it.
        """
        if attributes.get("pc") is not None and not self.takes_pattern_centre:
            raise ValueError(
                f"the {type(self.decoder).__name__} generates for one fixed detector; it cannot take a pattern centre"
            )
        return self.decoder.generate(attributes, z=z, sample=sample, seed=seed)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "seed": self.seed,
            "config": self.model_config.to_dict(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "critic": keras.saving.serialize_keras_object(self.critic),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        parts = {k: keras.saving.deserialize_keras_object(config.pop(k)) for k in ("encoder", "decoder", "critic")}
        return cls(**parts, config=ModelConfig.from_dict(config.pop("config")), **config)

    # ------------------------------------------------------------------------------------------------------------
    # randomness and distribution helpers
    # ------------------------------------------------------------------------------------------------------------
    def _seed(self):
        tf = _tf()
        seed = ops.cast(ops.mod(self.noise_seed.next(), 2**31 - 1), "int32")
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            # different noise on each replica
            replica = ops.cast(ctx.replica_id_in_sync_group, "int32")
            seed = seed + ops.stack([ops.zeros_like(replica), 1_000_003 * (replica + 1)])
        return seed

    def _normal(self, shape):
        return _tf().random.stateless_normal(shape, seed=self._seed(), dtype="float32")

    def _uniform(self, shape):
        return _tf().random.stateless_uniform(shape, seed=self._seed(), dtype="float32")

    def _gradient_loss(self, loss, optimizer):
        """The loss to differentiate: divided by the replica count (gradients are summed over replicas), then the
        optimizer's loss scale (mixed precision)."""
        n = _num_replicas()
        if n > 1:
            loss = loss / float(n)
        return optimizer.scale_loss(loss)

    def _track(self, values: dict):
        for name, value in values.items():
            if name in self.trackers:
                self.trackers[name].update_state(value)

    # ------------------------------------------------------------------------------------------------------------
    # loss terms (numbers refer to paper-method.md)
    # ------------------------------------------------------------------------------------------------------------
    @property
    def pixels_per_pattern(self) -> int:
        """H x W: the factor between the per-pixel BCE and the per-pattern sum (eq 7's scale, module docstring)."""
        h, w = self.model_config.image_shape
        return int(h) * int(w)

    def _subsampling(self, training) -> bool:
        """Whether this CVAE step decodes only a random pixel subset (training, phase "cvae", a field decoder)."""
        return bool(training) and self.phase == "cvae" and bool(getattr(self.decoder, "subsampling", False))

    def _reconstruction(self, z, x, attrs, training):
        """(logits, targets) of the reconstruction: whole patterns, or a random pixel subset (B, P) when
        :meth:`_subsampling` (P distinct pixels per pattern, drawn from the training noise)."""
        if not self._subsampling(training):
            return self.decoder({"z": z, **attrs}, training=training), x
        batch, n = ops.shape(x)[0], self.pixels_per_pattern
        index = _tf().math.top_k(self._uniform((batch, n)), k=int(self.decoder.train_pixels)).indices
        targets = _field.subsample_pixels(x, index)
        return self.decoder.pixel_logits({"z": z, **attrs}, index, targets), targets

    def _bce_scale(self) -> float:
        return float(self.pixels_per_pattern) if self.bce_reduction == "sum" else 1.0

    def _cvae_terms(self, x, attrs, training, sample=True):
        """Eqs 6-7. ``sample=False`` decodes z = mu (validation's deterministic path) and adds no noise."""
        w = self.loss_weights
        mu, logvar = self.encoder(self._encoder_inputs(x, attrs), training=training)
        z = mu + ops.exp(0.5 * logvar) * self._normal(ops.shape(mu)) if sample else mu  # reparameterisation
        logits, targets = self._reconstruction(z, x, attrs, training)
        kl = ops.mean(kl_divergence(mu, logvar))  # (6), summed over latent dims, batch mean
        coefficient = w.kl * self.kl_schedule(_global_mean(kl))  # adaptive alpha1, no gradient
        bce = ops.mean(bce_from_logits(targets, logits))  # (7), per pixel (reported)
        return {
            "logits": logits,
            "kl": kl,
            "kl_coefficient": coefficient,
            "kl_weighted": coefficient * kl,
            "bce": bce,
            "bce_weighted": w.reconstruction * self._bce_scale() * bce,  # on the objective's scale
            "bce_gap": bce - ops.stop_gradient(ops.mean(optimal_bce(targets))),
        }

    def _prior_samples(self, attrs, training):
        """Patterns G_dec(z, attributes), z ~ N(0, I): the 'fake' patterns of eqs 11-12."""
        batch = ops.shape(attrs["quaternion"])[0]
        z = self._normal((batch, self.model_config.latent_dim))
        return ops.sigmoid(self.decoder({"z": z, **attrs}, training=training))

    def _attribute_terms(self, prefix, attrs, predicted, weights, copies=1):
        """Eqs 8-10 for critic predictions ``predicted`` of ``copies`` stacked batches with attributes ``attrs``."""
        cfg = self.model_config
        q_true = attrs["quaternion"]
        if copies != 1:
            q_true = ops.tile(q_true, (copies, 1))
        l3o = ops.mean(orientation_loss(q_true, predicted["quaternion"]))  # (8), (9)
        kind = "real" if prefix == "critic" else "generated"
        deg = ops.mean(ops.stop_gradient(orientation_error_deg(q_true, predicted["quaternion"])))
        terms = {
            f"{prefix}_orientation": l3o,
            f"{prefix}_orientation_weighted": weights.orientation * l3o,
            f"disorientation_{kind}_deg": deg,
        }
        if cfg.use_voltage:
            v_true = attrs["voltage_kv"]
            if copies != 1:
                v_true = ops.tile(v_true, (copies,))
            v_pred = predicted["voltage_kv"]
            l3v = ops.mean(voltage_mse(v_true, v_pred, scale_kv=cfg.voltage_norm_kv[1]))  # (10)
            terms[f"{prefix}_voltage"] = l3v
            terms[f"{prefix}_voltage_weighted"] = weights.voltage * l3v
            terms[f"voltage_error_{kind}_kv"] = ops.mean(ops.abs(ops.stop_gradient(v_true - v_pred)))
        return terms

    def _critic_terms(self, x, attrs, fake, training):
        """Eq 14: attribute losses on real patterns + alpha4,dis * eq 11 (+ gradient penalty)."""
        w = self.loss_weights
        out = self.critic(ops.concatenate([x, fake], axis=0), training=training)
        real_score, fake_score = ops.split(out["score"], 2, axis=0)
        real_pred = {k: ops.split(v, 2, axis=0)[0] for k, v in out.items() if k != "score"}
        l4 = wasserstein_critic_loss(real_score, fake_score)  # (11)
        terms = {
            "critic_adversarial": l4,
            "critic_adversarial_weighted": w.adversarial_critic * l4,
            "wasserstein": -l4,  # E[D(real)] - E[D(fake)]
            **self._attribute_terms("critic", attrs, real_pred, w),
        }
        total = terms["critic_orientation_weighted"] + terms["critic_adversarial_weighted"]
        if self.model_config.use_voltage:
            total = total + terms["critic_voltage_weighted"]
        if self.lipschitz == "gp":
            gp = ops.mean(
                gradient_penalty(
                    lambda t: self.critic(t, training=training)["score"],
                    x,
                    fake,
                    epsilon=self._uniform((ops.shape(x)[0],)),
                )
            )
            terms["gradient_penalty"] = gp
            terms["gradient_penalty_weighted"] = w.gradient_penalty * gp
            total = total + terms["gradient_penalty_weighted"]
        terms["critic_loss"] = total  # (14)
        return terms

    def _generator_terms(self, x, attrs, training, sample=True):
        """Eq 13: alpha1 L1 + alpha2 L2 + alpha3 (attributes of generated patterns) + alpha4,dec L4,dec."""
        w = self.loss_weights
        terms = self._cvae_terms(x, attrs, training, sample=sample)  # (6), (7)
        reconstructions = ops.sigmoid(terms["logits"])
        prior = self._prior_samples(attrs, training)
        # The critic judges reconstructions and prior samples in one call; its weights are not updated here.
        out = self.critic(ops.concatenate([reconstructions, prior], axis=0), training=False)
        _, prior_score = ops.split(out["score"], 2, axis=0)
        l4 = wasserstein_generator_loss(prior_score)  # (12)
        terms.update(self._attribute_terms("generator", attrs, out, w, copies=2))  # (8)-(10) on generated patterns
        terms["adversarial"] = l4
        terms["adversarial_weighted"] = w.adversarial_generator * l4
        total = terms["kl_weighted"] + terms["bce_weighted"] + terms["generator_orientation_weighted"]
        if self.model_config.use_voltage:
            total = total + terms["generator_voltage_weighted"]
        terms["loss"] = total + terms["adversarial_weighted"]  # (13)
        return terms

    # ------------------------------------------------------------------------------------------------------------
    # updates
    # ------------------------------------------------------------------------------------------------------------
    def _cvae_update(self, x, attrs):
        tf = _tf()
        with tf.GradientTape() as tape:
            terms = self._cvae_terms(x, attrs, training=True)
            terms["loss"] = terms["kl_weighted"] + terms["bce_weighted"]  # (6) + (7)
            loss = self._gradient_loss(terms["loss"], self.encoder_decoder_optimizer)
        variables = self.generator_variables
        self.encoder_decoder_optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return terms

    def _critic_update(self, x, attrs):
        tf = _tf()
        fake = ops.stop_gradient(self._prior_samples(attrs, training=False))  # frozen decoder
        with tf.GradientTape() as tape:
            terms = self._critic_terms(x, attrs, fake, training=True)
            loss = self._gradient_loss(terms["critic_loss"], self.critic_optimizer)
        variables = self.critic.trainable_variables
        self.critic_optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        if self.lipschitz == "clip":
            self.clip_critic_weights()
        return terms

    def _generator_update(self, x, attrs):
        tf = _tf()
        with tf.GradientTape() as tape:
            terms = self._generator_terms(x, attrs, training=True)
            loss = self._gradient_loss(terms["loss"], self.encoder_decoder_optimizer)
        variables = self.generator_variables
        self.encoder_decoder_optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return terms

    def clip_critic_weights(self):
        """WGAN weight clipping of D(x) (shared trunk + score head) to [-clip_value, clip_value].

        The classifier heads are left unclipped (see :attr:`Critic.lipschitz_variables`).
        """
        c = self.clip_value
        for v in self.critic.lipschitz_variables:
            v.assign(ops.clip(v, -c, c))

    @staticmethod
    def _repeat(n, fn):
        """Run ``fn`` n times: in a plain graph as one ``tf.while_loop`` body (the graph then holds one critic step,
        not n, which keeps tracing and XLA compilation short). Under a tf.distribute strategy the loop is unrolled,
        because the optimizer's cross-replica ``merge_call`` is not allowed inside a ``while_loop`` body."""
        tf = _tf()
        if n == 1 or tf.executing_eagerly() or tf.distribute.has_strategy():
            for _ in range(n):
                fn()
            return

        def body(i):
            fn()
            return (i + 1,)

        tf.while_loop(lambda i: i < n, body, (tf.constant(0),))

    def _results(self):
        return {name: self.trackers[name].result() for name in self._metric_names()}

    def train_step(self, data):
        if self.encoder_decoder_optimizer is None:
            raise RuntimeError("compile() the CVAEGAN before fit()")
        x, attrs = self.split_batch(data)
        if self.phase == "cvae":
            self._track(self._cvae_update(x, attrs))
        elif self.phase == "critic":
            terms = self._critic_update(x, attrs)
            self._track({**terms, "loss": terms["critic_loss"]})
        else:  # "gan": n_critic critic updates, then one generator update
            self._repeat(self.n_critic, lambda: self._track(self._critic_update(x, attrs)))
            self._track(self._generator_update(x, attrs))
        return self._results()

    def _sampled_terms(self, x, attrs):
        """Validation's reconstruction from a sampled z (reported beside the deterministic z = mu terms)."""
        if not self.sampled_validation:
            return {}
        terms = self._cvae_terms(x, attrs, training=False, sample=True)
        return {"bce_sampled": terms["bce"], "bce_gap_sampled": terms["bce_gap"]}

    def test_step(self, data):
        # a Python flag read while tracing: the validation logs (and only they) carry the sampled metrics too
        self._validating = True
        try:
            return self._test_step(data)
        finally:
            self._validating = False

    def _test_step(self, data):
        x, attrs = self.split_batch(data)
        if self.phase == "cvae":
            terms = self._cvae_terms(x, attrs, training=False, sample=False)  # z = mu: no sampling noise
            terms["loss"] = terms["kl_weighted"] + terms["bce_weighted"]
            self._track({**terms, **self._sampled_terms(x, attrs)})
        elif self.phase == "critic":
            fake = self._prior_samples(attrs, training=False)
            terms = self._critic_terms(x, attrs, fake, training=False)
            self._track({**terms, "loss": terms["critic_loss"]})
        else:
            self._track(self._critic_terms(x, attrs, self._prior_samples(attrs, training=False), training=False))
            self._track(self._generator_terms(x, attrs, training=False, sample=False))
            self._track(self._sampled_terms(x, attrs))
        return self._results()
