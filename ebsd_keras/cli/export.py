"""``ebsd-keras export``: a trained model as a TF Serving SavedModel (``OUT/VERSION/``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ebsd_keras.cli._detector import add_detector_arguments, detector_settings

DESCRIPTION = """\
Export a trained .keras model (its decoder) as a TensorFlow SavedModel in TF Serving's layout OUT/VERSION/,
written atomically, with signatures:

  serving_default  quaternion [N, 4], voltage_kv [N] kV            -> patterns [N, H, W, 1] float32 in [0, 1]
  with_latent      quaternion, voltage_kv, latent [N, latent_dim]  -> patterns
  from_euler       euler [N, 3] Bunge radians, voltage_kv [N] kV   -> patterns

Inputs are validated in the graph (ranks, widths, NaN, 1-60 kV, degrees passed as radians); quaternions are
normalised. OUT/VERSION/assets.extra/ebsd_keras.json records the model config and its trained voltage range.

--contrast clahe|rescale (physics decoder only) exports the model with another contrast step, e.g. a model trained
on raw patterns (whose learned master pattern is then the true one, not one only up to CLAHE's monotone ambiguity)
serving CLAHE'd patterns; --keras FILE also saves that model as a .keras file.

A SavedModel generates for one detector. Projecting models (physics, field) can be exported for another one:
--detector-from FILE (a pattern file's detector, read by kikuchipy) and/or --shape ROWS COLS, --binning N,
--pc PCX PCY PCZ, --tilt DEG, --sample-tilt DEG; CLAHE tiles scale with the pattern. The detector is recorded in
assets.extra/ebsd_keras.json ("detector") and in the output description.

example:
  ebsd-keras export saved_models/ni20-physics/model.keras -o saved_models/ni20-physics
  ebsd-keras export saved_models/ni20-physics -o runs/ni20-480x640 --shape 480 640 --pc 0.47 0.46 0.625
  saved_model_cli show --dir saved_models/ni20-physics/1 --all
  ebsd-keras export runs/raw/model.keras --contrast clahe --keras runs/raw/model_clahe.keras -o saved_models/ni20
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
    p.add_argument(
        "--contrast", choices=("clahe", "rescale"), help="physics decoder: export with this contrast step instead"
    )
    p.add_argument("--clip-limit", type=float, help="with --contrast clahe: clip limit (default: the model's)")
    p.add_argument("--tiles", type=int, nargs=2, metavar=("ROWS", "COLS"), help="with --contrast clahe: CLAHE tiles")
    p.add_argument("--keras", type=Path, dest="keras_out", help="with --contrast: also save that model here (.keras)")
    add_detector_arguments(p, contrast=False)
    p.set_defaults(func=run)


def run(args) -> int:
    from ebsd_keras._atomic import check_writable
    from ebsd_keras.errors import EBSDInputError
    from ebsd_keras.serving.export import export_saved_model
    from ebsd_keras.serving.models import inspect_model_file

    check_writable(args.output, "rundir", field="-o/--output")  # the serving folder may exist; VERSION/ goes in it
    if args.keras_out is not None:
        if args.keras_out.suffix != ".keras":
            raise EBSDInputError("must end in .keras", args.keras_out, "--keras")
        check_writable(args.keras_out, "file", True, "--keras")
    inspect_model_file(args.model)  # a bad model file fails before anything is loaded
    model = args.model
    if args.contrast is None:
        if args.keras_out or args.clip_limit is not None or args.tiles:
            raise EBSDInputError("--keras, --clip-limit and --tiles need --contrast", args.model, "contrast")
    else:
        model = _switched(args)
    detector = detector_settings(args, contrast="model")
    target = export_saved_model(
        model, args.output, version=args.model_version, overwrite=args.overwrite, detector=detector
    )
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(f"SavedModel written to {target} ({size / 1e6:.1f} MB); signatures serving_default, with_latent, from_euler")
    if not detector.is_default:
        import json

        det = json.loads((target / "assets.extra" / "ebsd_keras.json").read_text())["detector"]
        print(
            f"for one detector: {det['shape'][0]}x{det['shape'][1]}, PC ({', '.join(f'{v:.4g}' for v in det['pc'])}), "
            f"tilt {det['tilt_deg']:g} deg, sample tilt {det['sample_tilt_deg']:g} deg"
        )
    return 0


def _switched(args):
    """The model with ``--contrast`` (optionally saved to ``--keras``, atomically)."""
    import os

    from ebsd_keras._atomic import atomic_path
    from ebsd_keras.errors import EBSDInputError
    from ebsd_keras.models.tools import with_contrast
    from ebsd_keras.serving.models import load_generator

    loaded, _ = load_generator(args.model)
    try:
        model = with_contrast(loaded, args.contrast, clip_limit=args.clip_limit, tiles=args.tiles)
    except ValueError as err:
        raise EBSDInputError(str(err), args.model, "contrast") from None
    if args.keras_out is not None:
        if args.keras_out.suffix != ".keras":
            raise EBSDInputError("must end in .keras", args.keras_out, "--keras")
        with atomic_path(args.keras_out) as tmp:
            keras_tmp = tmp.with_name(tmp.name + ".keras")  # Keras insists on the suffix
            model.save(keras_tmp)
            os.replace(keras_tmp, tmp)
        print(f"model with contrast {args.contrast!r} saved to {args.keras_out}")
    return model
