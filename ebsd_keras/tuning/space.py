"""Search-space files (TOML) for the hyper-parameter search: parsing and validation, no TensorFlow import.

A space file has these tables (every one optional except ``[hyperparameters]``; see ``tuning/default.toml``)::

    [search]       preset, max_trials, executions_per_trial, seed
    [objective]    bce_gap_scale (nats/pixel), disorientation_scale_deg (degrees)
    [trial]        the training budget of one trial: batch_size, steps_per_epoch, validation_steps, cvae_epochs,
                   critic_epochs, gan_epochs, n_critic, lipschitz, cache, run_eagerly
    [model]        fixed ModelConfig overrides of the preset (e.g. use_voltage = true)
    [bayesian]     num_initial_points, alpha, beta
    [hyperband]    max_epochs, factor, hyperband_iterations
    [hyperparameters.NAME]
                   type = "int" | "float" (min, max, optional sampling = "linear" | "log" | "reverse_log", step),
                   "choice" (values = [...]) or "fixed" (value = ...)

Every mistake (unknown table, key or hyper-parameter name, wrong type, min > max, log scale with min <= 0, a value
outside what the model accepts) raises :class:`~ebsd_keras.errors.EBSDInputError` naming the file and the dotted
field, before any trial runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from ebsd_keras.errors import EBSDInputError

__all__ = ["HYPERPARAMETERS", "SearchSpace", "load_search_space", "default_values"]

_INF = math.inf

#: Searchable hyper-parameters: name -> (kind "int"/"float", lowest allowed, highest allowed, open low bound, meaning).
HYPERPARAMETERS: dict[str, tuple] = {
    "latent_dim": ("int", 1, 4096, False, "latent size (ModelConfig.latent_dim)"),
    "kl": ("float", 0.0, _INF, False, "alpha1, KL weight (multiplies the adaptive KL coefficient)"),
    "reconstruction": ("float", 0.0, _INF, False, "alpha2, reconstruction (BCE) weight"),
    "orientation": ("float", 0.0, _INF, False, "alpha3,o, orientation (disorientation loss) weight"),
    "voltage": ("float", 0.0, _INF, False, "alpha3,av, voltage weight (voltage models only)"),
    "adversarial_generator": ("float", 0.0, _INF, False, "alpha4,dec, adversarial weight of the generator"),
    "adversarial_critic": ("float", 0.0, _INF, False, "alpha4,dis, adversarial weight of the critic"),
    "gradient_penalty": ("float", 0.0, _INF, False, "WGAN-GP weight (lipschitz = 'gp')"),
    "kl_threshold_low": ("float", 0.0, _INF, False, "lower adaptive-KL threshold, nats (default 5)"),
    "kl_threshold_high": ("float", 0.0, _INF, False, "upper adaptive-KL threshold, nats (default 15)"),
    "learning_rate": ("float", 0.0, 1.0, True, "encoder/decoder Adam learning rate (cvae; the gan phase uses half)"),
    "critic_learning_rate": ("float", 0.0, 1.0, True, "critic Adam learning rate (critic; the gan phase uses half)"),
    "beta_1": ("float", 0.0, 1.0, False, "Adam beta_1 (< 1)"),
    "n_critic": ("int", 1, 100, False, "critic updates per generator update (gan phase)"),
    "batch_size": ("int", 1, 4096, False, "patterns per step"),
}

_SAMPLING = ("linear", "log", "reverse_log")
_HP_KEYS = {
    "int": {"type", "min", "max", "sampling", "step", "default"},
    "float": {"type", "min", "max", "sampling", "step", "default"},
    "choice": {"type", "values", "default"},
    "fixed": {"type", "value"},
}
_TABLES = ("search", "objective", "trial", "model", "bayesian", "hyperband", "hyperparameters")
# key -> (type, lowest allowed); None: any value of that type
_SEARCH = {"preset": (str, None), "max_trials": (int, 1), "executions_per_trial": (int, 1), "seed": (int, 0)}
_OBJECTIVE = {"bce_gap_scale": (float, 0.0), "disorientation_scale_deg": (float, 0.0)}
_TRIAL = {
    "batch_size": (int, 1),
    "steps_per_epoch": (int, 1),
    "validation_steps": (int, 1),
    "cvae_epochs": (int, 1),
    "critic_epochs": (int, 0),
    "gan_epochs": (int, 1),
    "n_critic": (int, 1),
    "lipschitz": (str, None),
    "cache": (bool, None),
    "run_eagerly": (bool, None),
}
_BAYESIAN = {"num_initial_points": (int, 1), "alpha": (float, 0.0), "beta": (float, 0.0)}
_HYPERBAND = {"max_epochs": (int, 1), "factor": (int, 2), "hyperband_iterations": (int, 1)}


@dataclass
class SearchSpace:
    """A validated search-space file.

    Attributes
    ----------
    path
        The file it was read from.
    name
        File stem (the default KerasTuner project name).
    hyperparameters
        ``{name: spec}`` with ``spec["type"]`` in "int", "float", "choice", "fixed" (validated).
    preset, max_trials, executions_per_trial, seed
        ``[search]``: base model preset, trial count (random/bayesian), executions averaged per trial, seed of
        the tuner and of every trial's training (same data order and initial weights in every trial).
    bce_gap_scale, disorientation_scale_deg
        ``[objective]``: the objective is ``gen_bce_gap / bce_gap_scale + gen_disorientation_deg /
        disorientation_scale_deg`` (see tuning/README.md).
    trial
        ``[trial]`` budget (defaults filled in).
    model
        ``[model]`` fixed ModelConfig overrides.
    bayesian, hyperband
        Tuner-specific settings.
    """

    path: str
    name: str
    hyperparameters: dict
    preset: str = "tiny"
    max_trials: int = 10
    executions_per_trial: int = 1
    seed: int = 0
    bce_gap_scale: float = 0.01
    disorientation_scale_deg: float = 10.0
    trial: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    bayesian: dict = field(default_factory=dict)
    hyperband: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Everything that defines the search (not the path): a rerun must find the same dict."""
        keys = ("hyperparameters", "preset", "max_trials", "executions_per_trial", "seed", "bce_gap_scale",
                "disorientation_scale_deg", "trial", "model", "bayesian", "hyperband")  # fmt: skip
        return json.loads(json.dumps({k: getattr(self, k) for k in keys}))


TRIAL_DEFAULTS = {
    "batch_size": 32,
    "steps_per_epoch": 20,
    "validation_steps": 4,
    "cvae_epochs": 2,
    "critic_epochs": 1,
    "gan_epochs": 1,
    "n_critic": 2,
    "lipschitz": None,
    "cache": False,
    "run_eagerly": False,
}


def default_values(preset: str = "tiny", trial: dict | None = None) -> dict:
    """The package's defaults for every searchable hyper-parameter (the baseline of a search).

    Loss weights are the gan-phase defaults, KL thresholds the authors' (5, 15) nats, learning rates the cvae/critic
    phase defaults (1e-4), latent size the preset's; batch size and n_critic come from ``trial``.
    """
    from ebsd_keras.models.presets import get_preset
    from ebsd_keras.training.config import PHASE_DEFAULTS

    trial = {**TRIAL_DEFAULTS, **(trial or {})}
    weights = PHASE_DEFAULTS["gan"]["loss_weights"]
    return {
        "latent_dim": int(get_preset(preset).latent_dim),
        **{k: float(weights[k]) for k in ("kl", "reconstruction", "orientation", "voltage",
                                          "adversarial_generator", "adversarial_critic", "gradient_penalty")},
        "kl_threshold_low": 5.0,
        "kl_threshold_high": 15.0,
        "learning_rate": float(PHASE_DEFAULTS["cvae"]["learning_rate"]),
        "critic_learning_rate": float(PHASE_DEFAULTS["critic"]["critic_learning_rate"]),
        "beta_1": 0.5,
        "n_critic": int(trial["n_critic"]),
        "batch_size": int(trial["batch_size"]),
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------------
def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Checker:
    def __init__(self, path):
        self.path = str(path)

    def fail(self, field_name, msg):
        raise EBSDInputError(msg, self.path, field_name)

    def table(self, data, name, allowed) -> dict:
        value = data.get(name, {})
        if not isinstance(value, dict):
            self.fail(name, f"must be a table, got {type(value).__name__}")
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            self.fail(f"{name}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(allowed))})")
        for key, (kind, low) in allowed.items() if isinstance(allowed, dict) else ():
            if key not in value:
                continue
            v = value[key]
            ok = _is_num(v) if kind is float else (_is_int(v) if kind is int else isinstance(v, kind))
            if not ok:
                self.fail(f"{name}.{key}", f"must be {'a number' if kind is float else kind.__name__}, got {v!r}")
            if low is not None and (v <= low if kind is float else v < low):
                self.fail(f"{name}.{key}", f"must be {'>' if kind is float else '>='} {low}, got {v!r}")
        return dict(value)

    def bounded(self, name, where, v) -> None:
        """``v`` within what the model accepts for hyper-parameter ``name``."""
        kind, low, high, open_low, _ = HYPERPARAMETERS[name]
        if kind == "int" and not _is_int(v):
            self.fail(where, f"must be an integer, got {v!r}")
        if not _is_num(v):
            self.fail(where, f"must be a finite number, got {v!r}")
        too_low = v <= low if open_low else v < low
        too_high = v >= high if name == "beta_1" else v > high
        if too_low or too_high:
            lo = f"{'>' if open_low else '>='} {low}"
            hi = f"{'<' if name == 'beta_1' else '<='} {high}"
            self.fail(where, f"{v!r} is out of range for {name} (must be {lo} and {hi})")

    def hyperparameter(self, name, spec) -> dict:
        where = f"hyperparameters.{name}"
        if name not in HYPERPARAMETERS:
            self.fail(where, f"unknown hyper-parameter (known: {', '.join(HYPERPARAMETERS)})")
        if not isinstance(spec, dict):
            self.fail(where, 'must be a table, e.g. { type = "float", min = 0.1, max = 10, sampling = "log" }')
        kind = spec.get("type")
        if kind not in _HP_KEYS:
            self.fail(f"{where}.type", f"must be one of {', '.join(_HP_KEYS)}, got {kind!r}")
        unknown = sorted(set(spec) - _HP_KEYS[kind])
        if unknown:
            self.fail(
                f"{where}.{unknown[0]}", f"unknown key for type {kind!r} (known: {', '.join(sorted(_HP_KEYS[kind]))})"
            )
        if kind in ("int", "float"):
            if HYPERPARAMETERS[name][0] == "int" and kind == "float":
                self.fail(f"{where}.type", f'{name} is an integer: use type = "int"')
            self._range(name, where, spec, kind)
        elif kind == "choice":
            values = spec.get("values")
            if not isinstance(values, list) or not values:
                self.fail(f"{where}.values", "must be a non-empty list")
            for i, v in enumerate(values):
                self.bounded(name, f"{where}.values[{i}]", v)
            if len(set(values)) != len(values):
                self.fail(f"{where}.values", "has duplicates")
            if "default" in spec and spec["default"] not in values:
                self.fail(f"{where}.default", f"{spec['default']!r} is not one of the values")
        else:
            if "value" not in spec:
                self.fail(f"{where}.value", "required for type 'fixed'")
            self.bounded(name, f"{where}.value", spec["value"])
        return dict(spec)

    def _range(self, name, where, spec, kind) -> None:
        for key in ("min", "max"):
            if key not in spec:
                self.fail(f"{where}.{key}", f"required for type {kind!r}")
            if kind == "int" and not _is_int(spec[key]):
                self.fail(f"{where}.{key}", f"must be an integer, got {spec[key]!r}")
            self.bounded(name, f"{where}.{key}", spec[key])
        lo, hi = spec["min"], spec["max"]
        if lo >= hi:
            self.fail(f"{where}.min", f'min ({lo!r}) must be below max ({hi!r}) (use type = "fixed" for one value)')
        sampling = spec.get("sampling", "linear")
        if sampling not in _SAMPLING:
            self.fail(f"{where}.sampling", f"must be one of {', '.join(_SAMPLING)}, got {sampling!r}")
        if sampling != "linear" and lo <= 0:
            self.fail(f"{where}.min", f"{sampling} sampling needs min > 0, got {lo!r}")
        if "step" in spec:
            step = spec["step"]
            ok = _is_int(step) if kind == "int" else _is_num(step)
            if not ok or step <= 0 or (sampling != "linear" and step <= 1):
                need = "> 1 (a factor, for log sampling)" if sampling != "linear" else "> 0"
                self.fail(f"{where}.step", f"must be a {'integer' if kind == 'int' else 'number'} {need}, got {step!r}")
        if "default" in spec:
            d = spec["default"]
            self.bounded(name, f"{where}.default", d)
            if not lo <= d <= hi:
                self.fail(f"{where}.default", f"{d!r} is outside [{lo!r}, {hi!r}]")


def _bounds(spec) -> tuple[float, float]:
    kind = spec["type"]
    if kind in ("int", "float"):
        return spec["min"], spec["max"]
    values = spec["values"] if kind == "choice" else [spec["value"]]
    return min(values), max(values)


def load_search_space(path) -> SearchSpace:
    """Read and validate a TOML search-space file.

    Parameters
    ----------
    path
        A ``.toml`` file (see the module docstring and ``tuning/default.toml``).

    Returns
    -------
    SearchSpace

    Raises
    ------
    FileNotFoundError
        No such file.
    EBSDInputError
        Invalid TOML or any invalid entry; the message names the file and the dotted field.
    """
    path = Path(path)
    text = path.read_text()
    check = _Checker(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EBSDInputError(f"not valid TOML ({exc})", path) from None
    unknown = sorted(set(data) - set(_TABLES))
    if unknown:
        check.fail(unknown[0], f"unknown table (known: {', '.join(_TABLES)})")
    search = check.table(data, "search", _SEARCH)
    objective = check.table(data, "objective", _OBJECTIVE)
    trial = check.table(data, "trial", _TRIAL)
    bayesian = check.table(data, "bayesian", _BAYESIAN)
    hyperband = check.table(data, "hyperband", _HYPERBAND)
    model = data.get("model", {})
    if not isinstance(model, dict):
        check.fail("model", "must be a table of ModelConfig fields")
    if trial.get("lipschitz") not in (None, "clip", "gp"):
        check.fail("trial.lipschitz", f'must be "clip" or "gp", got {trial["lipschitz"]!r}')
    hps = data.get("hyperparameters")
    if not isinstance(hps, dict) or not hps:
        check.fail("hyperparameters", "required: a table with at least one hyper-parameter")
    hps = {name: check.hyperparameter(name, spec) for name, spec in hps.items()}
    if "kl_threshold_low" in hps or "kl_threshold_high" in hps:
        low = _bounds(hps["kl_threshold_low"])[0] if "kl_threshold_low" in hps else 5.0
        high = _bounds(hps["kl_threshold_high"])[1] if "kl_threshold_high" in hps else 15.0
        if low >= high:
            check.fail(
                "hyperparameters.kl_threshold_low",
                f"can never be below kl_threshold_high (lowest low {low!r} >= highest high {high!r})",
            )

    preset = search.get("preset", "tiny")
    from ebsd_keras.models.presets import PRESETS, get_preset

    if preset not in PRESETS:
        check.fail("search.preset", f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    try:
        get_preset(preset, **model)
    except (TypeError, ValueError) as exc:
        check.fail("model", str(exc))
    if "latent_dim" in model:
        check.fail("model.latent_dim", 'set the latent size in [hyperparameters.latent_dim] (type = "fixed")')
    return SearchSpace(
        path=str(path),
        name=path.stem,
        hyperparameters=hps,
        preset=preset,
        max_trials=search.get("max_trials", 10),
        executions_per_trial=search.get("executions_per_trial", 1),
        seed=search.get("seed", 0),
        bce_gap_scale=float(objective.get("bce_gap_scale", 0.01)),
        disorientation_scale_deg=float(objective.get("disorientation_scale_deg", 10.0)),
        trial={**TRIAL_DEFAULTS, **trial},
        model=model,
        bayesian=bayesian,
        hyperband=hyperband,
    )
