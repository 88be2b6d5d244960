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
    "IndexRequest",
    "IndexOutcome",
    "index_map",
    "model_dictionary_index",
    "match_contrast",
    "crystal_map",
    "write_crystal_map",
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


# ----------------------------------------------------------------------------------------------------------------
# Indexing an experimental map through a model: ``ebsd-keras index``
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexRequest:
    """What ``ebsd-keras index`` asks for (see its ``--help``).

    Attributes
    ----------
    patterns
        An experimental map kikuchipy reads (:func:`~ebsd_keras.io.experimental.read_experimental`).
    output
        orix ``CrystalMap`` HDF5 file (``.h5``); ``ang`` the ``.ang`` file beside it (default: the same name).
    model
        A model file or folder; None: the shipped model of the map's voltage.
    kv
        Accelerating voltage, kV (None: the file's beam energy, else 20).
    experimental
        :class:`~ebsd_keras.io.experimental.ExperimentalSettings` (background removal, averaging, detector overrides).
    contrast
        The dictionary's contrast: "raw" (default: min-max rescaled projections against the background-corrected
        patterns, as kikuchipy matches), "model" (the model's own: CLAHE for the shipped models, then applied to
        the experimental patterns too, with the same tiles) or "clahe". Raw is the default because it was the more
        accurate on every map measured (benchmarks/index_experimental.py, docs/detectors.md): CLAHE equalises
        what background removal leaves and the noise along with the bands.
    resolution_deg
        Dictionary grid spacing, degrees (cubochoric, m-3m fundamental zone).
    refine, refine_pc, method, iterations, batch_size
        Gradient refinement after dictionary indexing (:class:`~ebsd_keras.indexing.refinement.GradientSettings`).
    """

    patterns: Path
    output: Path
    ang: Path | None = None
    model: Path | None = None
    kv: float | None = None
    experimental: object = None
    contrast: Literal["model", "clahe", "raw"] = "raw"
    resolution_deg: float = 3.0
    refine: bool = True
    refine_pc: bool = False
    method: Literal["gauss-newton-fd", "gauss-newton", "adam"] = "gauss-newton-fd"
    iterations: int | None = None
    batch_size: int = 256
    overwrite: bool = False
    progress: bool = True


@dataclass
class IndexOutcome:
    """What :func:`index_map` found: ``quaternion`` (N, 4) refined (or DI) orientations, ``score`` (N,) their NCC,
    ``di_quaternion`` / ``di_score`` the dictionary's, ``pc`` (N, 3) or None, ``xmap`` the orix CrystalMap,
    ``timing`` (seconds per stage), ``record`` (the provenance written), ``map`` (the ExperimentalMap)."""

    quaternion: np.ndarray
    score: np.ndarray
    di_quaternion: np.ndarray
    di_score: np.ndarray
    pc: np.ndarray | None
    xmap: object
    timing: dict
    record: dict
    map: object


def match_contrast(patterns, model_config) -> np.ndarray:
    """Experimental patterns (N, H, W) in [0, 1] put through the model's output contrast: 8-bit CLAHE with the
    model's clip limit and tiles for a "clahe" model (the dataset's preprocessing), else unchanged."""
    from ebsd_keras.data.preprocess import CLAHEConfig, clahe, rescale_to_uint8

    cfg = model_config
    if cfg.decoder in ("physics", "field") and cfg.physics_contrast == "clahe":
        grey = rescale_to_uint8(np.asarray(patterns, np.float32), lo=0.0, hi=1.0)
        config = CLAHEConfig(float(cfg.physics_clahe_clip_limit), tuple(int(t) for t in cfg.physics_clahe_tiles))
        return clahe(grey, config).astype(np.float32) / 255.0
    return np.asarray(patterns, np.float32)


def model_dictionary_index(generator, patterns, q_dictionary, batch_size: int = 256, progress: bool = False):
    """Dictionary indexing against patterns generated on the fly: best NCC match of each pattern over
    ``q_dictionary`` (M, 4), streamed in batches of one fixed size (the dictionary is never held whole).

    The generator runs XLA-compiled (one trace: the last batch is padded), 6.5x faster than eager on 2 CPU cores
    (11,000 vs 1,700 patterns/s for ni20-physics at 60 x 60); a generator XLA cannot compile runs as a plain graph.

    Returns
    -------
    quaternions (N, 4), scores (N,)
    """
    import tensorflow as tf
    from tqdm.auto import tqdm

    from ebsd_keras.indexing.dictionary import normalized_rows

    exp = normalized_rows(patterns)  # (N, P)
    best = np.full(len(exp), -np.inf, dtype=np.float32)
    best_idx = np.zeros(len(exp), dtype=np.int64)
    h, w = generator.image_shape
    step = max(1, min(int(batch_size), 2_000_000 // (h * w), len(q_dictionary)))
    q_all = np.asarray(q_dictionary, np.float32)

    def run(q):
        return generator(q)

    compiled = [tf.function(run, jit_compile=True, autograph=False), tf.function(run, autograph=False)]

    def generate(q):
        while True:
            try:
                return np.asarray(compiled[0](q))
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, NotImplementedError):
                if len(compiled) == 1:
                    raise
                compiled.pop(0)  # XLA cannot compile this generator: a plain graph

    with tqdm(total=len(q_all), unit="pattern", desc="dictionary", disable=not progress, leave=False) as bar:
        for start in range(0, len(q_all), step):
            q = q_all[start : start + step]
            k = len(q)
            if k < step:  # one shape for every call: no second trace
                q = np.concatenate([q, np.repeat(q[:1], step - k, axis=0)])
            dic = normalized_rows(generate(q)[:k])
            sim = exp @ dic.T
            j = np.argmax(sim, axis=1)
            s = sim[np.arange(len(exp)), j]
            better = s > best
            best[better] = s[better]
            best_idx[better] = start + j[better]
            bar.update(k)
    return np.asarray(q_dictionary, np.float64)[best_idx], best.astype(np.float64)


def index_map(req: IndexRequest) -> IndexOutcome:
    """Index an experimental map through a model: read and preprocess it (kikuchipy), re-aim the model at its
    detector, dictionary-index against model-made patterns, refine by gradients (optionally the pattern centre),
    and write an orix CrystalMap HDF5 file and an ``.ang`` file, atomically.

    Raises
    ------
    EBSDInputError
        Unreadable patterns, a model that cannot project onto the map's detector, bad settings.
    """
    from ebsd_keras.checks import check_voltage_kv
    from ebsd_keras.indexing.dictionary import dictionary_orientations
    from ebsd_keras.indexing.generator import model_refinement_generator
    from ebsd_keras.indexing.refinement import GradientSettings, refine_gradient
    from ebsd_keras.io.experimental import ExperimentalSettings, read_experimental
    from ebsd_keras.serving.detector import DetectorSettings, for_detector
    from ebsd_keras.serving.models import default_model_path, load_generator

    timing = {}
    t0 = time.perf_counter()
    emap = read_experimental(req.patterns, req.experimental or ExperimentalSettings(), progress=False)
    timing["read_and_preprocess_s"] = time.perf_counter() - t0
    kv = float(req.kv) if req.kv is not None else float(emap.voltage_kv or 20.0)
    check_voltage_kv(kv, req.patterns if req.kv is None else None, "--kv")
    model_arg = req.model if req.model is not None else default_model_path(kv)
    model, info = load_generator(model_arg)
    model = for_detector(model, DetectorSettings(source=emap.detector, contrast=req.contrast), path=info.get("path"))
    cfg = model.model_config
    targets = match_contrast(emap.patterns, cfg)
    generator = model_refinement_generator(model, voltage_kv=kv if cfg.use_voltage else None, clahe_gradient="lut")
    t0 = time.perf_counter()
    q_dict = dictionary_orientations(req.resolution_deg)
    forward = model_refinement_generator(model, differentiable=False, voltage_kv=kv if cfg.use_voltage else None)
    q_di, s_di = model_dictionary_index(forward, targets, q_dict, req.batch_size, req.progress)
    timing["dictionary_indexing_s"] = time.perf_counter() - t0
    q, score, pc = q_di, s_di, None
    refinement = None
    if req.refine:
        # orientations first (the PC fixed): from a coarse dictionary start a joint refinement stalled (Ni map from
        # 5 deg: NCC 0.26 jointly, 0.44 in two stages)
        settings = GradientSettings(
            method=req.method, max_iterations=req.iterations, trust_region_deg=max(2.0, float(req.resolution_deg))
        )
        result = refine_gradient(generator, targets, q_di, settings, progress=req.progress)
        refinement = {"orientation": result.settings}
        seconds = result.seconds
        if req.refine_pc:
            # jointly by forward-mode Gauss-Newton: the forward-difference method left orientation and PC where they
            # started on this generator (Ni map: NCC 0.4367 unchanged; gauss-newton 0.4446, adam 0.4447)
            method = "adam" if req.method == "adam" else "gauss-newton"
            joint = GradientSettings(refine_pc=True, method=method, max_iterations=req.iterations)
            result = refine_gradient(generator, targets, result.quaternion, joint, progress=req.progress)
            refinement["orientation_and_pc"] = result.settings
            seconds += result.seconds
        q, score, pc = result.quaternion, result.score, result.pc if req.refine_pc else None
        timing["refinement_s"] = seconds
    record = {
        "patterns": Path(req.patterns).name,
        "experimental": emap.provenance,
        "model": info["identity"],
        "detector": emap.detector.to_dict(),
        "contrast": req.contrast,
        "voltage_kv": kv,
        "dictionary": {"resolution_deg": float(req.resolution_deg), "size": int(len(q_dict)), "metric": "ncc"},
        "refinement": refinement,
        "timing_s": timing,
    }
    xmap = crystal_map(q, emap, {"scores": score, "di_scores": s_di}, info.get("card") or {}, pc)
    write_crystal_map(req.output, req.ang or Path(req.output).with_suffix(".ang"), xmap, record, req.overwrite)
    return IndexOutcome(q, score, q_di, s_di, pc, xmap, timing, record, emap)


def crystal_map(quaternion, emap, props: dict, card: dict, pc=None):
    """An orix ``CrystalMap`` of the map's grid: orientations (passive, EMsoft convention, as orix's), one cubic
    m-3m phase named from the model card's material, ``props`` per pattern (and ``pc_x/y/z`` when refined)."""
    from orix.crystal_map import CrystalMap, Phase, PhaseList
    from orix.quaternion import Rotation

    rows, cols = emap.map_shape
    dy, dx = emap.step
    yy, xx = np.mgrid[0:rows, 0:cols]
    material = str(card.get("material", "ni")).split()[0].lower() or "ni"
    phase = Phase(name=material, space_group=225) if "fm-3m" in str(card.get("material", "Fm-3m")).lower() else None
    if phase is None:
        phase = Phase(name=material, point_group="m-3m")
    prop = {k: np.asarray(v, np.float64).ravel() for k, v in props.items()}
    if pc is not None:
        for i, axis in enumerate("xyz"):
            prop[f"pc_{axis}"] = np.asarray(pc, np.float64)[:, i]
    return CrystalMap(
        rotations=Rotation(np.asarray(quaternion, np.float64)),
        phase_id=np.zeros(rows * cols, dtype=int),
        x=(xx.ravel() * dx).astype(np.float64),
        y=(yy.ravel() * dy).astype(np.float64),
        phase_list=PhaseList(phase),
        prop=prop,
        scan_unit=emap.step_unit,
    )


def write_crystal_map(h5_path: Path, ang_path: Path, xmap, record: dict, overwrite: bool) -> None:
    """The map as orix HDF5 (with ``record`` as JSON under ``ebsd_keras/metadata``) and as ``.ang``, both or
    neither (each through a temporary file renamed when both are complete)."""
    import json
    import os

    import h5py
    from orix import io as orix_io

    from ebsd_keras._atomic import atomic_path

    h5_path, ang_path = Path(h5_path), Path(ang_path)
    with atomic_path(h5_path, overwrite=overwrite) as tmp_h5, atomic_path(ang_path, overwrite=overwrite) as tmp_ang:
        for tmp, suffix in ((tmp_h5, ".h5"), (tmp_ang, ".ang")):
            named = tmp.with_name(tmp.name + suffix)  # orix picks its writer by the suffix
            try:
                orix_io.save(str(named), xmap, overwrite=True)
                os.replace(named, tmp)
            finally:
                if named.exists():
                    named.unlink()
        with h5py.File(tmp_h5, "a") as f:
            f.create_group("ebsd_keras").attrs["metadata"] = json.dumps(record, default=str)
