"""Electron-diffraction formulas (simulations/physics.py): wavelength, Bragg angles and plane families against
diffsims."""

import numpy as np
import pytest

from ebsd_keras.simulations.physics import bragg_angle_rad, cubic_plane_normals, electron_wavelength_angstrom


def test_bragg_angles_follow_the_relativistic_wavelength_as_diffsims():
    from diffsims.crystallography import ReciprocalLatticeVector

    from ebsd_keras.data.simulate import NICKEL_REFLECTORS, _nickel_phase

    _, family, hkl2 = cubic_plane_normals(NICKEL_REFLECTORS)
    assert np.bincount(family).tolist() == [4, 3, 6, 12, 4]  # planes per family, +-g counted once
    ref = ReciprocalLatticeVector(_nickel_phase(), hkl=np.array(NICKEL_REFLECTORS))
    for kv in (10.0, 20.0, 30.0):
        ref.calculate_theta(kv * 1e3)
        ours = bragg_angle_rad(kv, 0.35236 / np.sqrt(hkl2))
        # diffsims adds the refraction correction (mean inner potential): well under 0.5 % at 10-30 kV
        np.testing.assert_allclose(ours, ref.theta, rtol=5e-3)
    assert electron_wavelength_angstrom(20.0) == pytest.approx(0.08588, abs=2e-5)
