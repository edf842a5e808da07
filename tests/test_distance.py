"""kernels.distance against the float64 references in ``tests/naive/distance.py``.

Tolerances: see ``tests/kernel_helpers.py``."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import naive.distance
from kernels import distance
from kernel_helpers import RTOL, ATOL, SEEDS


PAIRWISE_SIZES = [(0, 4), (4, 0), (1, 1), (3, 7), (17, 40), (130, 140)]


def test_pairwise_sizes_cover_both_branches():
    small = [n * m for n, m in PAIRWISE_SIZES if n > 1 and n * m < distance._PARALLEL_MIN_PAIRS]
    large = [n * m for n, m in PAIRWISE_SIZES if n > 1 and n * m >= distance._PARALLEL_MIN_PAIRS]
    assert small and large


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, m", PAIRWISE_SIZES)
def test_pairwise_distances_matches_reference(seed, n, m):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, 3)).astype(np.float32)
    b = rng.normal(size=(m, 3)).astype(np.float32)
    out = distance.pairwise_distances(a, b)
    assert out.dtype == np.float32 and out.shape == (n, m) and out.flags.c_contiguous
    assert_allclose(out, naive.distance.pairwise_distances(a, b), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("n, m", [(5, 9), (200, 150)])
def test_pairwise_serial_and_parallel_agree_bitwise(n, m):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(n, 3)).astype(np.float32)
    b = rng.normal(size=(m, 3)).astype(np.float32)
    bx, by, bz = distance._split_columns(b)
    out_serial = np.empty((n, m), dtype=np.float32)
    out_parallel = np.empty((n, m), dtype=np.float32)
    distance._pairwise_serial(a, bx, by, bz, out_serial)
    distance._pairwise_parallel(a, bx, by, bz, out_parallel)
    assert_array_equal(out_serial, out_parallel)
    assert_array_equal(distance.pairwise_distances(a, b), out_serial)


def test_pairwise_rows_equal_distances_to_bitwise():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(150, 3)).astype(np.float32)
    b = rng.normal(size=(160, 3)).astype(np.float32)
    out = distance.pairwise_distances(a, b)
    for i in range(a.shape[0]):
        assert_array_equal(out[i], distance.distances_to(a[i], b))


def test_pairwise_is_the_float32_expression_exactly():
    # No fastmath in kernels.distance: each entry is the IEEE float32 value of
    # sqrt(dx*dx + dy*dy + dz*dz), exactly what NumPy computes in float32.
    rng = np.random.default_rng(5)
    a = rng.normal(size=(60, 3)).astype(np.float32)
    b = rng.normal(size=(70, 3)).astype(np.float32)
    d = b[None, :, :] - a[:, None, :]
    expected = np.sqrt(d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2])
    assert_array_equal(distance.pairwise_distances(a, b), expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("m", [0, 1, 50])
def test_distances_to_matches_reference(seed, m):
    rng = np.random.default_rng(seed)
    point = rng.normal(size=3).astype(np.float32)
    b = rng.normal(size=(m, 3)).astype(np.float32)
    out = distance.distances_to(point, b)
    assert out.dtype == np.float32 and out.shape == (m,)
    assert_allclose(out, naive.distance.distances_to(point, b), rtol=RTOL, atol=ATOL)


def test_distances_to_identical_and_duplicate_points_are_zero():
    point = np.array([0.25, -1.5, 3.0], dtype=np.float32)
    b = np.repeat(point[None, :], 40, axis=0)
    b[7] = [1.25, -1.5, 3.0]
    out = distance.distances_to(point, b)
    expected = np.zeros(40, dtype=np.float32)
    expected[7] = 1.0
    assert_array_equal(out, expected)
    assert_array_equal(distance.pairwise_distances(point[None, :], b)[0], expected)


def test_pairwise_distance_of_a_set_to_itself_has_zero_diagonal():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(140, 3)).astype(np.float32)  # parallel branch
    out = distance.pairwise_distances(a, a)
    assert_array_equal(np.diag(out), np.zeros(140, dtype=np.float32))
    assert_array_equal(out, out.T)


def test_distance_kernels_accept_strided_views():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(20, 6)).astype(np.float32)[:, ::2]
    b = rng.normal(size=(30, 3)).astype(np.float32)[::3]
    assert_allclose(distance.pairwise_distances(a, b), naive.distance.pairwise_distances(a, b), rtol=RTOL)
    assert_allclose(distance.distances_to(a[3], b), naive.distance.distances_to(a[3], b), rtol=RTOL)


def test_distance_kernels_reject_points_that_are_not_3d():
    with pytest.raises(ValueError):
        distance.pairwise_distances(np.zeros((2, 2), np.float32), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError):
        distance.pairwise_distances(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError):
        distance.distances_to(np.zeros(2, np.float32), np.zeros((2, 3), np.float32))
