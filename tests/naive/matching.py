"""References for ``kernels.matching``: similarity of a query to a store, the confidence recurrence.

The similarity of a query (position p, features g) against a store of n
observations (positions s_j, features h_j) is
``mean_j 1 / (1 + ||p - s_j||_2 + sum_k |g_k - h_jk|)``, and 0 for an empty store;
the confidence follows ``c <- (c + s) / 2``.
"""

import numpy as np


def mean_similarity(stored_location, stored_features, location, features):
    """Similarity of one query against a store, as a Python float.

    stored_location (N, 3), stored_features (N, F); location (3,), features (F,).
    Returns mean over j of 1 / (1 + ||p - s_j||_2 + sum_k |g_k - h_jk|); 0 if N = 0.
    """
    s_loc = np.asarray(stored_location, dtype=np.float64).reshape(-1, 3)
    n = s_loc.shape[0]
    if n == 0:
        return 0.0
    s_feat = np.asarray(stored_features, dtype=np.float64).reshape(n, -1)
    p = np.asarray(location, dtype=np.float64)
    g = np.asarray(features, dtype=np.float64)
    distance = np.sqrt(((s_loc - p) ** 2).sum(axis=1))
    feature_difference = np.abs(s_feat - g).sum(axis=1)
    return float(np.mean(1.0 / (1.0 + distance + feature_difference)))


def update_confidence(confidence, similarity):
    """One step of the recurrence, in float64."""
    return (float(confidence) + float(similarity)) / 2.0


def termination_scan(similarities, confidence, threshold):
    """Run the recurrence over ``similarities`` until ``c >= threshold``.

    Returns ``(consumed, confidence, done)``: steps consumed (the terminating
    one included), the confidence after them, whether the threshold was reached.
    """
    c = float(confidence)
    for i, s in enumerate(similarities):
        c = update_confidence(c, s)
        if c >= threshold:
            return i + 1, c, True
    return len(similarities), c, False


def confidence_trajectory(similarities):
    """Confidences after each step from 0, without termination (float64 list)."""
    c = 0.0
    out = []
    for s in similarities:
        c = update_confidence(c, s)
        out.append(c)
    return out
