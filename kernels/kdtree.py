"""A KD-tree over float32 3-D points: build, k-nearest and radius queries.

The tree is a ``KDTree`` named tuple of flat numpy arrays, so it passes into
other ``@njit`` kernels, pickles, and can be saved and memory-mapped
(``save_tree`` / ``load_tree``).

Layout
------
A complete binary tree stored implicitly: node 0 is the root, the children of
node ``i`` are ``2 i + 1`` and ``2 i + 2``, and every leaf lies at the same
depth ``D``, so there are ``2**D`` leaves, ``2**D - 1`` internal nodes (nodes
``0 .. 2**D - 2``) and leaf ``j`` is node ``2**D - 1 + j``. ``D`` is the
smallest depth at which every leaf holds at most ``leaf_size`` points. Each
internal node splits its points at the median (the left child gets
``count // 2`` of them) along the dimension of largest spread of its bounding
box; the points are stored reordered so that each leaf's points are one
contiguous run of ``points``. Every node stores the tight float32 bounding box
of its points, and queries prune a node when the exact float32 squared distance
from the query to that box is larger than the current search radius.

Distances
---------
Everything is float32. The squared distance of a stored point ``s`` to a query
``p`` is ``dx*dx + dy*dy + dz*dz`` with ``dx = s_x - p_x`` (and so on), each
operation rounded to float32, summed left to right (no fused multiply-add);
a radius ``r`` (or ``max_distance``) is compared as ``d2 <= r*r`` with ``r*r``
also rounded to float32. So the points "within r" are exactly the points whose
float32 squared distance is ``<= float32(r) * float32(r)``, and a NumPy
reference that computes the same expression in float32 finds the same set.
The box distances used for pruning are computed the same way from the gaps to
the box, and float32 rounding is monotonic, so a box distance never exceeds the
distance of any point inside the box: pruning loses nothing. Returned distances
are ``sqrt(d2)`` in float32.

k-nearest results are sorted by (distance, original index): of two points at
the same float32 squared distance the one with the lower index comes first
(and is the one kept when only one fits in k).

Calling from Python and from ``@njit``
--------------------------------------
``build_tree``, ``query_knn``, ``query_radius``, ``query_knn_batch`` and
``query_radius_batch`` validate their inputs when called from Python (shapes,
float32 dtype, finite values; ValueError with a message otherwise) and then
call the compiled kernels. They can also be called, by the same names, from
inside a user's own ``@njit`` function (``numba.extending.overload``): there
they compile to the kernels directly, with no validation beyond what keeps
memory safe (``k >= 0``, ``leaf_size >= 1``, the (3,) / (m, 3) shapes; a
wrong array rank is a typing error); a negative or NaN radius there finds
nothing. Every kernel is ``@njit(cache=True)``.

Parallel kernels (numba/numba#8578)
-----------------------------------
A cached kernel must not *call* a parallel kernel: numba 0.68 then caches the
caller with references to the callee's parallel region that do not resolve
when the caller is loaded from the cache in a later process, which segfaults
(reproduced here with a user's cached function calling ``build_tree``; see
``tests/test_kdtree.py``). So the parallel loops live in ``inline="always"``
bodies (``_build_body``, ``_knn_batch_body``, ``_radius_batch_body``) that
call serial kernels only; Python callers get them through the parallel
kernels ``_build``, ``_query_knn_batch`` and ``_query_radius_batch``, and
njit callers get them inlined into their own function. Inside a user's
function compiled with ``parallel=True`` the batch functions and the build
run on all threads; inside one compiled without it numba reads their
``prange`` as ``range`` and they run on one thread, with the same results.

Compile time: each ``prange`` loop of a parallel kernel is compiled as a
function of its own, with every kernel it calls linked in again, so a
parallel loop costs about a second of a cold cache's compile. Only the
searches themselves are parallel (two regions for a radius batch, one for a
k-nearest batch); the leaf ordering of a batch is serial (``_spatial_order``),
and ``build_tree`` from Python runs the serial kernel ``_build_serial`` below
``_PARALLEL_KERNEL_MIN_BUILD`` points (the sensor simulation's 2e4-point
surfaces), where the parallel one measured no faster. ``radius_lists`` is the
radius batch as a serial, GIL-releasing kernel (no parallel region to compile):
the sensor simulation's surface fit runs it on Python threads.

Performance notes
-----------------
Measured on the 2-core development machine (numba 0.68), 1e6 uniform points,
5e5 queries, max_distance 0.01 (``/tmp/kd_bench.py`` of the issue):

- ``DEFAULT_LEAF_SIZE`` = 16 (leaves of 8 to 16 points). Per query on one
  thread: k = 10 within 0.01, 0.57 us at leaf size 16 against 0.62 at 8 and
  0.55 at 32; with no distance bound 1.24 us at 16, 1.32 at 8, 1.30 at 32;
  at 1e4 and 1e5 points 16 was as good or better.
- Batched queries are put in the tree's own leaf order first (each query
  descends by the split planes to its leaf, eight queries in lock step, then
  a counting sort by leaf; 15 ms for 5e5 queries), so that consecutive
  queries, and the block of queries one thread handles, touch the same nodes
  and points: 1.4x faster than the queries' own (random) order.
- The search loop lives in one function with no calls and no array views
  inside: numba increfs and decrefs every array passed to a function
  (atomic operations on a shared counter), and with two threads doing that
  per query the batch ran 2x slower.
- ``_start_node`` skips the levels whose split plane is out of reach; the
  descent goes into the query's side of the split without computing that
  child's box distance (the far child's is computed and pushed); unsigned
  subscripts skip numba's negative-index wrap-around: together some 25%.
"""

import zipfile
from typing import NamedTuple

import numpy as np
from numba import njit, prange, types
from numba.core.errors import TypingError
from numba.extending import overload

from ._flags import HELPER
from .compact import as_f32
from .select import sort_range

__all__ = [
    "DEFAULT_LEAF_SIZE",
    "KDTree",
    "build_tree",
    "check_points",
    "compact_tree",
    "knn_rows",
    "load_tree",
    "query_knn",
    "query_knn_batch",
    "query_radius",
    "query_radius_batch",
    "radius_lists",
    "save_tree",
]

DEFAULT_LEAF_SIZE = 16

# Below this many queries a batch runs on one thread: the parallel path (leaf
# order, gather, search: three parallel regions) costs about 20 us more. Measured
# on the 2-core machine, 1e5 points, k = 1: 256 queries 42 us serial; 512
# queries 132 us serial, 74 us parallel.
_PARALLEL_MIN_QUERIES = 256

# Queries per block of the parallel batch loops (each block allocates its
# traversal stack once; 64 queries take some 20 us).
_BLOCK = 64

# Below this many points the build runs on one thread.
_PARALLEL_MIN_BUILD = 4096

# Below this many points ``build_tree`` (from Python) calls the serial kernel
# ``_build_serial``, so that small trees never compile the parallel one (some
# 1.5 s on a cold cache): 2e4 points built in 3.7 ms serial and 3.8 ms on two
# threads on the 2-core machine.
_PARALLEL_KERNEL_MIN_BUILD = 65536

# Queries that descend the tree together when the batch is put in leaf order.
_LANES = 8

# Deepest tree the traversal stacks are sized for (2**62 leaves: never reached).
_MAX_DEPTH = 64

# Constants for arguments of calls between kernels: a bare ``0`` or ``True``
# argument is typed as a literal, and numba compiles (and caches) a separate
# specialisation of the callee for it; numpy scalars are typed int64 / bool.
_ZERO = np.int64(0)
_ONE = np.int64(1)
_FALSE = np.bool_(False)
_TRUE = np.bool_(True)

# Cast for array subscripts: numba wraps negative signed subscripts around
# (a compare and a select per subscript); unsigned ones skip that.
_U = np.uint64

_INF32 = np.float32(np.inf)
_ZERO32 = np.float32(0.0)
_NO_INDEX = np.int64(-1)


class KDTree(NamedTuple):
    """A KD-tree over n float32 3-D points, as flat arrays (see the module doc).

    Attributes
    ----------
    points : float32 (n, 3), C-contiguous
        The points, reordered so that the points of leaf ``j`` are rows
        ``leaf_start[j] : leaf_start[j + 1]``.
    indices : int64 (n,)
        ``indices[i]`` is the row of the original input that ``points[i]`` is.
    boxes : float32 (2 L - 1, 6), C-contiguous, L = number of leaves (a power of 2)
        Tight bounding box of each node's points, ``(lo_x, lo_y, lo_z, hi_x,
        hi_y, hi_z)``; an empty node has ``lo = +inf``, ``hi = -inf``.
    leaf_start : int64 (L + 1,)
        Offsets of the leaves' runs in ``points``; ``leaf_start[L] = n``.
    split_dim : int64 (L - 1,)
        Dimension (0, 1, 2) along which each internal node splits.
    split_val : float32 (L - 1,)
        The split value of each internal node: its left child's points have
        coordinate ``<= split_val`` along ``split_dim`` and its right child's
        ``>= split_val``.
    """

    points: np.ndarray
    indices: np.ndarray
    boxes: np.ndarray
    leaf_start: np.ndarray
    split_dim: np.ndarray
    split_val: np.ndarray


_FIELDS = {
    "points": (np.float32, 2),
    "indices": (np.int64, 1),
    "boxes": (np.float32, 2),
    "leaf_start": (np.int64, 1),
    "split_dim": (np.int64, 1),
    "split_val": (np.float32, 1),
}


# ---------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------


@njit(**HELPER)
def _tree_depth(n, leaf_size):
    """Smallest depth D with ceil(n / 2**D) <= leaf_size."""
    d = 0
    while ((n + (1 << d) - 1) >> d) > leaf_size:
        d += 1
    return d


@njit(**HELPER)
def _swap_rows(work, idx, i, j):
    """Swap rows ``i`` and ``j`` of ``work`` float32 (n, 3) and of ``idx`` int64 (n,)."""
    for c in range(3):
        t = work[i, c]
        work[i, c] = work[j, c]
        work[j, c] = t
    t2 = idx[i]
    idx[i] = idx[j]
    idx[j] = t2


@njit(**HELPER)
def _heapsort_rows(work, idx, lo, hi, dim):
    """Sort rows ``lo:hi`` of ``work`` float32 (n, 3) and ``idx`` int64 (n,) by
    column ``dim``, in place (heapsort: O(c log c) whatever the input)."""
    count = hi - lo
    for start in range(count // 2 - 1, -1, -1):
        _sift_down_rows(work, idx, lo, start, count, dim)
    for end in range(count - 1, 0, -1):
        _swap_rows(work, idx, lo, lo + end)
        _sift_down_rows(work, idx, lo, _ZERO, end, dim)


@njit(**HELPER)
def _sift_down_rows(work, idx, lo, root, count, dim):
    """Heapsort step: sift heap entry ``root`` of rows ``lo:lo + count`` down (max-heap on column ``dim``)."""
    while True:
        child = 2 * root + 1
        if child >= count:
            return
        if child + 1 < count and work[lo + child + 1, dim] > work[lo + child, dim]:
            child += 1
        if work[lo + child, dim] <= work[lo + root, dim]:
            return
        _swap_rows(work, idx, lo + root, lo + child)
        root = child


@njit(cache=True)
def _select(work, idx, lo, hi, kth, dim, budget):
    """Partially sort rows ``lo:hi`` of ``work`` / ``idx`` by column ``dim`` so that
    row ``kth`` holds the value it would hold after a full sort, rows before it
    are ``<=`` and rows after it ``>=``.

    Introselect: Hoare partitions around a median of three (O(c) expected;
    runs of equal keys split evenly), and a heapsort of what is left after
    ``budget`` rounds, so the worst case stays O(c log c).
    """
    left = lo
    right = hi - 1
    while right > left:
        if budget <= 0:
            _heapsort_rows(work, idx, left, right + 1, dim)
            return
        budget -= 1
        mid = (left + right) >> 1
        if work[mid, dim] < work[left, dim]:
            _swap_rows(work, idx, mid, left)
        if work[right, dim] < work[left, dim]:
            _swap_rows(work, idx, right, left)
        if work[right, dim] < work[mid, dim]:
            _swap_rows(work, idx, right, mid)
        pivot = work[mid, dim]
        i = left
        j = right
        while i <= j:
            while work[i, dim] < pivot:
                i += 1
            while work[j, dim] > pivot:
                j -= 1
            if i <= j:
                _swap_rows(work, idx, i, j)
                i += 1
                j -= 1
        # rows left..j are <= pivot, rows i..right are >= pivot, rows between equal it
        if kth <= j:
            right = j
        elif kth >= i:
            left = i
        else:
            return


@njit(**HELPER)
def _range_box(work, s, e, boxes, node):
    """Write into ``boxes[node]`` float32 (6,) the bounding box of rows ``s:e`` of
    ``work`` float32 (n, 3) (``lo = +inf``, ``hi = -inf`` when empty)."""
    lx = _INF32
    ly = _INF32
    lz = _INF32
    hx = -_INF32
    hy = -_INF32
    hz = -_INF32
    for j in range(s, e):
        x = work[j, 0]
        y = work[j, 1]
        z = work[j, 2]
        lx = min(lx, x)
        ly = min(ly, y)
        lz = min(lz, z)
        hx = max(hx, x)
        hy = max(hy, y)
        hz = max(hz, z)
    boxes[node, 0] = lx
    boxes[node, 1] = ly
    boxes[node, 2] = lz
    boxes[node, 3] = hx
    boxes[node, 4] = hy
    boxes[node, 5] = hz


@njit(**HELPER)
def _split_node(work, idx, start, end, boxes, split_dim, split_val, node):
    """Split internal ``node``: its box, its split dimension (largest spread, the
    lowest of equal ones) and the median selection of its rows ``start[node]:
    end[node]`` of ``work`` / ``idx``; writes ``boxes[node]``, ``split_dim[node]``,
    ``split_val[node]`` and the children's ``start`` / ``end`` (int64 (nodes,))."""
    s = start[node]
    e = end[node]
    _range_box(work, s, e, boxes, node)
    dim = _ZERO
    spread = boxes[node, 3] - boxes[node, 0]
    for c in range(1, 3):
        sc = boxes[node, 3 + c] - boxes[node, c]
        if sc > spread:
            spread = sc
            dim = c
    mid = s + (e - s) // 2
    if e - s > 1:
        budget = 16
        c = e - s
        while c > 1:
            budget += 2
            c >>= 1
        _select(work, idx, s, e, mid, dim, budget)
    split_dim[node] = dim
    split_val[node] = work[mid, dim] if mid < e else _ZERO32
    left = 2 * node + 1
    start[left] = s
    end[left] = mid
    start[left + 1] = mid
    end[left + 1] = e


@njit(inline="always")
def _build_body(points, leaf_size):
    """Build the tree arrays; inlined into ``_build`` and into njit callers of
    ``build_tree`` (see "Parallel kernels" in the module doc). No validation.

    Parameters
    ----------
    points : float32 (n, 3), any layout, finite
    leaf_size : int >= 1

    Returns
    -------
    The six arrays of ``KDTree`` in field order. Level by level, the nodes of
    a level in parallel when n >= ``_PARALLEL_MIN_BUILD`` (and the caller is
    a parallel kernel); the same arrays either way.
    """
    n = points.shape[0]
    depth = _tree_depth(n, leaf_size)
    n_leaves = 1 << depth
    n_internal = n_leaves - 1
    n_nodes = 2 * n_leaves - 1
    work = np.empty((n, 3), dtype=np.float32)
    idx = np.empty(n, dtype=np.int64)
    for i in range(n):  # loops, not array expressions: each of those would start the threads
        work[i, 0] = as_f32(points[i, 0])
        work[i, 1] = as_f32(points[i, 1])
        work[i, 2] = as_f32(points[i, 2])
        idx[i] = i
    start = np.empty(n_nodes, dtype=np.int64)
    end = np.empty(n_nodes, dtype=np.int64)
    start[0] = 0
    end[0] = n
    boxes = np.empty((n_nodes, 6), dtype=np.float32)
    split_dim = np.empty(n_internal, dtype=np.int64)
    split_val = np.empty(n_internal, dtype=np.float32)
    if n >= _PARALLEL_MIN_BUILD:
        for level in range(depth):
            first = (1 << level) - 1
            for t in prange(1 << level):
                _split_node(work, idx, start, end, boxes, split_dim, split_val, first + t)
        for t in prange(n_leaves):
            _range_box(work, start[n_internal + t], end[n_internal + t], boxes, n_internal + t)
    else:
        for level in range(depth):
            first = (1 << level) - 1
            for t in range(1 << level):
                _split_node(work, idx, start, end, boxes, split_dim, split_val, first + t)
        for t in range(n_leaves):
            _range_box(work, start[n_internal + t], end[n_internal + t], boxes, n_internal + t)
    leaf_start = np.empty(n_leaves + 1, dtype=np.int64)
    for t in range(n_leaves):
        leaf_start[t] = start[n_internal + t]
    leaf_start[n_leaves] = n
    return work, idx, boxes, leaf_start, split_dim, split_val


@njit(cache=True, parallel=True)
def _build(points, leaf_size):
    """``_build_body`` as a parallel kernel, for Python callers (large trees)."""
    return _build_body(points, leaf_size)


@njit(cache=True)
def _build_serial(points, leaf_size):
    """``_build_body`` on one thread, for Python callers (trees below
    ``_PARALLEL_KERNEL_MIN_BUILD`` points); the same arrays as ``_build``."""
    return _build_body(points, leaf_size)


def build_tree(points, leaf_size=DEFAULT_LEAF_SIZE):
    """Build a KD-tree over 3-D points.

    Parameters
    ----------
    points : float32 (n, 3)
        Finite coordinates; any memory layout; n may be 0. Duplicates and
        degenerate (collinear, coplanar) sets are fine. Not modified; the tree
        holds its own reordered copy.
    leaf_size : int, optional
        Most points per leaf (>= 1); default ``DEFAULT_LEAF_SIZE``.

    Returns
    -------
    KDTree
        The tree. Building is deterministic: the same points and leaf size
        give the same arrays.

    Raises
    ------
    ValueError
        If ``points`` is not a float32 (n, 3) array of finite values or
        ``leaf_size`` is not an integer >= 1.
    """
    points = check_points("points", points)
    if isinstance(leaf_size, bool) or not isinstance(leaf_size, (int, np.integer)) or leaf_size < 1:
        raise ValueError(f"leaf_size must be an integer >= 1, got {leaf_size!r}")
    build = _build if points.shape[0] >= _PARALLEL_KERNEL_MIN_BUILD else _build_serial
    return KDTree(*build(points, int(leaf_size)))


# ---------------------------------------------------------------------------
# Query kernels (callable from njit, no validation)
# ---------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _box_d2(boxes, node, px, py, pz):
    """float32 squared distance from (px, py, pz) to the box of ``node`` (0 inside)."""
    u = _U(node)
    gx = max(boxes[u, 0] - px, px - boxes[u, 3], _ZERO32)
    gy = max(boxes[u, 1] - py, py - boxes[u, 4], _ZERO32)
    gz = max(boxes[u, 2] - pz, pz - boxes[u, 5], _ZERO32)
    return gx * gx + gy * gy + gz * gz


@njit(cache=True, inline="always")
def _start_node(split_dim, split_val, n_internal, px, py, pz, r2):
    """The deepest node whose subtree holds every point within ``r2`` of the query.

    Descends by the split planes while the plane is out of reach: when the
    float32 squared gap ``g*g`` between the query and a node's split plane is
    ``> r2``, every point on the far side has a squared distance ``> r2``
    (float32 rounding is monotonic), so only the query's side can hold
    neighbours. With ``r2 = inf`` this is the root.
    """
    node = 0
    while node < n_internal:
        u = _U(node)
        d = split_dim[u]
        q = px if d == 0 else (py if d == 1 else pz)
        g = q - split_val[u]
        if g * g <= r2:
            break
        node = 2 * node + 1 if g < _ZERO32 else 2 * node + 2
    return node


@njit(**HELPER)
def _radius2(r):
    """float32(r) * float32(r), or -1 for a negative or NaN radius (finds nothing)."""
    rf = np.float32(r)
    if not (rf >= _ZERO32):
        return np.float32(-1.0)
    return rf * rf


@njit(cache=True, nogil=True, fastmath=False)
def knn_rows(tree, queries, lo, hi, k, r2, out_idx, out_dist, rows):
    """k-nearest search of the queries ``lo:hi`` into caller-owned outputs; for
    ``@njit`` callers that search often (no allocation per call), no validation.

    Parameters
    ----------
    tree : KDTree
    queries : float32 (m, 3)
    lo, hi : int, 0 <= lo <= hi <= m
    k : int >= 0
    r2 : float32, squared search radius (``float32(r) * float32(r)``; inf: no
        bound); negative finds nothing
    out_idx : int64 (M, k), written at the rows of the queries
    out_dist : float32 (M, k), written at the rows of the queries
    rows : int64 (m,) or (0,)
        Query ``t`` is written to row ``rows[t]``, or to row ``t`` when
        ``rows`` is empty.

    Each row gets the (up to) k points with float32 squared distance <= r2,
    sorted by (distance, original index), padded with index -1 / distance inf.

    Depth first: from the start node (``_start_node``) descend to a leaf,
    always into the child on the query's side of the split plane, pushing the
    other child with its box distance when that is within the current bound
    (r2 until k points are found, then the k-th squared distance); scan the
    leaf; pop the next node still within the bound.

    Written as one loop in one function, with no calls and no array views
    inside it: numba increfs and decrefs every array handed to a function
    call (atomic operations on a shared counter), which cost more than the
    search itself once two threads do it. Subscripts are unsigned (``_U``):
    numba adds a negative-index wrap-around to every signed subscript, and
    dropping it measured 10% faster here.
    """
    points = tree.points
    indices = tree.indices
    boxes = tree.boxes
    leaf_start = tree.leaf_start
    split_dim = tree.split_dim
    split_val = tree.split_val
    n = points.shape[0]
    n_internal = leaf_start.shape[0] - 2
    stack_node = np.empty(_MAX_DEPTH, dtype=np.int64)
    stack_d2 = np.empty(_MAX_DEPTH, dtype=np.float32)
    last = k - 1
    ulast = _U(last)
    remap = rows.shape[0] > 0
    for t in range(lo, hi):
        ut = _U(t)
        px = np.float32(queries[ut, 0])
        py = np.float32(queries[ut, 1])
        pz = np.float32(queries[ut, 2])
        i = _U(rows[ut]) if remap else ut
        # out_dist[i, :nf] holds the squared distances found so far, sorted by
        # (squared distance, index); worst is the bound a point must meet
        nf = 0
        worst = r2
        sp = 0
        if k > 0 and n > 0 and r2 >= _ZERO32:
            node = _start_node(split_dim, split_val, n_internal, px, py, pz, r2)
            stack_node[0] = node
            stack_d2[0] = _box_d2(boxes, node, px, py, pz)
            sp = 1
        while sp > 0:
            sp -= 1
            if stack_d2[_U(sp)] > worst:
                continue
            node = stack_node[_U(sp)]
            while node < n_internal:
                u = _U(node)
                d = split_dim[u]
                q = px if d == 0 else (py if d == 1 else pz)
                near = 2 * node + 1
                far = near + 1
                if q >= split_val[u]:
                    near = far
                    far = near - 1
                dfar = _box_d2(boxes, far, px, py, pz)
                stack_node[_U(sp)] = far
                stack_d2[_U(sp)] = dfar
                sp += 1 if dfar <= worst else 0
                node = near
            leaf = _U(node - n_internal)
            for j in range(leaf_start[leaf], leaf_start[leaf + 1]):
                uj = _U(j)
                dx = as_f32(points[uj, 0]) - px
                dy = as_f32(points[uj, 1]) - py
                dz = as_f32(points[uj, 2]) - pz
                d2 = dx * dx + dy * dy + dz * dz
                if d2 <= worst:
                    ii = indices[uj]
                    if nf < k:
                        pos = nf
                        nf += 1
                    elif d2 < worst or ii < out_idx[i, ulast]:
                        pos = last
                    else:
                        continue
                    # insertion: shift the larger (squared distance, index) pairs up
                    while pos > 0:
                        prev_d2 = out_dist[i, _U(pos - 1)]
                        prev_idx = out_idx[i, _U(pos - 1)]
                        if prev_d2 < d2 or (prev_d2 == d2 and prev_idx < ii):
                            break
                        out_dist[i, _U(pos)] = prev_d2
                        out_idx[i, _U(pos)] = prev_idx
                        pos -= 1
                    out_dist[i, _U(pos)] = d2
                    out_idx[i, _U(pos)] = ii
                    if nf == k:
                        worst = out_dist[i, ulast]
        for j in range(nf):
            out_dist[i, _U(j)] = np.sqrt(out_dist[i, _U(j)])
        for j in range(nf, k):
            out_idx[i, _U(j)] = _NO_INDEX
            out_dist[i, _U(j)] = _INF32


@njit(cache=True)
def _query_knn(tree, point, k, max_distance):
    """k nearest neighbours of one point; callable from njit, no validation.

    Parameters
    ----------
    tree : KDTree
    point : float32 (3,)
    k : int >= 0
    max_distance : float

    Returns
    -------
    indices : int64 (k,)
    distances : float32 (k,)
    """
    q = np.empty((1, 3), dtype=np.float32)
    q[0, 0] = point[0]
    q[0, 1] = point[1]
    q[0, 2] = point[2]
    out_idx = np.empty((1, k), dtype=np.int64)
    out_dist = np.empty((1, k), dtype=np.float32)
    knn_rows(tree, q, _ZERO, _ONE, k, _radius2(max_distance), out_idx, out_dist, np.empty(0, dtype=np.int64))
    return out_idx[0], out_dist[0]


@njit(**HELPER)
def _leaf_of(tree, queries, lo, hi, leaf_of):
    """Write ``leaf_of[i]`` int64 for the queries ``lo:hi``: the leaf each
    query falls in, descending by the split planes.

    Every leaf is at the same depth, so eight queries descend in lock step
    (eight independent chains of loads instead of one).
    """
    leaf_start = tree.leaf_start
    n_internal = leaf_start.shape[0] - 2
    depth = 0
    while (1 << depth) - 1 < n_internal:
        depth += 1
    split_dim = tree.split_dim
    split_val = tree.split_val
    nodes = np.zeros(_LANES, dtype=np.int64)
    i0 = lo
    while i0 < hi:
        g_n = min(_LANES, hi - i0)
        for g in range(_LANES):
            nodes[g] = 0
        for _ in range(depth):
            for g in range(g_n):
                node = nodes[g]
                right = queries[i0 + g, split_dim[node]] >= split_val[node]
                nodes[g] = 2 * node + 1 + right
        for g in range(g_n):
            leaf_of[i0 + g] = nodes[g] - n_internal
        i0 += _LANES


@njit(**HELPER)
def _spatial_order(tree, queries):
    """The queries in the tree's leaf order, for the batch kernels.

    Returns ``order`` int64 (m,), the permutation that sorts the queries by
    the leaf they fall in (stable within a leaf: a descent in lock step, then
    a counting sort), and ``sorted_queries`` float32 (m, 3) = ``queries[order]``.

    Serial: the descent and the gather are a few percent of a batch's time, and
    as ``prange`` loops inlined into each batch kernel they were two more
    parallel regions to compile (~1 s of a cold cache's compile each).
    """
    m = queries.shape[0]
    n_leaves = tree.leaf_start.shape[0] - 1
    leaf_of = np.empty(m, dtype=np.int64)
    _leaf_of(tree, queries, _ZERO, m, leaf_of)
    counts = np.empty(n_leaves + 1, dtype=np.int64)
    for j in range(n_leaves + 1):
        counts[j] = 0
    for i in range(m):
        counts[leaf_of[i] + 1] += 1
    for j in range(n_leaves):
        counts[j + 1] += counts[j]
    order = np.empty(m, dtype=np.int64)
    for i in range(m):
        leaf = leaf_of[i]
        order[counts[leaf]] = i
        counts[leaf] += 1
    sorted_queries = np.empty((m, 3), dtype=np.float32)
    for t in range(m):
        i = order[t]
        sorted_queries[t, 0] = np.float32(queries[i, 0])
        sorted_queries[t, 1] = np.float32(queries[i, 1])
        sorted_queries[t, 2] = np.float32(queries[i, 2])
    return order, sorted_queries


@njit(inline="always")
def _knn_batch_body(tree, queries, k, max_distance):
    """k nearest neighbours of each query; inlined into ``_query_knn_batch`` and
    into njit callers of ``query_knn_batch``. No validation.

    Parameters
    ----------
    tree : KDTree
    queries : float32 (m, 3)
    k : int >= 0
    max_distance : float

    Returns
    -------
    indices : int64 (m, k)
    distances : float32 (m, k)

    With m >= ``_PARALLEL_MIN_QUERIES`` the queries are put in the tree's leaf
    order and searched in blocks of consecutive queries (in parallel when the
    caller is a parallel kernel), each result going to its query's row;
    otherwise in their own order on one thread. Same results either way.
    """
    m = queries.shape[0]
    out_idx = np.empty((m, k), dtype=np.int64)
    out_dist = np.empty((m, k), dtype=np.float32)
    r2 = _radius2(max_distance)
    if m >= _PARALLEL_MIN_QUERIES:
        order, sorted_queries = _spatial_order(tree, queries)
        n_blocks = (m + _BLOCK - 1) // _BLOCK
        for b in prange(n_blocks):
            knn_rows(tree, sorted_queries, b * _BLOCK, min(m, (b + 1) * _BLOCK), k, r2,
                      out_idx, out_dist, order)
    else:
        knn_rows(tree, queries, _ZERO, m, k, r2, out_idx, out_dist, np.empty(0, dtype=np.int64))
    return out_idx, out_dist


@njit(cache=True, parallel=True)
def _query_knn_batch(tree, queries, k, max_distance):
    """``_knn_batch_body`` as a parallel kernel, for Python callers."""
    return _knn_batch_body(tree, queries, k, max_distance)


@njit(**HELPER)
def _radius_rows(tree, queries, lo, hi, r2, fill, counts, offsets, out, rows):
    """Radius search of the queries ``lo:hi``; callable from njit, no validation.

    Parameters
    ----------
    tree : KDTree
    queries : float32 (m, 3)
    lo, hi : int, 0 <= lo <= hi <= m
    r2 : float32, squared radius (``_radius2``); negative finds nothing
    fill : bool
        False: write ``counts[i]`` (int64 (m,)), the number of points with
        float32 squared distance <= r2. True: write their original indices,
        ascending, into ``out[offsets[i]:offsets[i + 1]]`` (``out`` int64,
        ``offsets`` int64 (M + 1,) from the counts).
    counts : int64 (M,)
    offsets : int64 (M + 1,)
    out : int64 (c,)
    rows : int64 (m,) or (0,)
        Query ``t`` is query ``i = rows[t]`` of the outputs, or ``i = t`` when
        ``rows`` is empty.

    Depth first from the start node (``_start_node``); a node whose box lies
    entirely within the radius (its farthest corner is) contributes all its
    points without a distance test.
    """
    points = tree.points
    indices = tree.indices
    boxes = tree.boxes
    leaf_start = tree.leaf_start
    split_dim = tree.split_dim
    split_val = tree.split_val
    n = points.shape[0]
    n_internal = leaf_start.shape[0] - 2
    stack = np.empty(_MAX_DEPTH + 1, dtype=np.int64)
    remap = rows.shape[0] > 0
    for t in range(lo, hi):
        px = np.float32(queries[t, 0])
        py = np.float32(queries[t, 1])
        pz = np.float32(queries[t, 2])
        i = rows[t] if remap else t
        count = 0
        pos = offsets[i] if fill else 0
        sp = 0
        if n > 0 and r2 >= _ZERO32:
            stack[0] = _start_node(split_dim, split_val, n_internal, px, py, pz, r2)
            sp = 1
        while sp > 0:
            sp -= 1
            node = stack[sp]
            if _box_d2(boxes, node, px, py, pz) > r2:
                continue
            # farthest corner of the box: when it is within r2, so is every point
            fx = max(px - boxes[node, 0], boxes[node, 3] - px)
            fy = max(py - boxes[node, 1], boxes[node, 4] - py)
            fz = max(pz - boxes[node, 2], boxes[node, 5] - pz)
            if fx * fx + fy * fy + fz * fz <= r2:
                # every leaf under the node: one contiguous run of points
                first = node
                final = node
                while first < n_internal:
                    first = 2 * first + 1
                    final = 2 * final + 2
                s = leaf_start[first - n_internal]
                e = leaf_start[final - n_internal + 1]
                if fill:
                    for j in range(s, e):
                        out[pos] = indices[j]
                        pos += 1
                count += e - s
            elif node >= n_internal:
                leaf = node - n_internal
                for j in range(leaf_start[leaf], leaf_start[leaf + 1]):
                    dx = as_f32(points[j, 0]) - px
                    dy = as_f32(points[j, 1]) - py
                    dz = as_f32(points[j, 2]) - pz
                    if dx * dx + dy * dy + dz * dz <= r2:
                        if fill:
                            out[pos] = indices[j]
                            pos += 1
                        count += 1
            else:
                stack[sp] = 2 * node + 2
                stack[sp + 1] = 2 * node + 1
                sp += 2
        if fill:
            sort_range(out, offsets[i], offsets[i] + count)
        else:
            counts[i] = count


@njit(cache=True)
def _query_radius(tree, point, r):
    """Indices of the points within ``r`` of one point, ascending; callable
    from njit, no validation.

    Parameters
    ----------
    tree : KDTree
    point : float32 (3,)
    r : float

    Returns
    -------
    int64 (c,), sorted ascending.
    """
    q = np.empty((1, 3), dtype=np.float32)
    q[0, 0] = point[0]
    q[0, 1] = point[1]
    q[0, 2] = point[2]
    r2 = _radius2(r)
    counts = np.zeros(1, dtype=np.int64)
    offsets = np.zeros(2, dtype=np.int64)
    no_rows = np.empty(0, dtype=np.int64)
    _radius_rows(tree, q, _ZERO, _ONE, r2, _FALSE, counts, offsets, counts, no_rows)
    offsets[1] = counts[0]
    out = np.empty(counts[0], dtype=np.int64)
    _radius_rows(tree, q, _ZERO, _ONE, r2, _TRUE, counts, offsets, out, no_rows)
    return out


@njit(inline="always")
def _radius_batch_body(tree, queries, r):
    """Points within ``r`` of each query; inlined into ``_query_radius_batch``
    and into njit callers of ``query_radius_batch``. No validation.

    Parameters
    ----------
    tree : KDTree
    queries : float32 (m, 3)
    r : float

    Returns
    -------
    indices : int64 (c,)
        The neighbours of query ``i`` are ``indices[offsets[i]:offsets[i + 1]]``,
        ascending.
    offsets : int64 (m + 1,)

    A counting pass, the offsets, a filling pass; with m >=
    ``_PARALLEL_MIN_QUERIES`` both passes run in the tree's leaf order, in
    blocks of consecutive queries (in parallel when the caller is a parallel
    kernel).
    """
    m = queries.shape[0]
    if m < _PARALLEL_MIN_QUERIES:
        return radius_lists(tree, queries, r)
    r2 = _radius2(r)
    counts = np.empty(m, dtype=np.int64)
    offsets = np.empty(m + 1, dtype=np.int64)
    offsets[0] = 0
    order, sorted_queries = _spatial_order(tree, queries)
    n_blocks = (m + _BLOCK - 1) // _BLOCK
    # Both passes run the one parallel loop (one region to compile, not two):
    # pass 0 counts, pass 1 fills ``out``, sized from the counts in between.
    out = counts
    for fill in (_FALSE, _TRUE):
        if fill:
            for i in range(m):
                offsets[i + 1] = offsets[i] + counts[i]
            out = np.empty(offsets[m], dtype=np.int64)
        for b in prange(n_blocks):
            _radius_rows(tree, sorted_queries, b * _BLOCK, min(m, (b + 1) * _BLOCK), r2, fill,
                         counts, offsets, out, order)
    return out, offsets


@njit(cache=True, parallel=True)
def _query_radius_batch(tree, queries, r):
    """``_radius_batch_body`` as a parallel kernel, for Python callers."""
    return _radius_batch_body(tree, queries, r)


@njit(cache=True, nogil=True)
def radius_lists(tree, queries, r):
    """Points within ``r`` of each query, on one thread, in the queries' own order;
    callable from njit and from Python, no validation.

    The same results as ``query_radius_batch`` (``indices`` int64 (c,), ``offsets``
    int64 (m + 1,); the neighbours of query ``i`` are ``indices[offsets[i]:offsets[i + 1]]``,
    ascending) from a serial kernel: ``tree`` a KDTree, ``queries`` float32 (m, 3),
    ``r`` a float (negative or NaN finds nothing). It compiles in a fraction of the
    parallel batch's time (no parallel regions, no leaf ordering), and it releases the
    GIL, so a Python caller can run parts of a batch on several threads at once
    (``kernels.geometry.fit_surface`` does).
    """
    m = queries.shape[0]
    r2 = _radius2(r)
    counts = np.empty(m, dtype=np.int64)
    offsets = np.empty(m + 1, dtype=np.int64)
    offsets[0] = 0
    no_rows = np.empty(0, dtype=np.int64)
    _radius_rows(tree, queries, _ZERO, m, r2, _FALSE, counts, offsets, counts, no_rows)
    for i in range(m):
        offsets[i + 1] = offsets[i] + counts[i]
    out = np.empty(offsets[m], dtype=np.int64)
    _radius_rows(tree, queries, _ZERO, m, r2, _TRUE, counts, offsets, out, no_rows)
    return out, offsets


# ---------------------------------------------------------------------------
# Public entry points: validated from Python, compiled from njit
# ---------------------------------------------------------------------------


def check_points(name, a):
    """Validate a float32 (n, 3) array of finite 3-D points (from Python).

    Returns ``a`` C-contiguous (a copy only when it is not); raises ValueError,
    naming ``name``, when ``a`` is not a numpy array, not float32, not of
    shape (n, 3), or holds NaN or infinity.
    """
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array of float32, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise ValueError(f"{name} must have dtype float32, got {a.dtype} (convert with .astype(np.float32))")
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"{name} must have shape (n, 3), got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite (no NaN or infinity)")
    return np.ascontiguousarray(a)


def _check_point(point):
    if not isinstance(point, np.ndarray):
        raise ValueError(f"point must be a numpy array of float32, got {type(point).__name__}")
    if point.dtype != np.float32:
        raise ValueError(f"point must have dtype float32, got {point.dtype} (convert with .astype(np.float32))")
    if point.shape != (3,):
        raise ValueError(f"point must have shape (3,), got {point.shape}")
    if not np.isfinite(point).all():
        raise ValueError("point must be finite (no NaN or infinity)")
    return np.ascontiguousarray(point)


def _check_k(k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    return int(k)


def _check_radius(name, r):
    try:
        r = float(r)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number >= 0, got {r!r}") from None
    if not r >= 0.0:
        raise ValueError(f"{name} must be >= 0 (infinity allowed), got {r!r}")
    return r


# Compact trees (see ``compact_tree``): float16 points stored as uint16 bits,
# int32 indices. The query kernels read points through ``kernels.compact.as_f32``.
_COMPACT_DTYPES = {"points": (np.float32, np.uint16), "indices": (np.int64, np.int32)}


def compact_tree(tree, float16=False):
    """The same tree with int32 indices (and, with ``float16``, float16 points as uint16 bits).

    Saves 4 bytes per point (int32 indices, for n < 2**31) and 6 more with
    float16 points; queries then compute with the float16-rounded coordinates
    (the boxes stay float32 and enclose the rounded points, so pruning stays
    exact for them). The query functions accept both forms.
    """
    from .compact import to_float16_bits

    n = tree.points.shape[0]
    if n >= 2 ** 31:
        raise ValueError("compact_tree: int32 indices need fewer than 2**31 points")
    points = tree.points
    boxes = tree.boxes
    if float16:
        bits = to_float16_bits(points)
        # boxes must enclose the rounded points: rebuild them from the rounded values
        rounded = bits.view(np.float16).astype(np.float32)
        boxes = _rounded_boxes(tree, rounded)
        points = bits
    return KDTree(points, tree.indices.astype(np.int32), boxes, tree.leaf_start, tree.split_dim, tree.split_val)


def _rounded_boxes(tree, rounded):
    """Tight boxes of every node over ``rounded`` points: leaf boxes, then each level's unions."""
    n_leaves = tree.leaf_start.shape[0] - 1
    n_internal = n_leaves - 1
    boxes = np.empty_like(tree.boxes)
    starts, stops = tree.leaf_start[:-1], tree.leaf_start[1:]
    filled = stops > starts
    lo = np.full((n_leaves, 3), np.inf, np.float32)
    hi = np.full((n_leaves, 3), -np.inf, np.float32)
    if rounded.shape[0]:
        lo[filled] = np.minimum.reduceat(rounded, starts[filled], axis=0)
        hi[filled] = np.maximum.reduceat(rounded, starts[filled], axis=0)
    boxes[n_internal:, :3], boxes[n_internal:, 3:] = lo, hi
    level = n_leaves // 2
    while level >= 1:  # the nodes of one level are first .. first + level - 1
        first = level - 1
        kids = boxes[2 * first + 1:2 * (first + level) + 1]
        boxes[first:first + level, :3] = np.minimum(kids[0::2, :3], kids[1::2, :3])
        boxes[first:first + level, 3:] = np.maximum(kids[0::2, 3:], kids[1::2, 3:])
        level //= 2
    return boxes


def _check_tree(tree):
    if not isinstance(tree, KDTree):
        raise ValueError(f"tree must be a KDTree (from build_tree or load_tree), got {type(tree).__name__}")
    for name, (dtype, ndim) in _FIELDS.items():
        a = getattr(tree, name)
        if name in _COMPACT_DTYPES and isinstance(a, np.ndarray) and a.dtype in _COMPACT_DTYPES[name] \
                and a.ndim == ndim:
            continue
        if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != ndim:
            raise ValueError(f"tree.{name} must be a {np.dtype(dtype).name} array with {ndim} dimension(s)")
    # the shapes must agree: the kernels index without bounds checks
    n = tree.points.shape[0]
    n_leaves = tree.leaf_start.shape[0] - 1
    if (tree.points.shape[1] != 3 or tree.indices.shape[0] != n or n_leaves < 1
            or n_leaves & (n_leaves - 1) or tree.boxes.shape != (2 * n_leaves - 1, 6)
            or tree.split_dim.shape[0] != n_leaves - 1 or tree.split_val.shape[0] != n_leaves - 1):
        raise ValueError("tree arrays have inconsistent shapes (not a tree from build_tree or load_tree)")


def _check_tree_contents(tree, path):
    """O(n) checks of a loaded tree's integer arrays (they index other arrays)."""
    n = tree.points.shape[0]
    ls = tree.leaf_start
    if ls[0] != 0 or ls[-1] != n or np.any(ls[1:] < ls[:-1]):
        raise ValueError(f"{path}: corrupt KD-tree (leaf_start)")
    if n and (tree.indices.min() < 0 or tree.indices.max() >= n):
        raise ValueError(f"{path}: corrupt KD-tree (indices)")
    if tree.split_dim.size and (tree.split_dim.min() < 0 or tree.split_dim.max() > 2):
        raise ValueError(f"{path}: corrupt KD-tree (split_dim)")


def query_knn(tree, point, k, max_distance=np.inf):
    """The k nearest stored points of one point.

    Callable from Python (validated) and from inside ``@njit`` functions
    (compiled, not validated).

    Parameters
    ----------
    tree : KDTree
    point : float32 (3,)
        Finite query coordinates.
    k : int >= 0
        Number of neighbours asked for.
    max_distance : float >= 0, optional
        Only points with float32 squared distance ``<= max_distance**2``
        (squared in float32) count; default infinity.

    Returns
    -------
    indices : int64 (k,)
        Original indices of the neighbours, nearest first; ties in distance
        are broken by the lower index. Slots without a neighbour (fewer than k
        points within ``max_distance``) hold -1, at the end.
    distances : float32 (k,)
        Their Euclidean distances (sqrt of the float32 squared distance);
        infinity in the empty slots.

    Raises
    ------
    ValueError
        From Python, if an argument has the wrong type, dtype, shape or value.
    """
    _check_tree(tree)
    return _query_knn(tree, _check_point(point), _check_k(k), _check_radius("max_distance", max_distance))


def query_radius(tree, point, r):
    """All stored points within distance ``r`` of one point.

    Callable from Python (validated) and from inside ``@njit`` functions
    (compiled, not validated; a negative or NaN ``r`` finds nothing there).

    Parameters
    ----------
    tree : KDTree
    point : float32 (3,)
        Finite query coordinates.
    r : float >= 0
        Radius; a point is in when its float32 squared distance is
        ``<= float32(r) * float32(r)``.

    Returns
    -------
    int64 (c,)
        Original indices of the points within ``r``, sorted ascending by index.

    Raises
    ------
    ValueError
        From Python, if an argument has the wrong type, dtype, shape or value.
    """
    _check_tree(tree)
    return _query_radius(tree, _check_point(point), _check_radius("r", r))


def query_knn_batch(tree, points, k, max_distance=np.inf):
    """The k nearest stored points of each of m query points.

    Runs on all threads (parallel over queries, in the tree's leaf order) when
    m >= 256, else on one thread; the results are the same either way, and row
    ``i`` equals ``query_knn(tree, points[i], k, max_distance)``.
    Callable from Python (validated) and from inside ``@njit`` functions.

    Parameters
    ----------
    tree : KDTree
    points : float32 (m, 3)
        Finite query coordinates.
    k : int >= 0
    max_distance : float >= 0, optional
        As in ``query_knn``; default infinity.

    Returns
    -------
    indices : int64 (m, k)
        Row ``i``: the neighbours of ``points[i]`` as in ``query_knn``.
    distances : float32 (m, k)

    Raises
    ------
    ValueError
        From Python, if an argument has the wrong type, dtype, shape or value.
    """
    _check_tree(tree)
    return _query_knn_batch(tree, check_points("points", points), _check_k(k),
                            _check_radius("max_distance", max_distance))


def query_radius_batch(tree, points, r):
    """All stored points within distance ``r`` of each of m query points.

    Parallel over queries (in the tree's leaf order) when m >= 256. Callable
    from Python (validated) and from inside ``@njit`` functions.

    Parameters
    ----------
    tree : KDTree
    points : float32 (m, 3)
        Finite query coordinates.
    r : float >= 0
        As in ``query_radius``.

    Returns
    -------
    indices : int64 (c,)
        Concatenated neighbour lists: those of query ``i`` are
        ``indices[offsets[i]:offsets[i + 1]]``, ascending, equal to
        ``query_radius(tree, points[i], r)``.
    offsets : int64 (m + 1,)

    Raises
    ------
    ValueError
        From Python, if an argument has the wrong type, dtype, shape or value.
    """
    _check_tree(tree)
    return _query_radius_batch(tree, check_points("points", points), _check_radius("r", r))


def _require_array(func, name, a, ndim):
    """Typing-time check of an array argument of an overload (a compile error)."""
    if not isinstance(a, types.Array) or a.ndim != ndim or not isinstance(a.dtype, types.Float):
        raise TypingError(f"{func}: {name} must be a {ndim}-d float array, got {a}")


@overload(build_tree, inline="always")
def _ol_build_tree(points, leaf_size=DEFAULT_LEAF_SIZE):
    _require_array("build_tree", "points", points, 2)

    def impl(points, leaf_size=DEFAULT_LEAF_SIZE):
        if points.shape[1] != 3:
            raise ValueError("build_tree: points must have shape (n, 3)")
        if leaf_size < 1:
            raise ValueError("build_tree: leaf_size must be >= 1")
        return KDTree(*_build_body(points, np.int64(leaf_size)))
    return impl


@overload(query_knn)
def _ol_query_knn(tree, point, k, max_distance=np.inf):
    _require_array("query_knn", "point", point, 1)

    def impl(tree, point, k, max_distance=np.inf):
        if point.shape[0] != 3:
            raise ValueError("query_knn: point must have shape (3,)")
        if k < 0:
            raise ValueError("query_knn: k must be >= 0")
        return _query_knn(tree, point, np.int64(k), np.float64(max_distance))
    return impl


@overload(query_radius)
def _ol_query_radius(tree, point, r):
    _require_array("query_radius", "point", point, 1)

    def impl(tree, point, r):
        if point.shape[0] != 3:
            raise ValueError("query_radius: point must have shape (3,)")
        return _query_radius(tree, point, np.float64(r))
    return impl


@overload(query_knn_batch, inline="always")
def _ol_query_knn_batch(tree, points, k, max_distance=np.inf):
    _require_array("query_knn_batch", "points", points, 2)

    def impl(tree, points, k, max_distance=np.inf):
        if points.shape[1] != 3:
            raise ValueError("query_knn_batch: points must have shape (m, 3)")
        if k < 0:
            raise ValueError("query_knn_batch: k must be >= 0")
        return _knn_batch_body(tree, points, np.int64(k), np.float64(max_distance))
    return impl


@overload(query_radius_batch, inline="always")
def _ol_query_radius_batch(tree, points, r):
    _require_array("query_radius_batch", "points", points, 2)

    def impl(tree, points, r):
        if points.shape[1] != 3:
            raise ValueError("query_radius_batch: points must have shape (m, 3)")
        return _radius_batch_body(tree, points, np.float64(r))
    return impl


# ---------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------

_FORMAT_KEY = "kdtree_format"
_FORMAT_VERSION = 1


def save_tree(path, tree):
    """Save a tree as an uncompressed ``.npz`` file whose arrays can be memory-mapped.

    The file is an uncompressed ``.npz`` archive as ``np.savez`` writes them
    (``np.load`` reads it: one ``.npy`` member per ``KDTree`` field, plus
    ``kdtree_format``), except that each member's data starts 64-byte aligned
    in the file (padding in the zip extra field, as Android's zipalign does:
    ``kernels.npzfile.AlignedNpzWriter`` with ``pad="zip-extra"``), so that
    ``load_tree`` can map every array in place.

    Parameters
    ----------
    path : str or os.PathLike
        File to write (overwritten). No suffix is added.
    tree : KDTree
    """
    from .npzfile import AlignedNpzWriter

    _check_tree(tree)
    arrays = dict(tree._asdict())
    arrays[_FORMAT_KEY] = np.array(_FORMAT_VERSION, dtype=np.int64)
    # external_attr 0: no Unix mode in the members, as this format has always been written
    with AlignedNpzWriter(path, pad="zip-extra", external_attr=0) as npz:
        for name, a in arrays.items():
            npz.add(name, a)


def load_tree(path, mmap=True):
    """Load a tree written by ``save_tree`` (or any uncompressed ``np.savez`` of its fields).

    Parameters
    ----------
    path : str or os.PathLike
    mmap : bool, optional
        If True (default), map the arrays from the file instead of reading
        them (copy-on-write: the arrays are writeable, writes stay in memory
        and never reach the file). Members that are compressed or not aligned
        are read into memory.

    Returns
    -------
    KDTree

    Raises
    ------
    ValueError
        If the file does not hold a tree of the format this module writes.
    """
    from .npzfile import NpzError, load_member

    with zipfile.ZipFile(path) as zf:
        infos = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
        missing = [name for name in _FIELDS if name not in infos]
        if missing:
            raise ValueError(f"{path}: not a KD-tree file (missing {', '.join(missing)})")
        if _FORMAT_KEY in infos:
            version = int(np.load(zf.open(infos[_FORMAT_KEY].filename)))
            if version != _FORMAT_VERSION:
                raise ValueError(f"{path}: KD-tree format {version}, this code reads {_FORMAT_VERSION}")
        arrays = {}
        with open(path, "rb") as fh:
            for name in _FIELDS:
                try:
                    # copy-on-write maps: writeable arrays (the same numba type as a
                    # freshly built tree's, so no new compilation) that never write to
                    # the file; misaligned or compressed members are read instead
                    a = load_member(zf, fh, path, infos[name], mmap=mmap, mode="c")
                except NpzError as exc:
                    raise ValueError(f"{path}: not a valid .npz file ({exc})") from exc
                if not isinstance(a, np.ndarray):
                    raise ValueError(f"{path}: not a valid .npz file ({name}.npy is not .npy data)")
                arrays[name] = np.asarray(a)
    tree = KDTree(**arrays)
    _check_tree(tree)
    _check_tree_contents(tree, path)
    return tree
