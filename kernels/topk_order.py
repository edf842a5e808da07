"""The grid model's node selection in tbp.monty's exact order: ``torch.topk`` on the CPU.

tbp.monty's ``GridObjectModel`` keeps the ``max_nodes`` voxels with the most observations:
``counts.topk(k)`` over the coalesced sparse count tensor (voxels in increasing linear key
order). Many voxels share a count, and which of the tied voxels at the cut become nodes, and
in which order the nodes come, is whatever torch's CPU kernel leaves: it pairs each value with
its position and runs the C++ standard library's ``std::nth_element`` on the first ``k``, then
``std::sort`` on the first ``k - 1`` (``aten/src/ATen/native/TopKImpl.h``, the branch taken
whenever ``64 k > n``, as it always is here), both with the comparator "greater count". Neither
is stable, so the tie order is neither key order nor random: it is what GCC's libstdc++
introselect and introsort do. This module replays those two algorithms step for step
(median-of-three pivot moved to the front, unguarded Hoare partition, insertion sort below 16
or 3 elements, the heap fallbacks at the depth limit ``2 lg n``), so that our grid models hold
the same nodes in the same order as tbp.monty's.

Only the order of equal counts depends on this; the counts chosen are the top ``k`` either way.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_THRESHOLD = 16  # libstdc++'s _S_threshold (introsort hands ranges this short to insertion sort)


@njit(inline="always")
def _greater(v, a, b):
    """The comparator ``comp(a, b)``: the value at position a is larger than at b."""
    return v[a] > v[b]


@njit(inline="always")
def _swap(v, ix, a, b):
    v[a], v[b] = v[b], v[a]
    ix[a], ix[b] = ix[b], ix[a]


@njit(cache=True)
def _lg(n):
    """``std::__lg``: floor(log2(n)) for n > 0."""
    r = 0
    while n > 1:
        n >>= 1
        r += 1
    return r


@njit(cache=True)
def _move_median_to_first(v, ix, result, a, b, c):
    if _greater(v, a, b):
        if _greater(v, b, c):
            _swap(v, ix, result, b)
        elif _greater(v, a, c):
            _swap(v, ix, result, c)
        else:
            _swap(v, ix, result, a)
    elif _greater(v, a, c):
        _swap(v, ix, result, a)
    elif _greater(v, b, c):
        _swap(v, ix, result, c)
    else:
        _swap(v, ix, result, b)


@njit(cache=True)
def _unguarded_partition_pivot(v, ix, first, last):
    """Median of (first + 1, middle, last - 1) moved to ``first`` as the pivot, then the
    unguarded Hoare partition of [first + 1, last); returns the cut."""
    mid = first + (last - first) // 2
    _move_median_to_first(v, ix, first, first + 1, mid, last - 1)
    pivot = first
    lo = first + 1
    hi = last
    while True:
        while v[lo] > v[pivot]:
            lo += 1
        hi -= 1
        while v[pivot] > v[hi]:
            hi -= 1
        if not lo < hi:
            return lo
        _swap(v, ix, lo, hi)
        lo += 1


@njit(cache=True)
def _unguarded_linear_insert(v, ix, last):
    val, vi = v[last], ix[last]
    nxt = last - 1
    while val > v[nxt]:
        v[last] = v[nxt]
        ix[last] = ix[nxt]
        last = nxt
        nxt -= 1
    v[last] = val
    ix[last] = vi


@njit(cache=True)
def _insertion_sort(v, ix, first, last):
    if first == last:
        return
    for i in range(first + 1, last):
        if v[i] > v[first]:
            val, vi = v[i], ix[i]
            for j in range(i, first, -1):  # move_backward(first, i, i + 1)
                v[j] = v[j - 1]
                ix[j] = ix[j - 1]
            v[first] = val
            ix[first] = vi
        else:
            _unguarded_linear_insert(v, ix, i)


@njit(cache=True)
def _push_heap(v, ix, first, hole, top, val, vi):
    parent = (hole - 1) // 2
    while hole > top and v[first + parent] > val:
        v[first + hole] = v[first + parent]
        ix[first + hole] = ix[first + parent]
        hole = parent
        parent = (hole - 1) // 2
    v[first + hole] = val
    ix[first + hole] = vi


@njit(cache=True)
def _adjust_heap(v, ix, first, hole, length, val, vi):
    top = hole
    child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if v[first + child] > v[first + child - 1]:
            child -= 1
        v[first + hole] = v[first + child]
        ix[first + hole] = ix[first + child]
        hole = child
    if (length & 1) == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        v[first + hole] = v[first + child - 1]
        ix[first + hole] = ix[first + child - 1]
        hole = child - 1
    _push_heap(v, ix, first, hole, top, val, vi)


@njit(cache=True)
def _make_heap(v, ix, first, last):
    length = last - first
    if length < 2:
        return
    parent = (length - 2) // 2
    while True:
        _adjust_heap(v, ix, first, parent, length, v[first + parent], ix[first + parent])
        if parent == 0:
            return
        parent -= 1


@njit(cache=True)
def _pop_heap(v, ix, first, last, result):
    val, vi = v[result], ix[result]
    v[result] = v[first]
    ix[result] = ix[first]
    _adjust_heap(v, ix, first, 0, last - first, val, vi)


@njit(cache=True)
def _heap_select(v, ix, first, middle, last):
    _make_heap(v, ix, first, middle)
    for i in range(middle, last):
        if v[i] > v[first]:
            _pop_heap(v, ix, first, middle, i)


@njit(cache=True)
def nth_element_desc(v, ix, nth):
    """``std::nth_element(begin, begin + nth, end, greater)`` on the pairs ``(v, ix)``, in
    place (int64 (n,) each, swapped together)."""
    first = 0
    last = v.shape[0]
    if first == last or nth == last:
        return
    depth = 2 * _lg(last - first)
    while last - first > 3:
        if depth == 0:
            _heap_select(v, ix, first, nth + 1, last)
            _swap(v, ix, first, nth)  # the nth largest to its place
            return
        depth -= 1
        cut = _unguarded_partition_pivot(v, ix, first, last)
        if cut <= nth:
            first = cut
        else:
            last = cut
    _insertion_sort(v, ix, first, last)


@njit(cache=True)
def sort_desc(v, ix, last):
    """``std::sort(begin, begin + last, greater)`` on the pairs ``(v, ix)``, in place."""
    if last <= 0:
        return
    # __introsort_loop, its recursion on the right part kept on an explicit stack
    stack = np.empty((2 * (2 * _lg(last) + 2) + 2, 3), np.int64)
    stack[0, 0], stack[0, 1], stack[0, 2] = 0, last, 2 * _lg(last)
    top = 1
    while top > 0:
        top -= 1
        lo, hi, depth = stack[top, 0], stack[top, 1], stack[top, 2]
        while hi - lo > _THRESHOLD:
            if depth == 0:  # __partial_sort(lo, hi, hi): heap sort
                _heap_select(v, ix, lo, hi, hi)
                end = hi
                while end - lo > 1:
                    end -= 1
                    _pop_heap(v, ix, lo, end, end)
                break
            depth -= 1
            cut = _unguarded_partition_pivot(v, ix, lo, hi)
            # libstdc++ recurses on [cut, hi) first, then loops on [lo, cut); the two parts
            # are disjoint, so sorting the left one first changes nothing
            stack[top, 0], stack[top, 1], stack[top, 2] = cut, hi, depth
            top += 1
            hi = cut
    # __final_insertion_sort
    if last > _THRESHOLD:
        _insertion_sort(v, ix, 0, _THRESHOLD)
        for i in range(_THRESHOLD, last):
            _unguarded_linear_insert(v, ix, i)
    else:
        _insertion_sort(v, ix, 0, last)


@njit(cache=True)
def topk_order(counts, k):
    """``counts.topk(k).indices`` as torch computes it on the CPU for ``64 k > n``
    (``std::nth_element`` then ``std::sort`` of the first ``k - 1``, "greater" comparator).

    counts : int64 (n,); k : int, clipped to [0, n].
    Returns int64 (k,): positions in ``counts``, by decreasing count, ties in torch's order.
    """
    n = counts.shape[0]
    k = min(max(k, 0), n)
    if k == 0:
        return np.zeros(0, np.int64)
    v = counts.astype(np.int64)
    ix = np.arange(n, dtype=np.int64)
    nth_element_desc(v, ix, k - 1)
    sort_desc(v, ix, k - 1)
    return ix[:k].copy()
