"""kernels.topk_order: torch.topk's CPU order (libstdc++ nth_element + sort), checked against
torch's own answers recorded by profiling/torch_topk_cases.py, and against NumPy on the
properties any top-k must have."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kernels import topk_order as tk

CASES = Path(__file__).resolve().parent / "data" / "torch_topk_cases.npz"


def test_matches_torch_topk_recorded():
    with np.load(CASES, allow_pickle=False) as z:
        counts, offsets, ks, picked = z["counts"], z["offsets"], z["k"], z["picked"]
    assert len(ks) > 100
    at = 0
    ties_at_the_cut = 0
    for i, k in enumerate(ks):
        c = counts[offsets[i]:offsets[i + 1]]
        want = picked[at:at + k]
        at += k
        np.testing.assert_array_equal(tk.topk_order(c, int(k)), want, err_msg=f"case {i}: n {len(c)}, k {k}")
        if k < len(c) and (c == c[want[-1]]).sum() > (c[want] == c[want[-1]]).sum():
            ties_at_the_cut += 1
    assert at == len(picked)
    assert ties_at_the_cut > 20  # the cases really leave tied counts out


def _check_topk(c, k, got):
    n = len(c)
    k = min(max(k, 0), n)
    assert got.dtype == np.int64 and got.shape == (k,)
    assert len(np.unique(got)) == k and (got >= 0).all() and (got < n).all()
    np.testing.assert_array_equal(np.sort(c[got])[::-1], np.sort(c)[::-1][:k])  # the k largest counts
    if k > 1:
        vals = c[got]
        assert (np.diff(vals[:-1]) <= 0).all()  # the first k - 1 sorted, decreasing
        assert (vals[:-1] >= vals[-1]).all()    # the k-th is the smallest of them


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 16, 17, 100, 3000])
@pytest.mark.parametrize("distinct", [1, 3, 1000])
def test_topk_properties_against_numpy(n, distinct):
    rng = np.random.default_rng(n * 7 + distinct)
    c = rng.integers(0, distinct, n).astype(np.int64)
    for k in {0, 1, n // 2, n, n + 5, -1}:
        _check_topk(c, k, tk.topk_order(c, k))


@pytest.mark.parametrize("n", [1, 5, 17, 64, 1000])
def test_nth_element_and_sort_against_numpy(n):
    rng = np.random.default_rng(n)
    for trial in range(20):
        v0 = rng.integers(0, 4 if trial % 2 else 10**6, n).astype(np.int64)
        nth = int(rng.integers(0, n))
        v, ix = v0.copy(), np.arange(n, dtype=np.int64)
        tk.nth_element_desc(v, ix, nth)
        np.testing.assert_array_equal(v, v0[ix])           # pairs moved together
        assert v[nth] == np.sort(v0)[::-1][nth]
        assert (v[:nth] >= v[nth]).all() and (v[nth + 1:] <= v[nth]).all()
        m = int(rng.integers(0, n + 1))
        v, ix = v0.copy(), np.arange(n, dtype=np.int64)
        tk.sort_desc(v, ix, m)
        np.testing.assert_array_equal(v, v0[ix])
        np.testing.assert_array_equal(v[:m], np.sort(v0[:m])[::-1])
        np.testing.assert_array_equal(v[m:], v0[m:])       # the rest untouched


def test_adversarial_inputs_still_sort():
    # organ pipe, sawtooth and presorted inputs push introselect / introsort towards their
    # depth limits (the heap fallbacks); the result must still be a correct top-k
    n = 5000
    a = np.arange(n, dtype=np.int64)
    for c in (np.minimum(a, n - a), a % 7, a, a[::-1].copy(), np.zeros(n, np.int64)):
        for k in (1, 2000, n):
            _check_topk(c, k, tk.topk_order(c, k))


@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_heap_fallbacks_against_numpy(n):
    # the depth-limit paths: heap_select keeps the m largest, with the m-th largest on top;
    # popping the heap down sorts them (libstdc++'s __partial_sort)
    rng = np.random.default_rng(n)
    for trial in range(20):
        v0 = rng.integers(0, 5 if trial % 2 else 1000, n).astype(np.int64)
        m = int(rng.integers(1, n + 1))
        v, ix = v0.copy(), np.arange(n, dtype=np.int64)
        tk._heap_select(v, ix, 0, m, n)
        np.testing.assert_array_equal(v, v0[ix])
        np.testing.assert_array_equal(np.sort(v[:m]), np.sort(v0)[n - m:])
        assert v[0] == v[:m].min()
        end = m
        while end > 1:
            end -= 1
            tk._pop_heap(v, ix, 0, end, end)
        np.testing.assert_array_equal(v[:m], np.sort(v0)[::-1][:m])
