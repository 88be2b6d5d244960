"""One place for everything a training run needs: :class:`TrainConfig`, its JSON round trip and per-phase defaults.

Per-phase defaults (from paper-method.md "Training phases" and reference-implementation.md)
--------------------------------------------------------------------------------------------
Fields left at ``None`` take the value of their phase in :data:`PHASE_DEFAULTS`; :meth:`TrainConfig.resolved`
fills them in, and ``config.json`` of a run records the resolved values.

``"cvae"`` (pretraining)
    Encoder + decoder on KL (adaptive coefficient) + BCE. Attribute and adversarial weights are 0 (the CVAE phase
    does not even compute them; the zeros make the record explicit). Adam lr 1e-4 for both optimizers.
``"critic"`` (classifier/critic pretraining)
    The critic + classifier trained as an orientation(+voltage)-indexing CNN on real patterns, its critic head against
    prior samples of the frozen decoder: orientation 1e4, voltage 100, adversarial_critic 1 (the
    :class:`~ebsd_keras.losses.LossWeights` defaults); generator-side weights 0 (unused in this phase). lr 1e-4.
``"gan"`` (joint fine-tuning)
    All terms active (the ``LossWeights`` defaults). The authors halved the learning rate from the CVAE to the GAN
    phase (8e-6 -> 4e-6 for their 1.24 B model); we do the same from our compact-model rate: 5e-5 for both.

Shared defaults: Adam beta_1 = 0.5 (the authors' and DCGAN's choice), weight clipping at c = 0.01 (the paper's
WGAN), n_critic = 5 (WGAN), batch 64, the authors' step-function KL schedule (:class:`~ebsd_keras.losses.KLSchedule`).
The authors' batch sizes (16 CVAE, 8 GAN) were dictated by a 5 GB model on a 32 GB GPU, not by the method.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

__all__ = [
    "TrainConfig",
    "PHASE_DEFAULTS",
    "MIXED_PRECISION_POLICIES",
    "load_train_config",
]

PHASES = ("cvae", "critic", "gan")
MIXED_PRECISION_POLICIES = ("mixed_float16", "mixed_bfloat16")
_LIPSCHITZ = ("clip", "gp")

#: Loss weights / learning rates each phase starts from (user-given ``loss_weights`` entries override single keys).
PHASE_DEFAULTS: dict[str, dict] = {
    "cvae": {
        "learning_rate": 1e-4,
        "critic_learning_rate": 1e-4,
        "loss_weights": {
            "kl": 1.0,
            "reconstruction": 1.0,
            "orientation": 0.0,
            "voltage": 0.0,
            "adversarial_generator": 0.0,
            "adversarial_critic": 0.0,
            "gradient_penalty": 0.0,
        },
    },
    "critic": {
        "learning_rate": 1e-4,
        "critic_learning_rate": 1e-4,
        "loss_weights": {
            "kl": 0.0,
            "reconstruction": 0.0,
            "orientation": 1e4,
            "voltage": 100.0,
            "adversarial_generator": 0.0,
            "adversarial_critic": 1.0,
            "gradient_penalty": 10.0,
        },
    },
    "gan": {
        "learning_rate": 5e-5,
        "critic_learning_rate": 5e-5,
        "loss_weights": {
            "kl": 1.0,
            "reconstruction": 1.0,
            "orientation": 1e4,
            "voltage": 100.0,
            "adversarial_generator": 1.0,
            "adversarial_critic": 1.0,
            "gradient_penalty": 10.0,
        },
    },
}

#: Validation metric that selects ``best.keras`` (lower is better), per phase.
BEST_METRIC = {"cvae": "bce_gap", "critic": "disorientation_real_deg", "gan": "bce_gap"}

#: Fields that may change between an interrupted run and its resumption (everything else must match).
RESUME_MUTABLE = ("epochs", "resume", "output_dir", "data_dir", "image_every_steps", "tensorboard_update_freq")


@dataclass
class TrainConfig:
    """Everything one training run needs.

    Attributes
    ----------
    data_dir
        TFRecord dataset directory (``ebsd-keras convert``) with a "train" split and, optionally, "val".
    output_dir
        Where the run writes model.keras, best.keras, config.json, history.csv, summary.json, logs/ and backup/.
    phase
        "cvae", "critic" or "gan" (paper-method.md, "Training phases").
    preset, model
        Model preset name and :class:`~ebsd_keras.models.presets.ModelConfig` field overrides (a new model only;
        a model loaded from ``init_from`` keeps its own configuration). Default "physics": the physics-informed
        decoder beat the CNN presets on every evaluation metric (README); its detector and contrast fields are taken
        from the dataset's metadata unless given here (:func:`~ebsd_keras.training.phases.physics_data_overrides`).
    init_from
        Path of a previous phase's ``model.keras`` to start from (critic from cvae, gan from critic). None: a new
        model.
    batch_size
        Patterns per training step.
    epochs
        Total epochs of the run (a resumed run continues up to this count).
    steps_per_epoch
        Training steps per epoch; None: one pass over the (filtered) training split, ``size // batch_size``.
    validation_steps
        Validation batches per epoch; None: the whole "val" split.
    learning_rate, critic_learning_rate
        Adam learning rates of the encoder/decoder and of the critic; None: the phase default.
    beta_1
        Adam beta_1 (0.5, the authors' choice).
    loss_weights
        :class:`~ebsd_keras.losses.LossWeights` entries overriding the phase defaults.
    kl_schedule
        :class:`~ebsd_keras.losses.KLSchedule` config entries (``base``, ``thresholds``, ``multipliers``, ``mode``);
        empty: the authors' schedule.
    bce_reduction
        "sum" (default): the reconstruction term is the BCE summed over each pattern's pixels, the authors' scale,
        on which the KL thresholds (15 / 5 nats), the KL coefficients 0.8 x {1.5, 0.1, 0.01} and the loss weights
        (alpha3,o = 1e4, alpha4 = 1) were tuned; "mean": per pixel (runs made before issue 14; config files without
        this field get "sum").
    sampled_validation
        Validate the reconstruction from a sampled z as well (``val_bce_sampled``); ``best.keras`` is chosen on the
        deterministic path (z = mu) either way. False halves a slow decoder's validation time.
    lipschitz, clip_value, n_critic
        Critic Lipschitz constraint ("clip" or "gp"), clipping bound c, critic updates per generator update (gan).
        ``lipschitz=None`` (default) resolves to "clip" for a "paper"-preset model (a new one, or the ``init_from``
        model's recorded preset, :meth:`model_preset`) (the paper's WGAN) and "gp" for the
        others: the critic's classifier shares the trunk that clipping constrains, and with clipping the trunk's
        features shrink until the classifier learns little (measured: 46 deg validation disorientation with
        clipping vs 36 deg with GP after the same short critic phase).
    seed
        Seeds weights, data order and training noise; None draws one (recorded in config.json).
    deterministic
        Call ``tf.config.experimental.enable_op_determinism()`` (bit-identical reruns and resumes; slower on GPUs).
    jit_compile
        XLA: True, False or "auto" (default; Keras: XLA on a GPU, not on the CPU and not under tf.distribute). On
        the CPU XLA made every phase slower (README "Benchmarks"), hence no XLA there by default.
    mixed_precision
        False (default), True (= "mixed_float16", with a loss-scale optimizer whose initial scale fits the phase's
        loss weights) or a policy name in :data:`MIXED_PRECISION_POLICIES`. For GPUs with 16-bit tensor cores; on
        the CPU both policies were slower than float32 (README "Benchmarks"). Refused for the physics decoder.
    image_every_steps
        Write real / reconstructed / prior-sample pattern grids to TensorBoard every this many steps (0: off).
    tensorboard_update_freq
        "epoch" or a step count for TensorBoard scalars.
    voltages, exclude_voltages
        Keep only patterns at these voltages (kV) / drop those at these voltages (training and validation).
    cache
        Cache the training split's serialised records in memory after the first pass.
    resume
        Continue an interrupted run found in ``output_dir`` (its backup/); False starts over, replacing its outputs.
    distributed
        Multi-worker data-parallel training (``tf.distribute.MultiWorkerMirroredStrategy`` configured by the
        ``TF_CONFIG`` environment variable, :mod:`ebsd_keras.training.distribute`); ``batch_size`` is then the
        global batch, split evenly over all replicas.
    """

    data_dir: str = ""
    output_dir: str = ""
    phase: str = "cvae"
    preset: str = "physics"
    model: dict = field(default_factory=dict)
    init_from: str | None = None
    batch_size: int = 64
    epochs: int = 10
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    learning_rate: float | None = None
    critic_learning_rate: float | None = None
    beta_1: float = 0.5
    loss_weights: dict = field(default_factory=dict)
    kl_schedule: dict = field(default_factory=dict)
    lipschitz: str | None = None
    clip_value: float = 0.01
    n_critic: int = 5
    seed: int | None = 0
    deterministic: bool = True
    jit_compile: bool | str = "auto"
    mixed_precision: bool | str = False
    image_every_steps: int = 500
    tensorboard_update_freq: int | str = "epoch"
    voltages: list | None = None
    exclude_voltages: list | None = None
    cache: bool = False
    bce_reduction: str = "sum"
    sampled_validation: bool = True
    resume: bool = True
    distributed: bool = False

    # ------------------------------------------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Check types and ranges; raise ``ValueError`` naming the field. Returns self."""

        def need(cond, name, msg):
            if not cond:
                raise ValueError(f"TrainConfig field {name!r}: {msg}")

        need(bool(self.data_dir), "data_dir", "required (a TFRecord dataset directory)")
        need(bool(self.output_dir), "output_dir", "required")
        need(self.phase in PHASES, "phase", f"must be one of {PHASES}, got {self.phase!r}")
        need(isinstance(self.model, dict), "model", "must be a dict of ModelConfig overrides")
        need(_is_int(self.batch_size) and self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        need(_is_int(self.epochs) and self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        for name in ("steps_per_epoch", "validation_steps"):
            v = getattr(self, name)
            need(v is None or (_is_int(v) and v >= 1), name, f"must be None or >= 1, got {v}")
        for name in ("learning_rate", "critic_learning_rate"):
            v = getattr(self, name)
            need(v is None or (_is_num(v) and v > 0), name, f"must be None or positive, got {v}")
        need(_is_num(self.beta_1) and 0 <= self.beta_1 < 1, "beta_1", f"must be in [0, 1), got {self.beta_1}")
        need(isinstance(self.loss_weights, dict), "loss_weights", "must be a dict")
        need(isinstance(self.kl_schedule, dict), "kl_schedule", "must be a dict")
        need(
            self.lipschitz is None or self.lipschitz in _LIPSCHITZ,
            "lipschitz",
            f"must be one of {_LIPSCHITZ}, got {self.lipschitz!r}",
        )
        need(_is_num(self.clip_value) and self.clip_value > 0, "clip_value", f"must be positive, got {self.clip_value}")
        need(_is_int(self.n_critic) and self.n_critic >= 1, "n_critic", f"must be >= 1, got {self.n_critic}")
        need(self.seed is None or _is_int(self.seed), "seed", f"must be an int or None, got {self.seed!r}")
        need(
            self.jit_compile in (True, False, "auto"), "jit_compile", f"True, False or 'auto', got {self.jit_compile!r}"
        )
        need(
            self.mixed_precision in (True, False, *MIXED_PRECISION_POLICIES),
            "mixed_precision",
            f"True, False or one of {MIXED_PRECISION_POLICIES}, got {self.mixed_precision!r}",
        )
        need(self.bce_reduction in ("sum", "mean"), "bce_reduction", f"'sum' or 'mean', got {self.bce_reduction!r}")
        need(isinstance(self.sampled_validation, bool), "sampled_validation", "must be true or false")
        need(isinstance(self.distributed, bool), "distributed", f"must be true or false, got {self.distributed!r}")
        need(_is_int(self.image_every_steps) and self.image_every_steps >= 0, "image_every_steps", "must be >= 0")
        f = self.tensorboard_update_freq
        need(f in ("epoch", "batch") or (_is_int(f) and f >= 1), "tensorboard_update_freq", "'epoch' or steps >= 1")
        for name in ("voltages", "exclude_voltages"):
            v = getattr(self, name)
            need(v is None or (isinstance(v, list) and all(_is_num(x) for x in v)), name, "must be a list of kV")
        # Sub-configs: unknown names must fail here, not after minutes of data loading.
        from ebsd_keras.losses import KLSchedule, LossWeights

        LossWeights.from_dict(self.resolved_loss_weights())
        KLSchedule.from_config(self.kl_schedule)
        from ebsd_keras.models.presets import get_preset

        try:
            model_config = get_preset(self.preset, **self.model)
        except (TypeError, ValueError) as exc:  # unknown preset, unknown or invalid ModelConfig field
            raise ValueError(f"TrainConfig field 'preset'/'model': {exc}") from None
        # The physics decoder's gnomonic projection samples its master pattern at coordinates up to ~400 px: in 16-bit
        # floats they are off by up to a pixel and its gradients point elsewhere (cosine 0.35-0.42 with float32's in
        # the gan phase, -0.06 in the cvae phase under mixed_bfloat16; benchmarks/precision_check.py).
        need(
            not (self.mixed_precision and getattr(model_config, "decoder", None) == "physics"),
            "mixed_precision",
            "not supported with the physics decoder (its projection needs float32); train it in float32",
        )
        return self

    # ------------------------------------------------------------------------------------------------------------
    @property
    def mixed_precision_policy(self) -> str | None:
        """The Keras dtype policy name, or None for float32."""
        if self.mixed_precision is True:
            return "mixed_float16"
        return self.mixed_precision or None

    def resolved_loss_weights(self) -> dict:
        """Phase default loss weights updated with ``loss_weights``."""
        return {**PHASE_DEFAULTS[self.phase]["loss_weights"], **self.loss_weights}

    def resolved(self) -> TrainConfig:
        """A copy with the phase defaults filled in (learning rates, loss weights) and voltages as float lists."""
        d = PHASE_DEFAULTS[self.phase]
        return dataclasses.replace(
            self,
            learning_rate=d["learning_rate"] if self.learning_rate is None else float(self.learning_rate),
            critic_learning_rate=(
                d["critic_learning_rate"] if self.critic_learning_rate is None else float(self.critic_learning_rate)
            ),
            loss_weights={k: float(v) for k, v in self.resolved_loss_weights().items()},
            lipschitz=self.lipschitz or ("clip" if self.model_preset() == "paper" else "gp"),
            voltages=None if self.voltages is None else [float(v) for v in self.voltages],
            exclude_voltages=None if self.exclude_voltages is None else [float(v) for v in self.exclude_voltages],
        )

    def model_preset(self) -> str:
        """The preset of the model this run trains: ``preset`` for a new model, else the name recorded in the
        ``init_from`` file's model config (read from the ``.keras`` archive's config.json, without TensorFlow), so
        that defaults tied to the preset (``lipschitz``) follow the model that is actually trained. An unreadable
        ``init_from`` gives ``preset`` (loading it fails later with a clear error)."""
        if self.init_from is None:
            return self.preset
        import zipfile

        from ebsd_keras.training import fs

        try:
            with fs.local_copy(str(self.init_from), ".keras") as local, zipfile.ZipFile(local) as archive:
                saved = json.loads(archive.read("config.json"))
            return str(saved["config"]["config"]["name"])
        except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):
            return self.preset

    def replace(self, **changes) -> TrainConfig:
        """A copy with some fields changed; ``None`` values are ignored (an unset CLI flag keeps the file's value).

        Raises
        ------
        ValueError
            For an unknown field name.
        """
        _check_keys(changes, "override")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    # ------------------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-friendly dict; inverse of :meth:`from_dict`."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Build from a dict; an unknown key raises ``ValueError`` naming it (a typo must not pass silently)."""
        if not isinstance(data, dict):
            raise ValueError(f"a training config must be a JSON object, got {type(data).__name__}")
        _check_keys(data, "key")
        return cls(**data)

    def save(self, path) -> None:
        """Write as indented JSON, atomically (``path`` local or a ``tf.io.gfile`` URL)."""
        from ebsd_keras.training import fs

        fs.write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_keys(data: dict, what: str) -> None:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown training config {what}(s): {', '.join(repr(k) for k in unknown)} "
            f"(known: {', '.join(sorted(names))})"
        )


def load_train_config(path, **overrides) -> TrainConfig:
    """Read a JSON training config file and apply ``overrides`` (e.g. CLI flags; ``None`` values are ignored).

    Parameters
    ----------
    path
        JSON file with :class:`TrainConfig` fields (any subset).
    **overrides
        Field values that take precedence over the file's.

    Raises
    ------
    EBSDInputError
        Unreadable JSON, or an unknown key (field = the key).
    FileNotFoundError
        ``path`` does not exist.
    """
    from ebsd_keras.errors import EBSDInputError
    from ebsd_keras.training import fs

    if not fs.exists(path):
        raise FileNotFoundError(f"{path}: no such training config file")
    text = fs.read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EBSDInputError(f"not valid JSON ({exc})", path) from exc
    if not isinstance(data, dict):
        raise EBSDInputError("must hold a JSON object of TrainConfig fields", path)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise EBSDInputError(f"unknown training config key(s) {unknown}", path, unknown[0])
    return TrainConfig.from_dict(data).replace(**overrides)
