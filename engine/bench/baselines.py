"""Reference implementations of the experiment, written for clarity: NumPy and pure Python.

They run the same experiment as the engine (``engine.models.similarity`` /
``kernels.loop``) with the same semantics, one step at a time, and serve two
purposes: the baselines the benchmark (``engine.bench.seed``) compares the engine
against, and independent references the tests check the engine with.

Semantics (those of ``kernels.loop``):

- training: each training epoch presents every training episode in order; each
  step appends the observation to the stored set, which is **never cleared**
  between epochs (at evaluation it holds every training step of every epoch,
  duplicates included). An episode takes at most ``max_train_steps`` steps.
- evaluation: each evaluation episode starts from confidence 0; each step
  computes the similarity of the observation to the stored set,

      similarity = mean_j 1 / (1 + ||p - s_j||_2 + ||g - h_j||_1)

  (0 for an empty store), then ``confidence = (confidence + similarity) / 2``;
  the episode is done at the first step whose confidence reaches the threshold
  (``None``: never), else it ends at ``max_eval_steps`` steps or when its
  observations run out.
- why an episode ended: ``DONE``, ``DATA_EXHAUSTED`` (observations ran out,
  possibly exactly at the step limit), ``STEP_LIMIT``; done takes precedence.

The two implementations:

- ``numpy_experiment``: float32 throughout (like the engine); the stored set is
  one preallocated ``(3 + F, capacity)`` float32 array (16 bytes per stored
  observation of the seed workload) and each matching step is one vectorised
  NumPy computation against every stored observation.
- ``python_experiment``: pure Python objects: the stored set is a list of
  tuples of floats ``(x, y, z, f_0, ..., f_F-1)``, arithmetic in float64 with
  ``math.sqrt``.

Shortcuts on the seed benchmark's data (``engine.data.sources.seed_spiral``):
``run_numpy(size, epochs)`` and ``run_python(size, epochs)`` return the final
confidence. ``python_bytes_per_observation`` and ``numpy_bytes_per_observation``
measure what one stored observation costs (tracemalloc).
"""

from __future__ import annotations

import math
import tracemalloc
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# The same codes as kernels.loop (kept here so the references do not depend on the engine).
DONE = 0
DATA_EXHAUSTED = 1
STEP_LIMIT = 2
REASON_NAMES = ("done", "data_exhausted", "step_limit")

SEED_MAX_STEPS = 10_000

f32 = np.float32
_F32_ZERO = f32(0.0)
_F32_ONE = f32(1.0)
_F32_HALF = f32(0.5)


@dataclass
class BaselineResult:
    """Per-episode outputs of a reference run, epoch-major like ``engine.models.similarity.RunResult``.

    The NumPy baseline fills NumPy arrays (``eval_confidence`` float32), the
    Python baseline plain lists (``eval_confidence`` of float64 Python floats).
    """

    train_steps: Sequence[int]        # steps taken per training episode
    train_stored: Sequence[int]       # stored observations after each training episode
    train_reason: Sequence[int]       # DATA_EXHAUSTED or STEP_LIMIT
    eval_steps: Sequence[int]         # steps taken per evaluation episode
    eval_confidence: Sequence[float]  # confidence at the end of each evaluation episode
    eval_reason: Sequence[int]        # DONE, DATA_EXHAUSTED or STEP_LIMIT
    n_stored: int                     # observations stored after training
    bytes_per_observation: float | None = None  # of the stored set (NumPy: exact; Python: None)

    @property
    def final_confidence(self) -> float | None:
        """Confidence at the end of the last evaluation episode (None without evaluation)."""
        return float(self.eval_confidence[-1]) if len(self.eval_confidence) else None


def _end_reason(done: bool, limit: int, length: int) -> int:
    if done:
        return DONE
    return DATA_EXHAUSTED if limit == length else STEP_LIMIT


def _episodes(starts, stops) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


def training_steps(starts, stops, max_steps: int, n_epochs: int) -> int:
    """Observations stored by ``n_epochs`` training epochs over these episodes."""
    return n_epochs * sum(min(b - a, max_steps) for a, b in _episodes(starts, stops))


# ---------------------------------------------------------------------------
# NumPy, float32, one vectorised step at a time
# ---------------------------------------------------------------------------

def numpy_terms(stored: np.ndarray, location: np.ndarray, features: np.ndarray) -> np.ndarray:
    """The similarity terms ``1 / (1 + distance + feature distance)`` of one query, float32 (n,).

    stored : float32 (3 + F, n): rows x, y, z, then the F feature columns of
        the n stored observations (the engine's layout: one contiguous row per
        coordinate, so each operation below is one pass over n float32s)
    location : float32 (3,);  features : float32 (F,)
    """
    dx = stored[0] - location[0]
    dy = stored[1] - location[1]
    dz = stored[2] - location[2]
    distance = np.sqrt(dx * dx + dy * dy + dz * dz)                  # (n,) euclidean
    if stored.shape[0] == 4:                                         # one feature (the seed workload)
        feature_distance = np.abs(stored[3] - features[0])
    else:                                                            # L1 over F features (0 when F = 0)
        feature_distance = np.abs(stored[3:] - features[:, None]).sum(axis=0, dtype=f32)
    return _F32_ONE / (_F32_ONE + distance + feature_distance)


def numpy_similarity(stored: np.ndarray, location: np.ndarray, features: np.ndarray) -> np.float32:
    """Mean similarity of one query to every stored observation: ``np.float32`` (0 for an empty store).

    Arguments as ``numpy_terms``.
    """
    if stored.shape[1] == 0:
        return _F32_ZERO
    return numpy_terms(stored, location, features).mean(dtype=f32)


def numpy_experiment(location, features, train_starts, train_stops, eval_starts, eval_stops, *,
                     n_train_epochs: int = 1, n_eval_epochs: int = 1,
                     max_train_steps: int = SEED_MAX_STEPS, max_eval_steps: int = SEED_MAX_STEPS,
                     threshold: float | None = None) -> BaselineResult:
    """The experiment with NumPy float32 arrays, one vectorised matching step at a time.

    Parameters
    ----------
    location : (T, 3), features : (T, F): the observations (converted to float32)
    train_starts, train_stops, eval_starts, eval_stops : (E,) episode bounds into their rows
    n_train_epochs, n_eval_epochs : epochs (every epoch presents the same episodes)
    max_train_steps, max_eval_steps : step limit of an episode
    threshold : an evaluation episode is done when its confidence reaches it; None: never

    The stored set is one preallocated float32 array ``(3 + F, capacity)``
    (capacity: every training step of every epoch), filled column by column.
    """
    location = np.ascontiguousarray(location, dtype=f32)
    features = np.ascontiguousarray(features, dtype=f32).reshape(location.shape[0], -1)
    n_feat = features.shape[1]
    train_eps = _episodes(train_starts, train_stops)
    eval_eps = _episodes(eval_starts, eval_stops)
    thr = f32(np.inf) if threshold is None else f32(threshold)

    capacity = training_steps(train_starts, train_stops, max_train_steps, n_train_epochs)
    store = np.empty((3 + n_feat, capacity), dtype=f32)
    n = 0
    n_tr = n_train_epochs * len(train_eps)
    train_steps = np.zeros(n_tr, np.int64)
    train_stored = np.zeros(n_tr, np.int64)
    train_reason = np.zeros(n_tr, np.int8)
    i = 0
    for _ in range(n_train_epochs):
        for start, stop in train_eps:
            length = stop - start
            k = min(length, max_train_steps)
            for t in range(start, start + k):     # one training step: store the observation
                store[:3, n] = location[t]
                store[3:, n] = features[t]
                n += 1
            train_steps[i], train_stored[i], train_reason[i] = k, n, _end_reason(False, k, length)
            i += 1

    n_ev = n_eval_epochs * len(eval_eps)
    eval_steps = np.zeros(n_ev, np.int64)
    eval_confidence = np.zeros(n_ev, f32)
    eval_reason = np.zeros(n_ev, np.int8)
    stored = store[:, :n]                          # evaluation never changes the stored set
    i = 0
    for _ in range(n_eval_epochs):
        for start, stop in eval_eps:
            length = stop - start
            limit = min(length, max_eval_steps)
            confidence = _F32_ZERO
            steps = 0
            done = False
            for t in range(start, start + limit):  # one matching step
                similarity = numpy_similarity(stored, location[t], features[t])
                confidence = (confidence + similarity) * _F32_HALF
                steps += 1
                if confidence >= thr:
                    done = True
                    break
            eval_steps[i], eval_confidence[i], eval_reason[i] = steps, confidence, _end_reason(done, limit, length)
            i += 1
    return BaselineResult(train_steps, train_stored, train_reason, eval_steps, eval_confidence, eval_reason,
                          n, float(store.itemsize * store.shape[0]))


# ---------------------------------------------------------------------------
# Pure Python objects, float64
# ---------------------------------------------------------------------------

def python_points(location, features) -> list[tuple[float, ...]]:
    """Observations as Python objects: one tuple ``(x, y, z, f_0, ..., f_F-1)`` of floats per row."""
    location = np.asarray(location)
    features = np.asarray(features).reshape(location.shape[0], -1)
    return [tuple(loc) + tuple(feat) for loc, feat in zip(location.tolist(), features.tolist())]


def python_similarity(stored: list[tuple[float, ...]], query: tuple[float, ...]) -> float:
    """Mean similarity of ``query`` to every stored observation (tuples of floats); 0.0 if none."""
    if not stored:
        return 0.0
    px, py, pz = query[0], query[1], query[2]
    total = 0.0
    sqrt = math.sqrt
    if len(query) == 4:  # one feature (the seed workload): unpack the tuples directly
        qf = query[3]
        for sx, sy, sz, sf in stored:
            dx = sx - px
            dy = sy - py
            dz = sz - pz
            total += 1.0 / (1.0 + sqrt(dx * dx + dy * dy + dz * dz) + abs(sf - qf))
    else:
        qf = query[3:]
        for s in stored:
            dx = s[0] - px
            dy = s[1] - py
            dz = s[2] - pz
            e = 0.0
            for a, b in zip(s[3:], qf):
                e += abs(a - b)
            total += 1.0 / (1.0 + sqrt(dx * dx + dy * dy + dz * dz) + e)
    return total / len(stored)


def python_experiment(points: list[tuple[float, ...]], train_starts, train_stops, eval_starts, eval_stops, *,
                      n_train_epochs: int = 1, n_eval_epochs: int = 1,
                      max_train_steps: int = SEED_MAX_STEPS, max_eval_steps: int = SEED_MAX_STEPS,
                      threshold: float | None = None) -> BaselineResult:
    """The experiment with pure Python objects (float64).

    ``points`` are the observations as built by ``python_points(location,
    features)``; the other parameters are those of ``numpy_experiment``.
    Training appends the observation's tuple to the stored list.
    """
    train_eps = _episodes(train_starts, train_stops)
    eval_eps = _episodes(eval_starts, eval_stops)
    thr = math.inf if threshold is None else float(threshold)
    stored: list[tuple[float, ...]] = []
    train_steps, train_stored, train_reason = [], [], []
    for _ in range(n_train_epochs):
        for start, stop in train_eps:
            length = stop - start
            k = min(length, max_train_steps)
            for t in range(start, start + k):
                stored.append(points[t])
            train_steps.append(k)
            train_stored.append(len(stored))
            train_reason.append(_end_reason(False, k, length))

    eval_steps, eval_confidence, eval_reason = [], [], []
    for _ in range(n_eval_epochs):
        for start, stop in eval_eps:
            length = stop - start
            limit = min(length, max_eval_steps)
            confidence = 0.0
            steps = 0
            done = False
            for t in range(start, start + limit):
                similarity = python_similarity(stored, points[t])
                confidence = (confidence + similarity) / 2.0
                steps += 1
                if confidence >= thr:
                    done = True
                    break
            eval_steps.append(steps)
            eval_confidence.append(confidence)
            eval_reason.append(_end_reason(done, limit, length))
    return BaselineResult(train_steps, train_stored, train_reason, eval_steps, eval_confidence, eval_reason,
                          len(stored))


# ---------------------------------------------------------------------------
# On engine observations, and on the seed benchmark's data
# ---------------------------------------------------------------------------

IMPLEMENTATIONS = ("numpy", "python")


def run_observations(implementation: str, obs, *, n_train_epochs: int = 1, n_eval_epochs: int = 1,
                     max_train_steps: int = SEED_MAX_STEPS, max_eval_steps: int = SEED_MAX_STEPS,
                     threshold: float | None = None) -> BaselineResult:
    """Run a baseline ("numpy" or "python") on ``engine.data.sources.Observations``."""
    kw = dict(n_train_epochs=n_train_epochs, n_eval_epochs=n_eval_epochs, max_train_steps=max_train_steps,
              max_eval_steps=max_eval_steps, threshold=threshold)
    if implementation == "numpy":
        return numpy_experiment(obs.location, obs.features, obs.train_starts, obs.train_stops,
                                obs.eval_starts, obs.eval_stops, **kw)
    if implementation == "python":
        return python_experiment(python_points(obs.location, obs.features), obs.train_starts, obs.train_stops,
                                 obs.eval_starts, obs.eval_stops, **kw)
    raise ValueError(f"unknown baseline {implementation!r}; one of {', '.join(IMPLEMENTATIONS)}")


def run_seed(implementation: str, size: int, epochs: int, max_steps: int = SEED_MAX_STEPS,
             threshold: float | None = None) -> BaselineResult:
    """A baseline on the seed benchmark's workload: ``epochs`` training then ``epochs`` evaluation epochs."""
    from engine.data.sources import seed_spiral

    return run_observations(implementation, seed_spiral(size), n_train_epochs=epochs, n_eval_epochs=epochs,
                            max_train_steps=max_steps, max_eval_steps=max_steps, threshold=threshold)


def run_numpy(size: int, epochs: int, max_steps: int = SEED_MAX_STEPS, threshold: float | None = None) -> float | None:
    """Final confidence of the NumPy baseline on the seed workload."""
    return run_seed("numpy", size, epochs, max_steps, threshold).final_confidence


def run_python(size: int, epochs: int, max_steps: int = SEED_MAX_STEPS, threshold: float | None = None) -> float | None:
    """Final confidence of the pure Python baseline on the seed workload."""
    return run_seed("python", size, epochs, max_steps, threshold).final_confidence


# ---------------------------------------------------------------------------
# Memory per stored observation
# ---------------------------------------------------------------------------

def python_bytes_per_observation(n: int = 100_000, n_features: int = 1) -> float:
    """Bytes per stored observation of the Python baseline's stored set, measured with tracemalloc.

    Stores ``n`` distinct observations the way ``python_experiment`` holds
    them (a list of tuples of Python floats, built by ``python_points``) and
    divides the memory traced while building it by ``n``: tuple + float
    objects + the list's pointer. (Within one run, the duplicates of later
    training epochs share their tuple with the first epoch's and cost only the
    pointer.)
    """
    rng = np.random.default_rng(0)
    location = rng.random((n, 3), dtype=f32)          # source arrays: not counted
    features = rng.random((n, n_features), dtype=f32)
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        stored = python_points(location, features)    # temporaries are freed before the second reading
        after = tracemalloc.get_traced_memory()[0]
    finally:
        if not was_tracing:
            tracemalloc.stop()
    del stored
    return (after - before) / n


def numpy_bytes_per_observation(n: int = 100_000, n_features: int = 1) -> float:
    """Bytes per stored observation of the NumPy baseline's preallocated float32 arrays (tracemalloc)."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = np.zeros((3 + n_features, n), dtype=f32)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        if not was_tracing:
            tracemalloc.stop()
    del store
    return (after - before) / n
