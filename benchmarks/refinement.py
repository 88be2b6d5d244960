"""Gradient refinement through a generator vs BOBYQA vs kikuchipy, on the same held-out patterns in one run.

All refiners start from the same dictionary-indexing (DI) result of the same true test patterns (Ni 20 kV, CLAHE'd,
60 x 60, with true Euler angles) and report the disorientation to the true orientation and the wall time:

- ``bobyqa / EMsoft MP``: :meth:`Indexer.refine_bobyqa` (nlopt LN_BOBYQA on the NCC with the true master pattern's
  projection, preprocessed like the data; the evaluation's refiner);
- ``kikuchipy / EMsoft MP``: ``EBSD.refine_orientation`` (Nelder-Mead, raw master-pattern projection);
- ``gradient (gauss-newton-fd) / EMsoft MP``: :func:`refine_gradient` (``--method``, default the library's
  default "gauss-newton-fd") through :func:`master_pattern_generator` (the same objective as the BOBYQA row);
- ``gradient (gauss-newton-fd) / model``: the same through the trained model (``--model``, the physics decoder);
- ``bobyqa / model``: :func:`refine_bobyqa_generator` through the same model (the optimiser-only comparison);
- ``gradient (gauss-newton)`` rows: the JVP / chord method, for comparison (``--skip old`` leaves them out);
- ``bobyqa`` rows again at the end (``--skip repeat`` leaves them out): the machine's load drifts, so each speed-up
  is given against the faster and the slower of the two BOBYQA runs.

Every refiner is warmed up (XLA compilation, numba) on a few patterns first. Speed-ups are measured side by side in
this process: BOBYQA's wall time over the gradient refiner's, for the same generator.

    python benchmarks/refinement.py --n 500 --skip kikuchipy adam --out runs/refine/benchmark.json

With ``--pattern-centres`` it instead evaluates the model's patterns at pattern centres other than the training one
against kikuchipy projections of the true EMsoft master pattern
(:func:`ebsd_keras.evaluation.pattern_centre.evaluate_pattern_centres`: NCC, BCE gap, % pixels within 15 %,
refined DI of generated and true patterns, and the PC refined through the model from the training PC):

    python benchmarks/refinement.py --pattern-centres --n 200 --out runs/refine/pattern_centres.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def _stats(q_true, q):
    from ebsd_keras.orientation import disorientation

    e = disorientation(q_true, q)
    return {
        "mean": float(e.mean()),
        "std": float(e.std()),
        "median": float(np.median(e)),
        "p95": float(np.percentile(e, 95)),
        "max": float(e.max()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--test", default="data/ni20/test.h5")
    p.add_argument("--model", default="saved_models/ni20-physics/model.keras")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--kikuchipy-n", type=int, default=None, help="patterns for kikuchipy (default: all n)")
    p.add_argument("--dictionary-resolution", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", nargs="*", default=(), help="rows to skip: kikuchipy, bobyqa-model, adam, old, repeat")
    p.add_argument("--method", default="gauss-newton-fd", help="refine_gradient method of the gradient rows")
    p.add_argument("--out", default="runs/refine/benchmark.json")
    p.add_argument("--clahe-gradient", choices=("lut", "histogram"), default="lut", help="CLAHE surrogate (lut)")
    p.add_argument("--hessian-every", type=int, default=None, help="gauss-newton: matrix refresh (default: once)")
    p.add_argument("--pattern-centres", action="store_true", help="evaluate generation at other pattern centres")
    args = p.parse_args(argv)
    if args.pattern_centres:
        return pattern_centres(args)

    from ebsd_keras._atomic import atomic_path
    from ebsd_keras.indexing.dictionary import indexer_from_metadata
    from ebsd_keras.indexing.generator import master_pattern_generator, model_refinement_generator
    from ebsd_keras.indexing.refinement import refine_bobyqa_generator, refine_gradient
    from ebsd_keras.io.testset import load_test_set
    from ebsd_keras.serving.models import load_model
    from ebsd_keras.simulations.geometry import DetectorGeometry

    ts = load_test_set(args.test, n=args.n, seed=args.seed)
    det = ts.metadata["detector"]
    indexer = indexer_from_metadata(ts.metadata, 20.0, resolution_deg=args.dictionary_resolution, progress=False)
    t0 = time.perf_counter()
    q_di, _ = indexer.dictionary_index(ts.patterns)
    di_s = time.perf_counter() - t0
    geometry = DetectorGeometry(shape=ts.shape, pc=tuple(det["pc"]), tilt_deg=det["tilt_deg"],
                                sample_tilt_deg=det["sample_tilt_deg"])  # fmt: skip
    gen_mp = master_pattern_generator(indexer.master_pattern, geometry, clahe_gradient=args.clahe_gradient)
    model = load_model(args.model)
    gen_model = model_refinement_generator(model, clahe_gradient=args.clahe_gradient)
    gkw = {"method": args.method, "hessian_every": args.hessian_every}
    okw = {"method": "gauss-newton", "hessian_every": args.hessian_every}
    gen_model_fwd = model_refinement_generator(model, differentiable=False)
    pats, qt = ts.patterns, ts.quaternion
    w = slice(0, min(len(pats), 256))  # warm-up on one full batch: the timed run reuses its compiled shape

    rows = []

    def record(name, generator, fn, n_used=None, warm=slice(0, 8)):
        fn(warm)  # warm-up: compilation (XLA per batch shape, numba)
        rows_sel = slice(0, n_used) if n_used else slice(None)
        t = time.perf_counter()
        res = fn(rows_sel)
        seconds = time.perf_counter() - t
        k = len(res.quaternion)
        row = {
            "refiner": name,
            "generator": generator,
            "n": k,
            "error_deg": _stats(qt[rows_sel], res.quaternion),
            "seconds": seconds,
            "ms_per_pattern": 1e3 * seconds / k,
            "evaluations_mean": float(np.mean(res.n_evaluations)),
            "iterations_mean": float(np.mean(res.iterations)) if hasattr(res, "iterations") else None,
            "settings": res.settings,
        }
        rows.append(row)
        e = row["error_deg"]
        print(f"{name:28s} {generator:12s} n={k:5d} err {e['mean']:.5f} ± {e['std']:.5f} (median {e['median']:.5f}, "
              f"p95 {e['p95']:.5f}, max {e['max']:.4f}) deg  {seconds:8.2f} s  {row['ms_per_pattern']:.2f} ms/pattern",
              flush=True)  # fmt: skip
        return row

    print(f"DI ({indexer.n_dictionary} patterns, {args.dictionary_resolution} deg): {di_s:.1f} s; "
          f"error {_stats(qt, q_di)}", flush=True)  # fmt: skip
    r_bob = record("bobyqa", "EMsoft MP", lambda s: indexer.refine_bobyqa(pats[s], q_di[s]))
    name = f"gradient ({args.method})"
    r_gmp = record(name, "EMsoft MP", lambda s: refine_gradient(gen_mp, pats[s], q_di[s], **gkw), warm=w)
    r_gmo = record(name, "model", lambda s: refine_gradient(gen_model, pats[s], q_di[s], **gkw), warm=w)
    r_bmo = []
    if "bobyqa-model" not in args.skip:
        r_bmo.append(record("bobyqa", "model", lambda s: refine_bobyqa_generator(gen_model_fwd, pats[s], q_di[s])))
    if "old" not in args.skip and args.method != "gauss-newton":
        record("gradient (gauss-newton)", "EMsoft MP", lambda s: refine_gradient(gen_mp, pats[s], q_di[s], **okw),
               warm=w)  # fmt: skip
        record("gradient (gauss-newton)", "model", lambda s: refine_gradient(gen_model, pats[s], q_di[s], **okw),
               warm=w)  # fmt: skip
    if "adam" not in args.skip:
        record(
            "gradient (adam)", "model", lambda s: refine_gradient(gen_model, pats[s], q_di[s], method="adam"), warm=w
        )
    if "kikuchipy" not in args.skip:
        record("kikuchipy (Nelder-Mead)", "EMsoft MP", lambda s: indexer.refine_kikuchipy(pats[s], q_di[s]),
               n_used=args.kikuchipy_n)  # fmt: skip

    r_bob = [r_bob]
    if "repeat" not in args.skip:  # BOBYQA again: the load drifts during the run
        r_bob.append(record("bobyqa (repeat)", "EMsoft MP", lambda s: indexer.refine_bobyqa(pats[s], q_di[s])))
        if r_bmo:
            r_bmo.append(record("bobyqa (repeat)", "model",
                                lambda s: refine_bobyqa_generator(gen_model_fwd, pats[s], q_di[s])))  # fmt: skip
    t_bob = [r["seconds"] for r in r_bob]
    ratios = {
        "bobyqa_over_gradient_emsoft_mp_time": min(t_bob) / r_gmp["seconds"],
        "bobyqa_over_gradient_emsoft_mp_time_slower_bobyqa_run": max(t_bob) / r_gmp["seconds"],
        "bobyqa_emsoft_mp_over_gradient_model_time": min(t_bob) / r_gmo["seconds"],
    }
    if r_bmo:
        t_bmo = [r["seconds"] for r in r_bmo]
        ratios["bobyqa_over_gradient_model_time"] = min(t_bmo) / r_gmo["seconds"]
        ratios["bobyqa_over_gradient_model_time_slower_bobyqa_run"] = max(t_bmo) / r_gmo["seconds"]
    kp_rows = [r for r in rows if r["refiner"].startswith("kikuchipy")]
    if kp_rows:
        ratios["kikuchipy_over_gradient_model_ms_per_pattern"] = kp_rows[0]["ms_per_pattern"] / r_gmo["ms_per_pattern"]
    print("\n| refiner | generator | n | error mean ± std (deg) | median | p95 | max | wall (s) | ms/pattern | "
          "evaluations | iterations |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        e = r["error_deg"]
        err = f"{e['mean']:.5f} ± {e['std']:.5f} | {e['median']:.5f} | {e['p95']:.5f} | {e['max']:.4f}"
        timing = f"{r['seconds']:.2f} | {r['ms_per_pattern']:.2f}"
        its = "-" if r["iterations_mean"] is None else f"{r['iterations_mean']:.2f}"
        print(
            f"| {r['refiner']} | {r['generator']} | {r['n']} | {err} | {timing} | {r['evaluations_mean']:.1f} | {its} |"
        )
    print("\nratios (wall time, same run): " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    out = {
        "test": args.test,
        "model": args.model,
        "n": len(ts),
        "dictionary_resolution_deg": args.dictionary_resolution,
        "clahe_gradient": args.clahe_gradient,
        "method": args.method,
        "hessian_every": args.hessian_every,
        "di_seconds": di_s,
        "di_error_deg": _stats(qt, q_di),
        "rows": rows,
        "ratios": ratios,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(json.dumps(out, indent=1, default=str))
    print(f"written to {args.out}")
    return 0


def _pm(stats: dict) -> str:
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}" if stats else "-"


def pattern_centres(args) -> int:
    """Model patterns at new pattern centres vs kikuchipy projections of the EMsoft master pattern."""
    from ebsd_keras._atomic import atomic_path
    from ebsd_keras.evaluation.pattern_centre import DEFAULT_PATTERN_CENTRES, evaluate_pattern_centres
    from ebsd_keras.serving.models import load_model

    model = load_model(args.model)
    res = evaluate_pattern_centres(
        model,
        DEFAULT_PATTERN_CENTRES,
        n=args.n,
        seed=args.seed,
        dictionary_resolution_deg=args.dictionary_resolution,
        refine_pc_offset=(0.01, -0.01, 0.01),
    )
    print("\n| PC (Bruker) | NCC | BCE gap | pixels within 15 % | refined DI, generated (deg) | refined DI, true (deg) "
          "| PC calibrated from PC + (0.01, -0.01, 0.01): median abs error x / y / z | s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        pc = ", ".join(f"{v:g}" for v in r["pc"])
        ref = r.get("refined_error_deg") or {}
        tru = r.get("true_refined_error_deg") or {}
        pcr = r.get("pc_refinement")
        pc_err = "-"
        if pcr:
            med = [pcr["abs_error"][k]["median"] for k in ("pcx", "pcy", "pcz")]
            pc_err = " / ".join(f"{m:.4f}" for m in med)
        print(
            f"| ({pc}) | {r['ncc']['mean']:.4f} (min {r['ncc']['min']:.4f}) | {r['bce_gap']['mean']:.4f} | "
            f"{100 * r['within_15pct']['mean']:.2f} % | {_pm(ref)} | {_pm(tru)} | {pc_err} | {r['seconds']:.0f} |"
        )
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(json.dumps(res, indent=1, default=str))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
