"""Voltage-dependent evaluation: the wrong-voltage indexing table (paper Fig 5) and band width versus kV.

Wrong-voltage table
    Patterns made at voltage V_in (the test set's true patterns, and a model's generated patterns for the same
    orientations and voltage) are dictionary-indexed and refined (BOBYQA, NCC, identical preprocessing) against
    dictionaries projected from master patterns at every voltage V_dict. Each cell is the mean disorientation (deg)
    to the true orientation. The paper's finding: the error is smallest on the diagonal (V_dict = V_in), i.e. the
    patterns carry their voltage. The master patterns at V_dict are of the test set's own kind (kinematical ones are
    simulated at any voltage; EMsoft files must hold that energy).

Band width versus kV
    For each pattern the angle of every detector pixel to the nearest lattice plane of a family ({111}, {200},
    {220}) is known from the orientation and the detector geometry. Pattern intensities averaged in bins of that
    angle (0.05 deg) over many patterns give the family's mean band profile; the band half-width is the half level
    of an error-function step fitted within +-0.5 deg of the profile's steepest fall (exact for sharp edges, and
    independent of how much a master pattern's pixels blur the edge), and the band width is twice that, in degrees.
    Measured the same way on true and generated patterns at each voltage — on raw projected intensities when the
    model's raw projections are given (CLAHE moves blurred edges) — and set beside the kinematical 2 theta_B(V).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ebsd_keras._atomic import atomic_path
from ebsd_keras.errors import EBSDInputError

__all__ = [
    "BAND_FAMILIES",
    "band_profile_widths",
    "wrong_voltage_table",
    "band_width_curve",
    "raw_model_generator",
    "evaluate_voltage",
    "save_voltage_figures",
]

#: Families whose band widths are measured (the strongest fcc bands).
BAND_FAMILIES = ((1, 1, 1), (2, 0, 0), (2, 2, 0))
#: Angle bins of the band profiles, degrees.
PROFILE_BIN_DEG = 0.05
PROFILE_MAX_DEG = 5.0
#: Half width of the angle window (deg) over which a band edge (error-function step) is fitted.
EDGE_HALF_WINDOW_DEG = 0.5


# ----------------------------------------------------------------------------------------------------------------
# Band widths
# ----------------------------------------------------------------------------------------------------------------


def _geometry(detector: dict):
    """The :class:`~ebsd_keras.simulations.geometry.DetectorGeometry` of a recorded detector (extra keys ignored)."""
    from ebsd_keras.simulations.geometry import DetectorGeometry

    return DetectorGeometry(
        shape=tuple(detector["shape"]),
        pc=tuple(detector["pc"]),
        tilt_deg=float(detector["tilt_deg"]),
        sample_tilt_deg=float(detector["sample_tilt_deg"]),
    )


def band_profile_widths(patterns, quaternions, detector: dict, families=BAND_FAMILIES) -> dict:
    """Mean band profiles and band widths (degrees) of a set of patterns at one voltage.

    Parameters
    ----------
    patterns
        (N, H, W) patterns (any intensity scale; each is standardised to zero mean, unit variance).
    quaternions
        (N, 4) their orientations (the project's convention).
    detector
        Detector dictionary (Bruker ``pc``, ``shape``, ``tilt_deg``, ``sample_tilt_deg``).
    families
        (hkl) plane families.

    Returns
    -------
    dict
        ``{"111": {"width_deg", "profile", "angles_deg"}, ...}``: band width (twice the edge angle) and the mean
        profile (standardised intensity per angle bin).
    """
    from ebsd_keras.simulations.physics import cubic_plane_normals

    x = np.asarray(patterns, np.float64).reshape(len(patterns), -1)
    x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-12)
    from ebsd_keras.simulations.geometry import direction_cosines
    from ebsd_keras.simulations.projection import quaternion_to_matrix

    dirs = direction_cosines(_geometry(detector))  # (H*W, 3) sample-frame pixel directions, float64
    if dirs.shape[0] != x.shape[1]:
        raise EBSDInputError(f"patterns have {x.shape[1]} pixels, the detector {dirs.shape[0]}", None, "detector")
    rot = np.asarray(quaternion_to_matrix(np.asarray(quaternions, np.float64)))  # active R(q), as the projection
    crystal = np.einsum("nij,pj->npi", rot, dirs)  # (N, P, 3) crystal-frame pixel directions
    edges = np.arange(0.0, PROFILE_MAX_DEG + 1e-9, PROFILE_BIN_DEG)
    centres = 0.5 * (edges[1:] + edges[:-1])
    out = {}
    for hkl in families:
        normals, _, _ = cubic_plane_normals([hkl])
        cos = np.abs(crystal @ normals.T).min(-1)  # sine of the angle to the nearest plane of the family
        angle = np.degrees(np.arcsin(np.clip(cos, 0.0, 1.0)))
        which = np.digitize(angle.ravel(), edges) - 1
        ok = (which >= 0) & (which < len(centres))
        sums = np.bincount(which[ok], weights=x.ravel()[ok], minlength=len(centres))
        counts = np.bincount(which[ok], minlength=len(centres))
        profile = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        out["".join(str(i) for i in hkl)] = {
            "width_deg": 2.0 * _edge_angle(centres, profile),
            "angles_deg": centres.tolist(),
            "profile": profile.tolist(),
        }
    return out


def _steepest_fall(angles: np.ndarray, p: np.ndarray) -> float:
    """Angle of the steepest fall of a (lightly smoothed) band profile, refined by a parabola (degrees)."""
    kernel = np.array([1.0, 2.0, 3.0, 2.0, 1.0]) / 9.0  # ~0.2 deg: smooths sampling noise, not the edge
    smooth = np.convolve(np.pad(p, 2, mode="edge"), kernel, mode="valid")
    slope = np.gradient(smooth, angles)
    limit = np.searchsorted(angles, 3.5)  # the first band edge lies within 3.5 deg for 10-30 kV Ni
    k = int(np.argmin(slope[:limit]))
    if 0 < k < limit - 1:
        y0, y1, y2 = slope[k - 1], slope[k], slope[k + 1]
        denom = y0 - 2 * y1 + y2
        shift = 0.5 * (y0 - y2) / denom if denom != 0 else 0.0
        return float(angles[k] + np.clip(shift, -0.5, 0.5) * (angles[1] - angles[0]))
    return float(angles[k])


def _edge_angle(angles: np.ndarray, profile: np.ndarray, half_window_deg: float = EDGE_HALF_WINDOW_DEG) -> float:
    """Band edge of a mean band profile: the half-level point of an error-function step fitted near the fall (deg).

    The steepest fall alone seeds the fit: on a blurred edge (a master pattern's finite pixels) the slope is flat
    over a ramp of ~0.3-0.5 deg, so its maximum wanders by several per cent between two patterns sets with the same
    edge. The fitted step ``b + h erfc((a - e) / (sqrt(2) s)) / 2`` over +-``half_window_deg`` puts the edge ``e`` at
    the half level of the fall, independent of the blur ``s``, and uses the whole ramp (exact on sharp edges).
    """
    from scipy.optimize import curve_fit
    from scipy.special import erfc

    angles = np.asarray(angles, np.float64)
    p = np.asarray(profile, np.float64)
    good = np.isfinite(p)
    p = np.interp(angles, angles[good], p[good])
    seed = _steepest_fall(angles, p)
    near = np.abs(angles - seed) <= half_window_deg
    a, y = angles[near], p[near]
    if a.size < 6:
        return seed

    def step(x, b, h, e, s):
        return b + 0.5 * h * erfc((x - e) / (math.sqrt(2.0) * s))

    p0 = [y[-3:].mean(), max(y[:3].mean() - y[-3:].mean(), 1e-6), seed, 0.1]
    lower = [-np.inf, 0.0, seed - half_window_deg, 0.005]
    upper = [np.inf, np.inf, seed + half_window_deg, 1.0]
    try:
        popt, _ = curve_fit(step, a, y, p0=p0, bounds=(lower, upper), maxfev=5000)
    except (RuntimeError, ValueError):  # no step-like fall here: keep the steepest-fall estimate
        return seed
    return float(popt[2])


def _raw_true_patterns(test_set, quaternions, kv: float, batch: int = 256) -> np.ndarray:
    """Raw projections (N, H, W) of the test set's own master pattern at ``kv`` (before any contrast step)."""
    from ebsd_keras.simulations.projection import LambertProjector

    det = test_set.metadata["detector"]
    mp = _master_at(test_set.metadata, kv, test_set.description.get("path"))
    data = np.asarray(mp.data, np.float32)
    north, south = (data[-2], data[-1]) if data.ndim >= 3 else (data, data)  # an upper hemisphere serves both
    projector = LambertProjector(_geometry(det), (north.shape[0] - 1) // 2)
    q = np.asarray(quaternions, np.float32)
    return np.concatenate([np.asarray(projector(north, south, q[i : i + batch])) for i in range(0, len(q), batch)])


def raw_model_generator(model):
    """``fn(quaternion, voltage_kv) -> (B, H, W)`` raw projected intensities of a physics-decoder model, or ``None``.

    Only decoders that project a master pattern (``decoder.project``) have raw intensities; others return ``None``
    (their band widths are then measured on the generated patterns as they are).
    """
    project = getattr(getattr(model, "decoder", None), "project", None)
    if project is None:
        return None
    use_voltage = bool(model.model_config.use_voltage)

    def fn(quaternion, voltage_kv):
        attrs = {"quaternion": np.asarray(quaternion, np.float32).reshape(-1, 4)}
        if use_voltage:
            attrs["voltage_kv"] = np.asarray(voltage_kv, np.float32).reshape(-1)
        out = np.asarray(project(attrs))
        return out[..., 0] if out.ndim == 4 else out

    return fn


def _theory_width_deg(kv: float, hkl, lattice_nm: float = 0.35236) -> float:
    from ebsd_keras.simulations.physics import bragg_angle_rad

    d = lattice_nm / math.sqrt(sum(int(i) ** 2 for i in hkl))
    return float(2.0 * np.degrees(bragg_angle_rad(kv, d)))


def band_width_curve(
    test_sets, generate_fn=None, families=BAND_FAMILIES, batch: int = 256, *, raw_generate_fn=None
) -> dict:
    """Band widths versus kV of true (and generated) patterns, with the kinematical theory 2 theta_B.

    Parameters
    ----------
    test_sets
        :class:`~ebsd_keras.io.testset.TestSet` objects (e.g. the seen- and the unseen-voltage test sets).
    generate_fn
        ``fn(quaternion (B, 4), voltage_kv (B,)) -> (B, H, W)`` in [0, 1], or ``None`` for true patterns only.
    raw_generate_fn
        ``fn(quaternion, voltage_kv) -> (B, H, W)`` raw projected intensities of the model (before its contrast
        step; :func:`raw_model_generator`). When given, widths are measured on raw intensities on both sides: the
        generated ones from it, the true ones re-projected from the test set's master pattern at each voltage.
        CLAHE's mapping depends on each pattern's whole content and moves a blurred band edge by up to ~10 %
        (kinematical Ni {111}: raw within 2 % of 2 theta_B, CLAHE'd 3-9 % wider), so raw intensities are the
        sound comparison; without it both sides are measured on the patterns as stored / generated.

    Returns
    -------
    dict
        ``{"voltages_kv": [...], "families": [...], "intensities": "raw" | "as stored", "true": {kv: {hkl: width}},
        "generated": ..., "theory": ..., "relative_error": {kv: {hkl: (gen - true) / true}},
        "max_abs_relative_error"}``.
    """
    raw = raw_generate_fn is not None
    if raw:
        generate_fn = raw_generate_fn
    res = {
        "families": ["".join(map(str, f)) for f in families],
        "intensities": "raw" if raw else "as stored",
        "true": {},
        "theory": {},
        "n": {},
    }
    if generate_fn is not None:
        res.update(generated={}, relative_error={})
    for ts in test_sets:
        det = ts.metadata["detector"]
        for kv in np.unique(np.round(ts.voltage_kv, 3)):
            rows = np.flatnonzero(np.abs(ts.voltage_kv - kv) < 1e-3)
            key = f"{kv:g}"
            q = ts.quaternion[rows]
            truth = _raw_true_patterns(ts, q, float(kv), batch) if raw else ts.patterns[rows]
            true = band_profile_widths(truth, q, det, families)
            res["n"][key] = int(len(rows))
            res["true"][key] = {k: v["width_deg"] for k, v in true.items()}
            res["theory"][key] = {"".join(map(str, f)): _theory_width_deg(float(kv), f) for f in families}
            if generate_fn is not None:
                v = np.full(len(rows), kv, np.float32)
                gen = np.concatenate(
                    [np.asarray(generate_fn(q[i : i + batch], v[i : i + batch])) for i in range(0, len(rows), batch)]
                )
                g = band_profile_widths(gen, q, det, families)
                res["generated"][key] = {k: val["width_deg"] for k, val in g.items()}
                res["relative_error"][key] = {
                    k: (res["generated"][key][k] - res["true"][key][k]) / res["true"][key][k] for k in g
                }
    res["voltages_kv"] = sorted(float(k) for k in res["true"])
    if generate_fn is not None:
        res["max_abs_relative_error"] = float(
            max(abs(e) for per in res["relative_error"].values() for e in per.values())
        )
    return res


# ----------------------------------------------------------------------------------------------------------------
# Wrong-voltage indexing table
# ----------------------------------------------------------------------------------------------------------------


def _master_at(metadata: dict, kv: float, path=None):
    """A master pattern of the test set's own kind at ``kv`` (kinematical ones are simulated at any voltage)."""
    from ebsd_keras.data.simulate import kinematical_master_pattern
    from ebsd_keras.indexing.dictionary import master_pattern_from_metadata

    entries = ((metadata or {}).get("source") or {}).get("per_voltage") or []
    kinds = {e.get("kind") for e in entries}
    if kinds == {"kinematical"}:
        return kinematical_master_pattern(kv, half_size=int(entries[0].get("half_size", 200)))
    return master_pattern_from_metadata(metadata, kv, path)


def wrong_voltage_table(
    test_set,
    generate_fn=None,
    dictionary_voltages=None,
    resolution_deg: float = 2.0,
    refine: bool = True,
    workers: int = 2,
    progress: bool = False,
    batch: int = 256,
) -> dict:
    """Indexing error of patterns at each voltage against dictionaries at each voltage (paper Fig 5).

    Parameters
    ----------
    test_set
        :class:`~ebsd_keras.io.testset.TestSet` (its voltages are the rows).
    generate_fn
        Model generator (see :func:`band_width_curve`), or ``None`` for true patterns only.
    dictionary_voltages
        Columns, kV (default: the test set's voltages).
    resolution_deg
        Dictionary spacing, degrees.
    refine
        Refine (BOBYQA) after DI; the table then holds refined errors.

    Returns
    -------
    dict
        ``{"rows_kv", "columns_kv", "true": {"mean": [[...]], "median": ..., "di_mean": ...}, "generated": ...,
        "n_per_voltage", "resolution_deg", "diagonal_is_minimum": {set: bool}}`` (degrees).
    """
    from ebsd_keras.data.preprocess import CLAHEConfig
    from ebsd_keras.evaluation.metrics import disorientation_stats
    from ebsd_keras.indexing.dictionary import Indexer

    rows_kv = [float(v) for v in np.unique(np.round(test_set.voltage_kv, 3))]
    cols_kv = rows_kv if dictionary_voltages is None else [float(v) for v in dictionary_voltages]
    meta = test_set.metadata
    clahe = (meta.get("preprocessing") or {}).get("clahe")
    clahe_config = None if clahe in (None, "none") else CLAHEConfig(clahe["clip_limit"], tuple(clahe["tiles"]))
    sets = {"true": test_set.patterns.astype(np.float32)}
    if generate_fn is not None:
        q, v = test_set.quaternion, test_set.voltage_kv.astype(np.float32)
        sets["generated"] = np.concatenate(
            [np.asarray(generate_fn(q[i : i + batch], v[i : i + batch])) for i in range(0, len(q), batch)]
        ).astype(np.float32)
    stat_names = ("mean", "median", "di_mean")
    table = {k: {s: np.zeros((len(rows_kv), len(cols_kv))) for s in stat_names} for k in sets}
    for j, kv_dict in enumerate(cols_kv):
        indexer = Indexer(
            _master_at(meta, kv_dict, test_set.description.get("path")),
            meta["detector"],
            kv_dict,
            clahe_config,
            resolution_deg=resolution_deg,
            progress=progress,
        )
        for i, kv_in in enumerate(rows_kv):
            rows = np.flatnonzero(np.abs(test_set.voltage_kv - kv_in) < 1e-3)
            stack = np.concatenate([sets[k][rows] for k in sets])
            q_di, _ = indexer.dictionary_index(stack)
            q_found = q_di
            if refine:
                desc = f"{kv_in:g} vs {kv_dict:g} kV"
                q_found = indexer.refine_bobyqa(stack, q_di, workers=workers, desc=desc).quaternion
            err, _ = disorientation_stats(np.concatenate([test_set.quaternion[rows]] * len(sets)), q_found)
            for s, name in enumerate(sets):
                part = slice(s * len(rows), (s + 1) * len(rows))
                table[name]["mean"][i, j] = float(np.mean(err[part]))
                table[name]["median"][i, j] = float(np.median(err[part]))
                _, di_part = disorientation_stats(test_set.quaternion[rows], q_di[part])
                table[name]["di_mean"][i, j] = float(di_part["mean"])
        del indexer
    out = {
        "rows_kv": rows_kv,
        "columns_kv": cols_kv,
        "resolution_deg": float(resolution_deg),
        "refined": bool(refine),
        "n_per_voltage": {f"{kv:g}": int(np.sum(np.abs(test_set.voltage_kv - kv) < 1e-3)) for kv in rows_kv},
    }
    for name, stats in table.items():
        out[name] = {s: m.tolist() for s, m in stats.items()}
        if rows_kv == cols_kv:
            m = stats["mean"]
            out.setdefault("diagonal_is_minimum", {})[name] = bool(
                all(m[i, i] <= m[i].min() + 1e-12 for i in range(len(rows_kv)))
            )
    return out


# ----------------------------------------------------------------------------------------------------------------
# Figures, report
# ----------------------------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_voltage_figures(results: dict, out_dir) -> list[Path]:
    """``wrong_voltage_table.png`` (one heat map per pattern set) and ``band_width_vs_kv.png``."""
    plt = _plt()
    out_dir = Path(out_dir)
    written = []
    table = results.get("wrong_voltage")
    if table:
        names = [k for k in ("true", "generated") if k in table]
        fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 4.0), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            m = np.asarray(table[name]["mean"])
            norm = _log_norm(m)
            im = ax.imshow(m, cmap="viridis_r", norm=norm)
            for i in range(m.shape[0]):
                for j in range(m.shape[1]):
                    light = norm(max(m[i, j], norm.vmin)) < 0.5  # small errors are drawn in light colours
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7, color="k" if light else "w")
            ax.set_xticks(range(m.shape[1]), [f"{v:g}" for v in table["columns_kv"]])
            ax.set_yticks(range(m.shape[0]), [f"{v:g}" for v in table["rows_kv"]])
            ax.set_xlabel("dictionary voltage (kV)")
            ax.set_ylabel("pattern voltage (kV)")
            what = "refined DI" if table.get("refined") else "DI"
            ax.set_title(f"{name} patterns: {what} error (deg)", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        written.append(_save(fig, out_dir / "wrong_voltage_table.png"))
        plt.close(fig)
    bands = results.get("band_widths")
    if bands:
        kv = np.asarray(bands["voltages_kv"])
        fig, ax = plt.subplots(figsize=(5.6, 4.0))
        fine = np.linspace(kv.min(), kv.max(), 100)
        for c, fam in enumerate(bands["families"]):
            colour = f"C{c}"
            hkl = tuple(int(ch) for ch in fam)
            ax.plot(fine, [_theory_width_deg(v, hkl) for v in fine], color=colour, lw=0.8, ls=":")
            ax.plot(kv, [bands["true"][f"{v:g}"][fam] for v in kv], "o", color=colour, label=f"{{{fam}}} true")
            if "generated" in bands:
                ax.plot(kv, [bands["generated"][f"{v:g}"][fam] for v in kv], "x-", color=colour, ms=7,
                        label=f"{{{fam}}} generated")  # fmt: skip
        ax.set_xlabel("accelerating voltage (kV)")
        ax.set_ylabel("band width (deg)")
        ax.set_title("band width vs kV (dotted: kinematical 2θ_B)", fontsize=9)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        written.append(_save(fig, out_dir / "band_width_vs_kv.png"))
        plt.close(fig)
    return written


def _log_norm(m):
    from matplotlib.colors import LogNorm

    pos = m[m > 0]
    lo = max(float(pos.min()) if pos.size else 1e-3, 1e-3)
    return LogNorm(vmin=lo, vmax=max(float(m.max()), lo * 10))


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path


def _markdown(results: dict) -> str:
    lines = ["# Voltage evaluation", ""]
    table = results.get("wrong_voltage")
    if table:
        what = "refined DI" if table["refined"] else "DI"
        for name in ("true", "generated"):
            if name not in table:
                continue
            lines += [
                f"## Wrong-voltage indexing ({name} patterns; mean {what} error, deg; dictionary "
                f"{table['resolution_deg']:g} deg)",
                "",
                "| pattern kV \\ dictionary kV | " + " | ".join(f"{v:g}" for v in table["columns_kv"]) + " |",
                "|---" * (len(table["columns_kv"]) + 1) + "|",
            ]
            for i, kv in enumerate(table["rows_kv"]):
                cells = [f"**{x:.3f}**" if j == i else f"{x:.3f}" for j, x in enumerate(table[name]["mean"][i])]
                lines.append(f"| {kv:g} | " + " | ".join(cells) + " |")
            lines.append("")
    bands = results.get("band_widths")
    if bands:
        fams = bands["families"]
        head = " | ".join(f"{{{f}}} true | {{{f}}} gen. | {{{f}}} 2θ_B" for f in fams)
        what = "raw projected intensities" if bands.get("intensities") == "raw" else "patterns as stored / generated"
        lines += [
            "## Band width (deg) vs kV",
            "",
            f"Edge: half level of an error-function step fitted to the mean band profile; measured on {what}.",
            "",
            f"| kV | {head} |",
            "|---" * (1 + 3 * len(fams)) + "|",
        ]
        for kv in bands["voltages_kv"]:
            key = f"{kv:g}"
            cells = []
            for f in fams:
                gen = bands.get("generated", {}).get(key, {}).get(f)
                cells += [f"{bands['true'][key][f]:.3f}", "—" if gen is None else f"{gen:.3f}",
                          f"{bands['theory'][key][f]:.3f}"]  # fmt: skip
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        if "max_abs_relative_error" in bands:
            lines += ["", f"Largest |generated − true| / true: {100 * bands['max_abs_relative_error']:.2f} %"]
    return "\n".join(lines) + "\n"


def evaluate_voltage(
    generate_fn,
    test_sources,
    out_dir,
    *,
    n_per_voltage: int = 100,
    band_n_per_voltage: int = 500,
    resolution_deg: float = 2.0,
    refine: bool = True,
    table: bool = True,
    seed: int = 0,
    workers: int = 2,
    progress: bool = False,
    raw_generate_fn=None,
) -> dict:
    """Wrong-voltage table (first test source) and band widths (all sources); writes voltage.json / .md / PNGs.

    Parameters
    ----------
    generate_fn
        Model generator or ``None`` (true patterns only).
    test_sources
        Test sources accepted by :func:`ebsd_keras.io.testset.load_test_set` (the first gives the table).
    out_dir
        Directory for ``voltage.json``, ``voltage.md``, ``wrong_voltage_table.png``, ``band_width_vs_kv.png``.
    n_per_voltage
        Patterns per voltage in the table (a seeded subset); ``band_n_per_voltage`` for band widths.
    raw_generate_fn
        The model's raw projections (:func:`raw_model_generator`): band widths are then measured on raw
        intensities (see :func:`band_width_curve`).
    """
    from ebsd_keras.io.testset import load_test_set

    sources = [test_sources] if isinstance(test_sources, (str, Path)) else list(test_sources)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"test_sources": [str(s) for s in sources]}
    band_sets = [_per_voltage_subset(load_test_set(s, n=None, seed=seed), band_n_per_voltage, seed) for s in sources]
    results["band_widths"] = band_width_curve(band_sets, generate_fn, raw_generate_fn=raw_generate_fn)
    if table:
        ts = _per_voltage_subset(band_sets[0], n_per_voltage, seed)
        results["wrong_voltage"] = wrong_voltage_table(
            ts, generate_fn, resolution_deg=resolution_deg, refine=refine, workers=workers, progress=progress
        )
    with atomic_path(out_dir / "voltage.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    with atomic_path(out_dir / "voltage.md") as tmp:
        tmp.write_text(_markdown(results))
    results["figures"] = [str(p) for p in save_voltage_figures(results, out_dir)]
    return results


def _per_voltage_subset(ts, n: int, seed: int):
    """At most ``n`` patterns per voltage (seeded), so every voltage is represented equally."""
    rng = np.random.default_rng(seed)
    keep = []
    for kv in np.unique(np.round(ts.voltage_kv, 3)):
        rows = np.flatnonzero(np.abs(ts.voltage_kv - kv) < 1e-3)
        keep.append(np.sort(rng.choice(rows, size=min(n, len(rows)), replace=False)))
    return ts.subset(np.concatenate(keep))
