"""The evaluation report's figures (matplotlib, Agg backend), each written atomically as PNG.

The pattern grid (real / generated / difference) is :func:`ebsd_keras.serving.pattern_grid.save_pattern_grid`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["kde_figure", "pixel_histogram_figure", "bce_figure", "orientation_error_figure", "write_figures"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    from ebsd_keras._atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    _plt().close(fig)


def _finish(fig, ax, xlabel: str, ylabel: str, path: Path) -> None:
    """Label the axes, add the legend and save the figure (the common tail of the one-panel figures)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def kde_figure(results: dict, path: Path) -> None:
    from scipy.stats import gaussian_kde

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    per = results["per_pattern"]
    names = [k for k in results["pixel"] if k != "true"] or ["true"]
    xs = np.linspace(0, 1, 400)
    for name in names:
        key = f"{name}_within_15pct" if name != "true" else None
        v = np.asarray(per[key] if key else [results["pixel"]["true"]["within_15pct"]["mean"]], dtype=np.float64)
        if v.size >= 2 and np.ptp(v) > 1e-9:
            ax.plot(xs * 100, gaussian_kde(v)(xs) / 100, label=name)
        else:  # a single value (e.g. 100 % for true patterns): no density to estimate
            ax.axvline(float(v.mean()) * 100, label=f"{name} (all {100 * v.mean():.1f} %)", color="k", ls="--")
    _finish(fig, ax, "pixels within 15 % of the truth (%)", "density (per %)", path)


def pixel_histogram_figure(results: dict, path: Path) -> None:
    plt = _plt()
    h = results["pixel_histogram"]
    edges = np.asarray(h["bin_edges"])
    centers = 0.5 * (edges[1:] + edges[:-1])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key in ("real", "generated"):
        if key in h:
            counts = np.asarray(h[key], dtype=np.float64)
            ax.step(centers, counts / max(counts.sum(), 1), where="mid", label=key)
    _finish(fig, ax, "pixel value", "fraction of pixels", path)


def bce_figure(results: dict, path: Path) -> None:
    plt = _plt()
    per, label = results["per_pattern"], results["label"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    series = {"optimal (target entropy)": per["optimal_bce"]}
    if f"{label}_bce" in per:
        series[f"{label} BCE"] = per[f"{label}_bce"]
    allv = np.concatenate([np.asarray(v, dtype=np.float64) for v in series.values()])
    bins = np.linspace(allv.min(), allv.max() + 1e-9, 40)
    for name, v in series.items():
        ax.hist(np.asarray(v, dtype=np.float64), bins=bins, histtype="step", label=name)
    _finish(fig, ax, "BCE per pattern (nats/pixel)", "patterns", path)


def orientation_error_figure(results: dict, path: Path) -> None:
    plt = _plt()
    per = results["per_pattern"]
    names = [k for k in results["indexing"]]
    kinds = [("di_error_deg", "dictionary indexing")]
    if any(f"{k}_refined_error_deg" in per for k in names):
        kinds.append(("refined_error_deg", "refined"))
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.2), squeeze=False)
    for ax, (kind, title) in zip(axes[0], kinds, strict=True):
        vals = {k: np.asarray(per[f"{k}_{kind}"], dtype=np.float64) for k in names if f"{k}_{kind}" in per}
        allv = np.concatenate(list(vals.values()))
        hi = max(float(np.percentile(allv, 99)), 1e-3)
        bins = np.linspace(0, hi, 40)
        for k, v in vals.items():
            ax.hist(np.clip(v, 0, hi), bins=bins, histtype="step", label=f"{k} (mean {v.mean():.3f}°)")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("disorientation to the input orientation (°)")
        ax.set_ylabel("patterns")
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def write_figures(results: dict, out_dir: Path) -> None:
    """Every histogram figure of a report (JSON-ready ``results``) into ``out_dir``."""
    out_dir = Path(out_dir)
    kde_figure(results, out_dir / "pixel_fraction_kde.png")
    pixel_histogram_figure(results, out_dir / "pixel_histogram.png")
    bce_figure(results, out_dir / "bce_histogram.png")
    orientation_error_figure(results, out_dir / "orientation_error_histogram.png")
