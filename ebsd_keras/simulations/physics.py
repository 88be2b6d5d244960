"""Electron-diffraction formulas used by the physics decoder and the voltage analyses (numpy; keras.ops where noted).

- :func:`electron_wavelength_angstrom`: the relativistic electron wavelength at an accelerating voltage;
- :func:`bragg_angle_rad`: the Bragg angle of a plane spacing at a voltage (half the Kikuchi band width);
- :func:`cubic_plane_normals`: every symmetry-equivalent plane normal of cubic (hkl) families.
"""

from __future__ import annotations

import itertools

import numpy as np
from keras import ops

__all__ = ["electron_wavelength_angstrom", "bragg_angle_rad", "cubic_plane_normals"]


def electron_wavelength_angstrom(voltage_kv):
    """Relativistic electron wavelength (Angstrom) at an accelerating voltage (kV); numpy or keras.ops input.

    lambda = h / sqrt(2 m0 e V (1 + e V / (2 m0 c^2))) = 12.2643 / sqrt(V (1 + 0.97848e-6 V)) Angstrom, V in volts.
    """
    xp = np if isinstance(voltage_kv, (np.ndarray, float, int)) else ops
    volts = voltage_kv * 1000.0
    return 12.2643 / xp.sqrt(volts * (1.0 + 0.97848e-6 * volts))


def bragg_angle_rad(voltage_kv, d_nm):
    """Bragg angle (rad) of lattice planes of spacing ``d_nm`` (nm) at ``voltage_kv`` (kV): asin(lambda / 2d)."""
    return np.arcsin(electron_wavelength_angstrom(np.asarray(voltage_kv, np.float64)) / (20.0 * np.asarray(d_nm)))


def cubic_plane_normals(reflectors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit normals of every cubic-symmetry equivalent plane of each (hkl) family (one of each +-g pair).

    Returns
    -------
    normals, family, hkl2
        (P, 3) float64 unit normals, (P,) int family index of each, (F,) h^2 + k^2 + l^2 of each family.
    """
    normals, family, hkl2 = [], [], []
    for f, hkl in enumerate(reflectors):
        h = np.asarray(hkl, dtype=np.float64)
        seen = set()
        for perm in itertools.permutations(h):
            for signs in itertools.product((1.0, -1.0), repeat=3):
                v = np.asarray(perm) * np.asarray(signs)
                first = v[np.nonzero(v)[0][0]]
                key = tuple(np.round(v if first > 0 else -v, 9))  # +-g is one plane
                if key not in seen:
                    seen.add(key)
                    normals.append(np.asarray(key) / np.linalg.norm(key))
                    family.append(f)
        hkl2.append(float(h @ h))
    return np.asarray(normals), np.asarray(family, dtype=np.int32), np.asarray(hkl2)
