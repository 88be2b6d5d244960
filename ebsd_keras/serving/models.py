"""Trained models: load a model file or folder, the shipped-model registry, model cards and one-line descriptions.

A model is named by a ``.keras`` file or by the folder holding it (``saved_models/ni20-physics``); every command
that takes a model goes through :func:`resolve_model_path`. Shipped models live in ``saved_models/NAME/`` with a
``model_card.json`` (``trained_voltage_kv``, ``source``: what data the model learned from, dynamical or
kinematical, ``version``). :func:`describe_model` says in one line which model serves which voltages and from what
data; :func:`model_identity` is what generated files record instead of a machine's path.

Only numpy is imported with this module; TensorFlow and Keras are imported when a model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from ebsd_keras.errors import EBSDInputError

__all__ = [
    "DEFAULT_MODEL_NAME",
    "SINGLE_VOLTAGE_DEFAULT_KV",
    "models_dir",
    "resolve_model_path",
    "inspect_model_file",
    "trained_voltage_range",
    "shipped_models",
    "default_model_path",
    "load_model",
    "load_generator",
    "data_kind",
    "model_identity",
    "describe_model",
    "file_sha256",
]

logger = logging.getLogger(__name__)

#: The shipped model trained on the embedded EMsoft Ni 20 kV master pattern (first among equal candidates).
DEFAULT_MODEL_NAME = "ni20-physics"


#: Voltage of a single-voltage model whose card does not say otherwise: the embedded EMsoft Ni master pattern's.
SINGLE_VOLTAGE_DEFAULT_KV = 20.0


_MODEL_CARD = "model_card.json"


def models_dir() -> Path:
    """``saved_models/`` of the source tree (or ``$EBSD_KERAS_MODELS``)."""
    env = os.environ.get("EBSD_KERAS_MODELS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "saved_models"


def resolve_model_path(path) -> Path:
    """The ``.keras`` file a model argument names: the file itself, or the one model file of a model folder.

    A model folder is what ``saved_models/`` holds (``model.keras``, the model card, SavedModel versions), so
    ``saved_models/ni20-physics`` and ``saved_models/ni20-physics/model.keras`` name the same model.

    Raises
    ------
    FileNotFoundError
        When nothing exists at ``path``.
    EBSDInputError
        When a folder holds no ``.keras`` file, or several and none is ``model.keras`` (field "model").
    """
    path = Path(path)
    if path.is_dir():
        if (path / "model.keras").is_file():
            return path / "model.keras"
        found = sorted(path.glob("*.keras"))
        if len(found) == 1:
            return found[0]
        what = "no .keras file" if not found else f"{len(found)} .keras files and no model.keras"
        raise EBSDInputError(f"a model folder needs one .keras model file; found {what}", path, "model")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or model folder")
    return path


def inspect_model_file(path) -> dict:
    """Read a ``.keras`` archive's model config without TensorFlow, checking that it is an ebsd_keras CVAEGAN.

    Parameters
    ----------
    path
        A ``.keras`` file or a model folder (:func:`resolve_model_path`).

    Returns
    -------
    dict
        ``model_config`` (the :class:`~ebsd_keras.models.presets.ModelConfig` dict), ``class_name``,
        ``card`` (the folder's ``model_card.json``, or {}).

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    EBSDInputError
        When it is not a Keras archive, or holds some other model (field "model").
    """
    from ebsd_keras.checks import check_keras_file

    path = check_keras_file(resolve_model_path(path), "model")  # not a zip: "not a Keras model file"
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise EBSDInputError(
            f"not a Keras .keras archive with a config.json ({type(exc).__name__}: {exc})", path, "model"
        ) from None
    registered = str(config.get("registered_name") or "")
    if not isinstance(config, dict) or registered != "ebsd_keras>CVAEGAN":
        name = config.get("class_name") if isinstance(config, dict) else type(config).__name__
        raise EBSDInputError(
            f"holds a {name!r} model, not an ebsd_keras CVAEGAN (registered name 'ebsd_keras>CVAEGAN')", path, "model"
        )
    model_config = (config.get("config") or {}).get("config")
    if not isinstance(model_config, dict):
        raise EBSDInputError("the CVAEGAN config has no ModelConfig", path, "config.json/config/config")
    return {"model_config": model_config, "class_name": config.get("class_name"), "card": _read_card(path)}


def _read_card(model_path: Path) -> dict:
    card = Path(model_path).parent / _MODEL_CARD
    if not card.is_file():
        return {}
    try:
        data = json.loads(card.read_text())
    except ValueError as exc:
        raise EBSDInputError(f"not valid JSON: {exc}", card, None) from None
    return data if isinstance(data, dict) else {}


def trained_voltage_range(model_config, card: dict | None = None) -> tuple[float, float]:
    """The voltages (kV) a model was trained for, as (low, high); low == high for a single-voltage model.

    Parameters
    ----------
    model_config
        :class:`~ebsd_keras.models.presets.ModelConfig` or its dict.
    card
        The model card dict; its ``trained_voltage_kv`` ([low, high] or one number) wins when present.

    Returns
    -------
    tuple of float
        From, in order: the card; a physics voltage model's master-pattern knots (it clamps outside them); a CNN
        voltage model's ``voltage_norm_kv`` centre +- scale; 20 kV for single-voltage models (the embedded EMsoft
        Ni master pattern, the package's only single-voltage source).
    """
    cfg = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    recorded = (card or {}).get("trained_voltage_kv")
    if recorded is not None:
        values = [float(v) for v in np.atleast_1d(recorded)]
        return (min(values), max(values))
    if not cfg.get("use_voltage"):
        return (SINGLE_VOLTAGE_DEFAULT_KV, SINGLE_VOLTAGE_DEFAULT_KV)
    if cfg.get("decoder") == "physics":
        # nested configs keep the knots under "physics"; .keras files saved before the nesting hold the flat name
        nested = cfg.get("physics") if isinstance(cfg.get("physics"), dict) else {}
        knots = [float(k) for k in nested.get("voltage_knots_kv", cfg.get("physics_voltage_knots_kv", (20.0,)))]
        return (min(knots), max(knots))
    center, scale = (float(v) for v in cfg.get("voltage_norm_kv", (20.0, 10.0)))
    return (center - scale, center + scale)


def shipped_models() -> list[dict]:
    """The models under ``saved_models/*/model.keras`` (read without TensorFlow).

    Returns
    -------
    list of dict
        ``name``, ``path``, ``use_voltage``, ``voltage_range_kv``, sorted with ``ni20-physics`` first, then
        voltage-aware models, then by name. Folders that do not hold an ebsd_keras model are skipped.
    """
    out = []
    root = models_dir()
    for path in sorted(root.glob("*/model.keras")) if root.is_dir() else []:
        try:
            info = inspect_model_file(path)
        except EBSDInputError as exc:
            logger.debug("skipping %s: %s", path, exc)
            continue
        cfg = info["model_config"]
        out.append(
            {
                "name": path.parent.name,
                "path": path,
                "use_voltage": bool(cfg.get("use_voltage")),
                "voltage_range_kv": trained_voltage_range(cfg, info["card"]),
            }
        )
    return sorted(out, key=lambda m: (m["name"] != DEFAULT_MODEL_NAME, not m["use_voltage"], m["name"]))


def default_model_path(voltage_kv=None) -> Path:
    """The shipped model to use when none is given: the one made for the requested voltages.

    Among the shipped models whose trained voltage range covers every requested voltage, the narrowest range wins:
    a model trained on exactly these voltages (``ni20-physics``: EMsoft dynamical 20 kV patterns) is more faithful
    than a wider one (``ni-voltage-physics``: kinematical 10-30 kV). When none covers them all, the model with the
    widest range is returned (generation then warns about the voltages outside it).

    Parameters
    ----------
    voltage_kv
        Requested voltages, kV (scalar or array); None means 20 kV, the default of :func:`generate`.

    Raises
    ------
    FileNotFoundError
        When no shipped model is found (e.g. an installed wheel without the source tree's ``saved_models/``; set
        ``$EBSD_KERAS_MODELS`` or pass a model path).
    """
    models = shipped_models()
    if not models:
        raise FileNotFoundError(
            f"{models_dir()}: no shipped model (saved_models/*/model.keras); pass a model path or set EBSD_KERAS_MODELS"
        )
    v = np.atleast_1d(np.asarray(SINGLE_VOLTAGE_DEFAULT_KV if voltage_kv is None else voltage_kv, dtype=np.float64))
    lo, hi = float(v.min()), float(v.max())

    def width(m):
        a, b = m["voltage_range_kv"]
        return float(b) - float(a)

    covering = [m for m in models if m["voltage_range_kv"][0] - 1e-6 <= lo and hi <= m["voltage_range_kv"][1] + 1e-6]
    if covering:
        return Path(min(covering, key=width)["path"])  # min() keeps shipped_models' order among ties
    return Path(max(models, key=width)["path"])


def load_generator(model=None):
    """A loaded ``CVAEGAN`` and its description, from a path (safe mode on), a model, or None (shipped default).

    Returns
    -------
    model, info
        ``info``: ``path`` (or None), ``voltage_range_kv``, ``card``.

    Raises
    ------
    FileNotFoundError, EBSDInputError
        See :func:`inspect_model_file`; also when Keras cannot load the archive.
    """
    if model is not None and not isinstance(model, (str, os.PathLike)):
        if not hasattr(model, "generate") or not hasattr(model, "model_config"):
            raise EBSDInputError(f"{type(model).__name__} is not an ebsd_keras CVAEGAN", None, "model")
        identity = {"name": model.model_config.name, "version": None, "sha256": None, "data": "unknown"}
        return model, {
            "path": None,
            "card": {},
            "voltage_range_kv": trained_voltage_range(model.model_config),
            "identity": identity,
        }
    path = default_model_path() if model is None else resolve_model_path(model)
    info = inspect_model_file(path)  # refuses foreign files before Keras deserialises anything
    loaded = load_model(path)  # keras.saving.load_model, safe_mode on
    return loaded, {
        "path": str(path),
        "card": info["card"],
        "voltage_range_kv": trained_voltage_range(loaded.model_config, info["card"]),
        "identity": model_identity(path, info["card"]),
    }


def load_model(path):
    """Load a saved ``CVAEGAN`` (a ``.keras`` file or a model folder) with Keras' safe mode on.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    EBSDInputError
        When it is not a loadable ebsd_keras generative model.
    """
    import keras

    import ebsd_keras.models.cvaegan  # noqa: F401 - registers the serialisable classes

    from ebsd_keras.checks import check_keras_file

    # Keras reports a file that is not a zip as "File not found": say what it is instead
    path = check_keras_file(resolve_model_path(path), "model")
    try:
        model = keras.saving.load_model(path)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad archive
        raise EBSDInputError(f"cannot be loaded as a Keras model: {exc}", path, "model") from None
    if not hasattr(model, "generate") or not hasattr(model, "model_config"):
        raise EBSDInputError(f"{type(model).__name__} is not an ebsd_keras CVAEGAN (no generate())", path, "model")
    return model


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_kind(card: dict) -> str:
    """What the model learned from, from its card: "dynamical", "kinematical", "experimental" or "unknown"."""
    text = f"{card.get('data', '')} {card.get('source', '')}".lower()
    for kind in ("kinematical", "dynamical", "experimental"):
        if kind in text:
            return kind
    return "unknown"


def model_identity(path, card: dict | None = None) -> dict:
    """What a generated file records about its model: name, version, SHA-256 of the file and the data kind.

    The name is the card's ``name`` (else the folder name for ``model.keras``, else the file stem); the version is
    the card's ``version`` (else None). No path is recorded: files must not carry the paths of the machine that
    made them.
    """
    path = resolve_model_path(path)
    card = _read_card(path) if card is None else card
    name = card.get("name") or (path.parent.name if path.name == "model.keras" else path.stem)
    return {"name": str(name), "version": card.get("version"), "sha256": file_sha256(path), "data": data_kind(card)}


def describe_model(info: dict) -> str:
    """One line: which model serves which voltages, and whether its training data were dynamical or kinematical.

    Parameters
    ----------
    info
        The ``info`` of :func:`load_generator` (``identity``, ``voltage_range_kv``).
    """
    ident = info.get("identity") or {}
    lo, hi = (float(v) for v in info["voltage_range_kv"])
    volts = f"{lo:g} kV" if lo == hi else f"{lo:g}-{hi:g} kV"
    version = f" v{ident['version']}" if ident.get("version") is not None else ""
    data = ident.get("data", "unknown")
    data_text = f"trained on {data} patterns" if data != "unknown" else "training data not recorded in a model card"
    return f"model {ident.get('name', '?')}{version} serves {volts}, {data_text}"
