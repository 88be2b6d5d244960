"""Any detector at generation time: a projecting model (physics or neural-field decoder) re-aimed at another detector.

A physics model's learned master pattern, and a neural field's function of crystal direction, are geometry-free:
only the projection ties them to the detector they were trained on (60 x 60, detector tilt 10 deg, sample tilt 70 deg
for the shipped models). :func:`for_detector` builds the same decoder for another detector -- pattern shape (any
rows x cols), binning, Bruker pattern centre, detector tilt, sample tilt -- and copies every weight into it (none of
them depends on the detector). Models that cannot project (CNN decoders trained on one detector) refuse with one line.

The contrast step follows the geometry (``contrast``):

- "model" (default): the model's own contrast; CLAHE keeps its clip limit and its tiles *scale with the pattern*:
  the same number of tile rows, and as many columns as keep the tiles' shape (4 x 4 tiles on 60 x 60 become 4 x 5 on
  480 x 640), so a tile covers the same share of the pattern at any size.
- "clahe": the same, for a model trained on raw intensities.
- "raw": no CLAHE, the per-pattern min-max rescale of the projected intensities (what kikuchipy's
  ``EBSDMasterPattern.get_patterns`` gives up to that rescale).

Where the detector comes from (:func:`resolve_detector`): a :class:`~ebsd_keras.simulations.geometry.DetectorGeometry`
or its dict, a kikuchipy ``EBSDDetector``, or a file whose detector kikuchipy reads (EMsoft EMEBSD, kikuchipy /
EDAX / Oxford / Bruker h5ebsd, NORDIF; a file written by ebsd_keras is read from its own provenance), with
:class:`DetectorSettings` flags overriding any of its fields.

Only numpy is imported with this module; TensorFlow when a model is re-aimed, kikuchipy when a file is read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.io.experimental import detector_from_kikuchipy, load_kikuchipy

__all__ = [
    "CONTRASTS",
    "DetectorSettings",
    "DetectorModel",
    "detector_from_kikuchipy",
    "read_detector",
    "resolve_detector",
    "scaled_tiles",
    "for_detector",
    "model_geometry",
]

#: The contrast choices at another detector (see the module docstring).
CONTRASTS = ("model", "clahe", "raw")
Contrast = Literal["model", "clahe", "raw"]


@dataclass(frozen=True)
class DetectorSettings:
    """A detector asked for by flags, optionally on top of a file's or an object's detector.

    Attributes
    ----------
    source
        A file whose detector to start from (see :func:`read_detector`), a kikuchipy ``EBSDDetector``, a
        :class:`~ebsd_keras.simulations.geometry.DetectorGeometry` or its dict; None: the model's own detector.
    shape
        (rows, cols) of the detector in unbinned pixels (e.g. (480, 640)); patterns are ``shape // binning``.
    binning
        Pixels binned per side (1: none). With ``source`` and no ``shape``, the source's pattern shape is divided.
    pc
        Bruker pattern centre (PCx, PCy, PCz), dimensionless (binning does not change it).
    tilt_deg, sample_tilt_deg
        Detector tilt and sample tilt, degrees.
    contrast
        "model", "clahe" or "raw" (module docstring).
    """

    source: object = None
    shape: tuple | None = None
    binning: int = 1
    pc: tuple | None = None
    tilt_deg: float | None = None
    sample_tilt_deg: float | None = None
    contrast: Contrast = "model"

    def __post_init__(self):
        if isinstance(self.binning, bool) or int(self.binning) != self.binning or self.binning < 1:
            raise EBSDInputError(f"binning must be a positive integer, got {self.binning!r}", None, "binning")
        if self.contrast not in CONTRASTS:
            raise EBSDInputError(
                f"contrast must be one of {', '.join(CONTRASTS)}, got {self.contrast!r}", None, "contrast"
            )
        if self.shape is not None:
            shape = tuple(self.shape)
            if len(shape) != 2 or any(isinstance(s, bool) or int(s) != s or s < 1 for s in shape):
                raise EBSDInputError(
                    f"shape must be two positive integers (rows, cols), got {self.shape!r}", None, "shape"
                )
            binned = tuple(int(s) // int(self.binning) for s in shape)
            if min(binned) < 2:
                raise EBSDInputError(
                    f"binning {self.binning} of a {shape[0]}x{shape[1]} detector leaves {binned[0]}x{binned[1]} pixels",
                    None,
                    "binning",
                )

    @property
    def is_default(self) -> bool:
        """Nothing asked for: the model's own detector and contrast."""
        return (
            self.source is None
            and self.shape is None
            and self.binning == 1
            and self.pc is None
            and self.tilt_deg is None
            and self.sample_tilt_deg is None
            and self.contrast == "model"
        )


def _own_detector(path: Path):
    """The detector recorded in an ebsd_keras file's provenance (``ebsd_keras`` group), or None."""
    import h5py

    from ebsd_keras.simulations.geometry import DetectorGeometry

    try:
        with h5py.File(path, "r") as f:
            group = f.get("ebsd_keras")
            text = None if group is None else group.attrs.get("metadata")
    except OSError:
        return None
    if text is None:
        return None
    try:
        det = json.loads(text).get("detector")
    except (ValueError, AttributeError):
        return None
    if not isinstance(det, dict) or "pc" not in det or "shape" not in det:
        return None
    return DetectorGeometry.from_dict(
        {k: v for k, v in det.items() if k in DetectorGeometry.__dataclass_fields__}, path
    )


def read_detector(path):
    """The detector of a pattern file, read through kikuchipy (EMsoft EMEBSD, kikuchipy / EDAX / Oxford / Bruker
    h5ebsd, NORDIF, ...); a file written by ebsd_keras is read from its own provenance.

    Raises
    ------
    FileNotFoundError
        No such file.
    EBSDInputError
        kikuchipy cannot read the file, or its detector has no usable pattern centre.
    """
    from ebsd_keras.checks import check_input_file

    path = check_input_file(path, "--detector-from", "pattern file")
    if path.suffix.lower() in (".h5", ".hdf5"):
        own = _own_detector(path)
        if own is not None:
            return own
    return detector_from_kikuchipy(load_kikuchipy(path, lazy=True).detector, path)


def model_geometry(model_config):
    """The detector a model was trained on (its config), as a DetectorGeometry."""
    from ebsd_keras.simulations.geometry import DetectorGeometry

    cfg = model_config
    if cfg.decoder in ("physics", "field"):
        return DetectorGeometry(
            shape=tuple(int(s) for s in cfg.image_shape),
            pc=tuple(cfg.physics_detector_pc),
            tilt_deg=cfg.physics_detector_tilt_deg,
            sample_tilt_deg=cfg.physics_sample_tilt_deg,
        )
    return DetectorGeometry(shape=tuple(int(s) for s in cfg.image_shape))


def _source_geometry(source):
    from ebsd_keras.simulations.geometry import DetectorGeometry

    if source is None or isinstance(source, DetectorGeometry):
        return source
    if isinstance(source, dict):
        return DetectorGeometry.from_dict(source)
    if isinstance(source, (str, os.PathLike)):
        return read_detector(source)
    if hasattr(source, "pc_average") and hasattr(source, "shape"):
        return detector_from_kikuchipy(source)
    raise EBSDInputError(
        f"a detector is a file, a kikuchipy EBSDDetector, a DetectorGeometry or its dict, not {type(source).__name__}",
        None,
        "detector",
    )


def resolve_detector(settings, model_config):
    """The detector to generate for: the settings' source (or the model's own detector), then its flags.

    Parameters
    ----------
    settings
        :class:`DetectorSettings`, or anything :class:`DetectorSettings` takes as ``source``.
    model_config
        The model's :class:`~ebsd_keras.models.presets.ModelConfig` (its detector is the default).

    Returns
    -------
    DetectorGeometry
    """
    if not isinstance(settings, DetectorSettings):
        settings = DetectorSettings(source=settings)
    base = _source_geometry(settings.source) or model_geometry(model_config)
    d = base.to_dict()
    b = int(settings.binning)
    if settings.shape is not None:
        d["shape"] = [int(s) // b for s in settings.shape]
    elif b > 1:
        d["shape"] = [int(s) // b for s in base.shape]
        if min(d["shape"]) < 2:
            raise EBSDInputError(
                f"binning {b} of a {base.shape[0]}x{base.shape[1]} detector is too much", None, "binning"
            )
    if settings.pc is not None:
        d["pc"] = [float(p) for p in settings.pc]
    if settings.tilt_deg is not None:
        d["tilt_deg"] = float(settings.tilt_deg)
    if settings.sample_tilt_deg is not None:
        d["sample_tilt_deg"] = float(settings.sample_tilt_deg)
    return type(base).from_dict(d)


def scaled_tiles(tiles, old_shape, new_shape) -> tuple[int, int]:
    """CLAHE tiles (rows, cols) for another pattern shape: the same tile rows, and the columns that keep the
    tiles' aspect (so a tile covers the same share of the pattern height at any size)."""
    rows, cols = (int(t) for t in tiles)
    old_aspect = old_shape[1] / old_shape[0]
    new_aspect = new_shape[1] / new_shape[0]
    return rows, max(1, int(round(cols * new_aspect / old_aspect)))


class DetectorModel:
    """A trained model's decoder re-aimed at another detector: ``generate``, ``decoder`` and ``model_config`` as a
    CVAEGAN's (what generation, refinement and export use); the encoder and critic (trained on one detector) are
    not carried.

    Attributes
    ----------
    decoder
        The re-built decoder, with every weight of the source model's.
    model_config
        Its config (the new shape, detector and contrast).
    geometry
        The detector.
    contrast
        The contrast asked for ("model", "clahe", "raw").
    source_config
        The source model's config.
    """

    takes_pattern_centre = True

    def __init__(self, decoder, geometry, contrast: str, source_config):
        self.decoder = decoder
        self.model_config = decoder.model_config
        self.geometry = geometry
        self.contrast = contrast
        self.source_config = source_config
        self.seed = getattr(decoder, "seed", None)

    def generate(self, attributes: dict, z=None, sample: bool = False, seed=None):
        """Patterns (B, H, W, 1) in [0, 1] (see :meth:`ebsd_keras.models.cvaegan.CVAEGAN.generate`)."""
        return self.decoder.generate(attributes, z=z, sample=sample, seed=seed)

    def describe(self) -> dict:
        """JSON-friendly: the detector, the contrast and CLAHE actually used."""
        cfg = self.model_config
        out = {"detector": self.geometry.to_dict(), "contrast": self.contrast, "output_contrast": cfg.physics_contrast}
        if cfg.physics_contrast == "clahe":
            out["clahe"] = {"clip_limit": float(cfg.physics_clahe_clip_limit), "tiles": list(cfg.physics_clahe_tiles)}
        return out


def _decoder_kind(model) -> str:
    cfg = model.model_config
    return str(cfg.decoder)


def for_detector(model, detector=None, contrast: Contrast = "model", path=None):
    """The model re-aimed at ``detector`` with ``contrast`` (see the module docstring).

    Parameters
    ----------
    model
        A loaded CVAEGAN (or a :class:`DetectorModel`).
    detector
        :class:`DetectorSettings`, a DetectorGeometry / dict / kikuchipy EBSDDetector / file; None: the model's own.
    contrast
        "model", "clahe" or "raw" (ignored when ``detector`` is a :class:`DetectorSettings`, which has its own).
    path
        The model file, for error messages.

    Returns
    -------
    The model itself when nothing changes, else a :class:`DetectorModel`.

    Raises
    ------
    EBSDInputError
        A model that cannot project (CNN decoders), a detector with azimuthal or twist angles, a "learned" contrast
        asked to change.
    """
    settings = (
        detector if isinstance(detector, DetectorSettings) else DetectorSettings(source=detector, contrast=contrast)
    )
    if settings.is_default:
        return model
    source_model = model
    if isinstance(model, DetectorModel):
        cfg0 = model.source_config
    else:
        cfg0 = model.model_config
    kind = _decoder_kind(model)
    geometry = resolve_detector(settings, cfg0)
    own = model_geometry(cfg0)
    if kind not in ("physics", "field"):
        if geometry == own and settings.contrast == "model":
            return model
        raise EBSDInputError(
            f"the {kind} decoder was trained on one {own.shape[0]}x{own.shape[1]} detector and cannot project onto "
            "another or change its contrast; use a physics or field model",
            path,
            "detector",
        )
    if geometry.azimuthal_deg or geometry.twist_deg:
        raise EBSDInputError(
            f"detector azimuthal {geometry.azimuthal_deg:g} / twist {geometry.twist_deg:g} deg: only the detector tilt "
            "and sample tilt can change",
            path,
            "detector",
        )
    cfg_contrast = cfg0.physics_contrast
    if settings.contrast != "model" and cfg_contrast == "learned":
        raise EBSDInputError("a model with a learned contrast head cannot switch contrast", path, "contrast")
    new_contrast = {"model": cfg_contrast, "clahe": "clahe", "raw": "rescale"}[settings.contrast]
    h, w = geometry.shape
    changes = {
        "image_shape": (h, w),
        "physics_detector_pc": tuple(geometry.pc),
        "physics_detector_tilt_deg": float(geometry.tilt_deg),
        "physics_sample_tilt_deg": float(geometry.sample_tilt_deg),
        "physics_contrast": new_contrast,
        "physics_clahe_tiles": scaled_tiles(cfg0.physics_clahe_tiles, tuple(cfg0.image_shape), (h, w)),
        # the decoder builds no CNN stage, but the config checks that its CNN shapes give the pattern shape
        "decoder_start": (h, w, int(cfg0.decoder_start[2])),
        "decoder_blocks": ((int(cfg0.decoder_blocks[0][0]) if cfg0.decoder_blocks else 8, 1),),
    }
    cfg = cfg0.replace(**changes)
    import ebsd_keras.models.cvaegan  # noqa: F401 - registers every decoder kind
    from ebsd_keras.models.decoders import build_decoder

    source_decoder = source_model.decoder
    decoder = build_decoder(cfg, seed=getattr(source_decoder, "seed", None))
    decoder.set_weights(source_decoder.get_weights())
    return DetectorModel(decoder, geometry, settings.contrast, cfg0)
