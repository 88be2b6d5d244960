"""Generated patterns at pattern centres other than the training one, against the true master pattern's projections.

A model that projects with a per-pattern pattern centre (PC; the physics decoder, ``inputs["pc"]``) can generate
for detector geometries it never saw in training. :func:`evaluate_pattern_centres` measures how well, for each
requested Bruker PC: random orientations (uniform on SO(3), seeded) are projected from the true master pattern by
**kikuchipy** (``EBSDMasterPattern.get_patterns`` at that PC) and preprocessed like the training data (per-pattern
rescale to uint8, then CLAHE), the model generates the same orientations at the same PC, and the two are compared
with the paper's metrics (NCC, BCE gap to the optimum, % pixels within 15 %) and by refined dictionary indexing
(DI against a dictionary projected at that PC, then BOBYQA) of both the generated and the true patterns -- the
true patterns giving the floor. Optionally the PC itself is refined through the generator from a wrong start
(:func:`~ebsd_keras.indexing.refinement.refine_gradient` with ``refine_pc=True, refine_orientation=False``).

Units: PC Bruker fractions, angles degrees, BCE nats per pixel.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.simulations.geometry import DetectorGeometry

__all__ = [
    "DEFAULT_PATTERN_CENTRES",
    "PatternCentreStudy",
    "random_quaternions",
    "true_patterns_at",
    "evaluate_pattern_centres",
]

#: Pattern centres around the training one (0.5, 0.5, 0.6): shifted across and along the screen, nearer and farther.
DEFAULT_PATTERN_CENTRES = (
    (0.5, 0.5, 0.6),
    (0.45, 0.55, 0.6),
    (0.55, 0.45, 0.65),
    (0.5, 0.4, 0.55),
    (0.52, 0.5, 0.7),
)


@dataclass(frozen=True)
class PatternCentreStudy:
    """What :func:`evaluate_pattern_centres` measures (validated on construction).

    Attributes
    ----------
    pattern_centres
        Bruker (PCx, PCy, PCz) to evaluate at (include the training PC as the reference row).
    n
        Random orientations per PC.
    seed
        Seed of the orientations (the same for every PC).
    detector
        Detector (shape, tilts); its PC is replaced by each studied one. Default: the model's detector.
    energy_kv
        Voltage, kV (the master pattern's).
    preprocessing
        Of the true patterns and of the DI dictionary: "clahe" (rescale to uint8, clip 10, 4 x 4 tiles) or "none".
    dictionary_resolution_deg
        DI dictionary spacing, degrees.
    refine
        Run DI + BOBYQA of generated and true patterns (the slow part: one dictionary projection per PC).
    refine_pc_offset
        An error (3,) added to each true PC as the start of a PC calibration through the model: the PC of the true
        patterns (orientations known) is refined by :func:`~ebsd_keras.indexing.refinement.refine_gradient`
        (``refine_pc=True, refine_orientation=False``) and its error reported. Local refinement: keep the offset
        within about a pixel (0.01 of the width on 60 px); at 0.03 the NCC with the truth is ~0 (no basin).
    """

    pattern_centres: tuple = DEFAULT_PATTERN_CENTRES
    n: int = 200
    seed: int = 0
    detector: DetectorGeometry | None = None
    energy_kv: float = 20.0
    preprocessing: Literal["clahe", "none"] = "clahe"
    dictionary_resolution_deg: float = 2.0
    refine: bool = True
    refine_pc_offset: tuple | None = None

    def __post_init__(self):
        pcs = tuple(tuple(float(v) for v in pc) for pc in self.pattern_centres)
        if not pcs or any(len(pc) != 3 or pc[2] <= 0 for pc in pcs):
            raise EBSDInputError("pattern centres must be Bruker (PCx, PCy, PCz) with PCz > 0", None, "pattern_centres")
        object.__setattr__(self, "pattern_centres", pcs)
        if int(self.n) != self.n or self.n < 1:
            raise EBSDInputError(f"n must be a positive integer, got {self.n!r}", None, "n")
        if self.preprocessing not in ("clahe", "none"):
            raise EBSDInputError(f"preprocessing must be 'clahe' or 'none', got {self.preprocessing!r}", None,
                                 "preprocessing")  # fmt: skip
        if self.detector is not None and not isinstance(self.detector, DetectorGeometry):
            object.__setattr__(self, "detector", DetectorGeometry.from_dict(dict(self.detector)))
        if self.refine_pc_offset is not None:
            offset = tuple(float(v) for v in self.refine_pc_offset)
            if len(offset) != 3:
                raise EBSDInputError("refine_pc_offset must be three numbers", None, "refine_pc_offset")
            object.__setattr__(self, "refine_pc_offset", offset)


def random_quaternions(n: int, seed: int = 0) -> np.ndarray:
    """(n, 4) float64 unit quaternions uniform on SO(3) (normalised Gaussian 4-vectors), q0 >= 0."""
    q = np.random.default_rng(seed).standard_normal((int(n), 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.where(q[:, :1] < 0, -q, q)


def true_patterns_at(
    master_pattern, quaternions, detector: DetectorGeometry | dict, energy_kv: float, clahe_config
) -> np.ndarray:
    """kikuchipy projections of a master pattern at one detector geometry, preprocessed like the dataset.

    Parameters
    ----------
    master_pattern
        kikuchipy ``EBSDMasterPattern`` (both hemispheres, square Lambert).
    quaternions
        (N, 4) orientations.
    detector
        :class:`~ebsd_keras.simulations.geometry.DetectorGeometry` (or its dict: ``pc`` Bruker, ``shape``,
        ``tilt_deg``, ``sample_tilt_deg``, ``px_size_um``, ``binning``).
    energy_kv
        Voltage, kV.
    clahe_config
        :class:`~ebsd_keras.data.preprocess.CLAHEConfig` or None.

    Returns
    -------
    numpy.ndarray
        (N, H, W) uint8.
    """
    from ebsd_keras.data.preprocess import clahe
    from ebsd_keras.data.simulate import make_detector, project_patterns

    detector = detector.to_dict() if isinstance(detector, DetectorGeometry) else detector
    kwargs = {k: detector[k] for k in ("shape", "pc", "tilt_deg", "sample_tilt_deg", "px_size_um", "binning")
              if k in detector}  # fmt: skip
    det = make_detector(**kwargs)
    parts = [p for _, p in project_patterns(master_pattern, quaternions, det, energy_kv, progress=False)]
    out = np.concatenate(parts)
    return clahe(out, clahe_config) if clahe_config is not None else out


def _generate(model, q: np.ndarray, pc, batch: int = 256) -> np.ndarray:
    import tensorflow as tf

    out = []
    for s in range(0, len(q), batch):
        qq = tf.constant(q[s : s + batch], tf.float32)
        attrs = {"quaternion": qq, "pc": tf.constant(np.tile(np.asarray(pc, np.float32), (len(qq), 1)))}
        out.append(np.asarray(model.generate(attrs))[..., 0])
    return np.concatenate(out)


def evaluate_pattern_centres(
    model,
    study: PatternCentreStudy | None = None,
    *,
    master_pattern=None,
    progress: bool = False,
    **keywords,
) -> dict:
    """Fidelity of a model's patterns at several pattern centres against the true master pattern's.

    Parameters
    ----------
    model
        A CVAEGAN (or decoder) whose ``generate`` takes ``"pc"`` (the physics decoder).
    study
        :class:`PatternCentreStudy` (pattern centres, orientations, detector, preprocessing, refinement); or give its
        fields as keywords (``evaluate_pattern_centres(model, n=100, refine=False)``). A sequence of pattern centres
        here is read as ``pattern_centres``.
    master_pattern
        kikuchipy ``EBSDMasterPattern``; default the embedded EMsoft Ni 20 kV one.
    progress
        Progress bars.

    Returns
    -------
    dict
        ``{"settings": {...}, "rows": [{"pc", "ncc", "bce_gap", "within_15pct", "di_error_deg", "refined_error_deg",
        "true_refined_error_deg", "pc_refinement", "seconds"}, ...]}`` with :func:`summarize` dicts.

    Raises
    ------
    EBSDInputError
        A model that generates for one fixed detector only, or invalid settings.
    """
    if study is not None and not isinstance(study, PatternCentreStudy):
        keywords = {"pattern_centres": study, **keywords}
        study = None
    study = dataclasses.replace(study, **keywords) if study is not None else PatternCentreStudy(**keywords)
    from ebsd_keras.data.preprocess import CLAHEConfig, rescale_to_uint8
    from ebsd_keras.data.simulate import load_master_pattern
    from ebsd_keras.evaluation.metrics import disorientation_stats, pixel_metrics, summarize
    from ebsd_keras.indexing.generator import takes_pattern_centre

    decoder = getattr(model, "decoder", model)
    if not takes_pattern_centre(model):
        raise EBSDInputError(
            f"the {type(decoder).__name__} generates for one fixed detector; it cannot be evaluated at other pattern "
            "centres",
            None,
            "model",
        )
    detector = study.detector or decoder.model_config.detector
    n, energy_kv = study.n, study.energy_kv
    clahe_config = CLAHEConfig() if study.preprocessing == "clahe" else None
    mp = master_pattern if master_pattern is not None else load_master_pattern(None, energy_kv)
    q = random_quaternions(n, study.seed)
    generator = None
    if study.refine_pc_offset is not None:
        from ebsd_keras.indexing.generator import model_refinement_generator

        generator = model_refinement_generator(model)  # one generator: its compiled steps serve every PC
    rows = []
    for pc in study.pattern_centres:
        t0 = time.perf_counter()
        det = detector.with_pc(pc)
        truth = true_patterns_at(mp, q, det, energy_kv, clahe_config)
        gen = _generate(model, q, pc)
        stats, _ = pixel_metrics(truth.astype(np.float64) / 255.0, gen)
        row = {"pc": list(pc), **{k: stats[k] for k in ("ncc", "bce_gap", "within_15pct")}}
        if study.refine:
            from ebsd_keras.indexing.dictionary import Indexer

            idx = Indexer(mp, det, energy_kv, clahe_config, resolution_deg=study.dictionary_resolution_deg,
                          progress=progress)  # fmt: skip
            stack = np.concatenate([rescale_to_uint8(gen, 0.0, 1.0), truth])
            q_di, _ = idx.dictionary_index(stack)
            r = idx.refine_bobyqa(stack, q_di)
            qq = np.concatenate([q, q])
            row["di_error_deg"] = disorientation_stats(q, q_di[:n])[1]
            row["refined_error_deg"] = disorientation_stats(q, r.quaternion[:n])[1]
            row["true_di_error_deg"] = disorientation_stats(q, q_di[n:])[1]
            row["true_refined_error_deg"] = disorientation_stats(qq[n:], r.quaternion[n:])[1]
        if study.refine_pc_offset is not None:
            from ebsd_keras.indexing.refinement import refine_gradient

            start = np.asarray(pc) + np.asarray(study.refine_pc_offset, dtype=np.float64)
            res = refine_gradient(
                generator, truth, q, pc_start=start, refine_pc=True, refine_orientation=False, hessian_every=1,
            )  # fmt: skip
            err = np.abs(res.pc - np.asarray(pc)[None])
            row["pc_refinement"] = {
                "start_pc": [float(v) for v in start],
                "pc_mean": [float(v) for v in res.pc.mean(axis=0)],
                "abs_error": {k: summarize(err[:, i]) for i, k in enumerate(("pcx", "pcy", "pcz"))},
                "orientation_error_deg": disorientation_stats(q, res.quaternion)[1],
                "seconds": res.seconds,
            }
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
    return {
        "settings": {
            "n": int(n),
            "seed": int(study.seed),
            "detector": detector.to_dict(),
            "energy_kv": float(energy_kv),
            "truth": "kikuchipy EBSDMasterPattern.get_patterns of the master pattern, rescaled to uint8, CLAHE",
            "clahe": None if clahe_config is None else clahe_config.to_dict(),
            "dictionary_resolution_deg": float(study.dictionary_resolution_deg) if study.refine else None,
            "refiner": "BOBYQA (Indexer.refine_bobyqa, true master pattern at the same PC)" if study.refine else None,
        },
        "rows": rows,
    }
