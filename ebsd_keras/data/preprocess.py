"""Pattern preprocessing as in the paper: rescaling to 8 bit and CLAHE (clip limit 10, 4 x 4 tiles).

OpenCV's CLAHE is deterministic, works on uint8 images and is what the authors used, so generated and reference
patterns are processed by exactly the same code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from ebsd_keras.errors import EBSDInputError

__all__ = ["CLAHEConfig", "clahe", "clahe_from_metadata", "rescale_to_uint8"]


@dataclass(frozen=True)
class CLAHEConfig:
    """Contrast-limited adaptive histogram equalisation settings.

    Attributes
    ----------
    clip_limit
        OpenCV ``clipLimit`` (the paper: 10).
    tiles
        Tile grid (rows, columns) (the paper: 4 x 4).
    """

    clip_limit: float = 10.0
    tiles: tuple[int, int] = (4, 4)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tiles"] = list(self.tiles)
        d["method"] = "clahe-opencv"
        return d


def clahe(patterns: np.ndarray, config: CLAHEConfig | None = None) -> np.ndarray:
    """Apply CLAHE to one pattern (H, W) or a stack (N, H, W) of uint8 patterns.

    Returns
    -------
    numpy.ndarray
        uint8 array of the same shape.
    """
    config = config or CLAHEConfig()
    patterns = np.asarray(patterns)
    if patterns.dtype != np.uint8:
        raise TypeError(f"CLAHE needs uint8 patterns, got {patterns.dtype}; rescale with rescale_to_uint8 first")
    rows, cols = (int(t) for t in config.tiles)
    # OpenCV's tileGridSize is (columns, rows); ours is (rows, columns), as clahe_tf's (same for the square 4 x 4)
    op = cv2.createCLAHE(clipLimit=float(config.clip_limit), tileGridSize=(cols, rows))
    if patterns.ndim == 2:
        return op.apply(np.ascontiguousarray(patterns))
    if patterns.ndim != 3:
        raise ValueError(f"expected (H, W) or (N, H, W) patterns, got shape {patterns.shape}")
    out = np.empty_like(patterns)
    for i in range(patterns.shape[0]):
        out[i] = op.apply(np.ascontiguousarray(patterns[i]))
    return out


def rescale_to_uint8(patterns: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Linearly map ``[lo, hi]`` to ``[0, 255]`` and round to uint8 (clipping outside values).

    ``lo`` and ``hi`` default to the array's own minimum and maximum; pass the values of the whole file to keep the
    relative intensities of patterns in one EMsoft file (EMsoft writes int32 and float32 patterns unnormalised).
    """
    x = np.asarray(patterns, dtype=np.float64)
    lo = float(np.min(x)) if lo is None else float(lo)
    hi = float(np.max(x)) if hi is None else float(hi)
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("patterns contain non-finite values")
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip(np.rint((x - lo) * scale), 0, 255).astype(np.uint8)


def clahe_from_metadata(metadata: dict, path=None) -> CLAHEConfig | None:
    """The dataset's CLAHE settings from its provenance (``metadata["preprocessing"]``), ``None`` when it had none.

    Accepts the records this package writes: ``{"rescale": ..., "clahe": CLAHEConfig.to_dict() or "none"}`` (dataset
    builder) and a bare ``CLAHEConfig.to_dict()`` (CLAHE applied by ``ebsd-keras convert``).

    Raises
    ------
    EBSDInputError
        When no preprocessing is recorded (the dictionary could not be made like the data) or it is unreadable.
    """
    field_name = "ebsd_keras/metadata/preprocessing"
    prep = (metadata or {}).get("preprocessing")
    if isinstance(prep, str) and prep.strip().lower() == "none":
        return None
    if isinstance(prep, dict) and "clahe" in prep:
        c = prep["clahe"]
        if c in (None, False) or (isinstance(c, str) and c.strip().lower() in ("none", "no", "off", "")):
            return None
    elif isinstance(prep, dict) and "clahe" in str(prep.get("method", "")).lower():
        c = prep
    else:
        raise EBSDInputError(
            f"preprocessing {prep!r} recorded in the dataset's provenance cannot be reproduced (need CLAHE settings or "
            "'none'); give it explicitly (--preprocessing clahe|none)",
            path,
            field_name,
        )
    if not isinstance(c, dict):
        raise EBSDInputError(f"unreadable CLAHE record {c!r}", path, f"{field_name}/clahe")
    try:
        return CLAHEConfig(
            clip_limit=float(c.get("clip_limit", 10.0)), tiles=tuple(int(t) for t in c.get("tiles", (4, 4)))
        )
    except (TypeError, ValueError) as exc:
        raise EBSDInputError(f"unreadable CLAHE record {c!r}: {exc}", path, f"{field_name}/clahe") from None
