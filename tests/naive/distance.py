"""References for ``kernels.distance``: Euclidean distances in float64."""

import math

import numpy as np


def euclidean(p, q):
    """Euclidean distance between two 3-D points, in float64."""
    return math.sqrt(sum((float(p[k]) - float(q[k])) ** 2 for k in range(3)))


def pairwise_distances(a, b):
    """Distance matrix float64 (N, M) of points ``a`` (N, 3) to points ``b`` (M, 3)."""
    out = np.zeros((len(a), len(b)), dtype=np.float64)
    for i in range(len(a)):
        for j in range(len(b)):
            out[i, j] = euclidean(a[i], b[j])
    return out


def distances_to(point, b):
    """Distances float64 (M,) of one point (3,) to the points ``b`` (M, 3)."""
    return np.array([euclidean(point, b[j]) for j in range(len(b))], dtype=np.float64)
