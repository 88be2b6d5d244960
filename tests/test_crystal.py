"""Phases from CIF files / space group + lattice + atoms: shipped materials, structure factors, records, errors."""

import json

import numpy as np
import pytest
from diffsims.crystallography import ReciprocalLatticeVector

from ebsd_keras.crystal import (
    SHIPPED_PHASES,
    check_same_phase,
    emsoft_crystal,
    families,
    fractional_xyz,
    load_phase,
    make_phase,
    phase_from_cif,
    phase_laue_group,
    phase_record,
    select_reflectors,
    shipped_cif,
)
from ebsd_keras.errors import EBSDInputError

EXPECTED = {  # name: (space group, point group, Laue group, atoms in the cell, sites in the asymmetric unit)
    "ni": (225, "m-3m", "m-3m", 4, 1),
    "fe": (229, "m-3m", "m-3m", 2, 1),
    "ti": (194, "6/mmm", "6/mmm", 2, 1),
    "tio2": (136, "4/mmm", "4/mmm", 6, 2),
    "al2o3": (167, "-3m", "-3m", 30, 2),
}


def _abs_f(phase, hkl):
    ref = ReciprocalLatticeVector(phase.deepcopy(), hkl=np.array(hkl, dtype=float))
    ref.calculate_structure_factor()
    return np.abs(np.asarray(ref.structure_factor))


@pytest.mark.parametrize("name", sorted(SHIPPED_PHASES))
def test_shipped_phases_load_with_their_symmetry(name):
    sg, pg, laue, n_cell, n_sites = EXPECTED[name]
    phase = load_phase(name)
    assert phase.space_group.number == sg and phase.point_group.name == pg and phase_laue_group(phase) == laue
    assert len(phase.structure) == n_cell
    rec = phase_record(phase)
    assert json.loads(json.dumps(rec)) == rec
    assert rec["laue_group"] == laue and rec["space_group"] == sg and len(rec["atoms"]) == n_sites
    crystal = emsoft_crystal(phase)
    assert np.asarray(crystal["atom_data"]).shape == (5, n_sites) and len(crystal["atom_types"]) == n_sites
    np.testing.assert_allclose(
        np.asarray(crystal["lattice_parameters"][:3]) * 10, rec["lattice_parameters_angstrom"][:3]
    )
    assert load_phase(shipped_cif(name)).space_group.number == sg  # by path too
    rebuilt = load_phase(rec)  # from the metadata record: the same crystal, structure factors included
    assert phase_record(rebuilt) == rec and len(rebuilt.structure) == n_cell
    hkl = [[1, 0, 0], [1, 1, 0], [1, 1, 1], [2, 0, 0], [0, 0, 2], [1, 0, 4]]
    np.testing.assert_allclose(_abs_f(rebuilt, hkl), _abs_f(phase, hkl), rtol=1e-4, atol=1e-9)  # 6-decimal xyz


def test_recorded_coordinates_are_the_cif_values():
    assert phase_record(load_phase("ti"))["atoms"][0]["xyz"] == [0.333333, 0.666667, 0.25]
    al = phase_record(load_phase("corundum"))["atoms"]
    assert [a["element"] for a in al] == ["Al", "O"] and al[0]["xyz"] == [0.0, 0.0, 0.35216]
    assert al[1]["xyz"] == [0.30624, 0.0, 0.25] and al[1]["b_iso_angstrom2"] == 0.23
    np.testing.assert_allclose(emsoft_crystal(load_phase("rutile"))["atom_data"][4], [0.0042, 0.006])  # nm^2
    assert emsoft_crystal(load_phase("rutile"))["atom_types"] == (22, 8)


def test_make_phase_expands_the_asymmetric_unit_like_the_cif():
    ti = make_phase("ti", 194, (2.9508, 2.9508, 4.6855, 90, 90, 120), [("Ti", (1 / 3, 2 / 3, 0.25), 1.0, 0.5)])
    assert len(ti.structure) == 2 and phase_laue_group(ti) == "6/mmm"
    hkl = [[1, 0, 0], [1, 1, 0], [0, 0, 2], [1, 0, 1], [1, 0, 2]]
    np.testing.assert_allclose(_abs_f(ti, hkl), _abs_f(load_phase("ti"), hkl), rtol=1e-9)
    np.testing.assert_allclose(
        np.sort(np.mod(fractional_xyz(ti), 1), axis=0), [[1 / 3, 1 / 3, 0.25], [2 / 3, 2 / 3, 0.75]]
    )
    rutile = make_phase(
        "rutile",
        136,
        (4.5937, 4.5937, 2.9587, 90, 90, 90),
        [("Ti", (0, 0, 0), 1, 0.42), ("O", (0.30478, 0.30478, 0), 1, 0.6)],
    )
    assert len(rutile.structure) == 6
    np.testing.assert_allclose(_abs_f(rutile, hkl), _abs_f(load_phase("rutile"), hkl), rtol=1e-9)


def test_structure_factors_have_the_textbook_extinctions_and_ratios():
    ti = load_phase("ti")
    f = _abs_f(ti, [[0, 0, 1], [1, 0, 0], [0, 0, 2], [1, 1, 0], [1, 0, 1]])
    assert f[0] < 1e-6 * f[2]  # hcp: (0001) extinct
    # hcp: |F(10-10)| = f, |F(0002)| = 2 f, |F(10-11)| = sqrt(3) f: scattering factors fall with g, so ratios are below
    assert 1.5 < f[2] / f[1] < 2.0 and 1.3 < f[4] / f[1] < 1.732
    fe = _abs_f(load_phase("fe"), [[1, 0, 0], [1, 1, 0], [1, 1, 1], [2, 0, 0]])
    assert fe[0] < 1e-6 * fe[1] and fe[2] < 1e-6 * fe[1] and fe[3] > 0.5 * fe[1]  # bcc: h + k + l even
    rutile = _abs_f(load_phase("tio2"), [[1, 0, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1]])
    assert rutile[0] < 1e-6 * rutile[2] and rutile[1] < 1e-6 * rutile[2] and rutile[3] > 0.1 * rutile[2]
    al = _abs_f(load_phase("al2o3"), [[0, 0, 3], [0, 0, 6], [1, 0, 4], [1, 0, 0]])
    assert al[0] < 1e-6 * al[2] and al[3] < 1e-6 * al[2] and al[1] > 0.1 * al[2]  # R-3c: -h + k + l = 3n


def test_select_reflectors_picks_the_nickel_families_and_relativistic_bragg_angles():
    ni = load_phase("ni")
    ref = select_reflectors(ni, 20.0)
    assert sorted(map(tuple, families(ref))) == sorted([(1, 1, 1), (2, 0, 0), (2, 2, 0), (3, 1, 1), (2, 2, 2)])
    # relativistic wavelength at 20 kV: 0.085885 Angstrom (non-relativistic would be 0.086718)
    wavelength = 12.2643 / np.sqrt(20e3 * (1 + 0.978476e-6 * 20e3))
    # diffsims also corrects the wavelength for refraction by the crystal's mean inner potential (< 0.1 % here)
    np.testing.assert_allclose(ref.theta, np.arcsin(wavelength / (2 * ref.dspacing)), rtol=2e-3)
    non_relativistic = np.arcsin(12.2643 / np.sqrt(20e3) / (2 * ref.dspacing))
    assert np.all(np.abs(ref.theta / non_relativistic - 1) > 8e-3)
    assert len(ni.structure) == 4  # the phase is not modified (no second expansion of the cell)
    ti = load_phase("ti")
    ti_ref = select_reflectors(ti, 20.0)
    # every plane once, every family complete: {10-10} has 6 planes, {0002} 2 (orix can list a family twice)
    hkl = [tuple(np.round(h).astype(int)) for h in ti_ref.hkl]
    assert len(set(hkl)) == len(hkl)
    assert {h for h in hkl if h[2] == 0 and abs(h[0]) + abs(h[1]) == 1 or h in ((1, -1, 0), (-1, 1, 0))} == {
        (1, 0, 0),
        (-1, 0, 0),
        (0, 1, 0),
        (0, -1, 0),
        (1, -1, 0),
        (-1, 1, 0),
    }
    fam = families(ti_ref)
    assert [0, 0, 2] in fam and [1, 0, 1] in fam and [0, 0, 1] not in fam and len(fam) <= 12
    assert len(ti.structure) == 2
    narrow = select_reflectors(ti, 30.0, hkl=[[0, 0, 2]])
    assert families(narrow) == [[0, 0, 2]] and np.all(narrow.theta < select_reflectors(ti, 10.0, hkl=[[0, 0, 2]]).theta)


def test_check_same_phase_refuses_mixing():
    fe, ti = phase_record(load_phase("fe")), phase_record(load_phase("ti"))
    assert check_same_phase([fe, dict(fe, name="ferrite")]) == fe
    with pytest.raises(EBSDInputError, match=r"x\.h5: phase: data of different phases cannot be mixed: fe .* ti"):
        check_same_phase([fe, ti], "x.h5")
    assert check_same_phase([None, phase_record(load_phase("ni"))])["space_group"] == 225  # unrecorded = Ni
    with pytest.raises(EBSDInputError, match="different phases"):
        check_same_phase([None, fe])


def test_bad_phase_input(tmp_path):
    with pytest.raises(EBSDInputError, match="phase: unknown phase 'unobtainium'"):
        load_phase("unobtainium")
    with pytest.raises(FileNotFoundError):
        load_phase(tmp_path / "missing.cif")
    bad = tmp_path / "bad.cif"
    bad.write_text("data_x\n_cell_length_a 3\n")
    with pytest.raises(EBSDInputError, match="bad.cif: space_group: no space group"):
        phase_from_cif(bad)
    garbage = tmp_path / "garbage.cif"
    garbage.write_text("data_x\n_symmetry_Int_Tables_number 225\nloop_\n_atom_site_label\n")
    with pytest.raises(EBSDInputError, match="garbage.cif"):
        phase_from_cif(garbage)
    with pytest.raises(EBSDInputError, match="space_group: space group must be an integer 1-230"):
        make_phase("x", 231, (3, 3, 3, 90, 90, 90), [("Fe", (0, 0, 0))])
    with pytest.raises(EBSDInputError, match="atoms: atom 0"):
        make_phase("x", 229, (3, 3, 3, 90, 90, 90), [("Fe", (0, 0))])
    with pytest.raises(EBSDInputError, match="lattice"):
        make_phase("x", 229, (3, 3, -3, 90, 90, 90), [("Fe", (0, 0, 0))])
