"""Shared data and drivers of the kernel tests (test_distance, test_matching, test_loop, test_store).

Tolerances
----------
The kernels compute in float32, the references in float64. float32 carries
about 7 significant digits (unit roundoff 6e-8); the similarity reduction adds
a fastmath reciprocal estimate (2e-7 relative, see ``kernels._flags``) and a
float32 sum over the store, and the confidence recurrence halves any earlier
error at every step, so it does not accumulate. ``RTOL = 1e-5`` leaves a wide
margin over the ~1e-6 these errors reach at the sizes tested here, while still
catching any real mistake (a wrong term, a wrong count, a missed step moves the
result by far more than 1e-5). Step counts and end reasons are compared
exactly; thresholds are chosen with a margin so float32 rounding cannot flip a
decision.

The fused loops and the single-step kernels share their arithmetic, so they are
compared bit for bit (``assert_array_equal``), never with a tolerance.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np

import naive.loop
import naive.matching
import naive.store
from kernels import loop, matching
from kernels import store as kstore

ROOT = pathlib.Path(__file__).resolve().parents[1]
RTOL = 1e-5  # float32 kernel vs float64 reference: see the module docstring.
ATOL = 1e-6  # only for values that should be 0 (a distance to an identical point)

SEEDS = (0, 1, 2)
N_FEATURES = (0, 1, 3)


def random_observations(rng, n, n_features):
    """float32 C-contiguous ``location (n, 3)`` in [-1, 1] and ``features (n, F)`` in [0, 1]."""
    location = rng.uniform(-1.0, 1.0, size=(n, 3)).astype(np.float32)
    features = rng.uniform(0.0, 1.0, size=(n, n_features)).astype(np.float32)
    return location, features


def make_store(location, features, extra=7):
    """A kernel store holding these observations, with ``extra`` NaN columns after them.

    The NaN columns make any read past ``n_stored`` show up in the results.
    """
    n, n_features = features.shape
    store = kstore.new_store(n_features, n + extra)
    store[:, n:] = np.nan
    store[:3, :n] = location.T
    store[3:, :n] = features.T
    return store, n


def random_episodes(rng, n_obs, n_episodes, max_length):
    """``n_episodes`` random row ranges of length 0..max_length into n_obs rows (zero-length ones included)."""
    episodes = [(0, 0)]  # always one empty episode
    while len(episodes) < n_episodes:
        length = int(rng.integers(0, max_length + 1))
        start = int(rng.integers(0, n_obs - length + 1))
        episodes.append((start, start + length))
    rng.shuffle(episodes)
    return episodes


def as_arrays(episodes):
    starts = np.array([s for s, _ in episodes], dtype=np.int64)
    stops = np.array([e for _, e in episodes], dtype=np.int64)
    return starts, stops


def reason_names(codes):
    return [loop.REASON_NAMES[int(c)] for c in codes]


def kernel_eval(store, n_stored, location, features, episodes, max_steps, threshold, chunk):
    """Call ``loop.eval_episodes``; returns ``(steps, confidence, reason codes)``."""
    starts, stops = as_arrays(episodes)
    n_ep = len(episodes)
    steps = np.full(n_ep, -1, dtype=np.int64)
    confidence = np.full(n_ep, np.nan, dtype=np.float32)
    reason = np.full(n_ep, -1, dtype=np.int8)
    loop.eval_episodes(store, n_stored, location, features, starts, stops, max_steps,
                       np.float32(threshold), chunk, steps, confidence, reason)
    return steps, confidence, reason


def stepwise_eval(store, n_stored, location, features, episodes, max_steps, threshold):
    """The stepwise path: a Python loop calling ``loop.match_step`` once per step."""
    threshold = np.float32(threshold)
    steps_out, conf_out, reason_out = [], [], []
    for start, stop in episodes:
        confidence = np.float32(0.0)
        steps = 0
        while True:
            if steps == stop - start:
                reason = loop.DATA_EXHAUSTED
                break
            if steps == max_steps:
                reason = loop.STEP_LIMIT
                break
            _, confidence = loop.match_step(store, n_stored, location, features, start + steps, confidence)
            confidence = np.float32(confidence)
            steps += 1
            if confidence >= threshold:
                reason = loop.DONE
                break
        steps_out.append(steps)
        conf_out.append(confidence)
        reason_out.append(reason)
    return (np.array(steps_out, dtype=np.int64), np.array(conf_out, dtype=np.float32),
            np.array(reason_out, dtype=np.int8))


def reference_eval(store, n_stored, location, features, episodes, max_steps, threshold):
    stored_location, stored_features = naive.store.store_contents(store, n_stored)
    rows = [naive.loop.eval_episode(stored_location, stored_features, location, features, start, stop,
                             max_steps, float(np.float32(threshold)))
            for start, stop in episodes]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def threshold_stopping_near(trajectories, target_step, margin=1e-3, separation=2e-5):
    """A threshold that ends some episode at a step >= ``target_step``, mid-episode.

    ``trajectories`` are reference confidence trajectories (one list per
    episode). Looks, from step ``target_step`` on, along the longest trajectory
    for a step k whose confidence is a new maximum by at least ``margin``
    (relative) and takes the midpoint between the earlier maximum and c_k,
    provided it lies at least ``separation`` (relative, 20x the float32 error)
    away from every confidence of every trajectory, so that float32 rounding
    cannot change where any episode stops.
    """
    longest = max(trajectories, key=len)
    for k in range(max(target_step, 2) - 1, len(longest)):
        earlier = max(longest[:k])
        if longest[k] > earlier * (1.0 + margin):
            threshold = float(np.float32((earlier + longest[k]) / 2.0))
            if all(abs(c - threshold) > threshold * separation for traj in trajectories for c in traj):
                return threshold
    raise AssertionError("no usable threshold in these trajectories")


def reference_trajectories(store, n_stored, location, features, episodes, max_steps):
    stored_location, stored_features = naive.store.store_contents(store, n_stored)
    out = []
    for start, stop in episodes:
        n = min(stop - start, max_steps)
        sims = [naive.matching.mean_similarity(stored_location, stored_features, location[t], features[t])
                for t in range(start, start + n)]
        out.append(naive.matching.confidence_trajectory(sims))
    return out


def seed_workload(size):
    """The seed document's observations: t = 0.1 i, position (sin t, cos t, t / 2), feature sin t + cos t."""
    t = np.float32(0.1) * np.arange(size, dtype=np.float32)
    sin_t = np.sin(t)
    cos_t = np.cos(t)
    location = np.ascontiguousarray(np.stack([sin_t, cos_t, np.float32(0.5) * t], axis=1), dtype=np.float32)
    features = np.ascontiguousarray((sin_t + cos_t)[:, None], dtype=np.float32)
    return location, features


# A store size over matching.BLOCKED_ABOVE with full tiles and a block remainder: the tiled batch.
BLOCKED = matching.BLOCKED_ABOVE + matching.STORE_BLOCK + 7


def run_python(code, cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


LIST_DISPATCHERS = """
    import importlib, json, pkgutil
    import numba
    import kernels

    def dispatchers():
        for info in pkgutil.iter_modules(kernels.__path__):
            module = importlib.import_module("kernels." + info.name)
            for name, obj in vars(module).items():
                if isinstance(obj, numba.core.dispatcher.Dispatcher) and obj.py_func.__module__ == module.__name__:
                    yield module.__name__ + "." + name, obj
"""
