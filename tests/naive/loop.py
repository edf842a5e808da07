"""References for ``kernels.loop``: training and evaluation episodes and the whole experiment.

- training appends each episode's first ``min(length, max_steps)``
  observations to the store, which grows across epochs and is never cleared;
- the confidence starts from 0 in every evaluation episode, and the episode is
  done at the first step with ``c >= threshold``;
- an evaluation episode ends 'done' (threshold reached; takes precedence),
  'data_exhausted' (its observations ran out, also exactly at the step limit)
  or 'step_limit' (stopped by ``max_steps`` with observations left).
"""

import numpy as np

from naive import matching

DONE = "done"
DATA_EXHAUSTED = "data_exhausted"
STEP_LIMIT = "step_limit"


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
        s = matching.mean_similarity(stored_location, stored_features, location[t], features[t])
        confidence = matching.update_confidence(confidence, s)
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
