"""Sorting and selection of a range of a 1-D array, in place, for any numeric dtype.

Written out instead of calling ``np.sort`` / ``np.partition`` inside kernels:
numba compiles those per signature in seconds (``np.partition`` alone added
5.7 s to the first run of the evidence model's episode kernel; these compile
in well under a second). Inputs must not hold NaN (every caller's data is
checked for NaN at the engine's boundary): NaN compares false both ways, so
its place in the result is undefined, where NumPy puts it last.
"""

import numpy as np
from numba import njit

_ZERO = np.int64(0)
_INSERTION_MAX = 32


@njit(cache=True)
def sort_range(a, lo, hi):
    """Sort ``a[lo:hi]`` ascending in place: insertion sort for short runs, heapsort otherwise.

    Not stable. O(n log n) in the worst case.
    """
    count = hi - lo
    if count <= _INSERTION_MAX:
        for j in range(lo + 1, hi):
            v = a[j]
            t = j
            while t > lo and a[t - 1] > v:
                a[t] = a[t - 1]
                t -= 1
            a[t] = v
        return
    for start in range(count // 2 - 1, -1, -1):
        _sift_down(a, lo, start, count)
    for end in range(count - 1, 0, -1):
        v = a[lo]
        a[lo] = a[lo + end]
        a[lo + end] = v
        _sift_down(a, lo, _ZERO, end)


@njit(cache=True)
def _sift_down(a, lo, root, count):
    """Heapsort step: sift heap entry ``root`` of ``a[lo:lo + count]`` down (max-heap)."""
    while True:
        child = 2 * root + 1
        if child >= count:
            return
        if child + 1 < count and a[lo + child + 1] > a[lo + child]:
            child += 1
        if a[lo + child] <= a[lo + root]:
            return
        v = a[lo + root]
        a[lo + root] = a[lo + child]
        a[lo + child] = v
        root = child


@njit(cache=True)
def kth_smallest(a, k, max_rounds=-1):
    """The value ``np.partition(a, k)[k]`` would hold: the k-th smallest of ``a`` (0-based).

    Reorders ``a`` in place (pass a copy to keep it). Quickselect with a
    median-of-three pivot and Hoare's partition, which splits runs of equal
    values evenly (evidence values are often tied); after ``2 log2(n) + 4``
    rounds without an answer it sorts what is left (heapsort), so the worst
    case stays O(n log n); ``max_rounds`` >= 0 sets that limit instead (tests
    use it to reach the fallback). Raises ValueError unless ``0 <= k < a.size``.
    """
    n = a.shape[0]
    if k < 0 or k >= n:
        raise ValueError("kth_smallest: k out of range")
    lo = 0
    hi = n - 1
    rounds = 4
    m = n
    while m > 1:
        rounds += 2
        m >>= 1
    if max_rounds >= 0:
        rounds = max_rounds
    while lo < hi:
        if rounds == 0:
            sort_range(a, lo, hi + 1)
            return a[k]
        rounds -= 1
        mid = lo + (hi - lo) // 2
        # median of three into a[mid]
        if a[mid] < a[lo]:
            a[mid], a[lo] = a[lo], a[mid]
        if a[hi] < a[lo]:
            a[hi], a[lo] = a[lo], a[hi]
        if a[hi] < a[mid]:
            a[hi], a[mid] = a[mid], a[hi]
        pivot = a[mid]
        i = lo - 1
        j = hi + 1
        while True:
            i += 1
            while a[i] < pivot:
                i += 1
            j -= 1
            while a[j] > pivot:
                j -= 1
            if i >= j:
                break
            a[i], a[j] = a[j], a[i]
        # a[lo..j] <= pivot <= a[j+1..hi]
        if k <= j:
            hi = j
        else:
            lo = j + 1
    return a[k]


_RADIX_PASSES = ((21, 11), (10, 11), (0, 10))  # (shift, bits): 32 bits, high to low


@njit(cache=True, fastmath=False)
def kth_smallest_f32(a, k):
    """The k-th smallest (0-based) of the float32 1-D array ``a``, leaving ``a`` as it is.

    The value ``kth_smallest`` gives (equal as a float: of -0.0 and 0.0 this may
    return either), by radix selection on the float bits: three counting passes
    of 11, 11 and 10 bits over ``a``, with no data-dependent branch. Quickselect
    mispredicts a branch on most of its compares: on 1,828 random values (one
    object's nodes in the evidence step's burst sampling) it took ~21 us where
    this takes ~9. Raises ValueError unless ``0 <= k < a.size``; NaN must not
    occur (see the module note).
    """
    n = a.shape[0]
    if k < 0 or k >= n:
        raise ValueError("kth_smallest_f32: k out of range")
    buf = np.empty(n, np.float32)
    for i in range(n):
        buf[i] = a[i]
    keys = buf.view(np.uint32)
    # as unsigned integers these keys sort as the floats do: every bit of a negative
    # value flipped, only the sign bit of a positive one
    sign = np.uint32(0x80000000)
    for i in range(n):
        u = keys[i]
        keys[i] = ~u if u & sign else u | sign
    prefix = np.uint32(0)
    known = np.uint32(0)  # the bits of the answer fixed so far
    rank = k
    for shift, width in _RADIX_PASSES:
        digit_mask = np.uint32((1 << width) - 1)
        hist = np.zeros(1 << width, np.int64)
        for i in range(n):
            u = keys[i]
            hist[(u >> np.uint32(shift)) & digit_mask] += (u & known) == prefix
        d = 0
        while rank >= hist[d]:
            rank -= hist[d]
            d += 1
        prefix |= np.uint32(d) << np.uint32(shift)
        known |= digit_mask << np.uint32(shift)
    out = np.empty(1, np.uint32)
    out[0] = prefix & ~sign if prefix & sign else ~prefix
    return out.view(np.float32)[0]
