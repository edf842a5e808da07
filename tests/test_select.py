"""kernels.select: in-place sorting and k-th smallest selection against NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.select import kth_smallest, kth_smallest_f32, sort_range


def _inputs(rng):
    """Random, tied, sorted, reversed, organ-pipe and constant arrays of several sizes and dtypes."""
    out = []
    for n in (1, 2, 3, 5, 31, 32, 33, 100, 1000, 4097):
        for dtype in (np.float32, np.int64, np.float64):
            out.append(rng.standard_normal(n).astype(dtype) if dtype != np.int64
                       else rng.integers(-50, 50, n).astype(dtype))
        ties = rng.integers(0, 4, n).astype(np.float32)         # few distinct values, many ties
        out += [ties, np.sort(ties), np.sort(ties)[::-1].copy(), np.full(n, 7.0, np.float32)]
        pipe = np.concatenate([np.arange(n // 2), np.arange(n - n // 2)[::-1]]).astype(np.float32)
        out.append(pipe)
    return out


def test_kth_smallest_equals_numpy_partition():
    rng = np.random.default_rng(3)
    for a in _inputs(rng):
        n = a.size
        for k in sorted({0, 1, n // 2, n - 2, n - 1} & set(range(n))):
            work = a.copy()
            got = kth_smallest(work, k)
            assert got == np.partition(a, k)[k], (a.dtype, n, k)
            assert np.array_equal(np.sort(work), np.sort(a))   # a permutation of the input


def test_kth_smallest_f32_equals_numpy_partition_and_leaves_the_input():
    rng = np.random.default_rng(4)
    special = [np.array([-0.0, 0.0, 1.0, -np.inf, np.inf, -1.0], np.float32),
               (rng.standard_normal(50) * 1e-40).astype(np.float32),  # subnormals of both signs
               np.array([np.finfo(np.float32).max, -np.finfo(np.float32).max, np.finfo(np.float32).tiny], np.float32),
               rng.integers(-3, 3, 1828).astype(np.float32)]
    for a in [x for x in _inputs(rng) if x.dtype == np.float32] + special:
        n = a.size
        for k in sorted({0, 1, n // 3, n // 2, n - 2, n - 1} & set(range(n))):
            before = a.copy()
            got = kth_smallest_f32(a, k)
            assert got == np.partition(a, k)[k], (n, k)
            assert np.array_equal(a, before)
    strided = rng.standard_normal(200).astype(np.float32)[::3]
    assert kth_smallest_f32(strided, 20) == np.partition(strided, 20)[20]
    for k in (-1, 3):
        with pytest.raises(ValueError, match="out of range"):
            kth_smallest_f32(np.zeros(3, np.float32), k)


def test_kth_smallest_on_adversarial_median_of_three_input():
    """Median-of-three killer sequences still end (the heapsort fallback bounds the work)."""
    n = 2000
    a = np.empty(n, np.int64)
    half = n // 2
    for i in range(half):   # Musser's construction against median-of-three quickselect
        if i % 2 == 0:
            a[i] = i + 1
            a[half + i] = i + half + 1 if i + half + 1 <= n else n
        else:
            a[i] = half + i + (half % 2)
            a[half + i] = 2 * (i + 1)
    for k in (0, n // 3, n // 2, n - 1):
        assert kth_smallest(a.copy(), k) == np.partition(a, k)[k]


@pytest.mark.parametrize("max_rounds", [0, 1, 3])
def test_kth_smallest_sorting_fallback(max_rounds):
    """After ``max_rounds`` quickselect rounds the rest is sorted: same answers."""
    rng = np.random.default_rng(11)
    for a in _inputs(rng):
        for k in {0, a.size // 2, a.size - 1}:
            assert kth_smallest(a.copy(), k, max_rounds) == np.partition(a, k)[k]


def test_kth_smallest_rejects_k_out_of_range():
    for k in (-1, 3):
        with pytest.raises(ValueError, match="k out of range"):
            kth_smallest(np.arange(3, dtype=np.float32), k)
    with pytest.raises(ValueError, match="k out of range"):
        kth_smallest(np.empty(0, np.float32), 0)


def test_sort_range_sorts_only_the_range():
    rng = np.random.default_rng(5)
    for a in _inputs(rng):
        n = a.size
        lo, hi = n // 4, n - n // 5
        work = a.copy()
        sort_range(work, lo, hi)
        assert np.array_equal(work[lo:hi], np.sort(a[lo:hi]))
        assert np.array_equal(work[:lo], a[:lo]) and np.array_equal(work[hi:], a[hi:])
    empty = np.empty(0, np.int64)
    sort_range(empty, 0, 0)
    assert empty.size == 0
