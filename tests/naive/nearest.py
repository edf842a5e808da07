"""References for ``kernels.nearest``: the similarity of a query to its k nearest stored observations
within a distance, by brute force (float32 squared distances as the tree computes them, ties by lower index)."""

import numpy as np


def brute_nearest_similarity(stored_loc, stored_feat, q, g, k, max_distance):
    """Plain NumPy: float32 squared distances as the tree computes them, (distance, index) order."""
    d = stored_loc.astype(np.float32) - q.astype(np.float32)
    d2 = (d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]) + d[:, 2] * d[:, 2]
    order = np.lexsort((np.arange(len(d2)), d2))
    r2 = np.float32(max_distance) * np.float32(max_distance) if np.isfinite(max_distance) else np.inf
    chosen = [i for i in order if d2[i] <= r2][:k]
    if not chosen:
        return 0.0
    dist = np.sqrt(d2[chosen].astype(np.float64))
    feat = np.abs(stored_feat[chosen].astype(np.float64) - g.astype(np.float64)).sum(axis=1)
    return float(np.mean(1.0 / (1.0 + dist + feat)))
