"""Train the physics-informed decoder ("physics" preset) on real data for a fixed time budget, then measure it.

Training: ``CVAEGAN`` phase "cvae" (encoder + physics decoder, adaptive KL + BCE) on the TFRecord dataset, batch 64,
Adam; the master pattern's larger effective learning rate comes from ``physics_texture_lr_scale`` (the texture is
that factor times its variable). The learning rate is constant for the first ``--decay-start`` fraction of the
budget, then decays exponentially to ``--final-lr-fraction`` of it at the end of the budget (time-based, so the
schedule fits whatever step rate the shared machine gives). The model is saved as ``.keras``.

Measured on ``--n-test`` held-out test patterns (random subset of the EMsoft-layout test file) with the
deterministic path z = 0:

- NCC generated vs truth, fraction of pixels within 0.15, BCE gap (BCE - optimal BCE, eq 7, nats per pixel);
- NCC of the learned master pattern with the EMsoft Ni 20 kV master pattern (resampled to the same npx);
- generation throughput at batch 256 (tf.function, with and without XLA; best kept) against kikuchipy's
  ``get_patterns`` projection of the EMsoft master pattern, and against kikuchipy + OpenCV CLAHE (what the dataset
  does), interleaved in the same process;
- the ``.keras`` round trip (reloaded with safe_mode=True gives the same patterns);
- when ``ebsd_keras.evaluation.run.evaluate_generator`` exists and ``--refined-di`` is given, its report
  (DI + refinement) too.

Run (writes ``results.json`` next to the model, logs to stdout)::

    nohup python benchmarks/physics_decoder.py --out runs/physics/model.keras > runs/physics/train.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def time_budget(optimizer, args, log_filter: str = ""):
    """A Keras callback that stops at ``args.budget_s`` seconds (or ``args.max_steps``), decays the learning rate
    with time (constant until ``args.decay_start`` of the budget, then exponentially to ``args.final_lr_fraction``
    of ``args.lr``) and prints a progress line every ``args.log_every`` steps (log keys containing ``log_filter``).

    Time-based, so the schedule fits whatever step rate a shared machine gives. ``.steps`` counts the steps run.
    """
    import keras

    class TimeBudget(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.t0 = time.perf_counter()
            self.steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            elapsed = time.perf_counter() - self.t0
            frac = elapsed / args.budget_s
            if frac > args.decay_start:
                decay = (frac - args.decay_start) / max(1e-9, 1.0 - args.decay_start)
                optimizer.learning_rate.assign(args.lr * args.final_lr_fraction ** min(decay, 1.0))
            if self.steps % args.log_every == 0:
                print(
                    f"step {self.steps:6d}  t {elapsed:7.1f} s  {self.steps / elapsed:5.1f} steps/s  "
                    f"lr {float(optimizer.learning_rate.numpy()):.2e}  "
                    + "  ".join(f"{k} {float(v):.5f}" for k, v in sorted((logs or {}).items()) if log_filter in k),
                    flush=True,
                )
            max_steps = getattr(args, "max_steps", 0)
            if elapsed >= args.budget_s or (max_steps and self.steps >= max_steps):
                self.model.stop_training = True

    return TimeBudget()


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "runs/physics/model.keras"), help="output .keras model path")
    p.add_argument("--data", default=str(REPO / "data/ni20-tfr"), help="TFRecord dataset directory (train split)")
    p.add_argument("--test", default=str(REPO / "data/ni20/test.h5"), help="EMsoft-layout test file")
    p.add_argument("--budget-s", type=float, default=840.0, help="training wall-time budget, seconds")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: budget only)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (the texture gets lr_scale times it)")
    p.add_argument("--decay-start", type=float, default=0.5, help="fraction of the budget before the LR decays")
    p.add_argument("--final-lr-fraction", type=float, default=0.05, help="LR at the end / initial LR")
    p.add_argument("--preset", default="physics")
    p.add_argument("--override", action="append", default=[], help="config override KEY=JSON (repeatable)")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=250, help="steps per progress line")
    p.add_argument("--refined-di", action="store_true", help="also run evaluate_generator (DI + refinement)")
    p.add_argument("--di-n", type=int, default=256, help="test patterns for DI + refinement")
    p.add_argument("--di-resolution", type=float, default=2.0, help="DI dictionary spacing, degrees")
    p.add_argument("--evaluate-only", action="store_true", help="load --out instead of training")
    p.add_argument("--jit", action="store_true", help="XLA-compile the training step")
    return p.parse_args(argv)


def _config(args):
    from ebsd_keras.models.presets import get_preset

    overrides = {}
    for item in args.override:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    return get_preset(args.preset, **overrides)


# ----------------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------------


def train(args, cfg):
    import keras

    from ebsd_keras.data.pipeline import make_dataset
    from ebsd_keras.models import physics  # noqa: F401 - registers the "physics" decoder
    from ebsd_keras.models.cvaegan import CVAEGAN

    keras.utils.set_random_seed(args.seed)
    model = CVAEGAN(config=cfg, seed=args.seed)
    optimizer = keras.optimizers.Adam(learning_rate=args.lr)
    model.compile(phase="cvae", encoder_decoder_optimizer=optimizer, jit_compile=bool(args.jit))
    ds = make_dataset(args.data, "train", batch_size=args.batch, seed=args.seed, repeat=True, drop_remainder=True)

    budget = time_budget(optimizer, args)
    t0 = time.perf_counter()
    # one long "epoch" per log window keeps Keras' running means windowed
    epochs = 10**6
    model.fit(ds, steps_per_epoch=args.log_every, epochs=epochs, verbose=0, callbacks=[budget])
    seconds = time.perf_counter() - t0
    return model, {"train_seconds": seconds, "train_steps": budget.steps, "patterns_seen": budget.steps * args.batch}


# ----------------------------------------------------------------------------------------------------------------
# measurements
# ----------------------------------------------------------------------------------------------------------------


def _load_test(path, n, seed):
    import h5py

    from ebsd_keras.orientation import euler_to_quaternion

    with h5py.File(path, "r") as f:
        total = f["EMData/EBSD/EBSDPatterns"].shape[0]
        rows = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
        patterns = f["EMData/EBSD/EBSDPatterns"][rows]
        euler = f["EMData/EBSD/EulerAngles"][rows].astype(np.float64)
    return patterns, euler_to_quaternion(euler).astype(np.float32)


def _ncc(a, b):
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def _bce(t, g, eps=1e-7):
    g = np.clip(g, eps, 1 - eps)
    return -(t * np.log(g) + (1 - t) * np.log1p(-g)).reshape(len(t), -1).mean(1)


def _entropy(t):
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(t > 0, t * np.log(t), 0.0) + np.where(t < 1, (1 - t) * np.log1p(-t), 0.0))
    return h.reshape(len(t), -1).mean(1)


def _generator(decoder, jit: bool):
    import tensorflow as tf

    @tf.function(jit_compile=jit, reduce_retracing=True, autograph=False)
    def gen(q):
        return decoder.generate({"quaternion": q})[..., 0]

    return gen


def fidelity(decoder, patterns, quaternions, batch=256):
    gen = _generator(decoder, jit=False)
    out = np.concatenate([np.asarray(gen(quaternions[i : i + batch])) for i in range(0, len(quaternions), batch)])
    truth = patterns.astype(np.float64) / 255.0
    g = out.astype(np.float64)
    ncc = _ncc(g, truth)
    within = (np.abs(g - truth) <= 0.15 + 1e-12).reshape(len(g), -1).mean(1)
    bce, opt = _bce(truth, g), _entropy(truth)
    return {
        "n": len(g),
        "ncc_mean": float(ncc.mean()),
        "ncc_min": float(ncc.min()),
        "pixels_within_15pct": float(within.mean()),
        "pixels_within_15pct_worst_pattern": float(within.min()),
        "bce": float(bce.mean()),
        "optimal_bce": float(opt.mean()),
        "bce_gap": float((bce - opt).mean()),
        "mean_abs_error": float(np.abs(g - truth).mean()),
    }, out


def throughput(decoder, cfg, n=2048, batch=256, repeats=10, seed=0):
    """Patterns/s of our generator (best of XLA / graph) vs kikuchipy (and kikuchipy + cv2 CLAHE), interleaved."""
    import kikuchipy as kp
    from orix.quaternion import Rotation

    from ebsd_keras.data.preprocess import clahe
    from ebsd_keras.data.simulate import rescale_per_pattern

    np.random.seed(seed)
    rot = Rotation.random(n)
    q = rot.data.astype(np.float32)
    mp = kp.data.nickel_ebsd_master_pattern_small(projection="lambert", hemisphere="both")
    det = kp.detectors.EBSDDetector(
        tuple(cfg.image_shape),
        pc=tuple(cfg.physics_detector_pc),
        tilt=cfg.physics_detector_tilt_deg,
        sample_tilt=cfg.physics_sample_tilt_deg,
    )
    gens = {"xla": _generator(decoder, jit=True), "graph": _generator(decoder, jit=False)}

    def ours(g):
        for i in range(0, n, batch):
            np.asarray(g(q[i : i + batch]))

    def kikuchipy_raw():
        return mp.get_patterns(rot, det, energy=20, compute=True, dtype_out=np.float32, show_progressbar=False).data

    def kikuchipy_clahe():
        raw = kikuchipy_raw()
        return clahe(rescale_per_pattern(raw))

    for g in gens.values():  # trace / compile
        ours(g)
    kikuchipy_raw()  # numba warm-up
    times = {k: [] for k in ("xla", "graph", "kikuchipy", "kikuchipy_clahe")}
    for _ in range(repeats):
        for name, g in gens.items():
            t0 = time.perf_counter()
            ours(g)
            times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        kikuchipy_raw()
        times["kikuchipy"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        kikuchipy_clahe()
        times["kikuchipy_clahe"].append(time.perf_counter() - t0)
    pps = {k: n / min(v) for k, v in times.items()}
    ours_pps = max(pps["xla"], pps["graph"])
    return {
        "n": n,
        "batch": batch,
        "patterns_per_s": pps,
        "ours_best_pps": ours_pps,
        "ratio_vs_kikuchipy_projection": ours_pps / pps["kikuchipy"],
        "ratio_vs_kikuchipy_projection_plus_clahe": ours_pps / pps["kikuchipy_clahe"],
    }


def main(argv=None) -> int:
    args = _parse(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = _config(args)
    print(
        "config:",
        json.dumps({k: v for k, v in cfg.to_dict().items() if k.startswith("physics") or k in ("name", "latent_dim")}),
        flush=True,
    )
    print(f"cpus: {os.cpu_count()}  budget {args.budget_s:.0f} s  batch {args.batch}  lr {args.lr}", flush=True)

    import keras

    from ebsd_keras._atomic import atomic_path
    from ebsd_keras.data.simulate import embedded_master_pattern_path
    from ebsd_keras.models import tools
    from ebsd_keras.models.presets import count_parameters

    if args.evaluate_only:
        import ebsd_keras.models.cvaegan  # noqa: F401 - registers the CVAEGAN class

        model = keras.saving.load_model(out, safe_mode=True)
        cfg = model.model_config
        train_info = json.loads(out.with_name(out.stem + "_results.json").read_text())
        train_info = {k: train_info[k] for k in ("train_seconds", "train_steps", "patterns_seen")}
    else:
        model, train_info = train(args, cfg)
        print("training:", json.dumps(train_info), flush=True)
        with atomic_path(out) as tmp:  # Keras wants the .keras suffix: save beside, then move into place
            keras_tmp = tmp.with_name(tmp.name + ".keras")
            model.save(keras_tmp)
            os.replace(keras_tmp, tmp)
    decoder = model.decoder
    results = {"config": cfg.to_dict(), "args": vars(args), **train_info}
    results["parameters"] = {
        "decoder_trainable": int(sum(np.prod(v.shape) for v in decoder.trainable_variables)),
        "counted": count_parameters(cfg),
    }
    patterns, quats = _load_test(args.test, args.n_test, args.seed)
    results["fidelity"], generated = fidelity(decoder, patterns, quats)
    print("fidelity:", json.dumps(results["fidelity"]), flush=True)
    results["texture_ncc"] = tools.texture_ncc(decoder, embedded_master_pattern_path(), energy_kv=20.0)
    results["texture_rank_ncc"] = tools.texture_ncc(decoder, embedded_master_pattern_path(), 20.0, rank=True)
    print("texture NCC with EMsoft Ni 20 kV:", round(results["texture_ncc"], 5), flush=True)
    print("texture rank NCC (Spearman):", round(results["texture_rank_ncc"], 5), flush=True)
    mp_path = out.with_name(out.stem + "_master_pattern.h5")
    tools.export_master_pattern(decoder, mp_path, energy_kv=20.0)
    results["master_pattern_file"] = str(mp_path)

    reloaded = keras.saving.load_model(out, safe_mode=True)
    before = np.asarray(decoder.generate({"quaternion": quats[:64]}))
    after = np.asarray(reloaded.decoder.generate({"quaternion": quats[:64]}))
    results["reload_max_abs_diff"] = float(np.abs(after - before).max())
    print("reload max abs diff:", results["reload_max_abs_diff"], flush=True)

    results["throughput"] = throughput(decoder, cfg)
    print("throughput:", json.dumps(results["throughput"]), flush=True)

    if args.refined_di:
        try:
            from ebsd_keras.evaluation.run import evaluate_generator, model_generator
        except ImportError as exc:  # the evaluation module is written separately
            print("evaluate_generator not available:", exc, flush=True)
        else:
            report = evaluate_generator(
                model_generator(model),
                args.test,
                n=args.di_n,
                dictionary_resolution=args.di_resolution,
                seed=args.seed,
                label="physics",
                model=model,
                out_dir=out.with_name(out.stem + "_report"),
                overwrite=True,
                progress=False,
            )
            results["evaluation"] = {k: v for k, v in report.items() if not k.startswith("_")}

    targets = {
        "pixels_within_15pct >= 0.995": results["fidelity"]["pixels_within_15pct"] >= 0.995,
        "bce_gap <= 0.005": results["fidelity"]["bce_gap"] <= 0.005,
        "texture_ncc >= 0.99": results["texture_ncc"] >= 0.99,
        "decoder params <= 1M": results["parameters"]["decoder_trainable"] <= 1_000_000,
        "training <= 15 min": train_info["train_seconds"] <= 900,
        "generation >= 2x kikuchipy": results["throughput"]["ratio_vs_kikuchipy_projection"] >= 2.0,
    }
    results["targets_met"] = targets
    print("targets:", json.dumps(targets, indent=1), flush=True)
    path = out.with_name(out.stem + "_results.json")
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(results, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    print("results:", path, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
