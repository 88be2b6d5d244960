"""Build train / validation / test EBSD pattern sets from master patterns (GPL ``emsoft`` extra).

Output directory (written atomically: it appears complete or not at all)::

    out_dir/train.h5, val.h5, test.h5   EMsoft EMEBSD layout (kikuchipy.load opens them), uint8 patterns
    out_dir/dataset.json                what was built: counts, sampling, voltages, sources, detector,
                                        preprocessing, seed, timing, package versions

Crystal: a phase (``phase=``: CIF file, shipped material name or orix ``Phase``, see :mod:`ebsd_keras.crystal`), or
the master pattern's own crystal (Ni for the defaults). Its name, space group, point and Laue group are recorded in
``dataset.json`` and every file's metadata; master patterns of another crystal are refused.

Orientations: each split is its own cubochoric grid of the phase's Laue-group fundamental zone (m-3m for Ni; distinct,
co-prime densities, see :func:`ebsd_keras.data.sampling.split_densities`), or the training orientations come from an
EMsoft angle file. Orientations of validation / test that coincide (up to the crystal's symmetry) with an earlier split
are removed, so no orientation is in two splits. ``max_per_split`` draws a deterministic random subset of each split.

Voltages: one voltage gives files with a per-file voltage (NML ``energymax``). Several voltages repeat the split's
orientation list in consecutive blocks, one per voltage in the order given, with the per-pattern dataset
``EMData/EBSD/AcceleratingVoltage`` (kV) — the authors' layout.

Patterns: projected with kikuchipy, each rescaled on its own to [0, 255] uint8, then CLAHE (clip limit 10, 4 x 4 tiles
by default) unless disabled. Patterns are streamed batch by batch to the files, so memory does not grow with the
dataset size (EMsoft's 333,227-orientation set included).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ebsd_keras._atomic import atomic_dir
from ebsd_keras._versions import package_versions
from ebsd_keras.checks import check_voltage_kv
from ebsd_keras.data.preprocess import CLAHEConfig
from ebsd_keras.data.preprocess import clahe as apply_clahe
from ebsd_keras.errors import EBSDInputError
from ebsd_keras.serialization import portable_path

__all__ = ["SPLITS", "SOURCES", "build_dataset", "resolve_sources"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: ``source`` values: "auto" = EMsoft dynamical where a master pattern exists (a given file, or the embedded Ni 20 kV
#: one when every voltage is 20 kV), otherwise kinematical for *all* voltages; "ebsdsim" = dynamical master patterns
#: simulated at each voltage by the optional ``ebsdsim`` package (needs a Vulkan / WebGPU device).
SOURCES = ("auto", "emsoft", "kinematical", "ebsdsim")
_PACKAGES = ("kikuchipy", "orix", "diffsims", "numpy", "h5py", "scipy", "numba", "tqdm")
#: Cubochoric grids hold about this many orientations per semi-edge step cubed (EMsoft: N = 100 -> 333,227).
_CUBOCHORIC_DENSITY = 0.333227
#: The paper's preprocessing: CLAHE with clip limit 10 on 4 x 4 tiles (frozen, so safe as a default argument).
DEFAULT_CLAHE = CLAHEConfig()


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------


def _voltages(energy_kv, voltages) -> list[float]:
    vals = [energy_kv] if voltages is None else list(np.atleast_1d(voltages))
    if not vals:
        raise EBSDInputError("no voltage given", None, "voltages")
    v = check_voltage_kv(vals, None, "voltages").reshape(-1)
    if len(np.unique(np.round(v, 6))) != len(v):
        raise EBSDInputError(f"voltages repeat: {v.tolist()} kV", None, "voltages")
    return [float(x) for x in v]


def resolve_sources(
    voltages, master_pattern=None, source: str = "auto", allow_mixed: bool = False
) -> list[tuple[float, str, object]]:
    """Decide the master-pattern source of every voltage, before anything is loaded.

    Parameters
    ----------
    voltages
        Voltages in kV.
    master_pattern
        ``None``, one EMsoft master-pattern file (used at every voltage: it must hold each energy, e.g. a file with
        several energy bins), or a dict ``{kV: file}`` (one file per voltage).
    source
        "auto", "emsoft", "kinematical" or "ebsdsim" (see :data:`SOURCES`).
    allow_mixed
        Allow different kinds at different voltages (e.g. EMsoft files for some voltages, kinematical for the rest;
        with "auto" and no file, the embedded EMsoft pattern at 20 kV and kinematical elsewhere). Off by default:
        a model trained on mixed sources learns the difference between simulators as a voltage effect.

    Returns
    -------
    list
        ``(kV, kind, file)`` per voltage: kind "emsoft-dynamical" (file ``None`` = the embedded Ni 20 kV master
        pattern), "kinematical" or "ebsdsim-dynamical" (file ``None``: simulated). Without ``allow_mixed`` all
        voltages get the same kind.

    Raises
    ------
    EBSDInputError
        Unknown source, a file with source "kinematical" / "ebsdsim", voltages without a file (unless mixing is
        allowed), or no EMsoft master pattern for a voltage with source "emsoft".
    """
    if source not in SOURCES:
        raise EBSDInputError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}", None, "source")
    per_kv = _files_per_voltage(voltages, master_pattern, allow_mixed)
    given = {v for v, p in per_kv.items() if p is not None}
    if source in ("kinematical", "ebsdsim"):
        if given:
            raise EBSDInputError(f"a master-pattern file was given with source={source!r}", None, "source")
        kind = "kinematical" if source == "kinematical" else "ebsdsim-dynamical"
        return [(v, kind, None) for v in voltages]
    embedded_ok = [v for v in voltages if abs(v - 20.0) < 1e-6]
    if len(given) == len(voltages) or (not given and len(embedded_ok) == len(voltages)):
        return [(v, "emsoft-dynamical", per_kv[v]) for v in voltages]
    if allow_mixed:
        plan = []
        for v in voltages:
            if v in given or abs(v - 20.0) < 1e-6:
                plan.append((v, "emsoft-dynamical", per_kv[v]))
            elif source == "emsoft":
                raise EBSDInputError(f"no EMsoft master pattern for {v:g} kV", None, "master_pattern")
            else:
                plan.append((v, "kinematical", None))
        kinds = sorted({k for _, k, _ in plan})
        if len(kinds) > 1:
            logger.warning("mixing master-pattern sources (allowed explicitly): %s", ", ".join(kinds))
        return plan
    if given:  # some voltages have files, others not: refuse rather than fill them in silently
        missing = [v for v in voltages if v not in given]
        raise EBSDInputError(
            f"no master-pattern file for {', '.join(f'{v:g}' for v in missing)} kV (filling them in from another "
            "source would mix sources; allow that explicitly with allow_mixed / --allow-mixed-sources)",
            None,
            "master_pattern",
        )
    if source == "emsoft":
        raise EBSDInputError(
            "the embedded EMsoft master pattern is Ni 20 kV only; give a master-pattern file for "
            f"{', '.join(f'{v:g}' for v in voltages)} kV or use the kinematical source",
            None,
            "master_pattern",
        )
    logger.info(
        "no dynamical master pattern for %s kV: using the kinematical simulator for every voltage",
        ", ".join(f"{v:g}" for v in voltages),
    )
    return [(v, "kinematical", None) for v in voltages]


def _files_per_voltage(voltages, master_pattern, allow_mixed: bool) -> dict:
    """{kV: file or None} from one file (every voltage) or a {kV: file} dict (checked against the voltages)."""
    if not isinstance(master_pattern, dict):
        return {v: master_pattern for v in voltages}
    files = {}
    for kv, path in master_pattern.items():
        files[round(float(check_voltage_kv(kv, path, "master_pattern voltage")), 6)] = path
    missing = [v for v in voltages if files.get(round(v, 6)) is None]
    if missing and not allow_mixed:
        hint = (
            ""
            if len(missing) == len(voltages)
            else (" (another source for them would mix sources; allow that with allow_mixed / --allow-mixed-sources)")
        )
        raise EBSDInputError(
            f"no master-pattern file for {', '.join(f'{v:g}' for v in missing)} kV{hint}", None, "master_pattern"
        )
    extra = sorted(set(files) - {round(v, 6) for v in voltages})
    if extra:
        raise EBSDInputError(
            f"master-pattern files for {', '.join(f'{v:g}' for v in extra)} kV, which are not among the voltages",
            None,
            "master_pattern",
        )
    return {v: files.get(round(v, 6)) for v in voltages}


def _load_source(kv: float, kind: str, path, half_size: int, progress: bool, phase=None):
    from ebsd_keras.data.simulate import KINEMATICAL_HALF_SIZE, kinematical_master_pattern, load_master_pattern

    if kind == "kinematical":
        size = KINEMATICAL_HALF_SIZE if half_size is None else half_size
        return kinematical_master_pattern(kv, half_size=size, progress=progress, phase=phase)
    if kind == "ebsdsim-dynamical":
        from ebsd_keras.data.simulate import ebsdsim_master_pattern

        return ebsdsim_master_pattern(kv, half_size=half_size, progress=progress)
    return load_master_pattern(path, kv)


def _read_orientations(value, what: str) -> tuple[np.ndarray, dict]:
    """An angle file path or an (N, 4) quaternion array -> (quaternions, sampling record)."""
    from ebsd_keras.io.emsoft import read_angle_file
    from ebsd_keras.orientation import normalize_quaternions

    if isinstance(value, (str, Path)):
        q = read_angle_file(value)
        return q, {"method": "angle-file", "file": portable_path(value), "n_read": int(len(q))}
    try:
        q = normalize_quaternions(value)
    except EBSDInputError as exc:
        raise EBSDInputError(exc.message, None, what) from None
    return q, {"method": "given", "n_read": int(len(q))}


def _max_for(max_per_split, split: str):
    if isinstance(max_per_split, dict):
        value = max_per_split.get(split)
    else:
        value = max_per_split
    if value is not None and (int(value) != value or value < 1):
        raise EBSDInputError(f"maximum per split must be a positive integer, got {value!r}", None, f"max_{split}")
    return None if value is None else int(value)


def _orientations(n_train, n_val, n_test, train_orientations, max_per_split, seed, tol_deg, symmetry="m-3m"):
    """Orientation lists of the three splits (fundamental zone of the Laue group ``symmetry``) and how each was made."""
    from ebsd_keras.data.sampling import cubochoric_fundamental_zone, remove_shared, split_densities, subsample
    from ebsd_keras.orientation import symmetry_operators

    seeds = np.random.SeedSequence(seed).generate_state(len(SPLITS))
    out, records = {}, {}
    if train_orientations is not None:
        q, rec = _read_orientations(train_orientations, "train_orientations")
        density = _CUBOCHORIC_DENSITY * 24 / len(symmetry_operators(symmetry))  # zone K times smaller than -1's
        ref_steps = max(2, int(round((len(q) / density) ** (1 / 3))))
    else:
        ref_steps = int(n_train)
        q, rec = None, None
    dens = split_densities(ref_steps)
    steps = {
        "train": dens.train,
        "val": dens.val if n_val is None else n_val,
        "test": dens.test if n_test is None else n_test,
    }
    for i, split in enumerate(SPLITS):
        if split == "train" and q is not None:
            grid, record = q, rec
        else:
            grid = cubochoric_fundamental_zone(steps[split], symmetry=symmetry)
            record = {
                "method": "cubochoric",
                "point_group": symmetry,
                "semi_edge_steps": int(steps[split]),
                "grid_size": int(len(grid)),
            }
        removed = 0
        for other in SPLITS[:i]:  # no orientation in two splits (checked before subsampling: subsets stay disjoint)
            grid, gone = remove_shared(grid, out[other], tol_deg=tol_deg, symmetry=symmetry)
            removed += len(gone)
        record["removed_shared_with_earlier_splits"] = int(removed)
        cap = _max_for(max_per_split, split)
        if cap is not None and cap < len(grid):
            grid = subsample(grid, cap, seed=int(seeds[i]))
            record["subsampled"] = {"max": cap, "seed": int(seeds[i])}
        if len(grid) == 0:
            raise EBSDInputError(f"the {split} split has no orientations left", None, split)
        out[split], records[split] = np.ascontiguousarray(grid, dtype=np.float64), record
    # remove_shared compares full grids; subsampling afterwards keeps the splits disjoint
    return out, records


def _versions() -> dict:
    return package_versions(_PACKAGES)


def _source_record(source: dict) -> dict:
    keep = (
        "kind",
        "file",
        "embedded",
        "program",
        "energy_kv",
        "npx",
        "half_size",
        "reflectors",
        "scaling",
        "space_group",
        "lattice_parameters_nm",
    )
    return {k: source[k] for k in keep if k in source}


# ----------------------------------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------------------------------


def build_dataset(
    out_dir,
    n_train: int = 100,
    n_val: int | None = None,
    n_test: int | None = None,
    *,
    train_orientations=None,
    max_per_split: int | dict | None = None,
    master_pattern=None,
    energy_kv: float = 20.0,
    voltages=None,
    source: str = "auto",
    allow_mixed_sources: bool = False,
    detector: dict | None = None,
    clahe: CLAHEConfig | None = DEFAULT_CLAHE,
    seed: int = 0,
    batch_size: int = 2048,
    overwrite: bool = False,
    progress: bool = True,
    kinematical_half_size: int | None = None,
    ebsdsim_half_size: int = 60,
    shared_tol_deg: float = 1e-4,
    phase=None,
) -> dict:
    """Build ``train.h5``, ``val.h5``, ``test.h5`` and ``dataset.json`` in ``out_dir``.

    Parameters
    ----------
    out_dir
        Output directory; created atomically (nothing is left there if the build fails).
    n_train
        Cubochoric semi-edge steps of the training grid (EMsoft N = 100 -> 333,227 orientations, ~1.4 deg apart).
    n_val, n_test
        Semi-edge steps of the validation / test grids; default :func:`~ebsd_keras.data.sampling.split_densities`
        (about n_train / 2, co-prime: 100 -> 51 and 49, each ~12 % of the training count). With
        ``train_orientations`` the defaults follow the density that gives about as many orientations as the file.
    train_orientations
        EMsoft angle file (``eu`` degrees or ``qu``) or (N, 4) quaternions used for training instead of a grid.
    max_per_split
        Keep at most this many orientations per split (deterministic random subset); an int for every split or a
        dict ``{"train": ..., "val": ..., "test": ...}``. Per voltage: a split has max * len(voltages) patterns.
    master_pattern
        EMsoft master-pattern file (used at every voltage), a dict ``{kV: file}``, or ``None``.
    energy_kv
        Voltage in kV when ``voltages`` is not given (default 20).
    voltages
        Several voltages in kV: the orientation list of each split is repeated once per voltage, in this order.
    source
        "auto" (default), "emsoft", "kinematical" or "ebsdsim": see :func:`resolve_sources`.
    allow_mixed_sources
        Allow different master-pattern kinds at different voltages (recorded per voltage; off by default).
    detector
        Keyword arguments of :func:`ebsd_keras.data.simulate.make_detector`: ``shape`` (rows, cols), ``pc`` Bruker
        (PCx, PCy, PCz), ``tilt_deg``, ``sample_tilt_deg``, ``px_size_um``, ``binning``. Default 60 x 60,
        PC (0.5, 0.5, 0.6), tilts 10 and 70 deg, 50 um, binning 1.
    clahe
        CLAHE settings applied after the per-pattern rescaling to uint8; ``None`` for none.
    seed
        Seed of the subsampling (the grids and projections are deterministic).
    batch_size
        Patterns projected and written at a time.
    overwrite
        Replace an existing ``out_dir`` (only once the new one is complete).
    progress
        Show progress bars.
    ebsdsim_half_size
        Lambert half side of ebsdsim master patterns (60 -> 121 x 121, minutes per voltage on a CPU).
    kinematical_half_size
        Half side of kinematical master patterns, pixels (default
        :data:`~ebsd_keras.data.simulate.KINEMATICAL_HALF_SIZE`, fine enough for hard band edges to stop snapping to
        the grid).
    shared_tol_deg
        Disorientation (degrees) under which orientations of two splits count as the same.
    phase
        The crystal: a CIF file, a shipped material name ("ni", "fe", "ti", "tio2", "al2o3") or an orix ``Phase``;
        ``None`` for the master pattern's crystal (Ni by default). Orientations sample its Laue group's fundamental
        zone; without a master-pattern file a non-Ni phase is simulated kinematically; master patterns of another
        crystal are refused.

    Returns
    -------
    dict
        The contents of ``dataset.json``.
    """
    from ebsd_keras._atomic import check_writable
    from ebsd_keras.checks import constant_pattern_count
    from ebsd_keras.data.simulate import (
        DEFAULT_DETECTOR,
        detector_to_dict,
        make_detector,
        master_pattern_source,
        project_patterns,
    )
    from ebsd_keras.io.emsoft import EMEBSDWriter
    from ebsd_keras.orientation import quaternion_to_euler

    t0 = time.perf_counter()
    phase_obj, source = _phase_and_source(phase, master_pattern, source)
    check_writable(out_dir, "dir", overwrite, "-o/--output")  # before the (minutes of) projection
    volts = _voltages(energy_kv, voltages)
    plan = resolve_sources(volts, master_pattern, source, allow_mixed=allow_mixed_sources)
    for _, _, path in plan:
        if path is not None:
            _check_master_file(path)
    det_kwargs = dict(DEFAULT_DETECTOR)
    det_kwargs.update(detector or {})
    unknown = set(det_kwargs) - set(DEFAULT_DETECTOR)
    if unknown:
        raise EBSDInputError(f"unknown detector settings {sorted(unknown)}", None, "detector")
    det = make_detector(**det_kwargs)
    det_dict = detector_to_dict(det)
    if clahe is not None and not isinstance(clahe, CLAHEConfig):
        raise EBSDInputError(f"clahe must be a CLAHEConfig or None, got {type(clahe).__name__}", None, "clahe")
    if int(batch_size) != batch_size or batch_size < 1:
        raise EBSDInputError(f"batch_size must be a positive integer, got {batch_size!r}", None, "batch_size")
    preprocessing = {
        "rescale": "per pattern: own [min, max] -> [0, 255], uint8",
        "clahe": "none" if clahe is None else clahe.to_dict(),
    }

    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        # All master patterns first (a few MB each): every file's metadata then names its sources, and their crystal
        # decides the orientation sampling.
        masters = [
            _load_source(
                kv,
                kind,
                path,
                ebsdsim_half_size if kind == "ebsdsim-dynamical" else kinematical_half_size,
                False,
                phase_obj,
            )
            for kv, kind, path in plan
        ]
        phase_rec = _dataset_phase(phase_obj, masters, plan)
        quats, sampling = _orientations(
            n_train, n_val, n_test, train_orientations, max_per_split, seed, shared_tol_deg, phase_rec["laue_group"]
        )
        eulers = {s: quaternion_to_euler(q) for s, q in quats.items()}
        n_volt = len(volts)
        counts = {s: len(q) * n_volt for s, q in quats.items()}
        splits_meta = {}
        timing = {"projection_and_writing_s": {}}
        sources = [_source_record(master_pattern_source(mp)) for mp in masters]
        kinds = sorted({src["kind"] for src in sources})
        if len(kinds) != 1 and not allow_mixed_sources:  # resolve_sources makes this impossible; keep it so
            raise EBSDInputError(f"mixed master-pattern sources: {[src['kind'] for src in sources]}")
        source_kind = kinds[0] if len(kinds) == 1 else "mixed"
        first = master_pattern_source(masters[0])
        layout = "voltage blocks over one orientation list" if n_volt > 1 else "single voltage"
        with contextlib.ExitStack() as stack:
            writers = {}
            for split in SPLITS:
                splits_meta[split] = {
                    "file": f"{split}.h5",
                    "n_patterns": counts[split],
                    "n_orientations": len(quats[split]),
                    "sampling": sampling[split],
                }
                meta = {
                    "split": split,
                    "phase": phase_rec,
                    "preprocessing": preprocessing,
                    "source": {"kind": source_kind, "per_voltage": sources},
                    "sampling": sampling[split],
                    "detector": det_dict,
                    "voltages_kv": volts,
                    "layout": layout,
                    "seed": int(seed),
                }
                writers[split] = stack.enter_context(
                    EMEBSDWriter(
                        tmp / f"{split}.h5",
                        counts[split],
                        tuple(det.shape),
                        detector=det_dict,
                        voltage_kv=None if n_volt > 1 else volts[0],
                        per_pattern_voltage=n_volt > 1,
                        metadata=meta,
                        crystal=first.get("crystal"),
                        **({} if phase_obj is None else {"xtalname": f"{phase_rec['name']}.xtal"}),
                        overwrite=True,
                        nml_extra={"masterfile": str(first.get("file") or first["kind"])},
                    )
                )
            constant = 0  # patterns with every pixel equal: a broken master pattern or detector geometry
            for b, (kv, mp) in enumerate(zip(volts, masters, strict=True)):
                for split in SPLITS:
                    ts = time.perf_counter()
                    m = len(quats[split])
                    for start, pats in project_patterns(
                        mp, quats[split], det, kv, batch_size=batch_size, progress=progress, desc=f"{split} {kv:g} kV"
                    ):
                        constant += constant_pattern_count(pats)
                        if clahe is not None:
                            pats = apply_clahe(pats, clahe)
                        n = len(pats)
                        writers[split].write(
                            b * m + start, pats, eulers[split][start : start + n], voltage_kv=kv if n_volt > 1 else None
                        )
                    timing["projection_and_writing_s"][f"{split}@{kv:g}kV"] = round(time.perf_counter() - ts, 3)
        del masters
        _check_constant(constant, sum(counts.values()), out_dir)
        total = time.perf_counter() - t0
        n_all = sum(counts.values())
        timing.update(
            total_s=round(total, 3), patterns=n_all, patterns_per_s=round(n_all / total, 1) if total else None
        )
        summary = {
            "format": "ebsd_keras.dataset",
            "format_version": 1,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "splits": splits_meta,
            "phase": phase_rec,
            "voltages_kv": volts,
            "layout": "per-voltage blocks of the split's orientation list, EMData/EBSD/AcceleratingVoltage per pattern"
            if n_volt > 1
            else "single voltage (NML energymax)",
            "sources": sources,
            "source_kind": source_kind,
            "detector": det_dict,
            "pattern_shape": [int(s) for s in det.shape],
            "preprocessing": preprocessing,
            "seed": int(seed),
            "batch_size": int(batch_size),
            "shared_tol_deg": float(shared_tol_deg),
            "conventions": "Euler Bunge (phi1, Phi, phi2) radians, passive; quaternions EMsoft P = +1; voltages kV; "
            "PC Bruker fractions",
            "timing": timing,
            "versions": _versions(),
        }
        (tmp / "dataset.json").write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
    logger.info("wrote %s: %s patterns in %.1f s", out_dir, n_all, total)
    return summary


def _check_constant(constant: int, n: int, out_dir) -> None:
    """Refuse a dataset of only constant patterns (nothing to learn); warn when some are constant."""
    if n and constant == n:
        raise EBSDInputError(
            f"all {n} simulated patterns are constant (every pixel equal): check the master pattern and the detector "
            "geometry (pattern centre, tilts)",
            out_dir,
            "EBSDPatterns",
        )
    if constant:
        logger.warning("%d of %d simulated patterns are constant (every pixel equal)", constant, n)


def _check_master_file(path) -> None:
    """A master-pattern file that exists, is a file and is HDF5 -- checked before kikuchipy is even imported."""
    import h5py

    from ebsd_keras.checks import check_input_file

    check_input_file(path, "--master-pattern", "master-pattern file")
    if not h5py.is_hdf5(path):
        raise EBSDInputError(
            "not an HDF5 file (an EMsoft EMEBSDmaster .h5 file is expected; empty, truncated or another format?)",
            path,
            "--master-pattern",
        )


# ----------------------------------------------------------------------------------------------------------------
# Phase
# ----------------------------------------------------------------------------------------------------------------


def _phase_and_source(phase, master_pattern, source: str):
    """The phase object (or None) and the effective source: a non-Ni phase without a file is simulated kinematically
    (the embedded EMsoft master pattern and the ebsdsim source are Ni only)."""
    if phase is None:
        return None, source
    from ebsd_keras.crystal import check_same_phase, load_phase, phase_record

    phase_obj = load_phase(phase)
    try:
        check_same_phase([phase_record(phase_obj), None])
        is_nickel = True
    except EBSDInputError:
        is_nickel = False
    if master_pattern is None and not is_nickel:
        if source in ("emsoft", "ebsdsim"):
            raise EBSDInputError(
                f"the {source} source without a master-pattern file is Ni only; give a master-pattern file of "
                f"{phase_obj.name} or use the kinematical source",
                None,
                "source",
            )
        source = "kinematical"
    return phase_obj, source


def _dataset_phase(phase_obj, masters, plan) -> dict:
    """The dataset's phase record: the given phase, else the master patterns' crystal; all must be the same crystal."""
    from ebsd_keras.crystal import check_same_phase, phase_record
    from ebsd_keras.data.simulate import master_pattern_source

    records = []
    for mp, (_kv, _, path) in zip(masters, plan, strict=True):
        src = master_pattern_source(mp)
        rec = src.get("phase")
        if rec is None and "space_group" in src:  # ebsdsim (Ni) and files whose atoms could not be read
            nm = list(src.get("lattice_parameters_nm") or [])
            rec = {
                "name": str(src.get("kind", "unknown")),
                "space_group": int(src["space_group"]),
                "lattice_parameters_angstrom": [10 * v for v in nm[:3]] + nm[3:],
            }
        records.append((rec, path))
    given = None if phase_obj is None else phase_record(phase_obj)
    recs = ([given] if given is not None else []) + [r for r, _ in records]
    where = next((p for _, p in records if p is not None), None)
    first = check_same_phase(recs, where, "phase")
    if "laue_group" not in first:
        first = phase_record(masters[0].phase)
    return first
