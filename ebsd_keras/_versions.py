"""Versions of the packages that produced a dataset or a report (recorded for provenance)."""

from __future__ import annotations

from ebsd_keras import __version__

__all__ = ["package_versions"]


def package_versions(names) -> dict:
    """``{"ebsd_keras": ..., name: version or None for each of names, "opencv": ...}``."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"ebsd_keras": __version__}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    try:
        import cv2

        out["opencv"] = cv2.__version__
    except ImportError:  # pragma: no cover
        out["opencv"] = None
    return out
