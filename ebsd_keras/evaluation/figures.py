"""Figures: pattern grids and histograms, written as PNG atomically (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ebsd_keras._atomic import atomic_path

__all__ = ["save_pattern_grid"]


def _figure(nrows: int, ncols: int, size: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.3), squeeze=False)
    return plt, fig, axes


def save_pattern_grid(path, rows: dict, titles=None, size: float = 1.4, diff_rows: tuple = ()) -> Path:
    """Save a grid of patterns, one labelled row per entry of ``rows``.

    Parameters
    ----------
    path
        Output PNG path (written atomically).
    rows
        ``{label: (N, H, W) or (N, H, W, 1) array}`` in [0, 1]; all rows must have the same N.
    titles
        Optional N column titles (e.g. Euler angles in degrees).
    diff_rows
        Labels of rows that hold signed differences in [-1, 1] (shown with a diverging colour map).
    """
    arrays = {k: np.asarray(v, dtype=np.float32).reshape(len(v), *np.shape(v)[1:3]) for k, v in rows.items()}
    n = {len(v) for v in arrays.values()}
    if len(n) != 1:
        raise ValueError(f"all rows need the same number of patterns, got {sorted(n)}")
    ncols = n.pop()
    plt, fig, axes = _figure(len(arrays), ncols, size)
    for r, (label, patterns) in enumerate(arrays.items()):
        for c in range(ncols):
            ax = axes[r, c]
            if label in diff_rows:
                ax.imshow(patterns[c], cmap="RdBu_r", vmin=-1, vmax=1)
            else:
                ax.imshow(patterns[c], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0 and titles is not None:
                ax.set_title(titles[c], fontsize=6)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
