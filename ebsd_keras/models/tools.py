"""Post-training tools for physics-decoder models: the learned master pattern out, compared, or re-contrasted.

These sit above :mod:`ebsd_keras.models.cvaegan` (``with_contrast`` builds a new CVAEGAN), so that the layers in
:mod:`ebsd_keras.models.physics` import nothing above themselves.

- :func:`master_pattern_hemispheres`: the learned master pattern as full Lambert hemispheres;
- :func:`export_master_pattern`: that master pattern as an EMsoft EMEBSDmaster-style HDF5 file;
- :func:`texture_ncc`: its normalised cross-correlation with a reference EMsoft master pattern;
- :func:`with_contrast`: the same trained model with another contrast step.
"""

from __future__ import annotations

import json
import math

import numpy as np
from keras import ops

from ebsd_keras._atomic import atomic_path
from ebsd_keras.errors import EBSDInputError
from ebsd_keras.models.physics import MasterPatternTexture, voltage_weights
from ebsd_keras.simulations.projection import lambert_grid_directions, resample_lambert

__all__ = ["master_pattern_hemispheres", "export_master_pattern", "texture_ncc", "with_contrast", "field_with_contrast"]


def _decoder_of(model):
    """The physics decoder itself, given the decoder or a CVAEGAN holding it."""
    return model if isinstance(getattr(model, "master_pattern", None), MasterPatternTexture) else model.decoder


def _physics_layer(decoder) -> MasterPatternTexture:
    layer = getattr(decoder, "master_pattern", None)
    if not isinstance(layer, MasterPatternTexture):
        decoder = getattr(decoder, "decoder", None)  # a CVAEGAN
        layer = getattr(decoder, "master_pattern", None)
    if not isinstance(layer, MasterPatternTexture):
        raise TypeError("expected a PhysicsDecoder (or a CVAEGAN whose decoder is one)")
    return layer


def master_pattern_hemispheres(decoder, energy_kv=None):
    """The decoder's learned master pattern as full hemispheres.

    Parameters
    ----------
    decoder
        :class:`~ebsd_keras.models.physics.PhysicsDecoder` or a CVAEGAN holding one.
    energy_kv
        For voltage models: one voltage (kV, interpolated between knots) or None for every knot. Ignored for
        single-voltage models.

    Returns
    -------
    north, south, energies
        float32 (n_energies, S, S) hemispheres and (n_energies,) energies in kV (for a single-voltage model
        ``energy_kv`` or 20 kV, the preset data's voltage, only as a label).
    """
    layer = _physics_layer(decoder)
    north, south = layer.hemispheres()
    bands = getattr(_decoder_of(decoder), "bands", None)
    if bands is not None:
        return _band_hemispheres(decoder, bands, north, south, energy_kv)
    if layer.channels == 1:
        return north, south, np.array([20.0 if energy_kv is None else float(energy_kv)], dtype=np.float32)
    knots = np.asarray(_config_of(decoder).physics_voltage_knots_kv, dtype=np.float32)
    if energy_kv is None:
        return north, south, knots
    w = np.asarray(ops.convert_to_numpy(voltage_weights(np.array([energy_kv], np.float32), knots)))[0]
    mix = lambda t: np.tensordot(w, t, axes=1)[None].astype(np.float32)  # noqa: E731
    return mix(north), mix(south), np.array([float(energy_kv)], dtype=np.float32)


def _band_hemispheres(decoder, bands, north, south, energy_kv):
    """Hemispheres of a "bands" voltage model: the band profiles on the Lambert grid (+ the texture)."""
    cfg = _config_of(_decoder_of(decoder))
    energies = np.asarray(cfg.physics_voltage_knots_kv if energy_kv is None else [float(energy_kv)], dtype=np.float32)
    layer = _physics_layer(decoder)
    v = lambert_grid_directions(layer.npx)
    side = v.shape[0]
    flat = v.reshape(-1, 3)
    south_dirs = flat * np.array([1.0, 1.0, -1.0])
    use_tex = bool(cfg.physics_band_texture)
    outs_n, outs_s = [], []
    for e in energies:
        outs_n.append(bands.on_directions(flat, float(e)).reshape(side, side) + (north[0] if use_tex else 0.0))
        outs_s.append(bands.on_directions(south_dirs, float(e)).reshape(side, side) + (south[0] if use_tex else 0.0))
    return np.stack(outs_n).astype(np.float32), np.stack(outs_s).astype(np.float32), energies


def _config_of(decoder):
    return decoder.model_config


def export_master_pattern(decoder, path, energy_kv=None, crystal=None, overwrite: bool = True) -> None:
    """Write the learned master pattern as an EMsoft EMEBSDmaster-style HDF5 file, atomically.

    Layout: ``EMData/EBSDmaster/mLPNH`` and ``mLPSH`` (1, n_energies, S, S) float32 (texture units: the scale and
    offset are arbitrary because the contrast step rescales every pattern), ``EkeVs`` (n_energies,) keV,
    ``numEbins``, ``numset``; ``NMLparameters/EBSDMasterNameList/npx``; ``NMLparameters/MCCLNameList`` ``EkeV``,
    ``sig`` (sample tilt, degrees), ``omega``; ``EMheader/EBSDmaster/ProgramName`` = "EMEBSDmaster.f90";
    ``CrystalData`` (Ni by default); and the decoder's config as JSON in the ``ebsd_keras`` group's ``metadata``.
    It opens with :func:`ebsd_keras.io.emsoft.read_master_pattern` (and kikuchipy's EMsoft master-pattern reader).

    Parameters
    ----------
    decoder
        :class:`~ebsd_keras.models.physics.PhysicsDecoder` (or a CVAEGAN holding one).
    path
        Output ``.h5`` file.
    energy_kv
        See :func:`master_pattern_hemispheres`.
    crystal
        CrystalData dict as :data:`ebsd_keras.io.emsoft.NICKEL_CRYSTAL` (the default) or
        ``MasterPatternFile.crystal``.
    overwrite
        Replace an existing file.
    """
    import h5py

    from ebsd_keras import __version__
    from ebsd_keras.io.emsoft import NICKEL_CRYSTAL

    decoder = _decoder_of(decoder)
    cfg = _config_of(decoder)
    north, south, energies = master_pattern_hemispheres(decoder, energy_kv)
    crystal = dict(NICKEL_CRYSTAL if crystal is None else crystal)
    npx = (north.shape[-1] - 1) // 2

    def string(group, name, value):
        group.create_dataset(name, data=np.array([value.encode()], dtype=f"S{max(len(value), 1)}"))

    def number(group, name, value, dtype):
        group.create_dataset(name, data=np.array([value], dtype=dtype))

    with atomic_path(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        master = f.create_group("EMData/EBSDmaster")
        master.create_dataset("mLPNH", data=north[None], compression="gzip")
        master.create_dataset("mLPSH", data=south[None], compression="gzip")
        master.create_dataset("EkeVs", data=energies.astype(np.float32))
        number(master, "numEbins", len(energies), np.int32)
        number(master, "numset", 1, np.int32)
        string(master, "xtalname", "Ni.xtal")
        nml = f.create_group("NMLparameters/EBSDMasterNameList")
        number(nml, "npx", npx, np.int32)
        number(nml, "Esel", -1, np.int32)
        mc = f.create_group("NMLparameters/MCCLNameList")
        number(mc, "EkeV", float(energies.max()), np.float64)
        number(mc, "Ehistmin", float(energies.min()), np.float64)
        number(mc, "Ebinsize", float(np.diff(energies).min()) if len(energies) > 1 else 1.0, np.float64)
        number(mc, "sig", float(cfg.physics_sample_tilt_deg), np.float64)
        number(mc, "omega", 0.0, np.float64)
        string(mc, "MCmode", "full")
        header = f.create_group("EMheader/EBSDmaster")
        string(header, "ProgramName", "EMEBSDmaster.f90")
        string(header, "Version", f"ebsd_keras {__version__} (learned)")
        cd = f.create_group("CrystalData")
        atom_types = np.asarray(crystal.get("atom_types", NICKEL_CRYSTAL["atom_types"]), dtype=np.int32).reshape(-1)
        atom_data = np.asarray(crystal.get("atom_data", NICKEL_CRYSTAL["atom_data"]), np.float32).reshape(5, -1)
        cd.create_dataset("LatticeParameters", data=np.asarray(crystal["lattice_parameters"], dtype=np.float64))
        number(cd, "SpaceGroupNumber", int(crystal["space_group"]), np.int32)
        number(cd, "SpaceGroupSetting", int(crystal.get("space_group_setting", 1)), np.int32)
        number(cd, "CrystalSystem", 1 if 195 <= int(crystal["space_group"]) <= 230 else 0, np.int32)
        number(cd, "Natomtypes", atom_types.size, np.int32)
        cd.create_dataset("Atomtypes", data=atom_types)
        cd.create_dataset("AtomData", data=atom_data)
        own = f.create_group("ebsd_keras")
        own.attrs["metadata"] = json.dumps(
            {
                "source": {"kind": "learned", "model": "PhysicsDecoder", "texture_units": "arbitrary (affine)"},
                "model_config": cfg.to_dict(),
            }
        )


def texture_ncc(decoder, master_pattern_path, energy_kv: float | None = None, rank: bool = False) -> float:
    """Normalised cross-correlation between the decoder's learned master pattern and a reference EMsoft file.

    The reference (one energy bin: the one nearest ``energy_kv``, default the highest) is resampled bilinearly to
    the decoder's npx; both hemispheres of both are compared (all (2 npx + 1)^2 pixels each). NCC ignores the
    learned texture's arbitrary scale and offset. With ``rank=True`` the NCC of the pixel *ranks* is returned
    (Spearman's correlation): it also ignores any monotone change of intensity, which CLAHE'd training data cannot
    pin down (equalisation keeps only the order of the grey levels within a tile, except where the clip limit
    bites).

    Parameters
    ----------
    decoder
        :class:`~ebsd_keras.models.physics.PhysicsDecoder` (or a CVAEGAN holding one).
    master_pattern_path
        EMsoft EMEBSDmaster HDF5 (e.g. kikuchipy's ``ni_mc_mp_20kv_uint8_gzip_opts9.h5``).
    energy_kv
        Energy to compare at (kV); for voltage models also the voltage at which the learned texture is taken.

    Returns
    -------
    float
        NCC in [-1, 1].
    """
    from ebsd_keras.io.emsoft import read_master_pattern

    ref = read_master_pattern(master_pattern_path)
    e = ref.energies_kev
    k = int(np.argmax(e)) if energy_kv is None else int(np.argmin(np.abs(e - float(energy_kv))))
    if energy_kv is not None and abs(e[k] - float(energy_kv)) > 0.5:
        raise EBSDInputError(
            f"no energy bin near {float(energy_kv):g} kV (bins {e.min():g}-{e.max():g} keV)",
            master_pattern_path,
            "EMData/EBSDmaster/EkeVs",
        )
    layer = _physics_layer(decoder)
    dec = _decoder_of(decoder)
    north, south, _ = master_pattern_hemispheres(dec, energy_kv=float(e[k]) if layer.channels > 1 else None)
    ref_n = resample_lambert(ref.north[k], layer.npx)
    ref_s = resample_lambert(ref.south[k], layer.npx)
    a = np.concatenate([north[0].ravel(), south[0].ravel()]).astype(np.float64)
    b = np.concatenate([ref_n.ravel(), ref_s.ravel()])
    if rank:
        from scipy.stats import rankdata

        a, b = rankdata(a), rankdata(b)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


def with_contrast(model, contrast: str = "clahe", clip_limit: float | None = None, tiles=None):
    """The same trained physics model with another contrast step (a new model; the weights are copied).

    A master pattern is identifiable from raw pattern intensities up to an affine map, but from CLAHE'd ones only
    up to a monotone one (equalisation keeps the order of grey levels within a tile): trained on CLAHE'd patterns
    the learned texture ranks like EMsoft's (rank correlation 0.999) but its plain NCC is ~0.90. Training on raw
    patterns (``physics_contrast="rescale"``) and then switching the contrast to the dataset's CLAHE gives a model
    that generates CLAHE'd patterns from a texture that *is* the master pattern.

    Parameters
    ----------
    model
        A :class:`~ebsd_keras.models.cvaegan.CVAEGAN` whose decoder is a :class:`~ebsd_keras.models.physics.PhysicsDecoder`.
    contrast
        One of :data:`~ebsd_keras.models.presets.PHYSICS_CONTRASTS` without weights of its own ("clahe" or
        "rescale"; "learned" adds a head that would start untrained).
    clip_limit, tiles
        CLAHE clip limit and (rows, columns) of tiles (default: the model's own ``physics_clahe_*``).

    Returns
    -------
    CVAEGAN
        Uncompiled, with every weight of ``model`` (encoder, decoder, critic).
    """

    from ebsd_keras.models.cvaegan import CVAEGAN

    cfg = model.model_config
    if cfg.decoder != "physics":
        raise ValueError(f"with_contrast needs a physics-decoder model, got decoder {cfg.decoder!r}")
    if contrast == "learned" or cfg.physics_contrast == "learned":
        raise ValueError("with_contrast switches between 'clahe' and 'rescale' (the 'learned' head has weights)")
    changes = {"physics_contrast": contrast}
    if clip_limit is not None:
        changes["physics_clahe_clip_limit"] = float(clip_limit)
    if tiles is not None:
        changes["physics_clahe_tiles"] = tuple(int(t) for t in tiles)
    new = CVAEGAN(config=cfg.replace(**changes), seed=model.seed)
    for old_part, new_part in ((model.encoder, new.encoder), (model.decoder, new.decoder), (model.critic, new.critic)):
        new_part.set_weights(old_part.get_weights())
    return new


def field_with_contrast(model, contrast: str = "clahe", clip_limit: float | None = None, tiles=None):
    """A copy of a field-decoder CVAEGAN with another output contrast and the same weights.

    A field trained on raw patterns (``"rescale"``, where pixel subsets make training fast) generates CLAHE'd
    patterns by putting the dataset's CLAHE after its min-max rescale: the raw intensities are unchanged.

    Parameters
    ----------
    model
        A :class:`~ebsd_keras.models.cvaegan.CVAEGAN` whose decoder is a :class:`~ebsd_keras.models.field.FieldDecoder`.
    contrast
        One of :data:`ebsd_keras.models.field.FIELD_CONTRASTS`.
    clip_limit, tiles
        CLAHE clip limit and (rows, columns) tiles; None keeps the model's (the paper's 10 and 4 x 4 by default).

    Returns
    -------
    CVAEGAN
        A new, uncompiled model.
    """
    from ebsd_keras.models.cvaegan import CVAEGAN
    from ebsd_keras.models.field import FIELD_CONTRASTS, FieldDecoder

    if not isinstance(getattr(model, "decoder", None), FieldDecoder):
        raise TypeError("expected a CVAEGAN whose decoder is a FieldDecoder")
    if contrast not in FIELD_CONTRASTS:
        raise ValueError(f"contrast must be one of {FIELD_CONTRASTS}, got {contrast!r}")
    changes = {"physics_contrast": contrast}
    if clip_limit is not None:
        changes["physics_clahe_clip_limit"] = float(clip_limit)
    if tiles is not None:
        changes["physics_clahe_tiles"] = tuple(int(t) for t in tiles)
    new = CVAEGAN(config=model.model_config.replace(**changes), seed=model.seed)
    new.set_weights(model.get_weights())
    return new
