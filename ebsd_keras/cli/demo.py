"""``ebsd-keras demo``: the main job on the embedded default, end to end, in a few minutes on 2 CPU cores."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DESCRIPTION = """\
Run the whole data path on the embedded default — the real EMsoft 5 Ni 20 kV dynamical master pattern that ships
inside the kikuchipy wheel (no download):

  1. build a small dataset (cubochoric grids, disjoint train/val/test densities, 60 x 60 detector, PC (0.5, 0.5,
     0.6), detector tilt 10 deg, sample tilt 70 deg, CLAHE clip 10 / 4 x 4 tiles) as EMsoft-layout HDF5;
  2. convert it to sharded TFRecords and stream it back with tf.data, reporting the read rate;
  3. generate the test orientations' patterns with the shipped pretrained model made for these 20 kV EMsoft
     patterns (saved_models/ni20-physics; or --model), written as EMsoft-layout HDF5;
  4. measure their fidelity against the EMsoft patterns: NCC, BCE gap, pixels within 15 %, and the refined
     dictionary-indexing error on a small subset (--refine-n; the true patterns' floor beside it);
  5. write a PNG grid of real vs generated patterns (with the same orientations at 10-30 kV from the shipped
     voltage-aware model, saved_models/ni-voltage-physics, when there is one) and a summary (summary.json) to DIR.

Every file goes under DIR; an existing DIR is replaced only with --overwrite.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the main job on the embedded Ni 20 kV EMsoft master pattern",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-o", "--output", type=Path, default=Path("demo_output"), help="output directory (demo_output)")
    p.add_argument("--density", type=int, default=20, help="training grid, cubochoric semi-edge steps (20)")
    p.add_argument("--max-train", type=int, default=4000, help="at most this many training patterns (4000)")
    p.add_argument("--max-test", type=int, default=256, help="at most this many val/test patterns each (256)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling and shuffling (0)")
    p.add_argument("--model", type=Path, help="a .keras model (default: the shipped model)")
    p.add_argument("--refine-n", type=int, default=20, help="test patterns indexed and refined (20; 0 skips it)")
    p.add_argument(
        "--dictionary-steps",
        type=int,
        default=47,
        help="cubochoric semi-edge steps of the DI dictionary (47, about 3 deg; prime, so no dictionary orientation "
        "coincides with a test orientation)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from ebsd_keras._atomic import atomic_dir, check_writable

    out = Path(args.output)
    check_writable(out, "dir", args.overwrite, "-o/--output")  # before the dataset is built
    if args.model is not None:
        from ebsd_keras.serving.models import inspect_model_file

        inspect_model_file(args.model)  # a bad model file fails now, not after minutes of work
    # Everything is made in a temporary folder beside OUT that becomes OUT only when the demo succeeds: a failure
    # (or kill) half-way leaves no partial OUT (and the next run cleans a killed run's temporary folder).
    with atomic_dir(out, overwrite=args.overwrite) as work:
        summary = _run_steps(args, Path(work))
    print(json.dumps(summary, indent=2))
    print(
        f"outputs in {out}/: dataset/ (EMsoft HDF5), tfrecords/, generated_test.h5 (EMsoft HDF5), "
        "real_vs_generated.png, summary.json"
    )
    return 0


def _run_steps(args, out: Path) -> dict:
    """The demo's five steps, writing into ``out``; returns the summary (also written to ``out/summary.json``)."""
    from ebsd_keras.data.build import build_dataset
    from ebsd_keras.data.pipeline import make_dataset
    from ebsd_keras.io.tfrecord import write_tfrecords

    summary = {}

    t0 = time.perf_counter()
    step(1, "building a small Ni 20 kV dataset from the embedded EMsoft master pattern")
    built = build_dataset(
        out / "dataset",
        n_train=args.density,
        max_per_split={"train": args.max_train, "val": args.max_test, "test": args.max_test},
        seed=args.seed,
        overwrite=True,
    )
    summary["dataset"] = {s: v["n_patterns"] for s, v in built["splits"].items()}
    summary["dataset_seconds"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    step(2, "converting to TFRecords")
    write_tfrecords(
        [
            ("train", out / "dataset" / "train.h5"),
            ("val", out / "dataset" / "val.h5"),
            ("test", out / "dataset" / "test.h5"),
        ],
        out / "tfrecords",
        overwrite=True,
    )
    summary["convert_seconds"] = round(time.perf_counter() - t0, 2)
    ds = make_dataset(out / "tfrecords", split="train", batch_size=64, seed=args.seed, cache=True)
    n = sum(int(b["pattern"].shape[0]) for b in ds)  # first pass fills the cache
    t0 = time.perf_counter()
    for _ in range(3):
        for _b in ds:
            pass
    summary["tfdata_read_patterns_per_s"] = round(3 * n / (time.perf_counter() - t0))

    summary.update(_generate_and_measure(args, out))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _generate_and_measure(args, out: Path) -> dict:
    """Steps 3-5: generate the test split with the shipped model, measure fidelity, draw real vs generated."""
    import numpy as np

    from ebsd_keras.evaluation.metrics import pixel_metrics
    from ebsd_keras.io.testset import load_test_set
    from ebsd_keras.orientation import quaternion_to_euler
    from ebsd_keras.serving.generate import euler_label, generate
    from ebsd_keras.serving.models import default_model_path, describe_model, load_generator, model_identity
    from ebsd_keras.serving.pattern_grid import save_pattern_grid

    test = load_test_set(out / "dataset" / "test.h5", n=None)
    model, info = load_generator(args.model or default_model_path(test.voltage_kv))
    lo, hi = info["voltage_range_kv"]
    step(3, f"generating the {len(test)} test patterns; {describe_model(info)}")
    t0 = time.perf_counter()
    result = generate(
        model,
        quaternion=test.quaternion,
        voltage_kv=test.voltage_kv,
        output=out / "generated_test.h5",
        keep_patterns=True,
        progress=True,
    )
    seconds = time.perf_counter() - t0
    truth = test.patterns.astype(np.float64) / 255.0
    generated = result.patterns.astype(np.float64)

    step(4, "fidelity against the EMsoft patterns")
    _, per = pixel_metrics(truth, generated)
    fidelity = {
        "n": len(test),
        "ncc_mean": round(float(per["ncc"].mean()), 5),
        "ncc_min": round(float(per["ncc"].min()), 5),
        "bce_gap_mean": round(float(per["bce_gap"].mean()), 5),
        "pixels_within_15pct": round(float(per["within_15pct"].mean()), 5),
    }
    if args.refine_n > 0:
        fidelity.update(_refined_di(model, test, args))
    print(
        f"  NCC {fidelity['ncc_mean']:.4f} (min {fidelity['ncc_min']:.4f}), BCE gap {fidelity['bce_gap_mean']:.4f}, "
        f"pixels within 15 %: {100 * fidelity['pixels_within_15pct']:.2f} %"
    )
    if "refined_error_deg_mean" in fidelity:
        print(
            f"  dictionary indexing + BOBYQA refinement of {fidelity['refined_n']} patterns (cubochoric dictionary "
            f"N = {args.dictionary_steps}): DI error {fidelity['di_error_deg_mean']:.3f} deg, refined error "
            f"{fidelity['refined_error_deg_mean']:.4f} deg (true patterns: "
            f"{fidelity['true_refined_error_deg_mean']:.4f})"
        )

    step(5, "writing a grid of real vs generated patterns")
    cols = np.linspace(0, len(test) - 1, min(8, len(test))).astype(int)
    rows = {
        f"EMsoft {test.voltage_kv[cols[0]]:g} kV": truth[cols],
        "generated": generated[cols],
        "10 x (generated - EMsoft)": np.clip(10.0 * (generated[cols] - truth[cols]), -1.0, 1.0),  # visible
    }
    voltage_model, voltages, voltage_path = _voltage_model(model, test.voltage_kv[cols[0]])
    # say which model made the other-voltage rows and from what data (a kinematical model's bands differ)
    vident = info["identity"] if voltage_path is None else model_identity(voltage_path)
    kind = "" if vident["data"] == "unknown" else f" ({vident['data']})"
    for kv in voltages:
        patterns = generate(voltage_model, quaternion=test.quaternion[cols], voltage_kv=kv).patterns
        rows[f"{vident['name']} {kv:g} kV{kind}"] = patterns
    titles = [euler_label(e) for e in quaternion_to_euler(test.quaternion[cols])]
    save_pattern_grid(
        out / "real_vs_generated.png",
        rows,
        titles=titles,
        diff_rows=("10 x (generated - EMsoft)",),
        title="Bunge Euler angles (phi1, Phi, phi2) in degrees",
    )
    return {
        "model": info["identity"],
        "model_voltage_range_kv": [lo, hi],
        "generated_patterns": len(test),
        "generation_seconds": round(seconds, 2),
        "voltage_model": None if voltage_path is None else vident,
        "extra_voltages_kv": voltages,
        "fidelity": fidelity,
    }


def step(k: int, text: str, total: int = 5) -> None:
    """A step header on its own line: progress bars (stderr) are flushed first and the header at once, so a bar
    never runs into the header when both streams go to one terminal."""
    import sys

    sys.stderr.flush()
    print(f"[{k}/{total}] {text}", flush=True)


def _voltage_model(model, data_kv):
    """The model, voltages and model path (None for ``model`` itself) of the grid's other-voltage rows.

    ``model`` itself when it is voltage-aware, else the shipped voltage-aware model if there is one; five voltages
    across its trained range, ``data_kv`` left out.
    """
    import numpy as np

    from ebsd_keras.serving.models import load_generator, shipped_models, trained_voltage_range

    path = None
    if not model.model_config.use_voltage:
        shipped = [m for m in shipped_models() if m["use_voltage"]]
        if not shipped:
            return model, [], None
        path = str(shipped[0]["path"])
        model, info = load_generator(path)
        vrange = info["voltage_range_kv"]
    else:
        vrange = trained_voltage_range(model.model_config)
    if vrange[0] == vrange[1]:
        return model, [], path
    voltages = [float(v) for v in np.linspace(*vrange, 5) if abs(float(v) - float(data_kv)) > 1e-6]
    return model, voltages, path


def _refined_di(model, test, args) -> dict:
    """Dictionary indexing + BOBYQA refinement of a few generated and true patterns (the evaluation's code)."""
    import numpy as np

    from ebsd_keras.evaluation.run import evaluate_generator, model_generator

    rows = np.linspace(0, len(test) - 1, min(args.refine_n, len(test))).astype(int)
    res = evaluate_generator(
        model_generator(model),
        test.subset(rows),
        semi_edge_steps=args.dictionary_steps,
        refine=True,
        label="generated",
        throughput_seconds=0.2,
        workers=8,
        progress=True,
    )
    gen, true = res["indexing"]["generated"], res["indexing"]["true"]
    return {
        "refined_n": int(len(rows)),
        "dictionary_semi_edge_steps": args.dictionary_steps,
        "di_error_deg_mean": round(float(gen["di_error_deg"]["mean"]), 4),
        "refined_error_deg_mean": round(float(gen["refined_error_deg"]["mean"]), 4),
        "refined_error_deg_max": round(float(gen["refined_error_deg"]["max"]), 4),
        "true_refined_error_deg_mean": round(float(true["refined_error_deg"]["mean"]), 4),
    }
