"""Export a trained generator as a TensorFlow SavedModel for TF Serving, and build TF Serving REST request bodies.

Layout (TF Serving's): ``OUT/VERSION/`` holding ``saved_model.pb``, ``variables/`` and ``assets.extra/ebsd_keras.json``
(the model config, trained voltage range, signatures and source), written atomically. ``VERSION`` is a positive
integer, by default one more than the highest already in ``OUT`` (TF Serving serves the highest).

Signatures (inputs float32; N patterns; output ``patterns`` float32 [N, H, W, 1] in [0, 1], 60 x 60 for the shipped
models):

``serving_default``
    ``quaternion`` [N, 4] (q0, q1, q2, q3), ``voltage_kv`` [N] kV. The deterministic path (z = 0).
``with_latent``
    The same plus ``latent`` [N, latent_dim]: TF Serving signatures have no optional inputs, so the latent vector
    (e.g. prior samples z ~ N(0, I)) has its own signature.
``from_euler``
    ``euler`` [N, 3] Bunge (phi1, Phi, phi2) radians, ``voltage_kv`` [N] kV; quaternions by EMsoft's P = +1
    convention, computed in float64 in the graph (as :func:`ebsd_keras.orientation.euler_to_quaternion`).

Input validation happens inside the graph, so TF Serving clients get clear messages: wrong ranks or widths
("quaternion must have shape [N, 4] (rank 2)"), different N, NaN / Inf, zero-length quaternions, voltages outside
1-60 kV (a unit error), Euler angles over 2 pi ("looks like degrees"). Quaternions within 1e-5 of unit length are used
as given; others are normalised. A single-voltage model validates ``voltage_kv`` but ignores it.

REST bodies: :func:`rest_request` builds ``{"instances": [...]}`` (row) or ``{"inputs": {...}}`` (columnar) bodies for
``POST /v1/models/NAME:predict``; :func:`rest_response_patterns` turns the reply into an (N, H, W) array;
:func:`decode_rest_request` is what the server does with a body (for testing clients without a server).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from ebsd_keras.errors import EBSDInputError

__all__ = [
    "SIGNATURES",
    "export_saved_model",
    "next_version",
    "rest_request",
    "decode_rest_request",
    "rest_response_patterns",
]

SIGNATURES = ("serving_default", "with_latent", "from_euler")
METADATA_FILE = "assets.extra/ebsd_keras.json"
_UNIT_TOLERANCE = 1e-5  # ebsd_keras.serving.generate.UNIT_TOLERANCE (not imported: keep this module light)
_TWO_PI_TOL = 2 * math.pi + 1e-4


def next_version(out_dir) -> int:
    """One more than the highest integer-named version folder in ``out_dir`` (1 when there is none)."""
    out = Path(out_dir)
    versions = [int(p.name) for p in out.iterdir() if p.is_dir() and p.name.isdigit()] if out.is_dir() else []
    return max(versions, default=0) + 1


# ----------------------------------------------------------------------------------------------------------------
# The graph
# ----------------------------------------------------------------------------------------------------------------


def _graph_functions(decoder, use_voltage: bool, latent_dim: int, image_shape):
    """The three endpoint functions (plain Python, traced by the export) over ``decoder``."""
    import tensorflow as tf

    h, w = (int(s) for s in image_shape)

    def rank_and_width(x, rank, width, name, shape):
        checks = [tf.debugging.assert_rank(x, rank, message=f"{name} must have shape {shape} (rank {rank})")]
        with tf.control_dependencies(checks):
            if width is not None:
                checks.append(
                    tf.debugging.assert_equal(
                        tf.shape(x)[-1], width, message=f"{name} must have shape {shape}: last dimension {width}"
                    )
                )
        with tf.control_dependencies(checks):
            checks.append(tf.debugging.assert_all_finite(x, f"{name} holds NaN or Inf"))
        with tf.control_dependencies(checks):
            return tf.reshape(x, [-1, width]) if width is not None else tf.reshape(x, [-1])

    def same_n(a, b, names):
        return tf.debugging.assert_equal(
            tf.shape(a)[0], tf.shape(b)[0], message=f"{names[0]} and {names[1]} must have the same N"
        )

    def voltages(v):
        v = rank_and_width(v, 1, None, "voltage_kv", "[N] (kV)")
        ok = tf.reduce_all((v >= 1.0) & (v <= 60.0))
        check = tf.debugging.Assert(ok, ["voltage_kv must be in kV, within 1-60 (e.g. 20 for 20 kV); got", v], 5)
        with tf.control_dependencies([check]):
            return tf.identity(v)

    def unit(q):
        norm = tf.sqrt(tf.reduce_sum(tf.square(q), axis=1, keepdims=True))
        check = tf.debugging.assert_greater(tf.reduce_min(norm), 1e-12, message="zero-length quaternion")
        with tf.control_dependencies([check]):
            return tf.where(tf.abs(norm - 1.0) <= _UNIT_TOLERANCE, q, q / norm)

    def patterns(q, v, z=None):
        attrs = {"quaternion": q, "voltage_kv": v} if use_voltage else {"quaternion": q}
        p = decoder.generate(attrs, z=z)
        return {"patterns": tf.reshape(tf.clip_by_value(tf.cast(p, tf.float32), 0.0, 1.0), [-1, h, w, 1])}

    def serving_default(quaternion, voltage_kv):
        q = rank_and_width(quaternion, 2, 4, "quaternion", "[N, 4]")
        v = voltages(voltage_kv)
        with tf.control_dependencies([same_n(q, v, ("quaternion", "voltage_kv"))]):
            return patterns(unit(q), v)

    def with_latent(quaternion, voltage_kv, latent):
        q = rank_and_width(quaternion, 2, 4, "quaternion", "[N, 4]")
        v = voltages(voltage_kv)
        z = rank_and_width(latent, 2, latent_dim, "latent", f"[N, {latent_dim}]")
        checks = [same_n(q, v, ("quaternion", "voltage_kv")), same_n(q, z, ("quaternion", "latent"))]
        with tf.control_dependencies(checks):
            return patterns(unit(q), v, z)

    def from_euler(euler, voltage_kv):
        e = rank_and_width(euler, 2, 3, "euler", "[N, 3] (radians)")
        small = tf.debugging.assert_less_equal(
            tf.reduce_max(tf.abs(e)),
            tf.constant(_TWO_PI_TOL, tf.float32),
            message="Euler angles exceed 2*pi: these look like degrees, but radians are expected",
        )
        v = voltages(voltage_kv)
        with tf.control_dependencies([small, same_n(e, v, ("euler", "voltage_kv"))]):
            e64 = tf.cast(e, tf.float64)  # float64 like the numpy conversion, so both give the same float32
        phi1, big_phi, phi2 = e64[:, 0], e64[:, 1], e64[:, 2]
        sigma, delta = 0.5 * (phi1 + phi2), 0.5 * (phi1 - phi2)
        c, s = tf.cos(0.5 * big_phi), tf.sin(0.5 * big_phi)
        q = tf.stack([c * tf.cos(sigma), -s * tf.cos(delta), -s * tf.sin(delta), -c * tf.sin(sigma)], axis=1)
        q = tf.where(q[:, :1] < 0, -q, q)
        return patterns(tf.cast(q, tf.float32), v)

    spec = lambda name: tf.TensorSpec(shape=None, dtype=tf.float32, name=name)  # noqa: E731 - rank checked in-graph
    return {
        "serving_default": (serving_default, [spec("quaternion"), spec("voltage_kv")]),
        "with_latent": (with_latent, [spec("quaternion"), spec("voltage_kv"), spec("latent")]),
        "from_euler": (from_euler, [spec("euler"), spec("voltage_kv")]),
    }


def export_saved_model(
    model, out_dir, version: int | None = None, overwrite: bool = False, detector=None, contrast: str = "model"
) -> Path:
    """Export a model's decoder as a SavedModel in TF Serving's ``OUT/VERSION/`` layout, atomically.

    Parameters
    ----------
    model
        A ``CVAEGAN`` or a ``.keras`` path (loaded with safe mode on; foreign files are refused).
    out_dir
        The model's serving folder (``saved_models/NAME``); ``VERSION/`` is created inside it.
    version
        Positive integer; default :func:`next_version`.
    overwrite
        Replace an existing ``OUT/VERSION`` (only once the new one is complete).
    detector, contrast
        Export for another detector (projecting models only; see :func:`ebsd_keras.serving.detector.for_detector`):
        a :class:`~ebsd_keras.serving.detector.DetectorSettings`, DetectorGeometry, kikuchipy ``EBSDDetector`` or a
        pattern file. A SavedModel serves exactly one detector; ``assets.extra/ebsd_keras.json`` records it under
        ``detector`` and in the signatures' description.

    Returns
    -------
    pathlib.Path
        ``OUT/VERSION``.

    Raises
    ------
    EBSDInputError
        A model file that is not an ebsd_keras model; a bad version.
    FileExistsError
        ``OUT/VERSION`` exists and ``overwrite`` is False.
    """
    import keras
    import tensorflow as tf

    from ebsd_keras import __version__
    from ebsd_keras._atomic import atomic_dir
    from ebsd_keras.serving.models import file_sha256, load_generator

    if version is not None and (isinstance(version, bool) or int(version) != version or version < 1):
        raise EBSDInputError(f"version must be a positive integer, got {version!r}", out_dir, "version")
    target = Path(out_dir) / str(int(version) if version is not None else next_version(out_dir))
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists (use --overwrite to replace it)")
    loaded, info = load_generator(model)
    from ebsd_keras.serving.detector import for_detector, model_geometry

    loaded = for_detector(loaded, detector, contrast=contrast, path=info["path"])
    cfg = loaded.model_config
    geometry = model_geometry(cfg)
    decoder = loaded.decoder
    archive = keras.export.ExportArchive()
    archive.track(decoder)
    functions = _graph_functions(decoder, bool(cfg.use_voltage), int(cfg.latent_dim), cfg.image_shape)
    for name, (fn, signature) in functions.items():
        archive.add_endpoint(name, fn, input_signature=signature)
    meta = {
        "ebsd_keras_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "source_model": info["path"],
        "source_sha256": file_sha256(info["path"]) if info["path"] else None,
        "detector": {
            **geometry.to_dict(),
            "note": "this SavedModel generates for this one detector (shape, pattern centre, tilts) only",
            "retargeted": hasattr(loaded, "source_config"),
        },
        "contrast": {
            "kind": cfg.physics_contrast if cfg.decoder in ("physics", "field") else "as learned",
            **(
                {"clip_limit": float(cfg.physics_clahe_clip_limit), "tiles": list(cfg.physics_clahe_tiles)}
                if cfg.decoder in ("physics", "field") and cfg.physics_contrast == "clahe"
                else {}
            ),
        },
        "model_config": cfg.to_dict(),
        "use_voltage": bool(cfg.use_voltage),
        "trained_voltage_kv": list(info["voltage_range_kv"]),
        "image_shape": list(cfg.image_shape),
        "latent_dim": int(cfg.latent_dim),
        "signatures": {
            "serving_default": {"inputs": {"quaternion": "[N, 4]", "voltage_kv": "[N] kV"}},
            "with_latent": {"inputs": {"quaternion": "[N, 4]", "voltage_kv": "[N] kV", "latent": "[N, latent_dim]"}},
            "from_euler": {"inputs": {"euler": "[N, 3] Bunge radians", "voltage_kv": "[N] kV"}},
            "outputs": {
                "patterns": f"[N, {cfg.image_shape[0]}, {cfg.image_shape[1]}, 1] float32 in [0, 1], for the one "
                f"detector recorded under 'detector' (PC {', '.join(f'{p:.4g}' for p in geometry.pc)}, tilt "
                f"{geometry.tilt_deg:g} deg, sample tilt {geometry.sample_tilt_deg:g} deg)"
            },
        },
    }
    with atomic_dir(target, overwrite=overwrite) as tmp:
        tmp.rmdir()  # the SavedModel writer creates the directory itself
        tf_logger = logging.getLogger("tensorflow")
        level = tf_logger.level
        tf_logger.setLevel(logging.WARNING)  # "Assets written to <temporary name>" would only confuse
        try:
            archive.write_out(str(tmp), verbose=False)
        finally:
            tf_logger.setLevel(level)
        extra = tmp / METADATA_FILE
        extra.parent.mkdir(parents=True, exist_ok=True)
        extra.write_text(json.dumps(meta, indent=2))
    return target


# ----------------------------------------------------------------------------------------------------------------
# TF Serving REST bodies
# ----------------------------------------------------------------------------------------------------------------


def _rows(x, width, name) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    a = a[None] if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[1] != width or len(a) == 0:
        raise EBSDInputError(f"expected (N, {width}) values, got shape {np.shape(x)}", None, name)
    if not np.isfinite(a).all():
        raise EBSDInputError("NaN or Inf", None, name)
    return a


def rest_request(
    *,
    quaternion=None,
    euler=None,
    voltage_kv=20.0,
    latent=None,
    format: str = "instances",  # noqa: A002 - TF Serving's own word
    signature_name: str | None = None,
) -> dict:
    """A TF Serving REST predict body (``POST /v1/models/NAME[/versions/V]:predict``), JSON-ready.

    Parameters
    ----------
    quaternion, euler
        (N, 4) quaternions or (N, 3) Bunge Euler angles in radians (exactly one).
    voltage_kv
        kV: one value for all N, or (N,).
    latent
        (N, latent_dim) latent vectors (signature ``with_latent``; only with ``quaternion``).
    format
        "instances" (row format: one dict per pattern) or "inputs" (columnar: one list per input).
    signature_name
        Default: ``from_euler`` for Euler angles, ``with_latent`` with a latent, else none (``serving_default``).

    Returns
    -------
    dict
        ``{"signature_name"?: ..., "instances": [{"quaternion": [...], "voltage_kv": kV}, ...]}`` or
        ``{"signature_name"?: ..., "inputs": {"quaternion": [[...], ...], "voltage_kv": [...]}}``.
    """
    if (quaternion is None) == (euler is None):
        raise EBSDInputError("give exactly one of quaternion or euler", None, "orientations")
    if format not in ("instances", "inputs"):
        raise EBSDInputError(f"format must be 'instances' or 'inputs', got {format!r}", None, "format")
    name, values = ("quaternion", _rows(quaternion, 4, "quaternion")) if euler is None else ("euler", None)
    if euler is not None:
        if latent is not None:
            raise EBSDInputError("latent vectors go with quaternions (signature with_latent)", None, "latent")
        values = _rows(euler, 3, "euler")
    n = len(values)
    v = np.asarray(voltage_kv, dtype=np.float32).reshape(-1)
    if v.size not in (1, n):
        raise EBSDInputError(f"{v.size} voltages for {n} orientations", None, "voltage_kv")
    columns = {name: values, "voltage_kv": np.broadcast_to(v, (n,))}
    if latent is not None:
        z = np.asarray(latent, dtype=np.float32)
        z = z[None] if z.ndim == 1 else z
        if z.ndim != 2 or len(z) != n:
            raise EBSDInputError(f"expected (N={n}, latent_dim) latent vectors, got {np.shape(latent)}", None, "latent")
        columns["latent"] = z
    if signature_name is None:
        signature_name = "from_euler" if euler is not None else ("with_latent" if latent is not None else None)
    body = {} if signature_name in (None, "serving_default") else {"signature_name": signature_name}
    as_list = {k: np.asarray(c, dtype=np.float64).tolist() for k, c in columns.items()}  # exact float32 values
    if format == "inputs":
        body["inputs"] = as_list
    else:
        body["instances"] = [{k: as_list[k][i] for k in as_list} for i in range(n)]
    return body


def decode_rest_request(body) -> tuple[str, dict]:
    """What TF Serving does with a REST predict body: (signature name, {input: float32 array}).

    Parameters
    ----------
    body
        The dict or its JSON text.
    """
    if isinstance(body, (str, bytes)):
        body = json.loads(body)
    name = body.get("signature_name", "serving_default")
    if ("instances" in body) == ("inputs" in body):
        raise EBSDInputError("a body holds exactly one of 'instances' or 'inputs'", None, "body")
    if "inputs" in body:
        return name, {k: np.asarray(v, dtype=np.float32) for k, v in body["inputs"].items()}
    rows = body["instances"]
    keys = set(rows[0])
    if any(set(r) != keys for r in rows):
        raise EBSDInputError("every instance needs the same named inputs", None, "instances")
    return name, {k: np.asarray([r[k] for r in rows], dtype=np.float32) for k in keys}


def rest_response_patterns(response) -> np.ndarray:
    """Patterns (N, H, W) float32 from a TF Serving REST reply (``predictions`` or ``outputs``, dict or JSON text)."""
    if isinstance(response, (str, bytes)):
        response = json.loads(response)
    if "error" in response:
        raise EBSDInputError(str(response["error"]), None, "response")
    if "predictions" in response:
        out = response["predictions"]
        out = [r["patterns"] if isinstance(r, dict) else r for r in out]
    elif "outputs" in response:
        out = response["outputs"]
        out = out["patterns"] if isinstance(out, dict) else out
    else:
        raise EBSDInputError("neither 'predictions' nor 'outputs' in the reply", None, "response")
    a = np.asarray(out, dtype=np.float32)
    return a[..., 0] if a.ndim == 4 else a
