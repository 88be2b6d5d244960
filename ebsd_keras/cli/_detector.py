"""The detector options shared by ``generate``, ``export``, ``refine`` and ``index`` (not a subcommand)."""

from __future__ import annotations

from pathlib import Path

DETECTOR_HELP = """\
Detector (models that project: physics and field decoders; CNN decoders refuse another detector):
  --detector-from FILE      start from a pattern file's detector (EMsoft EMEBSD, kikuchipy/EDAX/Oxford/Bruker
                            h5ebsd, NORDIF: read by kikuchipy; ebsd_keras files: their provenance)
  --shape ROWS COLS         detector size in unbinned pixels (e.g. 480 640); --binning N divides it
  --pc PCX PCY PCZ          Bruker pattern centre;  --tilt DEG detector tilt;  --sample-tilt DEG sample tilt
  --contrast model|clahe|raw  the model's contrast (CLAHE tiles scale with the pattern), CLAHE, or raw intensities
"""


def add_detector_arguments(parser, pc: bool = True, source: bool = True, contrast: bool = True) -> None:
    """Add the detector options (``pc=False`` / ``contrast=False`` where the subcommand has its own)."""
    g = parser.add_argument_group("detector (projecting models)")
    if source:
        g.add_argument("--detector-from", type=Path, metavar="FILE", help="use this pattern file's detector")
    g.add_argument("--shape", type=int, nargs=2, metavar=("ROWS", "COLS"), help="detector size, unbinned pixels")
    g.add_argument("--binning", type=int, default=1, help="pixels binned per side (1)")
    if pc:
        g.add_argument("--pc", type=float, nargs=3, metavar=("PCX", "PCY", "PCZ"), help="Bruker pattern centre")
    g.add_argument("--tilt", type=float, metavar="DEG", help="detector tilt, degrees")
    g.add_argument("--sample-tilt", type=float, metavar="DEG", help="sample tilt, degrees")
    if not contrast:
        return
    g.add_argument(
        "--contrast",
        choices=("model", "clahe", "raw"),
        default="model",
        help="model (default; CLAHE tiles scale with the pattern), clahe, or raw (min-max rescaled, no CLAHE)",
    )


def detector_settings(args, source=None, pc=None, contrast=None, pc_option: bool = True):
    """:class:`~ebsd_keras.serving.detector.DetectorSettings` from the parsed options (``pc_option=False``: the
    subcommand's ``--pc`` means something else, e.g. refine's start pattern centre)."""
    from ebsd_keras.serving.detector import DetectorSettings

    src = getattr(args, "detector_from", None) or source
    return DetectorSettings(
        source=src,
        shape=None if args.shape is None else tuple(args.shape),
        binning=args.binning,
        pc=pc if pc is not None or not pc_option else (None if getattr(args, "pc", None) is None else tuple(args.pc)),
        tilt_deg=args.tilt,
        sample_tilt_deg=args.sample_tilt,
        contrast=contrast or getattr(args, "contrast", None) or "model",
    )
