"""Pattern grids written as PNG atomically (matplotlib, Agg backend): ``generate``'s PNG output, the demo's and the
evaluation report's pattern figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ebsd_keras._atomic import atomic_path

__all__ = ["save_pattern_grid"]


def _figure(nrows: int, ncols: int, size: float, label_width: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # constrained layout keeps the row labels, titles and colour bars from running into the patterns
    figsize = (size * ncols + label_width + 0.6, size * nrows + 0.5)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, layout="constrained")
    return plt, fig, axes


#: Characters per line of a wrapped row label (row labels are written horizontally, left of the row).
LABEL_WRAP = 16


def save_pattern_grid(
    path, rows: dict, titles=None, size: float = 1.4, diff_rows: tuple = (), title: str | None = None
) -> Path:
    """Save a grid of patterns, one labelled row per entry of ``rows``.

    Parameters
    ----------
    path
        Output PNG path (written atomically).
    rows
        ``{label: (N, H, W) or (N, H, W, 1) array}`` in [0, 1]; all rows must have the same N. Labels are wrapped
        and written horizontally beside their row, so long labels do not overlap.
    titles
        Optional N column titles; say the unit in them or in ``title`` (e.g. Euler angles in degrees).
    size
        Inches per pattern.
    diff_rows
        Labels of rows that hold signed differences in [-1, 1] (a diverging colour map, with a colour bar).
    title
        Optional figure title (e.g. what the column titles mean and their unit).
    """
    import textwrap

    arrays = {k: np.asarray(v, dtype=np.float32).reshape(len(v), *np.shape(v)[1:3]) for k, v in rows.items()}
    n = {len(v) for v in arrays.values()}
    if len(n) != 1:
        raise ValueError(f"all rows need the same number of patterns, got {sorted(n)}")
    ncols = n.pop()
    labels = {k: textwrap.fill(str(k), LABEL_WRAP) for k in arrays}
    plt, fig, axes = _figure(len(arrays), ncols, size, label_width=0.08 * LABEL_WRAP)
    for r, (label, patterns) in enumerate(arrays.items()):
        diff = label in diff_rows
        for c in range(ncols):
            ax = axes[r, c]
            im = ax.imshow(patterns[c], cmap="RdBu_r" if diff else "gray", vmin=-1 if diff else 0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(labels[label], fontsize=7, rotation=0, ha="right", va="center", labelpad=6)
            if r == 0 and titles is not None:
                ax.set_title(titles[c], fontsize=6)
        if diff:
            fig.colorbar(im, ax=list(axes[r]), shrink=0.9, pad=0.01, aspect=10).ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=8)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
