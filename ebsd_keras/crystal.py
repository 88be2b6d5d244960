"""Crystal phases from a structure: a CIF file, a shipped material name, or space group + lattice + atoms.

A phase is an ``orix.crystal_map.Phase`` (structure held as a ``diffpy.structure.Structure``): this module only builds
one correctly, describes it for the files and selects its Kikuchi reflectors. orix, diffpy.structure and diffsims
are imported inside the functions (orix and diffsims are GPL: the package's core must import without them).

Shipped CIFs (``ebsd_keras/cif/``, written by hand from the textbook values cited in each file):

=========  ==================  =====  ==========  ===========
name       material            space  point       Laue group
                               group  group
=========  ==================  =====  ==========  ===========
ni         Ni (fcc)            225    m-3m        m-3m
fe         alpha-Fe (bcc)      229    m-3m        m-3m
ti         alpha-Ti (hcp)      194    6/mmm       6/mmm
tio2       rutile TiO2         136    4/mmm       4/mmm
al2o3      alpha-Al2O3         167    -3m         -3m
=========  ==================  =====  ==========  ===========

Crystal frame: orix's and EMsoft's, x || a, z || c*. orix 0.15 turns a structure's lattice into that alignment
keeping the atoms' Cartesian positions of diffpy's standard frame (a* || x for hexagonal lattices), so ``atom.xyz`` of
a hexagonal phase are not the fractional coordinates of the CIF; diffsims's structure factors undo exactly that, so
the phase is left as orix makes it and :func:`fractional_xyz` gives the true fractional coordinates (recorded in the
metadata and EMsoft's AtomData).

Units: lattice lengths in Angstrom (nm where EMsoft files want nm), angles in degrees, isotropic displacement
B (Debye-Waller factor) in Angstrom^2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.orientation import laue_group

__all__ = [
    "SHIPPED_PHASES",
    "PHASE_ALIASES",
    "shipped_cif",
    "load_phase",
    "phase_from_cif",
    "make_phase",
    "phase_from_record",
    "phase_laue_group",
    "fractional_xyz",
    "phase_record",
    "check_same_phase",
    "emsoft_crystal",
    "select_reflectors",
]

_CIF_DIR = Path(__file__).parent / "cif"

#: Materials shipped as CIF files (name -> file in ``ebsd_keras/cif``).
SHIPPED_PHASES = {"ni": "ni.cif", "fe": "fe.cif", "ti": "ti.cif", "tio2": "rutile.cif", "al2o3": "al2o3.cif"}

#: Other names of the shipped materials.
PHASE_ALIASES = {
    "nickel": "ni",
    "iron": "fe",
    "ferrite": "fe",
    "alpha-fe": "fe",
    "titanium": "ti",
    "alpha-ti": "ti",
    "rutile": "tio2",
    "corundum": "al2o3",
    "sapphire": "al2o3",
    "alumina": "al2o3",
}


def shipped_cif(name: str) -> Path:
    """Path of the shipped CIF of a material name (:data:`SHIPPED_PHASES`, :data:`PHASE_ALIASES`; any case)."""
    key = PHASE_ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if key not in SHIPPED_PHASES:
        names = ", ".join(sorted(SHIPPED_PHASES))
        raise EBSDInputError(f"unknown phase {name!r}: give a CIF file or one of {names}", None, "phase")
    return _CIF_DIR / SHIPPED_PHASES[key]


def load_phase(spec):
    """A phase from a CIF path, a shipped material name, or an existing ``orix.crystal_map.Phase`` (returned as is).

    Parameters
    ----------
    spec
        ``"ti"``, ``"fe"``... (see :data:`SHIPPED_PHASES`), a path ending in ``.cif``, a ``Phase``, or a record
        from metadata (:func:`phase_record`, e.g. ``dataset.json``'s ``phase``).

    Returns
    -------
    orix.crystal_map.Phase

    Raises
    ------
    EBSDInputError
        Unknown name, unreadable CIF or a CIF without a space group (naming the file).
    FileNotFoundError
        A ``.cif`` path that does not exist.
    """
    from orix.crystal_map import Phase

    if isinstance(spec, Phase):
        return spec
    if isinstance(spec, dict):  # a record from dataset / model metadata (phase_record)
        return phase_from_record(spec)
    text = str(spec)
    if text.lower().endswith(".cif") or Path(text).is_file():
        return phase_from_cif(text)
    return phase_from_cif(shipped_cif(text))


def phase_from_cif(path, name: str | None = None):
    """Read a phase (space group, lattice, atoms of the whole cell) from a CIF file.

    Parameters
    ----------
    path
        CIF file with a space group (``_symmetry_space_group_name_H-M`` or ``_space_group_IT_number``).
    name
        Phase name; default the file's stem (e.g. "ti").

    Returns
    -------
    orix.crystal_map.Phase
        With the structure in orix's alignment (x || a, z || c*), fractional coordinates as in the file.
    """
    from diffpy.structure import loadStructure

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CIF file")
    try:
        number = _cif_space_group(path)
        structure = loadStructure(str(path), fmt="cif")
    except EBSDInputError:
        raise
    except Exception as exc:  # diffpy raises its own StructureFormatError and plain ValueErrors
        raise EBSDInputError(f"cannot read the CIF: {type(exc).__name__}: {exc}", path) from None
    if len(structure) == 0:
        raise EBSDInputError("the CIF has no atom sites", path, "_atom_site")
    return _phase(name or path.stem, number, structure)


def _cif_space_group(path: Path) -> int:
    """Space group number of a CIF: its IT number, else its Hermann-Mauguin symbol (diffpy's table)."""
    number, symbol = None, None
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.strip().partition(" ")
        key, value = key.lower(), value.strip().strip("'\"")
        if key in ("_symmetry_int_tables_number", "_space_group_it_number") and value:
            number = int(float(value))
        elif key in ("_symmetry_space_group_name_h-m", "_space_group_name_h-m_alt") and value:
            symbol = value
    if number is None and symbol:
        from diffpy.structure.spacegroups import GetSpaceGroup

        try:
            number = int(GetSpaceGroup(symbol).number)
        except (ValueError, KeyError):
            number = None
    if number is None or not 1 <= number <= 230:
        raise EBSDInputError(
            "no space group (_symmetry_Int_Tables_number / _space_group_IT_number 1-230, or a known H-M symbol)",
            path,
            "space_group",
        )
    return number


def make_phase(name: str, space_group: int, lattice, atoms):
    """A phase from space group, lattice parameters and the atoms of the asymmetric unit.

    Parameters
    ----------
    name
        Phase name (e.g. "ti").
    space_group
        International Tables number, 1-230 (rhombohedral groups in the hexagonal setting).
    lattice
        (a, b, c, alpha, beta, gamma): Angstrom and degrees.
    atoms
        Sequence of ``(element, (x, y, z))`` or ``(element, (x, y, z), occupancy, B)`` with fractional coordinates
        and B in Angstrom^2 (default occupancy 1, B 0.5); expanded to the whole cell by the space group.

    Returns
    -------
    orix.crystal_map.Phase
    """
    from diffpy.structure import Atom, Lattice, Structure
    from diffpy.structure.spacegroups import GetSpaceGroup
    from diffpy.structure.symmetryutilities import expandPosition

    number = _check_space_group(space_group)
    params = np.asarray(lattice, dtype=np.float64).reshape(-1)
    if params.shape != (6,) or not np.all(np.isfinite(params)) or np.any(params[:3] <= 0):
        raise EBSDInputError(f"lattice must be (a, b, c, alpha, beta, gamma) > 0, got {lattice!r}", None, "lattice")
    lat = Lattice(*params)
    sg = GetSpaceGroup(number)
    full = []
    for i, entry in enumerate(atoms):
        element, xyz, occupancy, b_iso = _atom_entry(entry, i)
        positions, _, _ = expandPosition(sg, xyz)
        for pos in positions:
            atom = Atom(element, np.mod(pos, 1.0), occupancy=occupancy, lattice=lat)
            atom.Bisoequiv = b_iso
            full.append(atom)
    if not full:
        raise EBSDInputError("a phase needs at least one atom", None, "atoms")
    return _phase(name, number, Structure(atoms=full, lattice=lat))


def phase_from_record(record: dict):
    """Rebuild a phase from its :func:`phase_record` (dataset, TFRecord or model metadata), atoms included.

    Raises
    ------
    EBSDInputError
        A record without atoms (e.g. of an EMsoft file whose atoms could not be read) or with missing fields.
    """
    try:
        atoms = [(a["element"], a["xyz"], a["occupancy"], a["b_iso_angstrom2"]) for a in record["atoms"]]
        return make_phase(record["name"], record["space_group"], record["lattice_parameters_angstrom"], atoms)
    except (KeyError, TypeError):
        raise EBSDInputError(
            "phase record needs name, space_group, lattice_parameters_angstrom and atoms", None, "phase"
        ) from None


def _check_space_group(space_group) -> int:
    if isinstance(space_group, bool) or int(space_group) != space_group or not 1 <= int(space_group) <= 230:
        raise EBSDInputError(f"space group must be an integer 1-230, got {space_group!r}", None, "space_group")
    return int(space_group)


def _atom_entry(entry, i: int):
    try:
        element, xyz, *rest = entry
        occupancy = float(rest[0]) if len(rest) > 0 else 1.0
        b_iso = float(rest[1]) if len(rest) > 1 else 0.5
        xyz = np.asarray(xyz, dtype=np.float64).reshape(3)
    except (TypeError, ValueError):
        raise EBSDInputError(
            f"atom {i}: expected (element, (x, y, z)[, occupancy, B]), got {entry!r}", None, "atoms"
        ) from None
    if not (np.all(np.isfinite(xyz)) and 0 < occupancy <= 1 and b_iso >= 0):
        raise EBSDInputError(f"atom {i}: bad coordinates, occupancy (0, 1] or B >= 0: {entry!r}", None, "atoms")
    return str(element), xyz, occupancy, b_iso


def _phase(name: str, number: int, structure):
    from orix.crystal_map import Phase

    return Phase(name=str(name), space_group=int(number), structure=structure)


def fractional_xyz(phase) -> np.ndarray:
    """(n, 3) fractional coordinates of the phase's atoms with respect to its lattice vectors a, b, c.

    orix keeps the atoms' Cartesian positions of diffpy's standard frame when it turns the lattice to x || a,
    z || c* (see the module docstring), so ``atom.xyz`` of a hexagonal phase is not (1/3, 2/3, 1/4)-like; diffsims
    undoes this with the same matrix when it computes structure factors.
    """
    lat = phase.structure.lattice
    xyz = np.array([a.xyz for a in phase.structure], dtype=np.float64).reshape(-1, 3)
    return xyz @ np.linalg.inv(lat.stdbase @ lat.recbase)


def phase_laue_group(phase) -> str:
    """The Laue group name of a phase (one of :data:`ebsd_keras.orientation.LAUE_GROUPS`)."""
    return laue_group(phase.point_group.name)


def _asymmetric_unit(phase) -> list:
    """(atom, fractional xyz) of one atom per symmetry-distinct site of the cell (EMsoft's AtomData lists these)."""
    from diffpy.structure.symmetryutilities import expandPosition

    sg = phase.space_group
    kept, covered = [], []
    for atom, xyz in zip(phase.structure, np.mod(fractional_xyz(phase), 1.0), strict=True):
        if any(np.abs((xyz - c + 0.5) % 1.0 - 0.5).max(axis=-1).min() < 1e-4 for c in covered):
            continue
        positions, _, _ = expandPosition(sg, xyz)
        covered.append(np.mod(np.asarray(positions), 1.0))
        kept.append((atom, np.where(np.abs(xyz - np.round(xyz)) < 1e-9, np.round(xyz) % 1.0, xyz)))
    return kept


def phase_record(phase) -> dict:
    """JSON-ready description of a phase for dataset and model metadata.

    Returns
    -------
    dict
        ``name``, ``space_group`` (number), ``space_group_symbol``, ``point_group``, ``laue_group``,
        ``lattice_parameters_angstrom`` (a, b, c in Angstrom, angles in degrees), ``atoms`` (asymmetric unit: element,
        xyz, occupancy, B in Angstrom^2).
    """
    lat = phase.structure.lattice
    return {
        "name": str(phase.name),
        "space_group": int(phase.space_group.number),
        "space_group_symbol": str(phase.space_group.short_name),
        "point_group": str(phase.point_group.name),
        "laue_group": phase_laue_group(phase),
        "lattice_parameters_angstrom": [round(float(v), 6) for v in lat.abcABG()],
        "atoms": [
            {
                "element": str(a.element),
                "xyz": [round(float(v), 6) for v in xyz],
                "occupancy": float(a.occupancy),
                "b_iso_angstrom2": round(float(a.Bisoequiv), 6),
            }
            for a, xyz in _asymmetric_unit(phase)
        ],
    }


def check_same_phase(records, path=None, field: str = "phase") -> dict:
    """Refuse data of different phases: all records (from :func:`phase_record`) must name one crystal.

    Two records are the same phase when the space group and lattice parameters (to 1e-4 relative) agree; the name
    alone is not enough (and not required). Records that are ``None`` (data written before phases were recorded)
    count as Ni (the only crystal then). Returns the first record.
    """
    from ebsd_keras.io.emsoft import NICKEL_CRYSTAL  # plain data, no GPL import

    nickel = {
        "name": "ni",
        "space_group": int(NICKEL_CRYSTAL["space_group"]),
        "lattice_parameters_angstrom": [
            v * 10 if i < 3 else v for i, v in enumerate(NICKEL_CRYSTAL["lattice_parameters"])
        ],
    }
    recs = [nickel if r is None else r for r in records]
    if not recs:
        raise EBSDInputError("no phase", path, field)
    first = recs[0]
    for r in recs[1:]:
        same = int(r["space_group"]) == int(first["space_group"]) and np.allclose(
            r["lattice_parameters_angstrom"], first["lattice_parameters_angstrom"], rtol=1e-4, atol=0
        )
        if not same:
            raise EBSDInputError(
                f"data of different phases cannot be mixed: {_describe(first)} and {_describe(r)}", path, field
            )
    return first


def _describe(rec: dict) -> str:
    return f"{rec.get('name', '?')} (space group {rec['space_group']}, lattice {rec['lattice_parameters_angstrom']})"


def _atomic_number(element: str) -> int:
    """Atomic number of an element symbol (EMsoft's Atomtypes); charges and labels ("O2-", "Fe1") are dropped."""
    symbol = "".join(ch for ch in str(element) if ch.isalpha()).capitalize()
    try:
        return _ELEMENTS.index(symbol) + 1
    except ValueError:
        raise EBSDInputError(f"unknown element {element!r}", None, "atoms") from None


_ELEMENTS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr "
    "Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt "
    "Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr"
).split()


def emsoft_crystal(phase) -> dict:
    """EMsoft ``CrystalData`` of a phase, as :class:`ebsd_keras.io.emsoft.EMEBSDWriter` takes it (``crystal=``).

    Returns
    -------
    dict
        ``lattice_parameters`` (nm, degrees), ``space_group``, ``space_group_setting`` 1, ``atom_types`` (Z per
        asymmetric-unit site), ``atom_data`` rows x, y, z, occupancy, Debye-Waller factor in nm^2 (B / 100).
    """
    a, b, c, alpha, beta, gamma = phase.structure.lattice.abcABG()
    sites = _asymmetric_unit(phase)
    return {
        "lattice_parameters": (a / 10, b / 10, c / 10, alpha, beta, gamma),
        "space_group": int(phase.space_group.number),
        "space_group_setting": 1,
        "atom_types": tuple(_atomic_number(a.element) for a, _ in sites),
        "atom_data": tuple(
            tuple(float(v) for v in row)
            for row in np.array([[*xyz, a.occupancy, a.Bisoequiv / 100.0] for a, xyz in sites], dtype=np.float64).T
        ),
    }


#: Defaults of :func:`select_reflectors`: plane spacing floor (Angstrom), |F| floor relative to the strongest family,
#: and the number of families kept. For Ni they give {111}, {200}, {220}, {311}, {222} (the hand-picked list).
MIN_DSPACING_ANGSTROM = 1.0
MIN_RELATIVE_STRUCTURE_FACTOR = 0.15
MAX_FAMILIES = 12


def select_reflectors(
    phase,
    energy_kv: float,
    min_dspacing: float = MIN_DSPACING_ANGSTROM,
    min_relative_structure_factor: float = MIN_RELATIVE_STRUCTURE_FACTOR,
    max_families: int = MAX_FAMILIES,
    hkl=None,
):
    """Kikuchi reflectors of a phase: the strongest plane families by kinematical structure factor (diffsims).

    Families with d >= ``min_dspacing`` and |F_hkl| >= ``min_relative_structure_factor`` times the strongest are
    kept, at most ``max_families`` (strongest first), then symmetrised (all equivalents), with structure factors
    (X-ray-table scattering factors with each atom's B) and relativistic Bragg angles at ``energy_kv``
    (diffsims ``calculate_theta`` uses the relativistic electron wavelength).

    Parameters
    ----------
    phase
        ``orix.crystal_map.Phase`` with atoms (:func:`load_phase`).
    energy_kv
        Accelerating voltage, kV.
    min_dspacing
        Smallest plane spacing, Angstrom.
    min_relative_structure_factor
        |F| floor relative to the strongest family.
    max_families
        Most families kept.
    hkl
        Explicit families (n, 3) instead of the selection (e.g. Ni's hand-picked list).

    Returns
    -------
    diffsims.crystallography.ReciprocalLatticeVector
        All symmetry equivalents of the kept families, ``structure_factor`` and ``theta`` (radians) set.
    """
    from diffsims.crystallography import ReciprocalLatticeVector

    if not min_dspacing > 0 or not 0 <= min_relative_structure_factor < 1 or int(max_families) < 1:
        raise EBSDInputError(
            "reflector selection needs min_dspacing > 0, 0 <= min_relative_structure_factor < 1, max_families >= 1",
            None,
            "reflectors",
        )
    # The phase holds the whole cell already: diffsims's sanitise_phase() would expand it again, which puts extra
    # atoms at wrong sites for non-cubic phases (orix's atom coordinates are not in the CIF's frame, see module doc).
    phase = phase.deepcopy()
    if hkl is None:
        ref = ReciprocalLatticeVector.from_min_dspacing(phase, min_dspacing=float(min_dspacing))
        ref = ref.unique(use_symmetry=True)
        ref.calculate_structure_factor()
        f = np.abs(np.asarray(ref.structure_factor)).reshape(-1)
        order = np.argsort(-f, kind="stable")
        strong = order[f[order] >= max(min_relative_structure_factor * f.max(), 1e-6 * f.max())]
        if len(strong) == 0:
            raise EBSDInputError(f"no reflector with d >= {min_dspacing} Angstrom", None, "reflectors")
        hkl = _distinct_families(phase, np.asarray(ref.hkl)[strong])[: int(max_families)]
    hkl = _distinct_families(phase, np.asarray(hkl, dtype=np.float64).reshape(-1, 3))
    members = np.concatenate([_family_members(phase, h) for h in hkl])
    ref = ReciprocalLatticeVector(phase, hkl=members)
    ref.calculate_structure_factor()
    ref.calculate_theta(float(energy_kv) * 1e3)  # volts
    return ref


def _family_members(phase, hkl) -> np.ndarray:
    """(m, 3) the distinct symmetry equivalents of one hkl (each plane once: kinematical intensities add up)."""
    from diffsims.crystallography import ReciprocalLatticeVector

    sym = np.round(np.asarray(ReciprocalLatticeVector(phase, hkl=[hkl]).symmetrise().hkl), 6).reshape(-1, 3)
    _, first = np.unique(sym, axis=0, return_index=True)
    return sym[np.sort(first)]


def _distinct_families(phase, hkl) -> np.ndarray:
    """The hkl rows that start a new family, in order (orix's ``unique(use_symmetry=True)`` can list a hexagonal
    family twice, and symmetrising both would count its planes twice and break the pattern's symmetry)."""
    seen: set = set()
    keep = []
    for h in np.asarray(hkl, dtype=np.float64).reshape(-1, 3):
        key = tuple(np.round(h, 6))
        if key in seen:
            continue
        seen.update(map(tuple, _family_members(phase, h)))
        keep.append(h)
    return np.array(keep).reshape(-1, 3)


def families(reflectors) -> list:
    """The distinct plane families of :func:`select_reflectors` (one hkl per family, in the order given)."""
    reps = _distinct_families(reflectors.phase, np.asarray(reflectors.hkl))
    return [[int(round(v)) for v in row] for row in reps]
