"""Similarity of observations against a store, batch matching, early termination.

The seed's matching step: for a query observation q (position p, features g)
and a store of n observations (positions s_j, features h_j),

    similarity(q) = mean_j 1 / (1 + ||p - s_j||_2 + ||g - h_j||_1)

(with one feature column the L1 term is the seed's ``abs(feature difference)``;
with none it is 0). The similarity of a query against an empty store is 0.
The model's confidence then follows the recurrence

    confidence <- (confidence + similarity) / 2

and an episode is done at the first step whose confidence reaches the
threshold. Everything is float32; see ``kernels._flags`` for the fastmath
choice and what it costs in accuracy (2e-7 relative against float64).

Composition rule (why some bodies are ``inline="always"``): a cached kernel
must not *call* a parallel kernel. Numba (0.68, issue numba/numba#8578) then
caches the caller with references to the callee's parallel region that do not
resolve when the caller is loaded from the cache in a later process, and that
process segfaults (reproduced here: compile ``batch_similarity_at`` in one
process, ``batch_similarity`` in a second, load it in a third). So each public
parallel kernel is ``parallel=True`` itself and *inlines* the loop bodies that
hold the ``prange`` (``batch_into``, ``scan_into``); the callees they keep
are serial. Kernels that compose these (``kernels.loop``) do the same.
"""

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from ._flags import FASTMATH, PARALLEL_MIN_COMPARISONS
from .compact import as_f32

_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
_HALF = np.float32(0.5)
# The termination scan is a few cycles per step: threads pay off only for many steps.
_SCAN_PARALLEL_MIN_STEPS = 1 << 16
# Store columns per block (see ``_similarity_sum``): 2048 columns of x, y, z and one feature
# are 32 KB of float32, which stay in L1 (48 KB here) while a tile of queries passes over them.
STORE_BLOCK = 2048
# Stores up to this many observations are summed in one block: up to 128 KB they stream
# from L2 fast enough (the 500x5 row, 2,500 stored, ran no faster in blocks: 1.02 ms
# against 0.96 ms in one block, one run each).
BLOCKED_ABOVE = 8192
# Queries per tile of the tiled batch: each block is read once per tile from L2 or memory.
QUERY_TILE = 32


def _always_inline():
    """Mark the function that calls this ``alwaysinline`` for LLVM (emits no code).

    Every path (fused batch, tiled batch, stepwise step) must give bit-identical
    similarities. LLVM's inliner decides per call site, by the caller's size,
    whether to inline a block sum; where it did not, the out-of-line copy added
    the terms in another order than the inlined loops (one query in six 1 ulp
    off the stepwise path, and a freshly compiled kernel 1 ulp off the same
    kernel loaded from numba's cache). That happened when the fused run's
    kernel grew by a few argument unpackings. Always inlined, the loop is the
    same in every caller whatever the caller's size, and every path agrees
    (``tests/test_experiment.py`` holds fused and stepwise runs together).

    Does nothing in Python (NUMBA_DISABLE_JIT=1, the line-profiling recipe).
    """


@intrinsic
def _mark_always_inline(typingctx):
    def codegen(context, builder, signature, args):
        builder.function.attributes.add("alwaysinline")
        return context.get_dummy_value()

    return types.none(), codegen


@overload(_always_inline, inline="always")  # inlined by numba, so the mark lands on the caller
def _ol_always_inline():
    return lambda: _mark_always_inline()


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _similarity_sum_1(sx, sy, sz, sf, px, py, pz, f0):
    """Block sum for one feature column (the seed's model): the hot loop.

    ``sx, sy, sz, sf``: the block's rows of the store, 1-D slices (a loop over
    ``range(lo, hi)`` of whole rows measured 1.7x slower: LLVM did not vectorise it).
    """
    _always_inline()
    acc = _ZERO
    for j in range(sx.shape[0]):
        dx = as_f32(sx[j]) - px
        dy = as_f32(sy[j]) - py
        dz = as_f32(sz[j]) - pz
        acc += _ONE / (_ONE + np.sqrt(dx * dx + dy * dy + dz * dz) + abs(as_f32(sf[j]) - f0))
    return acc


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _similarity_sum_0(sx, sy, sz, px, py, pz):
    """Block sum without feature columns."""
    _always_inline()
    acc = _ZERO
    for j in range(sx.shape[0]):
        dx = as_f32(sx[j]) - px
        dy = as_f32(sy[j]) - py
        dz = as_f32(sz[j]) - pz
        acc += _ONE / (_ONE + np.sqrt(dx * dx + dy * dy + dz * dz))
    return acc


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _similarity_sum_n(store, sx, sy, sz, lo, px, py, pz, features, t):
    """Block sum for any number of feature columns (L1 feature distance).

    ``sx, sy, sz``: the block's position rows (columns ``lo ..``), 1-D slices;
    the query's features are ``features[t, :]``.
    """
    n_feat = store.shape[0] - 3
    _always_inline()
    acc = _ZERO
    for j in range(sx.shape[0]):
        dx = as_f32(sx[j]) - px
        dy = as_f32(sy[j]) - py
        dz = as_f32(sz[j]) - pz
        e = _ZERO
        for k in range(n_feat):
            e += abs(as_f32(store[3 + k, lo + j]) - features[t, k])
        acc += _ONE / (_ONE + np.sqrt(dx * dx + dy * dy + dz * dz) + e)
    return acc


@njit(inline="always")
def _rows(store, lo, hi):
    """Columns ``lo .. hi`` of the store's x, y, z and first feature rows, as 1-D slices.

    Without feature columns the fourth is the x row again (unused). Each slice
    takes and drops a reference: the four cost ~90 ns, which was 3/4 of a
    query's time against 100 stored observations (the 10x10 row). So the batch
    loops make them once per block of the store, not once per query.
    """
    f = 3 if store.shape[0] > 3 else 0
    return store[0, lo:hi], store[1, lo:hi], store[2, lo:hi], store[f, lo:hi]


@njit(inline="always")
def _rows_sum(store, sx, sy, sz, sf, lo, px, py, pz, features, t):
    """Sum of the similarity terms of one query over one block of the store; float32.

    ``sx, sy, sz, sf``: the block's rows from ``_rows(store, lo, hi)``; the
    query is at ``(px, py, pz)`` with features ``features[t, :]`` (float32
    (T, F)). The store is float32, or uint16 holding float16 bits
    (``kernels.compact``): values are widened to float32 as they are read. Each
    feature count has its own loop function: one function holding all three
    loops measured 2.1x slower per comparison at 100 stored observations (1.22
    vs 0.57 ns).
    """
    n_feat = store.shape[0] - 3
    if n_feat == 1:
        return _similarity_sum_1(sx, sy, sz, sf, px, py, pz, features[t, 0])
    if n_feat == 0:
        return _similarity_sum_0(sx, sy, sz, px, py, pz)
    return _similarity_sum_n(store, sx, sy, sz, lo, px, py, pz, features, t)


@njit(cache=True)
def _similarity_sum(store, n_stored, px, py, pz, features, t):
    """Sum (not mean) of the similarity terms of one query; float32.

    The query is at ``(px, py, pz)`` with features ``features[t, :]``. A store
    of over ``BLOCKED_ABOVE`` observations is summed in blocks of
    ``STORE_BLOCK`` columns, block by block from the first, and the block sums
    are added in that order. The batch loops (``batch_into``) add the same
    block sums in the same order, so every path (fused batch, tiled batch,
    stepwise step) computes bit-identical sums: the same loop, vectorised the
    same way, on the same blocks.
    """
    if n_stored <= BLOCKED_ABOVE:
        sx, sy, sz, sf = _rows(store, 0, n_stored)
        return _rows_sum(store, sx, sy, sz, sf, 0, px, py, pz, features, t)
    acc = _ZERO
    for lo in range(0, n_stored, STORE_BLOCK):
        sx, sy, sz, sf = _rows(store, lo, min(n_stored, lo + STORE_BLOCK))
        acc += _rows_sum(store, sx, sy, sz, sf, lo, px, py, pz, features, t)
    return acc


@njit(cache=True)
def mean_similarity(store, n_stored, location, features):
    """Similarity of one query observation against the first ``n_stored`` of a store.

    Parameters
    ----------
    store : float32 (3 + F, capacity), C-contiguous (see ``kernels.store``)
    n_stored : int, 0 <= n_stored <= capacity
    location : float32 (3,)
    features : float32 (F,)

    Returns
    -------
    float32 mean over the stored observations of
    1 / (1 + euclidean distance + L1 feature distance); 0 for an empty store.
    """
    if n_stored == 0:
        return _ZERO
    query = np.empty((1, features.shape[0]), features.dtype)  # the batch loops' (T, F) layout
    for k in range(features.shape[0]):
        query[0, k] = features[k]
    return _similarity_sum(store, n_stored, location[0], location[1], location[2], query, 0) / np.float32(n_stored)


@njit(cache=True)
def mean_similarity_at(store, n_stored, location, features, t):
    """``mean_similarity`` of observation ``t`` of ``location`` (float32 (T, 3)) and
    ``features`` (float32 (T, F)): the stepwise path's step, without copying the row."""
    if n_stored == 0:
        return _ZERO
    return _similarity_sum(store, n_stored, location[t, 0], location[t, 1], location[t, 2], features, t) / np.float32(
        n_stored)


@njit(cache=True)
def _batch_similarity_serial(store, n_stored, location, features, steps, out):
    """Serial twin of ``_batch_similarity_parallel`` (tests hold the two together)."""
    n_f = np.float32(n_stored)
    for i in range(steps.shape[0]):
        t = steps[i]
        out[i] = _ZERO if n_stored == 0 else _similarity_sum(
            store, n_stored, location[t, 0], location[t, 1], location[t, 2], features, t) / n_f


@njit(cache=True, parallel=True)
def _batch_similarity_parallel(store, n_stored, location, features, steps, out):
    """Batch matching on all threads, whatever the size."""
    n_f = np.float32(n_stored)
    for i in prange(steps.shape[0]):
        t = steps[i]
        out[i] = _ZERO if n_stored == 0 else _similarity_sum(
            store, n_stored, location[t, 0], location[t, 1], location[t, 2], features, t) / n_f


@njit(inline="always")
def batch_into(store, n_stored, location, features, steps, out):
    """Similarities of the query rows ``steps`` into ``out``: the body of batch matching,
    for ``@njit`` kernels that match (inlined; see the module note: a parallel
    caller must be ``parallel=True`` itself, and then these loops run on all threads).

    store : float32 or uint16 (3 + F, capacity);  n_stored : int
    location : float32 (T, 3);  features : float32 (T, F)
    steps : int64 (Q,), the query rows;  out : float32 (Q,), written

    Parallel over queries when Q > 1 and Q x n_stored >= PARALLEL_MIN_COMPARISONS,
    serial otherwise. A store of over ``BLOCKED_ABOVE`` observations is matched
    in tiles of up to ``QUERY_TILE`` queries, block by block. Every loop adds
    the same block sums in the same order as ``_similarity_sum``, so the
    results are identical whichever loop runs.
    """
    q = steps.shape[0]
    n_f = np.float32(n_stored)
    if q > 1 and n_stored > BLOCKED_ABOVE and q * n_stored >= PARALLEL_MIN_COMPARISONS:
        # Tiled: a tile of queries passes over the store block by block, so each block is
        # read from L1 by all of them (a large store streamed from L2 once per query cost
        # 9%: 0.152 against 0.139 ns per comparison at 100,000 stored, 2 threads). Short
        # batches get smaller tiles, at least 8 of them, so that every thread gets some
        # (numba.get_num_threads() here would make the kernels uncacheable).
        size = max(1, min(QUERY_TILE, q // 8))
        for tile in prange((q + size - 1) // size):
            a = tile * size
            b = min(q, a + size)
            for lo in range(0, n_stored, STORE_BLOCK):
                sx, sy, sz, sf = _rows(store, lo, min(n_stored, lo + STORE_BLOCK))
                for i in range(a, b):
                    t = steps[i]
                    s = _rows_sum(store, sx, sy, sz, sf, lo, location[t, 0], location[t, 1], location[t, 2],
                                  features, t)
                    out[i] = s if lo == 0 else out[i] + s
            for i in range(a, b):
                out[i] = out[i] / n_f
    elif n_stored <= BLOCKED_ABOVE:
        # one block: its row slices are made once for all queries (see ``_rows``)
        sx, sy, sz, sf = _rows(store, 0, n_stored)
        if q > 1 and q * n_stored >= PARALLEL_MIN_COMPARISONS:
            for i in prange(q):
                t = steps[i]
                out[i] = _rows_sum(store, sx, sy, sz, sf, 0, location[t, 0], location[t, 1], location[t, 2],
                                   features, t) / n_f
        else:
            for i in range(q):
                t = steps[i]
                out[i] = _ZERO if n_stored == 0 else _rows_sum(
                    store, sx, sy, sz, sf, 0, location[t, 0], location[t, 1], location[t, 2], features, t) / n_f
    elif q > 1 and q * n_stored >= PARALLEL_MIN_COMPARISONS:
        for i in prange(q):
            t = steps[i]
            out[i] = _similarity_sum(store, n_stored, location[t, 0], location[t, 1], location[t, 2], features,
                                     t) / n_f
    else:
        for i in range(q):
            t = steps[i]
            out[i] = _similarity_sum(store, n_stored, location[t, 0], location[t, 1], location[t, 2], features,
                                     t) / n_f


@njit(cache=True, parallel=True)
def batch_similarity_at(store, n_stored, location, features, steps, out):
    """Similarities of the query steps ``steps`` (parallel over queries when large).

    Parameters
    ----------
    store : float32 (3 + F, capacity);  n_stored : int
    location : float32 (T, 3);  features : float32 (T, F)
    steps : int64 (Q,), indices into the rows of ``location`` / ``features``
    out : float32 (Q,), written: ``out[i]`` = similarity of step ``steps[i]``

    Runs on all threads when Q > 1 and Q x n_stored >= ``PARALLEL_MIN_COMPARISONS``,
    else on one (same results either way: each query's sum is computed by
    the same serial loop). Calling this from your own *cached* ``@njit``
    function can crash a later process (see the module note): call it from
    Python, or inline the loop in a kernel of your own.
    """
    batch_into(store, n_stored, location, features, steps, out)


@njit(cache=True, parallel=True)
def batch_similarity(store, n_stored, location, features):
    """Similarity of every row of ``location`` / ``features`` against the store.

    Parameters
    ----------
    store : float32 (3 + F, capacity);  n_stored : int
    location : float32 (Q, 3);  features : float32 (Q, F)

    Returns
    -------
    float32 (Q,): the similarity of each query (batch matching, parallel over
    queries when the batch is large).
    """
    q = location.shape[0]
    out = np.empty(q, dtype=np.float32)
    steps = np.empty(q, dtype=np.int64)
    for i in range(q):  # a loop, not np.arange: in a parallel kernel that would start threads
        steps[i] = i
    batch_into(store, n_stored, location, features, steps, out)
    return out


@njit(cache=True)
def update_confidence(confidence, similarity):
    """One step of the confidence recurrence: ``(confidence + similarity) / 2``, float32."""
    return (confidence + similarity) * _HALF


@njit(cache=True)
def termination_scan(similarities, confidence, threshold):
    """Run the confidence recurrence over ``similarities`` until it reaches ``threshold``.

    Parameters
    ----------
    similarities : float32 (K,), the similarities of K consecutive steps
    confidence : float32, the confidence before the first of them
    threshold : float32; ``inf`` (or anything above 1) never terminates

    Returns
    -------
    (n_consumed, confidence, done): the number of steps consumed (the
    terminating step included), the confidence after them, and whether the
    threshold was reached.
    """
    c = np.float32(confidence)
    for i in range(similarities.shape[0]):
        c = update_confidence(c, similarities[i])
        if c >= threshold:
            return i + 1, c, True
    return similarities.shape[0], c, False


@njit(cache=True, parallel=True)
def _scan_segments_parallel(similarities, offsets, confidence, threshold, out_consumed, out_done):
    """The termination scan on all threads, whatever the size."""
    for e in prange(offsets.shape[0] - 1):
        k, c, d = termination_scan(similarities[offsets[e]:offsets[e + 1]], confidence[e], threshold)
        out_consumed[e] = k
        confidence[e] = c
        out_done[e] = d


@njit(cache=True)
def _scan_segments_serial(similarities, offsets, confidence, threshold, out_consumed, out_done):
    """Serial twin of ``_scan_segments_parallel``."""
    for e in range(offsets.shape[0] - 1):
        k, c, d = termination_scan(similarities[offsets[e]:offsets[e + 1]], confidence[e], threshold)
        out_consumed[e] = k
        confidence[e] = c
        out_done[e] = d


@njit(inline="always")
def scan_into(similarities, offsets, confidence, threshold, out_consumed, out_done):
    """The body of ``scan_segments`` (same arguments, same results), for ``@njit``
    kernels that scan (inlined; see the module note)."""
    # Scanning is a few cycles per step: threads pay off only for many steps.
    if similarities.shape[0] >= _SCAN_PARALLEL_MIN_STEPS and offsets.shape[0] > 2:
        for e in prange(offsets.shape[0] - 1):
            k, c, d = termination_scan(similarities[offsets[e]:offsets[e + 1]], confidence[e], threshold)
            out_consumed[e] = k
            confidence[e] = c
            out_done[e] = d
    else:
        for e in range(offsets.shape[0] - 1):
            k, c, d = termination_scan(similarities[offsets[e]:offsets[e + 1]], confidence[e], threshold)
            out_consumed[e] = k
            confidence[e] = c
            out_done[e] = d


@njit(cache=True, parallel=True)
def scan_segments(similarities, offsets, confidence, threshold, out_consumed, out_done):
    """The termination scan of many independent episodes at once.

    Parameters
    ----------
    similarities : float32 (Q,), the steps of E segments laid end to end
    offsets : int64 (E + 1,), segment e is ``similarities[offsets[e]:offsets[e+1]]``
    confidence : float32 (E,), each segment's starting confidence; overwritten
        with the confidence after the consumed steps
    threshold : float32
    out_consumed : int64 (E,), written: steps consumed per segment
    out_done : bool (E,), written: whether the segment reached the threshold

    Parallel over segments when there are many steps in all.
    """
    scan_into(similarities, offsets, confidence, threshold, out_consumed, out_done)
