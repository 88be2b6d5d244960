"""Orientation sampling of a Laue group's fundamental zone (default cubic m-3m) for training, validation and test sets.

Every function takes ``symmetry=``: one of the 11 Laue groups (or any point group, reduced to its Laue group by
:func:`ebsd_keras.orientation.laue_group`), default "m-3m"; the zone is that of the group's proper rotations (orix's
``laue_proper_subgroup``), the same zone as :func:`ebsd_keras.orientation.reduce_to_fundamental_zone`.

- :func:`cubochoric_fundamental_zone`: EMsoft's cubochoric grid (``EMsampleRFZ``), through orix. ``semi_edge_steps``
  N is the number of grid steps along the semi-edge (0.5 * pi^(2/3)) of the cubochoric cube; EMsoft's N = 100 gives
  333,227 orientations in the m-3m fundamental zone, about 1.4 degrees apart on average. The grid has about
  8 N^3 / K orientations for a Laue group of K proper rotations (:func:`grid_size_estimate`): the same spacing, a
  zone K times smaller.
- :func:`split_densities`: distinct, pairwise co-prime grid densities for the three splits, so that the grids do not
  coincide (the only grid point shared by co-prime densities inside the zone is the identity).
- :func:`remove_shared`: drops orientations symmetrically equivalent to any orientation of another split; this removes
  the identity and anything else that coincides, e.g. in a user-supplied angle file.
- :func:`random_orientations`: uniform random orientations (seeded) in the fundamental zone.
- :func:`subsample`: a deterministic random subset, e.g. 2,000 patterns from a dense grid.

All quaternions are (N, 4) float64, (q0, q1, q2, q3), q0 >= 0, passive (sample -> crystal), EMsoft P = +1 (the same as
orix). orix is imported inside the functions: it is part of the GPL ``emsoft`` extra.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.orientation import laue_group, quaternion_multiply, symmetry_operators

__all__ = [
    "SplitDensities",
    "orix_laue_group",
    "grid_size_estimate",
    "cubochoric_fundamental_zone",
    "split_densities",
    "remove_shared",
    "random_orientations",
    "subsample",
]

#: Default point group whose fundamental zone is sampled (Ni and every other m-3m crystal).
POINT_GROUP = "m-3m"

#: orix's Laue-group objects by name (public attributes of ``orix.quaternion.symmetry``).
_ORIX_LAUE_NAMES = {
    "-1": "Ci", "2/m": "C2h", "mmm": "D2h", "4/m": "C4h", "4/mmm": "D4h", "-3": "S6", "-3m": "D3d",
    "6/m": "C6h", "6/mmm": "D6h", "m-3": "Th", "m-3m": "Oh",
}  # fmt: skip


def orix_laue_group(symmetry: str = POINT_GROUP):
    """orix ``Symmetry`` of the Laue group of ``symmetry`` (a Laue or point group name), e.g. "6/mmm" -> ``D6h``."""
    from orix.quaternion import symmetry as orix_symmetry

    return getattr(orix_symmetry, _ORIX_LAUE_NAMES[laue_group(symmetry)])


def grid_size_estimate(semi_edge_steps: int, symmetry: str = POINT_GROUP) -> float:
    """About how many orientations :func:`cubochoric_fundamental_zone` returns: 8 N^3 / K (K proper rotations).

    Within ~10 % for N >= 8 (m-3m, N = 100: 333,333 estimated, 333,227 exact).
    """
    return 8.0 * float(semi_edge_steps) ** 3 / len(symmetry_operators(symmetry))


class SplitDensities(NamedTuple):
    """Cubochoric semi-edge steps of the train, validation and test grids."""

    train: int
    val: int
    test: int


def _check_steps(semi_edge_steps, field: str = "semi_edge_steps") -> int:
    if isinstance(semi_edge_steps, bool) or int(semi_edge_steps) != semi_edge_steps or int(semi_edge_steps) < 1:
        raise EBSDInputError(
            f"cubochoric semi-edge steps must be a positive integer, got {semi_edge_steps!r}", None, field
        )
    return int(semi_edge_steps)


def _positive_scalar(q: np.ndarray) -> np.ndarray:
    q = np.ascontiguousarray(q, dtype=np.float64)
    return np.where(q[:, :1] < 0, -q, q)


def cubochoric_fundamental_zone(semi_edge_steps: int, symmetry: str = POINT_GROUP) -> np.ndarray:
    """Cubochoric grid of orientations inside a Laue group's fundamental zone (EMsoft ``EMsampleRFZ``).

    Parameters
    ----------
    semi_edge_steps
        Grid steps N along the semi-edge of the cubochoric cube. EMsoft's N = 100 gives 333,227 m-3m orientations
        (average nearest-neighbour disorientation about 1.4 degrees); the count grows as N**3 (about 8 N^3 / K for K
        proper rotations). N = 100 takes ~15 s and ~1.7 GB of memory here (orix builds the whole (2N)**3 grid before
        reducing it).
    symmetry
        Laue group (or point group), default "m-3m".

    Returns
    -------
    numpy.ndarray
        (M, 4) float64 unit quaternions, q0 >= 0, in orix's deterministic order.
    """
    from orix.sampling import get_sample_fundamental

    n = _check_steps(semi_edge_steps)
    proper = orix_laue_group(symmetry).laue_proper_subgroup
    rot = get_sample_fundamental(point_group=proper, method="cubochoric", semi_edge_steps=n)
    return _positive_scalar(rot.data.reshape(-1, 4))


def _coprime_to_all(m: int, others) -> bool:
    return all(m != o and math.gcd(m, o) == 1 for o in others)


def split_densities(n_train: int, fraction: float = 0.5) -> SplitDensities:
    """Choose validation and test grid densities for a training density.

    The validation and test densities are the nearest integers above and below ``fraction * n_train`` that are
    co-prime with each other and with ``n_train`` (so each is about ``fraction**3`` of the training set: 12.5 % each
    for the default). Co-prime cubochoric grids share only points with every coordinate 0 or +-semi-edge, i.e. the
    identity inside the fundamental zone; :func:`remove_shared` removes that one.

    Parameters
    ----------
    n_train
        Training semi-edge steps (e.g. 100).
    fraction
        Target ratio of validation/test to training semi-edge steps, in (0, 1].

    Returns
    -------
    SplitDensities
        ``(train, val, test)``; e.g. 100 -> (100, 51, 49), 8 -> (8, 5, 3).
    """
    n = _check_steps(n_train, "n_train")
    if not 0.0 < fraction <= 1.0:
        raise EBSDInputError(f"fraction must be in (0, 1], got {fraction}", None, "fraction")
    target = max(2, int(round(fraction * n)))
    val = next(m for m in range(target + 1, 10 * n + 10) if _coprime_to_all(m, (n,)))
    below = [m for m in range(target - 1, 1, -1) if _coprime_to_all(m, (n, val))]
    test = below[0] if below else next(m for m in range(val + 1, 10 * n + 10) if _coprime_to_all(m, (n, val)))
    return SplitDensities(n, val, test)


def remove_shared(
    q: np.ndarray, reference: np.ndarray, tol_deg: float = 1e-4, symmetry: str = POINT_GROUP
) -> tuple[np.ndarray, np.ndarray]:
    """Drop orientations symmetrically equivalent (Laue group ``symmetry``) to any orientation in ``reference``.

    Parameters
    ----------
    q
        (N, 4) quaternions to filter.
    reference
        (M, 4) quaternions of another split (e.g. the training set).
    tol_deg
        Disorientation below which two orientations count as the same, in degrees.
    symmetry
        Laue group (or point group), default "m-3m".

    Returns
    -------
    kept : numpy.ndarray
        (K, 4) the orientations of ``q`` that are not in ``reference``, in their original order.
    removed : numpy.ndarray
        (N - K,) int indices into ``q`` of the removed orientations.
    """
    from scipy.spatial import cKDTree

    q = np.asarray(q, dtype=np.float64).reshape(-1, 4)
    reference = np.asarray(reference, dtype=np.float64).reshape(-1, 4)
    if len(q) == 0 or len(reference) == 0:
        return q, np.zeros(0, dtype=np.int64)
    # q and -q are the same rotation: index both signs, query all K left-equivalents S * q (chord = 2 sin(angle/4)).
    tree = cKDTree(np.concatenate([reference, -reference]))
    chord = 2.0 * math.sin(math.radians(tol_deg) / 4.0)
    shared = np.zeros(len(q), dtype=bool)
    for s in symmetry_operators(symmetry):
        dist, _ = tree.query(quaternion_multiply(s[None, :], q), k=1, distance_upper_bound=chord)
        shared |= np.isfinite(dist)
    return q[~shared], np.flatnonzero(shared)


def random_orientations(n: int, seed: int = 0, symmetry: str = POINT_GROUP) -> np.ndarray:
    """Uniformly random orientations mapped into a Laue group's fundamental zone (default cubic m-3m).

    The sampling is orix's ``Rotation.random`` method (normalised 4-D Gaussian vectors, uniform on SO(3)) driven by a
    private ``numpy.random.default_rng(seed)``, so the result depends only on ``seed`` and not on global random state.

    Parameters
    ----------
    n
        Number of orientations.
    seed
        Random seed.
    symmetry
        Laue group (or point group), default "m-3m".

    Returns
    -------
    numpy.ndarray
        (n, 4) float64 unit quaternions, q0 >= 0, inside the fundamental zone.
    """
    from orix.quaternion import Orientation

    n = int(n)
    if n < 0:
        raise EBSDInputError(f"number of orientations must be >= 0, got {n}", None, "n")
    g = np.random.default_rng(seed).normal(size=(n, 4))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    if n == 0:
        return g
    reduced = Orientation(g, symmetry=orix_laue_group(symmetry)).reduce()
    return _positive_scalar(reduced.data.reshape(-1, 4))


def subsample(q: np.ndarray, max_n: int | None, seed: int = 0) -> np.ndarray:
    """Deterministic random subset of at most ``max_n`` orientations, kept in their original order.

    Parameters
    ----------
    q
        (N, 4) quaternions.
    max_n
        Maximum number to keep; ``None`` (or ``max_n >= N``) keeps all.
    seed
        Random seed of the selection.

    Returns
    -------
    numpy.ndarray
        (min(N, max_n), 4) quaternions.
    """
    q = np.asarray(q)
    if max_n is None or max_n >= len(q):
        return q
    if max_n < 0:
        raise EBSDInputError(f"maximum number of orientations must be >= 0, got {max_n}", None, "max_n")
    idx = np.sort(np.random.default_rng(seed).choice(len(q), size=int(max_n), replace=False))
    return q[idx]
