"""Refine the orientations (and pattern centres) of a pattern file through a trained generator: the workflow of
``ebsd-keras refine``.

:func:`refine_patterns` loads the patterns (:func:`~ebsd_keras.io.testset.load_test_set`) and the model (a file or
a model folder), starts from dictionary indexing (or given angles), refines by
:func:`~ebsd_keras.indexing.refinement.refine_gradient` and writes the result atomically (:func:`write_refined`:
an EMsoft-layout ``.h5`` with a ``refinement`` group, or an EMsoft 'eu' angle file). The file records the model's
name, version and SHA-256 and the pattern file's name, never a path of the machine that made it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ebsd_keras.errors import EBSDInputError

__all__ = [
    "RefineRequest",
    "RefineOutcome",
    "refine_patterns",
    "read_start",
    "write_refined",
    "model_at_patterns_detector",
]


@dataclass(frozen=True)
class RefineRequest:
    """What ``ebsd-keras refine`` asks for (see its ``--help`` for each option).

    Attributes
    ----------
    patterns, model, output
        Pattern file (EMsoft-layout .h5), model (.keras file or model folder), output (.h5, else an 'eu' file).
    start
        Start orientations (EMsoft angle file or .h5); None: dictionary indexing at ``dictionary_resolution``
        degrees against ``master_pattern`` (default: the provenance's).
    n, seed
        A seeded random subset of n patterns (None: all).
    kv
        Accelerating voltage, kV (None: the file's median).
    pc, refine_pc, pc_only
        Start pattern centre (Bruker); refine it per pattern; keep the orientations (calibration only).
    method, iterations, hessian_every, trust_region_deg, batch_size, clahe_gradient
        Passed to :class:`~ebsd_keras.indexing.refinement.GradientSettings` and
        :func:`~ebsd_keras.indexing.generator.model_refinement_generator`.
    overwrite, progress
        Replace an existing output; progress bars.
    detector
        :class:`~ebsd_keras.serving.detector.DetectorSettings` to re-aim a projecting model (physics, field) at
        another detector; None: the model's own, or -- when the patterns are of another shape -- the pattern
        file's detector (its provenance, else what kikuchipy reads).
    """

    patterns: Path
    model: Path
    output: Path
    start: Path | None = None
    n: int | None = None
    seed: int = 0
    kv: float | None = None
    pc: tuple | None = None
    refine_pc: bool = False
    pc_only: bool = False
    method: Literal["gauss-newton-fd", "gauss-newton", "adam"] = "gauss-newton-fd"
    iterations: int | None = None
    hessian_every: int | None = None
    trust_region_deg: float = 2.0
    batch_size: int | None = None
    dictionary_resolution: float = 2.0
    master_pattern: Path | None = None
    clahe_gradient: str | None = "lut"
    overwrite: bool = False
    progress: bool = True
    detector: object = None


@dataclass
class RefineOutcome:
    """The refinement and what it started from: ``result`` (GradientRefineResult), ``q_start`` (N, 4), ``data``
    (the TestSet of the refined patterns), ``voltage_kv``, ``dictionary_seconds`` (0 with given start angles),
    ``dictionary_size`` (None with given start angles)."""

    result: object
    q_start: np.ndarray
    data: object
    voltage_kv: float
    dictionary_seconds: float
    dictionary_size: int | None


def refine_patterns(req: RefineRequest) -> RefineOutcome:
    """Run the refinement workflow of ``req`` and write ``req.output`` atomically.

    Raises
    ------
    EBSDInputError
        Patterns of another shape than the model's, a pattern centre for a fixed-detector model, bad start angles,
        a voltage outside 1-60 kV.
    """
    from ebsd_keras.checks import check_voltage_kv
    from ebsd_keras.indexing.generator import model_refinement_generator
    from ebsd_keras.indexing.refinement import GradientSettings, refine_gradient
    from ebsd_keras.io.testset import load_test_set
    from ebsd_keras.serving.models import load_generator

    data = load_test_set(req.patterns, n=req.n, seed=req.seed)
    n_total = int(data.description.get("n_total", len(data)))
    kv = float(req.kv) if req.kv is not None else float(np.median(data.voltage_kv))
    check_voltage_kv(kv, req.patterns if req.kv is None else None, "--kv")
    model, info = load_generator(req.model)
    model = model_at_patterns_detector(model, req.detector, data, req.patterns, info.get("path"))
    shape = tuple(model.model_config.image_shape)
    if tuple(data.shape) != shape:
        raise EBSDInputError(
            f"patterns are {data.shape[0]}x{data.shape[1]}, the model generates {shape[0]}x{shape[1]}",
            req.patterns,
            "EMData/EBSD/EBSDPatterns",
        )
    generator = model_refinement_generator(
        model, voltage_kv=kv if model.model_config.use_voltage else None, clahe_gradient=req.clahe_gradient
    )
    pc = _start_pc(req, data, generator, type(model.decoder).__name__)
    q_start, di_seconds, di_size = _start_orientations(req, data, n_total, kv)
    settings = GradientSettings(
        refine_pc=req.refine_pc,
        refine_orientation=not req.pc_only,
        method=req.method,
        max_iterations=req.iterations,
        hessian_every=req.hessian_every,
        trust_region_deg=req.trust_region_deg,
        batch_size=req.batch_size,
    )
    result = refine_gradient(generator, data.patterns, q_start, settings, pc_start=pc, progress=req.progress)
    record = {
        "patterns": Path(req.patterns).name,
        "model": info["identity"],
        "start": Path(req.start).name if req.start else f"dictionary indexing, {req.dictionary_resolution} deg",
        "voltage_kv": kv,
        "refinement": result.settings,
        "seconds": result.seconds,
        "dictionary_indexing_seconds": di_seconds,
    }
    write_refined(req.output, result, q_start, data.index, record, req.overwrite)
    return RefineOutcome(result, q_start, data, kv, di_seconds, di_size)


def model_at_patterns_detector(model, settings, data, patterns_path, model_path=None):
    """The model re-aimed at the detector asked for, or -- patterns of another shape than the model's -- at the
    pattern file's detector (its recorded provenance, else kikuchipy's reading of the file). Unchanged otherwise.

    Raises
    ------
    EBSDInputError
        A model that cannot project (CNN decoders) asked for another detector.
    """
    from ebsd_keras.serving.detector import DetectorSettings, for_detector

    settings = settings if settings is not None else DetectorSettings()
    same_shape = tuple(data.shape) == tuple(model.model_config.image_shape)
    if settings.is_default and same_shape:
        return model
    if settings.source is None and not same_shape:
        from dataclasses import replace

        det = (data.metadata or {}).get("detector") or {}
        source = _recorded_detector(det, data.shape) or patterns_path
        settings = replace(settings, source=source)
    return for_detector(model, settings, path=model_path)


def _recorded_detector(det: dict, shape):
    """A DetectorGeometry from a test set's recorded detector dict, or None."""
    from ebsd_keras.simulations.geometry import DetectorGeometry

    if "pc" not in det:
        return None
    keys = ("pc", "tilt_deg", "sample_tilt_deg", "azimuthal_deg", "twist_deg")
    return DetectorGeometry.from_dict({"shape": list(shape), **{k: det[k] for k in keys if k in det}})


def _start_pc(req: RefineRequest, data, generator, decoder_name: str):
    """(N, 3) start pattern centres: given, else the file's detector when the generator takes one, else None."""
    from ebsd_keras.indexing.refinement import check_pattern_centres

    if not generator.takes_pc:
        if req.pc is not None or req.refine_pc:
            raise EBSDInputError(
                f"{decoder_name} generates for one fixed detector: it cannot take --pc/--refine-pc", req.model, "model"
            )
        return None
    if req.pc is not None:
        return check_pattern_centres(req.pc, len(data), None, "--pc")
    det = (data.metadata or {}).get("detector") or {}
    if "pc" in det:
        return check_pattern_centres(det["pc"], len(data), req.patterns, "ebsd_keras/metadata/detector/pc")
    return None


def _start_orientations(req: RefineRequest, data, n_total: int, kv: float):
    """(start quaternions, dictionary seconds, dictionary size): given angles, else dictionary indexing."""
    if req.start is not None:
        return read_start(Path(req.start), n_total, data.index), 0.0, None
    from ebsd_keras.indexing.dictionary import indexer_from_metadata

    t0 = time.perf_counter()
    indexer = indexer_from_metadata(
        data.metadata,
        kv,
        resolution_deg=req.dictionary_resolution,
        path=req.patterns,
        master_pattern=req.master_pattern,
        progress=req.progress,
    )
    q_start, _ = indexer.dictionary_index(data.patterns)
    return q_start, time.perf_counter() - t0, int(indexer.n_dictionary)


def read_start(path: Path, n_total: int, rows):
    """Start quaternions (len(rows), 4) from an EMsoft angle file or an EMsoft-layout .h5 with one row per pattern."""
    import h5py

    from ebsd_keras.io.emsoft import read_angle_file
    from ebsd_keras.orientation import check_euler_radians, euler_to_quaternion

    if path.suffix.lower() in (".h5", ".hdf5"):
        try:
            with h5py.File(path, "r") as f:
                if "EMData/EBSD/EulerAngles" not in f:
                    raise EBSDInputError("no EulerAngles dataset", path, "EMData/EBSD/EulerAngles")
                euler = np.asarray(f["EMData/EBSD/EulerAngles"][()], dtype=np.float64)
        except OSError as exc:
            raise EBSDInputError(f"not a readable HDF5 file: {exc}", path, "file") from None
        if euler.ndim != 2 or euler.shape[1] != 3:
            raise EBSDInputError(f"expected (N, 3) Euler angles, got {euler.shape}", path, "EMData/EBSD/EulerAngles")
        q = euler_to_quaternion(check_euler_radians(euler, path, "EMData/EBSD/EulerAngles"))
        field = "EMData/EBSD/EulerAngles"
    else:
        q = read_angle_file(path)
        field = "line 2"
    if len(q) != n_total:
        raise EBSDInputError(f"{len(q)} start orientations for {n_total} patterns", path, field)
    return q[rows]


def write_refined(path: Path, result, q_start, rows, settings: dict, overwrite: bool) -> None:
    """Refined angles to ``path`` atomically: EMsoft-layout ``.h5`` (``EMData/EBSD/EulerAngles`` radians, a
    ``refinement`` group, ``settings`` as the ``ebsd_keras`` metadata) or, for any other suffix, an 'eu' file."""
    import json

    import h5py

    from ebsd_keras._atomic import atomic_path
    from ebsd_keras.io.emsoft import write_angle_file
    from ebsd_keras.orientation import quaternion_to_euler

    euler = quaternion_to_euler(result.quaternion)
    if path.suffix.lower() not in (".h5", ".hdf5"):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path}: already exists (use --overwrite to replace it)")
        write_angle_file(path, euler)
        return
    with atomic_path(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        g = f.create_group("EMData/EBSD")
        g.create_dataset("EulerAngles", data=euler.astype(np.float32))
        g.create_dataset("numangles", data=np.array([len(euler)], np.int32))
        r = f.create_group("refinement")
        r.create_dataset("quaternion", data=result.quaternion)
        r.create_dataset("start_quaternion", data=q_start)
        r.create_dataset("score", data=result.score)
        r.create_dataset("pattern_index", data=np.asarray(rows, np.int64))
        r.create_dataset("iterations", data=np.asarray(result.iterations, np.int64))
        if result.pc is not None:
            r.create_dataset("pc", data=result.pc)
        f.create_group("ebsd_keras").attrs["metadata"] = json.dumps(settings, default=str)
