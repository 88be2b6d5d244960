"""Voltage experiments: interpolation baselines, training of voltage-aware physics decoders, per-voltage fidelity.

Subcommands (all write JSON next to their outputs; long runs under ``nice -n 5 timeout``):

``baseline``
    The issue's baseline from kinematical Ni master patterns alone (no learning): for each intermediate voltage
    (12.5 ... 27.5 kV) the NCC with the true pattern of (a) the nearest knot's pattern, (b) the 50/50 blend of the two
    neighbouring knots' *master patterns* (what a hat-interpolated voltage-knot texture produces at best), (c) the
    band-profile model with the kinematical box profile (:class:`ebsd_keras.models.physics.BandProfiles`), on
    random orientations, raw (no CLAHE) 60 x 60 patterns.
``grid``
    Convergence of kinematical truth patterns with the master-pattern grid: band widths of the projected patterns
    against 2 theta_B, and the NCC (raw, CLAHE'd) of each half side's patterns with the finest one's.
``train``
    CVAE phase of the physics decoder (``--preset physics``, ``use_voltage=True``, ``--voltage-model bands|knots``)
    on a multi-voltage TFRecord set with ``--kv`` / ``--exclude-kv`` filters, for a wall-time budget, batch 64,
    Adam with the time-based decay of ``benchmarks/physics_decoder.py``. Saves ``.keras`` and ``_results.json``.
``fidelity``
    NCC / pixels within 15 % / BCE gap of a trained model per voltage on EMsoft-layout test files (z = 0).

Example::

    # the shipped ni-voltage-physics (data: ebsd-keras dataset ... --kv 10 15 20 25 30, then convert)
    PYTHONPATH=. nice -n 5 timeout 1000 python benchmarks/voltage.py train --data data/nikin-hr-5kv-tfr \\
        --out runs/voltage/det_all.keras --budget-s 720 --override 'physics_band_render="detector"' \\
        --override 'physics_band_profile=[241,3.0]' --override 'physics_band_texture=false' \\
        --override 'physics_band_blur=0'
    python benchmarks/voltage.py fidelity --model runs/voltage/det_all.keras \\
        --test data/nikin-hr-5kv/test.h5 data/nikin-hr-mid/test.h5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark modules


def _ncc(a, b):
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


# ----------------------------------------------------------------------------------------------------------------
# baseline
# ----------------------------------------------------------------------------------------------------------------


def baseline(args) -> dict:
    """Nearest-knot, 50/50 master-pattern blend and kinematical band-profile NCC at intermediate voltages."""
    from orix.quaternion import Rotation

    from ebsd_keras.data.simulate import kinematical_master_pattern, make_detector, project_patterns

    rng = np.random.default_rng(args.seed)
    q = rng.normal(size=(args.n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 0] < 0] *= -1
    det = make_detector()
    knots = [10.0, 15.0, 20.0, 25.0, 30.0]
    mids = [12.5, 17.5, 22.5, 27.5]
    masters = {kv: kinematical_master_pattern(kv) for kv in knots + mids}

    def project(mp, kv):
        return np.concatenate([p for _, p in project_patterns(mp, q, det, kv, progress=False)]).astype(np.float64)

    def project_float(data):
        # a blended master pattern: project the float blend without the source check
        mp = masters[knots[0]].deepcopy()
        mp.data = data.astype(np.float32)
        rot = Rotation(q)
        sim = mp.get_patterns(rot, det, energy=None, dtype_out=np.float32, compute=True, show_progressbar=False)
        return np.asarray(sim.data).reshape(len(q), *det.shape).astype(np.float64)

    from ebsd_keras.data.preprocess import clahe
    from ebsd_keras.data.simulate import rescale_per_pattern

    model = None
    if args.model:
        import ebsd_keras.models.cvaegan  # noqa: F401 - registers the model classes
        from ebsd_keras.evaluation.run import model_generator
        from ebsd_keras.serving.models import load_model

        model = load_model(args.model)
        gen = model_generator(model)

    def both(raw):  # NCC on raw intensities and on the dataset's CLAHE'd uint8 patterns
        return raw, clahe(rescale_per_pattern(raw))

    results = {"n": int(args.n), "model": args.model, "per_voltage": {}}
    for kv in (knots + mids) if model is not None else mids:
        truth_raw, truth_eq = both(project(masters[kv], kv))
        entry = {}
        if kv in mids:
            lo, hi = kv - 2.5, kv + 2.5
            for name, k in (("nearest_lower", lo), ("nearest_upper", hi)):
                raw, eq = both(project(masters[k], k))
                entry[f"{name}_ncc_raw"] = float(_ncc(raw, truth_raw).mean())
                entry[f"{name}_ncc_clahe"] = float(_ncc(eq, truth_eq).mean())
            mix = 0.5 * masters[lo].data.astype(np.float64) + 0.5 * masters[hi].data.astype(np.float64)
            raw, eq = both(project_float(mix))
            entry["blend_50_50_ncc_raw"] = float(_ncc(raw, truth_raw).mean())
            entry["blend_50_50_ncc_clahe"] = float(_ncc(eq, truth_eq).mean())
        if model is not None:
            v = np.full(len(q), kv, np.float32)
            qf = q.astype(np.float32)
            raw = np.asarray(model.decoder.project({"quaternion": qf, "voltage_kv": v}))
            entry["model_raw_projection_ncc_raw"] = float(_ncc(raw, truth_raw).mean())
            entry["model_generated_ncc_clahe"] = float(_ncc(np.asarray(gen(qf, v)), truth_eq).mean())
        results["per_voltage"][f"{kv:g}"] = entry
        print(kv, json.dumps(entry), flush=True)
    return results


def ebsdsim_check(args) -> dict:
    """NCC of patterns projected from an ebsdsim Ni master pattern with those of the EMsoft Ni 20 kV file."""
    from orix.quaternion import Rotation

    from ebsd_keras.data.preprocess import clahe
    from ebsd_keras.data.simulate import ebsdsim_master_pattern, load_master_pattern, make_detector, project_patterns

    t0 = time.perf_counter()
    sim = ebsdsim_master_pattern(args.kv, half_size=args.half_size, progress=True)
    seconds = time.perf_counter() - t0
    np.save(Path(args.out).with_suffix(".npy"), np.asarray(sim.data))
    ref = load_master_pattern(None, args.kv)
    q = Rotation.random(args.n).data
    q[q[:, 0] < 0] *= -1
    det = make_detector()
    a = np.concatenate([p for _, p in project_patterns(sim, q, det, args.kv, progress=False)])
    b = np.concatenate([p for _, p in project_patterns(ref, q, det, args.kv, progress=False)])
    raw, eq = _ncc(a, b), _ncc(clahe(a), clahe(b))
    res = {
        "kv": args.kv,
        "half_size": args.half_size,
        "simulation_seconds": seconds,
        "n": args.n,
        "ncc_raw_mean": float(raw.mean()),
        "ncc_raw_min": float(raw.min()),
        "ncc_clahe_mean": float(eq.mean()),
        "ncc_clahe_min": float(eq.min()),
    }
    print(json.dumps(res), flush=True)
    return res


def grid(args) -> dict:
    """Kinematical truth vs master-pattern half side: band widths vs 2 theta_B, NCC with the finest grid's patterns."""
    from ebsd_keras.data.preprocess import clahe
    from ebsd_keras.data.simulate import (
        kinematical_master_pattern,
        make_detector,
        project_patterns,
        rescale_per_pattern,
    )
    from ebsd_keras.evaluation.voltage import _theory_width_deg, band_profile_widths

    rng = np.random.default_rng(args.seed)
    q = rng.normal(size=(args.n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 0] < 0] *= -1
    det = make_detector()
    detd = {"shape": [60, 60], "pc": [0.5, 0.5, 0.6], "tilt_deg": 10.0, "sample_tilt_deg": 70.0}
    families = ((1, 1, 1), (2, 0, 0), (2, 2, 0))
    results = {"n": int(args.n), "half_sizes": args.half_sizes, "per_voltage": {}}
    for kv in args.kv:
        pats, entry = {}, {}
        for hs in args.half_sizes:
            mp = kinematical_master_pattern(kv, half_size=hs)
            pats[hs] = np.concatenate([p for _, p in project_patterns(mp, q, det, kv, progress=False)]).astype(float)
            w = band_profile_widths(pats[hs], q, detd, families)
            entry[f"width_vs_theory_pct_{hs}"] = {
                k: 100.0 * (w[k]["width_deg"] / _theory_width_deg(kv, tuple(int(c) for c in k)) - 1.0) for k in w
            }
        finest = pats[max(args.half_sizes)]
        for hs in args.half_sizes:
            if hs != max(args.half_sizes):
                entry[f"ncc_raw_{hs}_vs_finest"] = float(_ncc(pats[hs], finest).mean())
                eq = clahe(rescale_per_pattern(pats[hs]))
                entry[f"ncc_clahe_{hs}_vs_finest"] = float(_ncc(eq, clahe(rescale_per_pattern(finest))).mean())
        results["per_voltage"][f"{kv:g}"] = entry
        print(kv, json.dumps(entry), flush=True)
    return results


# ----------------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------------


def _config(args):
    from ebsd_keras.models.presets import get_preset

    overrides = {"use_voltage": True, "physics_voltage_model": args.voltage_model}
    for item in args.override:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    return get_preset(args.preset, **overrides)


def train(args) -> dict:
    import keras
    from physics_decoder import time_budget

    from ebsd_keras._atomic import atomic_path
    from ebsd_keras.data.pipeline import make_dataset
    from ebsd_keras.models import physics  # noqa: F401 - registers the "physics" decoder
    from ebsd_keras.models.cvaegan import CVAEGAN

    cfg = _config(args)
    keras.utils.set_random_seed(args.seed)
    model = CVAEGAN(config=cfg, seed=args.seed)
    optimizer = keras.optimizers.Adam(learning_rate=args.lr)
    model.compile(phase="cvae", encoder_decoder_optimizer=optimizer)
    ds = make_dataset(
        args.data,
        "train",
        batch_size=args.batch,
        seed=args.seed,
        repeat=True,
        drop_remainder=True,
        voltages=args.kv,
        exclude_voltages=args.exclude_kv,
    )

    budget = time_budget(optimizer, args, log_filter="bce")
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=args.log_every, epochs=10**6, verbose=0, callbacks=[budget])
    seconds = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        keras_tmp = tmp.with_name(tmp.name + ".keras")
        model.save(keras_tmp)
        os.replace(keras_tmp, tmp)
    info = {
        "config": cfg.to_dict(),
        "args": vars(args),
        "train_seconds": seconds,
        "train_steps": budget.steps,
        "patterns_seen": budget.steps * args.batch,
        "decoder_trainable_parameters": int(sum(np.prod(v.shape) for v in model.decoder.trainable_variables)),
    }
    print("training:", json.dumps({k: v for k, v in info.items() if k not in ("config", "args")}), flush=True)
    with atomic_path(out.with_name(out.stem + "_results.json")) as tmp:
        tmp.write_text(json.dumps(info, indent=1))
    return info


# ----------------------------------------------------------------------------------------------------------------
# per-voltage fidelity
# ----------------------------------------------------------------------------------------------------------------


def _bce(t, g, eps=1e-7):
    g = np.clip(g, eps, 1 - eps)
    return -(t * np.log(g) + (1 - t) * np.log1p(-g)).reshape(len(t), -1).mean(1)


def _entropy(t):
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(t > 0, t * np.log(t), 0.0) + np.where(t < 1, (1 - t) * np.log1p(-t), 0.0))
    return h.reshape(len(t), -1).mean(1)


def fidelity(args) -> dict:
    import ebsd_keras.models.cvaegan  # noqa: F401 - registers the model classes
    from ebsd_keras.evaluation.run import model_generator
    from ebsd_keras.io.testset import load_test_set
    from ebsd_keras.serving.models import load_model

    model = load_model(args.model)
    gen = model_generator(model)
    results = {"model": str(args.model), "per_voltage": {}}
    for path in args.test:
        ts = load_test_set(path, n=args.n, seed=args.seed)
        for kv in np.unique(np.round(ts.voltage_kv, 3)):
            rows = np.nonzero(np.abs(ts.voltage_kv - kv) < 1e-3)[0]
            truth = ts.patterns[rows].astype(np.float64) / 255.0
            out = np.concatenate(
                [
                    np.asarray(gen(ts.quaternion[rows[i : i + 256]], ts.voltage_kv[rows[i : i + 256]]))
                    for i in range(0, len(rows), 256)
                ]
            ).astype(np.float64)
            ncc = _ncc(out, truth)
            results["per_voltage"][f"{kv:g}"] = {
                "n": int(len(rows)),
                "ncc_mean": float(ncc.mean()),
                "ncc_min": float(ncc.min()),
                "pixels_within_15pct": float((np.abs(out - truth) <= 0.15).mean()),
                "bce_gap": float((_bce(truth, out) - _entropy(truth)).mean()),
            }
            print(f"{kv:g} kV", json.dumps(results["per_voltage"][f"{kv:g}"]), flush=True)
    return results


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("baseline")
    b.add_argument("--n", type=int, default=200)
    b.add_argument("--model", default=None, help="also a trained voltage model (raw projection and CLAHE'd output)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", default=str(REPO / "runs/voltage/baseline.json"))
    g = sub.add_parser("grid")
    g.add_argument("--n", type=int, default=400)
    g.add_argument("--kv", type=float, nargs="+", default=[17.5, 22.5, 27.5])
    g.add_argument("--half-sizes", type=int, nargs="+", default=[200, 500, 1000])
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default=str(REPO / "runs/voltage/grid.json"))
    e = sub.add_parser("ebsdsim-check")
    e.add_argument("--kv", type=float, default=20.0)
    e.add_argument("--half-size", type=int, default=60)
    e.add_argument("--n", type=int, default=200)
    e.add_argument("--out", default=str(REPO / "runs/voltage/ebsdsim_check.json"))
    t = sub.add_parser("train")
    t.add_argument("--data", required=True, help="multi-voltage TFRecord directory")
    t.add_argument("--out", required=True, help="output .keras")
    t.add_argument("--kv", type=float, nargs="+", default=None, help="train only on these voltages")
    t.add_argument("--exclude-kv", type=float, nargs="+", default=None, help="hold these voltages out")
    t.add_argument("--voltage-model", choices=("bands", "knots"), default="bands")
    t.add_argument("--preset", default="physics")
    t.add_argument("--override", action="append", default=[], help="config override KEY=JSON")
    t.add_argument("--budget-s", type=float, default=600.0)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--decay-start", type=float, default=0.5)
    t.add_argument("--final-lr-fraction", type=float, default=0.05)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--log-every", type=int, default=250)
    f = sub.add_parser("fidelity")
    f.add_argument("--model", required=True)
    f.add_argument("--test", nargs="+", required=True, help="EMsoft-layout test files / dataset dirs")
    f.add_argument("--n", type=int, default=None, help="patterns per file (default all)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    if args.cmd == "baseline":
        res = baseline(args)
        out = Path(args.out)
    elif args.cmd == "grid":
        res = grid(args)
        out = Path(args.out)
    elif args.cmd == "ebsdsim-check":
        res = ebsdsim_check(args)
        out = Path(args.out)
    elif args.cmd == "train":
        train(args)
        return 0
    else:
        res = fidelity(args)
        out = Path(args.out or Path(args.model).with_name(Path(args.model).stem + "_fidelity.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print("wrote", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
