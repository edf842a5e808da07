"""References for ``kernels.kdtree``: a NumPy brute force with the kernels' float32 distance arithmetic.

The squared distance of a stored point to a query is ``dx*dx + dy*dy + dz*dz`` in float32
(dx = s_x - q_x, ...), a point is within radius r when that is ``<= float32(r) * float32(r)``,
and the k nearest are the first k of a stable sort on (squared distance, index): the tree's
answers must equal these exactly, ties included."""

import numpy as np


def brute_d2(points, q):
    """float32 squared distances (n,) of ``points`` (n, 3) to ``q`` (3,), kernel arithmetic."""
    points = np.asarray(points, dtype=np.float32)
    q = np.asarray(q, dtype=np.float32)
    dx = points[:, 0] - q[0]
    dy = points[:, 1] - q[1]
    dz = points[:, 2] - q[2]
    return dx * dx + dy * dy + dz * dz


def radius2(r):
    r = np.float32(r)
    return r * r


def brute_knn(points, q, k, max_distance=np.inf):
    """(indices int64 (k,), distances float32 (k,)): stable sort on (d2, index), padded."""
    d2 = brute_d2(points, q)
    order = np.lexsort((np.arange(len(d2)), d2))
    order = order[d2[order] <= radius2(max_distance)][:k]
    idx = np.full(k, -1, dtype=np.int64)
    dist = np.full(k, np.inf, dtype=np.float32)
    idx[: len(order)] = order
    dist[: len(order)] = np.sqrt(d2[order])
    return idx, dist


def brute_radius(points, q, r):
    """Indices int64 of the points with float32 squared distance <= r*r, ascending."""
    return np.nonzero(brute_d2(points, q) <= radius2(r))[0].astype(np.int64)
