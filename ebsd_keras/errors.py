"""Exceptions raised on bad input.

Every error about user data names the file and the field (HDF5 dataset, TFRecord feature, CLI option) so that a
materials scientist can find what is wrong without reading a traceback. The CLI turns these into a one-line message
and a non-zero exit status.
"""

from __future__ import annotations

__all__ = ["EBSDInputError", "SchemaError"]


class EBSDInputError(ValueError):
    """Input data that cannot be interpreted safely.

    Parameters
    ----------
    message
        What is wrong, and where possible what to do about it.
    path
        The file (or directory) the problem is in.
    field
        The dataset, feature, attribute or option the problem is in.
    """

    def __init__(self, message: str, path=None, field: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.field = field
        where = ": ".join(p for p in (self.path, self.field) if p)
        super().__init__(f"{where}: {message}" if where else message)


class SchemaError(EBSDInputError):
    """A TFRecord dataset or model file written with an incompatible schema version."""
