"""Indexing through a shipped model vs kikuchipy's own workflow, on kikuchipy's experimental Ni map and on a
simulated map degraded at several doses (issue 19, deliverables 3 and 4).

Both paths read the same file and preprocess it the same way (static and dynamic background removal); then

- **model**: ``ebsd_keras.indexing.workflow.index_map``: the shipped ni20-physics model re-aimed at the map's detector,
  dictionary indexing against model-made (CLAHE'd) patterns, Gauss-Newton refinement through the model;
- **kikuchipy**: ``EBSD.dictionary_indexing`` against ``EBSDMasterPattern.get_patterns`` of the EMsoft Ni 20 kV
  master pattern on the same cubochoric grid, then ``EBSD.refine_orientation`` (Nelder-Mead, kikuchipy's default).

Each path runs in its own process, so its time and peak resident memory (``ru_maxrss``) are its own. Reported: the
disorientation between the two results (mean / max), each path's final NCC (model: CLAHE'd domain; kikuchipy: raw),
time per pattern and peak memory; for the degraded maps also each path's error against the known truth.

    python benchmarks/index_experimental.py experimental --resolution 3 -o runs/index/experimental.json
    python benchmarks/index_experimental.py noise --resolution 3 --doses 20 100 1000 -o runs/index/noise.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ one path (child)
def run_model(patterns: str, resolution: float, static: str, contrast: str = "raw") -> dict:
    from ebsd_keras.indexing.workflow import IndexRequest, index_map
    from ebsd_keras.io.experimental import ExperimentalSettings

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = index_map(
            IndexRequest(
                patterns=Path(patterns),
                output=Path(tmp) / "x.h5",
                experimental=ExperimentalSettings(static_background=static),
                resolution_deg=resolution,
                contrast=contrast,
                progress=False,
            )
        )
    return {
        "quaternion": out.quaternion.tolist(),
        "di_quaternion": out.di_quaternion.tolist(),
        "score": out.score.tolist(),
        "di_score": out.di_score.tolist(),
        "seconds": time.perf_counter() - t0,
        "timing": out.timing,
    }


def run_kikuchipy(patterns: str, resolution: float, static: str, contrast: str = "raw") -> dict:
    import kikuchipy as kp
    from orix.quaternion import Rotation

    from ebsd_keras.data.simulate import embedded_master_pattern_path
    from ebsd_keras.indexing.dictionary import dictionary_orientations

    t0 = time.perf_counter()
    s = kp.load(patterns)
    if static == "file":
        s.remove_static_background(show_progressbar=False)
    elif static == "mean":
        s.remove_static_background(static_bg=s.mean(axis=s.axes_manager.navigation_axes).data.astype(s.data.dtype),
                                   show_progressbar=False)  # fmt: skip
    s.remove_dynamic_background(show_progressbar=False)
    t_read = time.perf_counter() - t0
    mp = kp.load(embedded_master_pattern_path(), projection="lambert", hemisphere="both")
    d = s.detector  # one (mean) pattern centre, as the model path uses
    det = kp.detectors.EBSDDetector(d.shape, pc=d.pc_average, tilt=d.tilt, sample_tilt=d.sample_tilt, binning=d.binning)
    rot = Rotation(dictionary_orientations(resolution))
    t1 = time.perf_counter()
    sim = mp.get_patterns(rot, det, energy=20, compute=True, dtype_out=np.float32, show_progressbar=False)
    xmap = s.dictionary_indexing(sim)  # keep_n 20 (kikuchipy's default); refinement starts from the best
    t_di = time.perf_counter() - t1
    di_q = xmap.rotations.data.reshape(xmap.size, -1, 4)[:, 0].copy()
    di_score = np.asarray(xmap.scores).reshape(xmap.size, -1)[:, 0]
    t2 = time.perf_counter()
    ref = s.refine_orientation(xmap, det, mp, energy=20, trust_region=[max(2.0, resolution)] * 3)
    t_ref = time.perf_counter() - t2
    return {
        "quaternion": ref.rotations.data.tolist(),
        "di_quaternion": di_q.tolist(),
        "score": np.asarray(ref.scores).reshape(-1).tolist(),
        "di_score": di_score.tolist(),
        "seconds": time.perf_counter() - t0,
        "timing": {"read_and_preprocess_s": t_read, "dictionary_indexing_s": t_di, "refinement_s": t_ref},
    }


def child(args) -> None:
    fn = run_model if args.method == "model" else run_kikuchipy
    out = fn(args.patterns, args.resolution, args.static, args.contrast)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    Path(args.json).write_text(json.dumps(out))


def run_path(method: str, patterns, resolution: float, static: str, cache=None, contrast: str = "raw") -> dict:
    if cache is not None and cache.is_file():
        return json.loads(cache.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [sys.executable, __file__, "child", method, str(patterns), "--resolution", str(resolution),
               "--static", static, "--contrast", contrast, "--json", str(out)]  # fmt: skip
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        subprocess.run(cmd, check=True, cwd=str(REPO), env=env, stdout=subprocess.DEVNULL)
        result = json.loads(out.read_text())
    if cache is not None:  # a rerun of the driver reuses each finished path
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result))
    return result


# ------------------------------------------------------------------------------------------------ comparisons
def compare(paths: dict, truth=None) -> dict:
    """Each path's figures; the model paths' disorientations to the kikuchipy path."""
    from ebsd_keras.orientation import disorientation

    kikuchipy = paths["kikuchipy"]
    qk = np.asarray(kikuchipy["quaternion"])
    n = len(qk)
    row = {"n": n}
    for name, r in paths.items():
        if name == "kikuchipy":
            continue
        d = disorientation(np.asarray(r["quaternion"]), qk)
        di = disorientation(np.asarray(r["di_quaternion"]), np.asarray(kikuchipy["di_quaternion"]))
        row[f"{name}_vs_kikuchipy_deg"] = {"mean": float(d.mean()), "max": float(d.max()), "di_mean": float(di.mean())}
    for name, r in paths.items():
        row[name] = {
            "ncc_mean": float(np.mean(r["score"])),
            "di_ncc_mean": float(np.mean(r["di_score"])),
            "ms_per_pattern": 1e3 * r["seconds"] / n,
            "ms_per_pattern_refinement": 1e3 * r["timing"].get("refinement_s", 0.0) / n,
            "seconds_dictionary": r["timing"]["dictionary_indexing_s"],
            "peak_rss_mb": r["peak_rss_mb"],
        }
        if truth is not None:
            e = disorientation(np.asarray(r["quaternion"]), truth)
            row[name]["error_deg"] = {"mean": float(e.mean()), "median": float(np.median(e)), "max": float(e.max())}
            row[name]["di_error_deg_mean"] = float(disorientation(np.asarray(r["di_quaternion"]), truth).mean())
    return row


def _paths(path, resolution, output, tag) -> dict:
    """The three runs: the model with raw contrast (index's default), with its CLAHE, and kikuchipy."""
    cache = None if output is None else output.parent / "cache"

    def at(name):
        return None if cache is None else cache / f"{tag}-{name}.json"

    return {
        "model": run_path("model", path, resolution, "file", at("model-raw"), "raw"),
        "model_clahe": run_path("model", path, resolution, "file", at("model"), "model"),
        "kikuchipy": run_path("kikuchipy", path, resolution, "file", at("kikuchipy")),
    }


def experimental(args) -> dict:
    import kikuchipy as kp

    path = Path(kp.data.__file__).parent / "kikuchipy_h5ebsd" / "patterns.h5"
    paths = _paths(path, args.resolution, args.output, f"experimental-{args.resolution:g}")
    row = {"patterns": "kikuchipy nickel_ebsd_small (3 x 3, 60 x 60)", "resolution_deg": args.resolution}
    row.update(compare(paths))
    # a third opinion: the orientations stored in the file's own crystal map
    from ebsd_keras.orientation import disorientation

    stored = kp.load(str(path)).xmap.rotations.data
    for name, r in paths.items():
        d = disorientation(np.asarray(r["quaternion"]), stored)
        row[name]["vs_file_orientations_deg"] = {"mean": float(d.mean()), "max": float(d.max())}
    return row


def degraded_map(out: Path, dose: float, n_side: int, seed: int):
    """A simulated n_side x n_side Ni map at kikuchipy's experimental detector, degraded like real data: a smooth
    background (a wide 2D Gaussian times the pattern plus a gradient), a detector blur (Gaussian, 1 px), then Poisson
    noise at ``dose`` counts in the brightest pixel; saved as kikuchipy h5ebsd (uint16) with that detector."""
    import kikuchipy as kp
    from orix.quaternion import Rotation
    from scipy.ndimage import gaussian_filter

    from ebsd_keras.data.simulate import embedded_master_pattern_path

    rng = np.random.default_rng(seed)
    np.random.seed(seed)  # orix draws from numpy's global generator
    rot = Rotation.random(n_side * n_side)
    mp = kp.load(embedded_master_pattern_path(), projection="lambert", hemisphere="both")
    det = kp.detectors.EBSDDetector((60, 60), pc=(0.425, 0.213, 0.501), tilt=0.0, sample_tilt=70.0)
    sim = mp.get_patterns(rot, det, energy=20, compute=True, dtype_out=np.float32, show_progressbar=False).data
    sim = np.asarray(sim, np.float64).reshape(-1, 60, 60)
    sim = (sim - sim.min(axis=(1, 2), keepdims=True)) / np.ptp(sim, axis=(1, 2), keepdims=True)
    yy, xx = np.mgrid[0:60, 0:60] / 60.0
    background = np.exp(-((xx - 0.5) ** 2 + (yy - 0.3) ** 2) / 0.3) * (1.0 + 0.3 * xx)
    clean = background[None] * (0.5 + 0.5 * sim)
    clean = gaussian_filter(clean, sigma=(0, 1.0, 1.0))
    counts = rng.poisson(dose * clean / clean.max(axis=(1, 2), keepdims=True)).astype(np.uint16)
    s = kp.signals.EBSD(counts.reshape(n_side, n_side, 60, 60))
    s.detector = det
    s.static_background = (background * dose / background.max()).astype(np.uint16)
    s.save(str(out), overwrite=True)
    return rot.data.copy()


def noise(args) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dose in args.doses:
            path = Path(tmp) / f"dose{dose:g}.h5"
            truth = degraded_map(path, dose, args.side, args.seed)
            tag = f"noise-{args.resolution:g}-{dose:g}-{args.side}-{args.seed}"
            paths = _paths(path, args.resolution, args.output, tag)
            rows.append({"dose_counts": dose, **compare(paths, truth)})
            print(json.dumps(rows[-1]), flush=True)
    return {"map": f"{args.side} x {args.side} simulated Ni, EMsoft 20 kV, kikuchipy Ni detector",
            "resolution_deg": args.resolution, "rows": rows}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("child")
    c.add_argument("method", choices=("model", "kikuchipy"))
    c.add_argument("patterns")
    c.add_argument("--resolution", type=float, default=3.0)
    c.add_argument("--static", default="file")
    c.add_argument("--contrast", default="raw")
    c.add_argument("--json", required=True)
    e = sub.add_parser("experimental")
    e.add_argument("--resolution", type=float, default=3.0)
    e.add_argument("-o", "--output", type=Path)
    n = sub.add_parser("noise")
    n.add_argument("--resolution", type=float, default=3.0)
    n.add_argument("--doses", type=float, nargs="+", default=[20.0, 100.0, 1000.0])
    n.add_argument("--side", type=int, default=5)
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("-o", "--output", type=Path)
    args = p.parse_args()
    if args.what == "child":
        child(args)
        return
    result = experimental(args) if args.what == "experimental" else noise(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)


if __name__ == "__main__":
    main()
