"""File formats: EMsoft HDF5 pattern / master-pattern files and angle lists (h5py only, no kikuchipy needed)."""

from ebsd_keras.io.emsoft import (
    EMEBSDInfo,
    EMEBSDWriter,
    MasterPatternFile,
    PatternChunk,
    bruker_pc_to_emsoft,
    emsoft_pc_to_bruker,
    iter_emebsd,
    pattern_intensity_range,
    read_angle_file,
    read_emebsd_info,
    read_master_pattern,
    write_angle_file,
    write_emebsd,
)

__all__ = [
    "EMEBSDInfo",
    "EMEBSDWriter",
    "MasterPatternFile",
    "PatternChunk",
    "bruker_pc_to_emsoft",
    "emsoft_pc_to_bruker",
    "iter_emebsd",
    "pattern_intensity_range",
    "read_angle_file",
    "read_emebsd_info",
    "read_master_pattern",
    "write_angle_file",
    "write_emebsd",
]
