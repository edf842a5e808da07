"""Slow, obviously-correct reference versions of the kernels, for the tests.

Written for clarity, not speed: plain Python loops and NumPy in float64. Every
function here is the definition the matching kernel in ``kernels`` must agree
with (to float32 rounding). Nothing here imports ``kernels`` or ``engine``.

Semantics follow ``kernels/matching.py`` and ``kernels/loop.py``:

- similarity of a query (position p, features g) against a store of n
  observations (positions s_j, features h_j) is
  ``mean_j 1 / (1 + ||p - s_j||_2 + sum_k |g_k - h_jk|)``, and 0 for an empty store;
- the confidence follows ``c <- (c + s) / 2``, starting from 0 in every
  evaluation episode, and the episode is done at the first step with
  ``c >= threshold``;
- training appends each episode's first ``min(length, max_steps)``
  observations to the store, which grows across epochs and is never cleared;
- an evaluation episode ends 'done' (threshold reached; takes precedence),
  'data_exhausted' (its observations ran out, also exactly at the step limit)
  or 'step_limit' (stopped by ``max_steps`` with observations left).
"""

import math

import numpy as np

DONE = "done"
DATA_EXHAUSTED = "data_exhausted"
STEP_LIMIT = "step_limit"


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


def store_contents(store, n_stored):
    """Split a kernel store (3 + F, capacity) into ``(location (n, 3), features (n, F))``."""
    store = np.asarray(store)
    return store[:3, :n_stored].T.copy(), store[3:, :n_stored].T.copy()


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


def train_episode(stored, location, features, start, stop, max_steps):
    """Append an episode's observations to ``stored`` (a list of (position, features)).

    Returns ``(steps, reason)``.
    """
    length = stop - start
    steps = min(length, max_steps)
    for t in range(start, start + steps):
        stored.append((np.array(location[t], dtype=np.float64), np.array(features[t], dtype=np.float64)))
    reason = DATA_EXHAUSTED if steps == length else STEP_LIMIT
    return steps, reason


def eval_episode(stored_location, stored_features, location, features, start, stop, max_steps, threshold):
    """One evaluation episode, one observation at a time, from confidence 0.

    Returns ``(steps, confidence, reason)``.
    """
    length = stop - start
    confidence = 0.0
    steps = 0
    while True:
        if steps == length:
            return steps, confidence, DATA_EXHAUSTED
        if steps == max_steps:
            return steps, confidence, STEP_LIMIT
        t = start + steps
        s = mean_similarity(stored_location, stored_features, location[t], features[t])
        confidence = update_confidence(confidence, s)
        steps += 1
        if confidence >= threshold:
            return steps, confidence, DONE


def run_experiment(location, features, train_episodes, n_train_epochs, max_train_steps,
                   eval_episodes, n_eval_epochs, max_eval_steps, threshold,
                   initial_location=None, initial_features=None):
    """The whole seed lifecycle: train epochs, then eval epochs, as plain loops.

    ``train_episodes`` / ``eval_episodes`` are lists of ``(start, stop)`` row
    ranges into ``location`` (T, 3) and ``features`` (T, F). The store starts
    with ``initial_location`` / ``initial_features`` (default empty).

    Returns a dict of lists in epoch-major order (entry of episode e of epoch p
    at ``p * E + e``): ``train_steps``, ``train_stored``, ``train_reason``,
    ``eval_steps``, ``eval_confidence``, ``eval_reason``; and ``n_stored``,
    ``stored_location`` (n, 3), ``stored_features`` (n, F) after training.
    """
    n_features = np.asarray(features).shape[1]
    stored = []
    if initial_location is not None:
        for j in range(len(initial_location)):
            stored.append((np.array(initial_location[j], dtype=np.float64),
                           np.array(initial_features[j], dtype=np.float64)))
    result = {key: [] for key in ("train_steps", "train_stored", "train_reason",
                                  "eval_steps", "eval_confidence", "eval_reason")}
    for _epoch in range(n_train_epochs):
        for start, stop in train_episodes:
            steps, reason = train_episode(stored, location, features, start, stop, max_train_steps)
            result["train_steps"].append(steps)
            result["train_stored"].append(len(stored))
            result["train_reason"].append(reason)
    stored_location = np.array([p for p, _ in stored], dtype=np.float64).reshape(len(stored), 3)
    stored_features = np.array([g for _, g in stored], dtype=np.float64).reshape(len(stored), n_features)
    for _epoch in range(n_eval_epochs):
        for start, stop in eval_episodes:
            steps, confidence, reason = eval_episode(stored_location, stored_features, location, features,
                                                     start, stop, max_eval_steps, threshold)
            result["eval_steps"].append(steps)
            result["eval_confidence"].append(confidence)
            result["eval_reason"].append(reason)
    result["n_stored"] = len(stored)
    result["stored_location"] = stored_location
    result["stored_features"] = stored_features
    return result


def confidence_trajectory(similarities):
    """Confidences after each step from 0, without termination (float64 list)."""
    c = 0.0
    out = []
    for s in similarities:
        c = update_confidence(c, s)
        out.append(c)
    return out
