"""The ``nearest`` model's matching: the seed's similarity over the k nearest stored observations.

For a query (position p, features g), with ``N`` the at most ``k`` stored
observations nearest to p within ``max_distance`` (``kernels.kdtree``; ties by
lower index),

    similarity(q) = mean over s in N of 1 / (1 + ||p - s||_2 + ||g - h_s||_1)

and 0 when ``N`` is empty. The model's index is ``(tree, features)``: a
``KDTree`` over the stored positions (``compact_tree``: int32 indices, float32
or float16 points) and the stored features as ``(F, n)`` in the original
(insertion) order, float32 or uint16 float16 bits. Per matching step the cost is
one k-nearest query, O(log n), instead of the linear scan's O(n).
"""

import numpy as np
from numba import njit, prange

from ._flags import FASTMATH
from .compact import as_f32
from .kdtree import query_knn, query_knn_batch

_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)

# Below this many queries the similarities of a batch are computed on one thread.
_PARALLEL_MIN_QUERIES = 256


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def nearest_similarity(idx_row, dist_row, feats, features, t):
    """Similarity of query step ``t`` from its neighbours.

    Parameters
    ----------
    idx_row : int64 (k,), neighbour indices (-1 after the last one found)
    dist_row : float32 (k,), their distances
    feats : float32 or uint16 (F, n), the stored features
    features : float32 (T, F), the query features;  t : int, the query's row

    Returns float32: the mean of 1 / (1 + distance + L1 feature distance) over
    the neighbours found, 0 if none.
    """
    acc = _ZERO
    count = 0
    n_feat = feats.shape[0]
    for j in range(idx_row.shape[0]):
        s = idx_row[j]
        if s < 0:
            break
        e = _ZERO
        for f in range(n_feat):
            e += abs(as_f32(feats[f, s]) - features[t, f])
        acc += _ONE / (_ONE + dist_row[j] + e)
        count += 1
    return acc / np.float32(count) if count > 0 else _ZERO


@njit(inline="always")
def nearest_into(tree, feats, k, max_distance, location, features, steps, out):
    """Similarities of the query rows ``steps`` into ``out``: the body of
    ``nearest_batch_similarity``, for ``@njit`` kernels that match (inlined: it
    holds parallel loops, see ``kernels.matching``).

    tree : KDTree;  feats : float32 or uint16 (F, n);  k : int64;  max_distance :
    float64 (inf: no bound);  location : float32 (T, 3);  features : float32 (T, F);
    steps : int64 (Q,);  out : float32 (Q,), written
    """
    q = steps.shape[0]
    points = np.empty((q, 3), dtype=np.float32)
    for i in range(q):
        t = steps[i]
        points[i, 0] = location[t, 0]
        points[i, 1] = location[t, 1]
        points[i, 2] = location[t, 2]
    idx, dist = query_knn_batch(tree, points, k, max_distance)
    if q >= _PARALLEL_MIN_QUERIES:
        for i in prange(q):
            out[i] = nearest_similarity(idx[i], dist[i], feats, features, steps[i])
    else:
        for i in range(q):
            out[i] = nearest_similarity(idx[i], dist[i], feats, features, steps[i])


@njit(cache=True, parallel=True)
def nearest_batch_similarity(tree, feats, k, max_distance, location, features):
    """``nearest`` similarities of every row of ``location`` / ``features`` (parallel).

    Parameters
    ----------
    tree : KDTree over the stored positions;  feats : (F, n) stored features
    k : int >= 1;  max_distance : float (inf: no bound)
    location : float32 (Q, 3);  features : float32 (Q, F)

    Returns float32 (Q,).
    """
    q = location.shape[0]
    steps = np.empty(q, dtype=np.int64)
    for i in range(q):
        steps[i] = i
    out = np.empty(q, dtype=np.float32)
    nearest_into(tree, feats, np.int64(k), np.float64(max_distance), location, features, steps, out)
    return out


@njit(cache=True)
def nearest_match_step(tree, feats, k, max_distance, location, features, t, confidence):
    """One ``nearest`` matching step (the stepwise path); returns ``(similarity, confidence)``.

    Same arithmetic as the batch: one k-nearest query, then ``nearest_similarity``.
    """
    idx, dist = query_knn(tree, location[t], np.int64(k), np.float64(max_distance))
    s = nearest_similarity(idx, dist, feats, features, t)
    return s, (np.float32(confidence) + s) * np.float32(0.5)


@njit(cache=True)
def dedup_keep(tree, feats, location, features, start, stop, dedup_distance, dedup_feature):
    """Which of the observations ``start:stop`` to store (Monty-style thinning).

    An observation is dropped when one of its 8 nearest stored observations
    (in ``tree`` / ``feats``), or an earlier kept one of this batch, lies within
    ``dedup_distance`` (float32 squared-distance rule of ``kernels.kdtree``)
    with an L1 feature distance <= ``dedup_feature``. Returns bool (stop - start,).
    Cost: one radius query per observation, plus a scan of this batch's kept
    observations (quadratic in the batch, linear in the store).
    """
    m = stop - start
    keep = np.ones(m, dtype=np.bool_)
    r2 = np.float32(dedup_distance) * np.float32(dedup_distance)
    n_feat = features.shape[1]
    kept = np.empty(m, dtype=np.int64)
    n_kept = 0
    for i in range(m):
        t = start + i
        idx, dist = query_knn(tree, location[t], np.int64(8), np.float64(dedup_distance))
        dup = False
        for j in range(idx.shape[0]):
            s = idx[j]
            if s < 0:
                break
            e = np.float32(0.0)
            for f in range(n_feat):
                e += abs(as_f32(feats[f, s]) - features[t, f])
            if e <= dedup_feature:
                dup = True
                break
        if not dup:
            for j in range(n_kept):
                u = kept[j]
                dx = location[u, 0] - location[t, 0]
                dy = location[u, 1] - location[t, 1]
                dz = location[u, 2] - location[t, 2]
                if dx * dx + dy * dy + dz * dz <= r2:
                    e = np.float32(0.0)
                    for f in range(n_feat):
                        e += abs(features[u, f] - features[t, f])
                    if e <= dedup_feature:
                        dup = True
                        break
        keep[i] = not dup
        if not dup:
            kept[n_kept] = t
            n_kept += 1
    return keep
