"""``ebsd-keras export``: a trained model as a TF Serving SavedModel (``OUT/VERSION/``)."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Export a trained .keras model (its decoder) as a TensorFlow SavedModel in TF Serving's layout OUT/VERSION/,
written atomically, with signatures:

  serving_default  quaternion [N, 4], voltage_kv [N] kV            -> patterns [N, H, W, 1] float32 in [0, 1]
  with_latent      quaternion, voltage_kv, latent [N, latent_dim]  -> patterns
  from_euler       euler [N, 3] Bunge radians, voltage_kv [N] kV   -> patterns

Inputs are validated in the graph (ranks, widths, NaN, 1-60 kV, degrees passed as radians); quaternions are
normalised. OUT/VERSION/assets.extra/ebsd_keras.json records the model config and its trained voltage range.

example:
  ebsd-keras export saved_models/ni20-physics/model.keras -o saved_models/ni20-physics
  saved_model_cli show --dir saved_models/ni20-physics/1 --all
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model as a TF Serving SavedModel",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", type=Path, help="a .keras model")
    p.add_argument("-o", "--output", type=Path, required=True, help="serving folder OUT (VERSION/ is made inside)")
    p.add_argument("--version", type=int, dest="model_version", help="version number (default: next free, from 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/VERSION")
    p.set_defaults(func=run)


def run(args) -> int:
    from ebsd_keras.export import export_saved_model

    target = export_saved_model(args.model, args.output, version=args.model_version, overwrite=args.overwrite)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(f"SavedModel written to {target} ({size / 1e6:.1f} MB); signatures serving_default, with_latent, from_euler")
    return 0
