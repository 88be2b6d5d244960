"""The neural-field generator (issue 14): contrast swap and quick held-out fidelity, before ``ebsd-keras evaluate``.

Training (resumable, ``ebsd-keras train``) runs on raw patterns with pixel subsets, then this script:

``clahe MODEL OUT``
    Writes a copy of a raw-trained field model (``physics_contrast="rescale"``) whose output goes through the
    dataset's CLAHE (clip 10, 4 x 4 tiles) in the graph (:func:`ebsd_keras.models.tools.field_with_contrast`).
``fidelity MODEL DATA [--n N]``
    Generates the deterministic path (z = 0) for the first N patterns of DATA's test split (a TFRecord directory)
    and prints the means of per-pattern NCC, BCE and BCE gap (per pixel, generated minus optimal), the mean absolute
    pixel deviation (grey levels / 255) and the fraction of pixels within 15 % of the truth, as JSON.

Examples (from the repository root)::

    python benchmarks/field_generator.py clahe runs/field-raw/best.keras runs/field-clahe.keras
    python benchmarks/field_generator.py fidelity runs/field-clahe.keras data/ni20-clahe-tfr --n 256
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def _load(path):
    import keras

    import ebsd_keras.models.cvaegan  # noqa: F401 - registers the custom objects

    return keras.saving.load_model(path, compile=False)


def clahe_copy(model_path: str, out_path: str) -> None:
    """Save the CLAHE-output copy of a raw-trained field model (atomically)."""
    import os
    import tempfile

    from ebsd_keras.models.tools import field_with_contrast

    model = field_with_contrast(_load(model_path), "clahe")
    # Keras needs a ".keras" name: save in a temporary directory beside the target, then rename
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(out_path))) as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        os.replace(path, out_path)


def fidelity(model_path: str, data_dir: str, n: int = 256, batch: int = 32, split: str = "test") -> dict:
    """NCC, BCE gap and pixels within 15 % of the model's z = 0 patterns on the first ``n`` patterns of ``split``."""
    from keras import ops

    from ebsd_keras.data.pipeline import make_dataset

    model = _load(model_path)
    ncc, gap, within, deviation, bces = [], [], [], [], []
    seen = 0
    for b in make_dataset(data_dir, split, batch_size=batch, shuffle=False):
        x = b["pattern"].numpy()[..., 0].astype(np.float64)
        p = ops.convert_to_numpy(model.generate({"quaternion": b["quaternion"]}))[..., 0].astype(np.float64)
        for xi, pi in zip(x, p, strict=True):
            a, c = xi - xi.mean(), pi - pi.mean()
            ncc.append(float((a * c).sum() / np.sqrt((a * a).sum() * (c * c).sum() + 1e-12)))
            q = np.clip(pi, 1e-7, 1 - 1e-7)
            t = np.clip(xi, 1e-7, 1 - 1e-7)
            bce = -(xi * np.log(q) + (1 - xi) * np.log(1 - q)).mean()
            best = -(xi * np.log(t) + (1 - xi) * np.log(1 - t)).mean()
            gap.append(float(bce - best))
            bces.append(float(bce))
            deviation.append(float(np.abs(pi - xi).mean()))
            within.append(float((np.abs(pi - xi) <= 0.15).mean()))
        seen += len(x)
        if seen >= n:
            break
    return {
        "model": model_path,
        "split": split,
        "n": len(ncc[:n]),
        "ncc_mean": float(np.mean(ncc[:n])),
        "bce_gap_mean": float(np.mean(gap[:n])),
        "within_15pct_mean": float(np.mean(within[:n])),
        "bce_mean": float(np.mean(bces[:n])),
        "pixel_deviation_mean": float(np.mean(deviation[:n])),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("clahe", help="CLAHE-output copy of a raw-trained field model")
    c.add_argument("model")
    c.add_argument("out")
    f = sub.add_parser("fidelity", help="quick held-out fidelity of the z = 0 path")
    f.add_argument("model")
    f.add_argument("data")
    f.add_argument("--n", type=int, default=256)
    f.add_argument("--split", default="test", help="split of DATA (choose models on 'val', report on 'test')")
    args = parser.parse_args(argv)
    if args.command == "clahe":
        clahe_copy(args.model, args.out)
    else:
        print(json.dumps(fidelity(args.model, args.data, args.n, split=args.split), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
