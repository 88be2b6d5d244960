"""Orientation sampling: cubochoric grid counts, disjoint splits, random orientations, subsets."""

import math

import numpy as np
import pytest
from orix.quaternion import Orientation, OrientationRegion, symmetry
from orix.sampling import uniform_SO3_sample

from ebsd_keras.data.sampling import (
    cubochoric_fundamental_zone,
    random_orientations,
    remove_shared,
    split_densities,
    subsample,
)
from ebsd_keras.errors import EBSDInputError
from ebsd_keras.orientation import CUBIC_SYMMETRY, quaternion_multiply


def _in_cubic_rodrigues_fz(q, eps=1e-9):
    """The 432 fundamental zone in Rodrigues space: |r_i| <= sqrt(2) - 1 and |r1| + |r2| + |r3| <= 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.abs(q[:, 1:] / q[:, :1])
    return (q[:, 0] > 0) & (r.max(axis=1) <= math.sqrt(2) - 1 + eps) & (r.sum(axis=1) <= 1 + eps)


def _min_disorientation_deg(a, b):
    oa = Orientation(a, symmetry=symmetry.Oh)
    ob = Orientation(b, symmetry=symmetry.Oh)
    return float(np.rad2deg(oa.angle_with_outer(ob)).min())


def test_cubochoric_count_matches_an_independent_fundamental_zone_count():
    # EMsoft's N = 100 gives 333,227 (checked by hand: 14 s, too slow here). For N = 20, count the full SO(3)
    # cubochoric grid points inside the Rodrigues fundamental zone directly.
    n = 20
    full = uniform_SO3_sample(None, method="cubochoric", semi_edge_steps=n, unique=False).data
    q = cubochoric_fundamental_zone(n)
    assert len(q) == int(_in_cubic_rodrigues_fz(full).sum()) == 2691
    assert q.shape[1] == 4 and q.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
    assert np.all(q[:, 0] >= 0)
    assert np.all(_in_cubic_rodrigues_fz(q))
    assert len(cubochoric_fundamental_zone(8)) == 193


def test_cubochoric_rejects_bad_steps():
    for bad in (0, -3, 2.5):
        with pytest.raises(EBSDInputError, match="semi-edge"):
            cubochoric_fundamental_zone(bad)


def test_split_densities_are_distinct_and_coprime():
    assert tuple(split_densities(100)) == (100, 51, 49)
    assert tuple(split_densities(8)) == (8, 5, 3)
    for n in range(1, 60):
        d = split_densities(n)
        assert d.train == n and len(set(d)) == 3
        assert math.gcd(d.train, d.val) == math.gcd(d.train, d.test) == math.gcd(d.val, d.test) == 1


def test_splits_share_no_orientation_after_remove_shared():
    d = split_densities(8)
    train, val, test = (cubochoric_fundamental_zone(s) for s in d)
    # co-prime grids still share the identity: remove_shared must find it
    assert _min_disorientation_deg(train, val) < 1e-6
    val2, gone = remove_shared(val, train)
    assert len(gone) == 1 and np.allclose(val[gone[0]], [1, 0, 0, 0])
    test2, _ = remove_shared(test, train)
    test2, _ = remove_shared(test2, val2)
    for a, b in ((train, val2), (train, test2), (val2, test2)):
        assert _min_disorientation_deg(a, b) > 1e-6


def test_remove_shared_finds_symmetry_equivalents_and_sign_flips():
    q = random_orientations(40, seed=3)
    twins = -quaternion_multiply(CUBIC_SYMMETRY[7][None], q[:10])  # same orientations, other representation
    other = random_orientations(5, seed=4)
    kept, gone = remove_shared(np.concatenate([other, twins]), q)
    np.testing.assert_array_equal(gone, np.arange(5, 15))
    np.testing.assert_array_equal(kept, other)


def test_random_orientations_are_seeded_and_in_the_fundamental_zone():
    a = random_orientations(500, seed=1)
    np.testing.assert_array_equal(a, random_orientations(500, seed=1))
    assert not np.allclose(a, random_orientations(500, seed=2))
    region = OrientationRegion.from_symmetry(symmetry.Oh)
    assert np.all(Orientation(a, symmetry=symmetry.Oh) < region)
    assert np.all(_in_cubic_rodrigues_fz(a))
    # uniform: the mean rotation angle within the m-3m zone is ~40.7 deg (random texture)
    angles = np.rad2deg(2 * np.arccos(np.clip(a[:, 0], -1, 1)))
    assert 38 < angles.mean() < 43


def test_subsample_is_deterministic_ordered_and_bounded():
    q = cubochoric_fundamental_zone(8)
    s = subsample(q, 50, seed=0)
    assert s.shape == (50, 4)
    np.testing.assert_array_equal(s, subsample(q, 50, seed=0))
    assert not np.array_equal(s, subsample(q, 50, seed=1))
    idx = [int(np.flatnonzero(np.all(q == row, axis=1))[0]) for row in s]
    assert idx == sorted(idx) and len(set(idx)) == 50
    assert subsample(q, None) is q or np.array_equal(subsample(q, None), q)
    assert len(subsample(q, 10_000)) == len(q)


# ----------------------------------------------------------------------------------------------------------------
# Every Laue group
# ----------------------------------------------------------------------------------------------------------------

from ebsd_keras.data.sampling import grid_size_estimate, orix_laue_group  # noqa: E402
from ebsd_keras.orientation import LAUE_GROUPS, reduce_to_fundamental_zone, symmetry_operators  # noqa: E402


def _in_fundamental_zone(q, group, eps=1e-9):
    """No proper rotation S of the group gives S * q a smaller rotation angle (larger |scalar part|)."""
    equiv = np.abs(quaternion_multiply(symmetry_operators(group)[None], q[:, None])[..., 0])
    return q[:, 0] >= equiv.max(axis=1) - eps


@pytest.mark.parametrize("group", LAUE_GROUPS)
def test_each_laue_group_split_grids_lie_in_its_zone_at_distinct_densities(group):
    d = split_densities(8)
    grids = [cubochoric_fundamental_zone(n, symmetry=group) for n in d]
    sizes = [len(g) for g in grids]
    assert sizes[0] > sizes[1] > sizes[2] > 0  # 8 > 5 > 3 steps
    assert abs(sizes[0] / grid_size_estimate(d.train, group) - 1) < 0.2  # (coarser grids are too coarse to count)
    for g in grids:
        assert np.all(g[:, 0] >= 0) and np.all(_in_fundamental_zone(g, group))
        assert np.all(
            Orientation(g, symmetry=orix_laue_group(group))
            < OrientationRegion.from_symmetry(orix_laue_group(group).laue_proper_subgroup)
        )
    # the zone shrinks with the group order: the same density holds ~K times fewer orientations than -1's
    k = len(symmetry_operators(group))
    assert abs(sizes[0] * k / len(cubochoric_fundamental_zone(8, symmetry="-1")) - 1) < 0.2
    # disjoint splits for this group's symmetry
    val, _ = remove_shared(grids[1], grids[0], symmetry=group)
    test, _ = remove_shared(grids[2], grids[0], symmetry=group)
    test, _ = remove_shared(test, val, symmetry=group)
    for a, b in ((grids[0], val), (grids[0], test), (val, test)):
        oa, ob = (Orientation(x, symmetry=orix_laue_group(group)) for x in (a, b))
        assert np.rad2deg(oa.angle_with_outer(ob, progressbar=False)).min() > 1e-6


@pytest.mark.parametrize("group", ["-1", "2/m", "-3m", "6/mmm", "4/mmm", "m-3"])
def test_random_orientations_and_remove_shared_for_other_groups(group):
    a = random_orientations(300, seed=5, symmetry=group)
    assert np.all(_in_fundamental_zone(a, group))
    np.testing.assert_allclose(reduce_to_fundamental_zone(a, symmetry=group), a, atol=1e-12)
    ops_ = symmetry_operators(group)
    twins = -quaternion_multiply(ops_[-1][None], a[:10])
    others = random_orientations(5, seed=6, symmetry=group)
    kept, gone = remove_shared(np.concatenate([others, twins]), a, symmetry=group)
    np.testing.assert_array_equal(gone, np.arange(5, 15))
    assert len(kept) == 5


def test_hexagonal_zone_is_not_the_cubic_one():
    q = cubochoric_fundamental_zone(8, symmetry="6/mmm")
    assert len(q) != len(cubochoric_fundamental_zone(8))
    assert not np.all(_in_cubic_rodrigues_fz(q))
    with pytest.raises(EBSDInputError, match="symmetry: unknown point group"):
        cubochoric_fundamental_zone(8, symmetry="hexagonal")
