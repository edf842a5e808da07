"""Every public kernel against the slow references in ``tests/reference.py``.

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

import ast
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import reference as ref
from kernels import distance, loop, matching
from kernels import store as kstore
from kernels._flags import PARALLEL_MIN_COMPARISONS

RTOL = 1e-5  # float32 kernel vs float64 reference: see the module docstring.
ATOL = 1e-6  # only for values that should be 0 (a distance to an identical point)

ROOT = pathlib.Path(__file__).resolve().parents[1]
KERNELS_DIR = ROOT / "kernels"

SEEDS = (0, 1, 2)
N_FEATURES = (0, 1, 3)


# ---------------------------------------------------------------- helpers


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
    stored_location, stored_features = ref.store_contents(store, n_stored)
    rows = [ref.eval_episode(stored_location, stored_features, location, features, start, stop,
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
    stored_location, stored_features = ref.store_contents(store, n_stored)
    out = []
    for start, stop in episodes:
        n = min(stop - start, max_steps)
        sims = [ref.mean_similarity(stored_location, stored_features, location[t], features[t])
                for t in range(start, start + n)]
        out.append(ref.confidence_trajectory(sims))
    return out


def seed_workload(size):
    """The seed document's observations: t = 0.1 i, position (sin t, cos t, t / 2), feature sin t + cos t."""
    t = np.float32(0.1) * np.arange(size, dtype=np.float32)
    sin_t = np.sin(t)
    cos_t = np.cos(t)
    location = np.ascontiguousarray(np.stack([sin_t, cos_t, np.float32(0.5) * t], axis=1), dtype=np.float32)
    features = np.ascontiguousarray((sin_t + cos_t)[:, None], dtype=np.float32)
    return location, features


# ---------------------------------------------------------------- kernels.distance


PAIRWISE_SIZES = [(0, 4), (4, 0), (1, 1), (3, 7), (17, 40), (130, 140)]


def test_pairwise_sizes_cover_both_branches():
    small = [n * m for n, m in PAIRWISE_SIZES if n > 1 and n * m < distance._PARALLEL_MIN_PAIRS]
    large = [n * m for n, m in PAIRWISE_SIZES if n > 1 and n * m >= distance._PARALLEL_MIN_PAIRS]
    assert small and large


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, m", PAIRWISE_SIZES)
def test_pairwise_distances_matches_reference(seed, n, m):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, 3)).astype(np.float32)
    b = rng.normal(size=(m, 3)).astype(np.float32)
    out = distance.pairwise_distances(a, b)
    assert out.dtype == np.float32 and out.shape == (n, m) and out.flags.c_contiguous
    assert_allclose(out, ref.pairwise_distances(a, b), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("n, m", [(5, 9), (200, 150)])
def test_pairwise_serial_and_parallel_agree_bitwise(n, m):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(n, 3)).astype(np.float32)
    b = rng.normal(size=(m, 3)).astype(np.float32)
    bx, by, bz = distance._split_columns(b)
    out_serial = np.empty((n, m), dtype=np.float32)
    out_parallel = np.empty((n, m), dtype=np.float32)
    distance._pairwise_serial(a, bx, by, bz, out_serial)
    distance._pairwise_parallel(a, bx, by, bz, out_parallel)
    assert_array_equal(out_serial, out_parallel)
    assert_array_equal(distance.pairwise_distances(a, b), out_serial)


def test_pairwise_rows_equal_distances_to_bitwise():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(150, 3)).astype(np.float32)
    b = rng.normal(size=(160, 3)).astype(np.float32)
    out = distance.pairwise_distances(a, b)
    for i in range(a.shape[0]):
        assert_array_equal(out[i], distance.distances_to(a[i], b))


def test_pairwise_is_the_float32_expression_exactly():
    # No fastmath in kernels.distance: each entry is the IEEE float32 value of
    # sqrt(dx*dx + dy*dy + dz*dz), exactly what NumPy computes in float32.
    rng = np.random.default_rng(5)
    a = rng.normal(size=(60, 3)).astype(np.float32)
    b = rng.normal(size=(70, 3)).astype(np.float32)
    d = b[None, :, :] - a[:, None, :]
    expected = np.sqrt(d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2])
    assert_array_equal(distance.pairwise_distances(a, b), expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("m", [0, 1, 50])
def test_distances_to_matches_reference(seed, m):
    rng = np.random.default_rng(seed)
    point = rng.normal(size=3).astype(np.float32)
    b = rng.normal(size=(m, 3)).astype(np.float32)
    out = distance.distances_to(point, b)
    assert out.dtype == np.float32 and out.shape == (m,)
    assert_allclose(out, ref.distances_to(point, b), rtol=RTOL, atol=ATOL)


def test_distances_to_identical_and_duplicate_points_are_zero():
    point = np.array([0.25, -1.5, 3.0], dtype=np.float32)
    b = np.repeat(point[None, :], 40, axis=0)
    b[7] = [1.25, -1.5, 3.0]
    out = distance.distances_to(point, b)
    expected = np.zeros(40, dtype=np.float32)
    expected[7] = 1.0
    assert_array_equal(out, expected)
    assert_array_equal(distance.pairwise_distances(point[None, :], b)[0], expected)


def test_pairwise_distance_of_a_set_to_itself_has_zero_diagonal():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(140, 3)).astype(np.float32)  # parallel branch
    out = distance.pairwise_distances(a, a)
    assert_array_equal(np.diag(out), np.zeros(140, dtype=np.float32))
    assert_array_equal(out, out.T)


def test_distance_kernels_accept_strided_views():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(20, 6)).astype(np.float32)[:, ::2]
    b = rng.normal(size=(30, 3)).astype(np.float32)[::3]
    assert_allclose(distance.pairwise_distances(a, b), ref.pairwise_distances(a, b), rtol=RTOL)
    assert_allclose(distance.distances_to(a[3], b), ref.distances_to(a[3], b), rtol=RTOL)


def test_distance_kernels_reject_points_that_are_not_3d():
    with pytest.raises(ValueError):
        distance.pairwise_distances(np.zeros((2, 2), np.float32), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError):
        distance.pairwise_distances(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError):
        distance.distances_to(np.zeros(2, np.float32), np.zeros((2, 3), np.float32))


# ---------------------------------------------------------------- kernels.matching: similarity


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("n_stored", [0, 1, 7, 300])
def test_mean_similarity_matches_reference(seed, n_features, n_stored):
    rng = np.random.default_rng(seed)
    stored_location, stored_features = random_observations(rng, n_stored, n_features)
    location, features = random_observations(rng, 5, n_features)
    store, n = make_store(stored_location, stored_features)
    for t in range(5):
        got = matching.mean_similarity(store, n, location[t], features[t])
        want = ref.mean_similarity(stored_location, stored_features, location[t], features[t])
        assert_allclose(got, want, rtol=RTOL)


def test_mean_similarity_of_an_empty_store_is_zero():
    store = kstore.new_store(1, 4)
    store[:] = np.nan
    got = matching.mean_similarity(store, 0, np.ones(3, np.float32), np.ones(1, np.float32))
    assert got == 0.0


@pytest.mark.parametrize("n_features", N_FEATURES)
def test_mean_similarity_with_duplicates_and_an_identical_query_is_one(n_features):
    # Every stored observation equals the query: each term is 1 / (1 + 0 + 0).
    # The fastmath reciprocal estimate returns 0.99999994 (1 ulp below 1) for
    # 1 / 1, so the result is 1 to float32 rounding, not exactly 1.
    rng = np.random.default_rng(8)
    location, features = random_observations(rng, 1, n_features)
    stored_location = np.repeat(location, 500, axis=0)
    stored_features = np.repeat(features, 500, axis=0)
    store, n = make_store(stored_location, stored_features)
    got = matching.mean_similarity(store, n, location[0], features[0])
    assert_allclose(got, 1.0, rtol=RTOL)
    assert got <= 1.0


def test_mean_similarity_with_a_query_equal_to_one_stored_point():
    stored_location = np.array([[0, 0, 0], [3, 4, 0]], dtype=np.float32)
    stored_features = np.array([[0.5], [1.5]], dtype=np.float32)
    store, n = make_store(stored_location, stored_features)
    got = matching.mean_similarity(store, n, stored_location[0], stored_features[0])
    assert_allclose(got, (1.0 + 1.0 / (1.0 + 5.0 + 1.0)) / 2.0, rtol=RTOL)


# (queries, stored): serial, parallel over queries, and tiled (stores over BLOCKED_ABOVE,
# with a tile per query, and with full tiles and a block remainder)
BLOCKED = matching.BLOCKED_ABOVE + matching.STORE_BLOCK + 7
BATCH_SIZES = [(1, 0), (1, BLOCKED), (5, 1), (10, 100), (64, 40), (200, 300), (300, 200), (12, BLOCKED),
               (300, BLOCKED)]


def _batch_branch(q, n):
    if q > 1 and q * n >= PARALLEL_MIN_COMPARISONS:
        return "tiled" if n > matching.BLOCKED_ABOVE else "parallel"
    return "serial"


def test_batch_sizes_cover_every_branch():
    assert {_batch_branch(q, n) for q, n in BATCH_SIZES} == {"serial", "parallel", "tiled"}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("n_queries, n_stored", BATCH_SIZES)
def test_batch_similarity_matches_reference_and_single_queries(seed, n_features, n_queries, n_stored):
    rng = np.random.default_rng(seed)
    stored_location, stored_features = random_observations(rng, n_stored, n_features)
    location, features = random_observations(rng, n_queries, n_features)
    store, n = make_store(stored_location, stored_features)
    out = matching.batch_similarity(store, n, location, features)
    assert out.dtype == np.float32 and out.shape == (n_queries,)
    want = [ref.mean_similarity(stored_location, stored_features, location[t], features[t])
            for t in range(n_queries)]
    assert_allclose(out, want, rtol=RTOL)
    single = [matching.mean_similarity(store, n, location[t], features[t]) for t in range(n_queries)]
    assert_array_equal(out, np.array(single, dtype=np.float32))


@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("n_queries, n_stored", [(12, 10), (150, 90)])
def test_batch_similarity_at_takes_steps_in_any_order(n_features, n_queries, n_stored):
    rng = np.random.default_rng(9)
    stored_location, stored_features = random_observations(rng, n_stored, n_features)
    location, features = random_observations(rng, n_queries, n_features)
    store, n = make_store(stored_location, stored_features)
    everything = matching.batch_similarity(store, n, location, features)
    # A permutation, then a shorter selection with repeats.
    for steps in (rng.permutation(n_queries), rng.integers(0, n_queries, size=n_queries // 2 + 3)):
        steps = steps.astype(np.int64)
        out = np.full(steps.shape[0], np.nan, dtype=np.float32)
        matching.batch_similarity_at(store, n, location, features, steps, out)
        assert_array_equal(out, everything[steps])
        want = [ref.mean_similarity(stored_location, stored_features, location[t], features[t]) for t in steps]
        assert_allclose(out, want, rtol=RTOL)


@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("n_queries, n_stored", [(3, 0), (7, 5), (300, 200)])
def test_batch_similarity_serial_and_parallel_agree_bitwise(n_features, n_queries, n_stored):
    rng = np.random.default_rng(10)
    stored_location, stored_features = random_observations(rng, n_stored, n_features)
    location, features = random_observations(rng, n_queries, n_features)
    store, n = make_store(stored_location, stored_features)
    steps = rng.permutation(n_queries).astype(np.int64)
    out_serial = np.full(n_queries, np.nan, dtype=np.float32)
    out_parallel = np.full(n_queries, np.nan, dtype=np.float32)
    matching._batch_similarity_serial(store, n, location, features, steps, out_serial)
    matching._batch_similarity_parallel(store, n, location, features, steps, out_parallel)
    assert_array_equal(out_serial, out_parallel)
    if n_stored == 0:
        assert_array_equal(out_serial, np.zeros(n_queries, dtype=np.float32))


# ---------------------------------------------------------------- kernels.matching: termination


def test_update_confidence_is_the_mean_of_confidence_and_similarity():
    assert matching.update_confidence(np.float32(0.0), np.float32(0.5)) == 0.25
    got = matching.update_confidence(np.float32(0.3), np.float32(0.7))
    assert got == np.float32((np.float32(0.3) + np.float32(0.7)) * np.float32(0.5))
    assert_allclose(got, ref.update_confidence(0.3, 0.7), rtol=RTOL)


def scan_cases():
    rng = np.random.default_rng(11)
    sims = rng.uniform(0.2, 0.6, size=40).astype(np.float32)
    sims[10] = 0.95  # a jump, so a threshold between can stop mid-way
    traj = ref.confidence_trajectory(sims)
    mid = float(np.float32((max(traj[:10]) + traj[10]) / 2))
    return [
        ("empty", np.zeros(0, np.float32), 0.0, 0.5),
        ("stop_at_step_1", sims, 0.0, 0.01),
        ("already_above", sims, 0.9, 0.5),
        ("stop_mid_way", sims, 0.0, mid),
        ("never_inf", sims, 0.0, np.inf),
        ("never_below_1", sims, 0.0, 0.99),
        ("nonzero_start", sims, 0.4, mid),
    ]


@pytest.mark.parametrize("name, sims, confidence, threshold", scan_cases(), ids=[c[0] for c in scan_cases()])
def test_termination_scan_matches_reference(name, sims, confidence, threshold):
    consumed, c, done = matching.termination_scan(sims, np.float32(confidence), np.float32(threshold))
    want_consumed, want_c, want_done = ref.termination_scan(sims, confidence, float(np.float32(threshold)))
    assert (consumed, done) == (want_consumed, want_done)
    assert_allclose(c, want_c, rtol=RTOL)
    if name == "stop_at_step_1":
        assert (consumed, done) == (1, True)
    if name == "stop_mid_way":
        assert (consumed, done) == (11, True)
    if name.startswith("never"):
        assert (consumed, done) == (len(sims), False)


def test_termination_scan_can_reach_exactly_one_in_float32():
    # Similarity 1 at every step: c = 1 - 2**-k, which float32 rounds to 1.0 at k = 25.
    consumed, c, done = matching.termination_scan(np.ones(40, np.float32), np.float32(0.0), np.float32(1.0))
    assert (consumed, c, done) == (25, 1.0, True)


def random_segments(rng, total, n_segments):
    cuts = np.sort(rng.integers(0, total + 1, size=n_segments - 1))
    offsets = np.concatenate([[0], cuts, [total]]).astype(np.int64)
    offsets[2] = offsets[1]  # one empty segment at least
    return offsets


@pytest.mark.parametrize("total, n_segments", [(0, 1), (50, 6), (matching._SCAN_PARALLEL_MIN_STEPS + 100, 40)])
@pytest.mark.parametrize("threshold", [0.7, np.inf])
def test_scan_segments_matches_reference(total, n_segments, threshold):
    rng = np.random.default_rng(12)
    sims = rng.uniform(0.0, 1.0, size=total).astype(np.float32)
    if n_segments == 1:
        offsets = np.array([0, total], dtype=np.int64)
    else:
        offsets = random_segments(rng, total, n_segments)
    start_conf = rng.uniform(0.0, 0.5, size=n_segments).astype(np.float32)
    confidence = start_conf.copy()
    consumed = np.full(n_segments, -1, dtype=np.int64)
    done = np.zeros(n_segments, dtype=np.bool_)
    matching.scan_segments(sims, offsets, confidence, np.float32(threshold), consumed, done)
    for e in range(n_segments):
        want = ref.termination_scan(sims[offsets[e]:offsets[e + 1]], start_conf[e], threshold)
        assert (consumed[e], done[e]) == (want[0], want[2])
        assert_allclose(confidence[e], want[1], rtol=RTOL)


@pytest.mark.parametrize("total, n_segments", [(30, 4), (matching._SCAN_PARALLEL_MIN_STEPS + 100, 40)])
def test_scan_segments_serial_and_parallel_agree_bitwise(total, n_segments):
    rng = np.random.default_rng(13)
    sims = rng.uniform(0.0, 1.0, size=total).astype(np.float32)
    offsets = random_segments(rng, total, n_segments)
    start_conf = rng.uniform(0.0, 0.5, size=n_segments).astype(np.float32)
    results = []
    for kernel in (matching._scan_segments_serial, matching._scan_segments_parallel, matching.scan_segments):
        confidence = start_conf.copy()
        consumed = np.full(n_segments, -1, dtype=np.int64)
        done = np.zeros(n_segments, dtype=np.bool_)
        kernel(sims, offsets, confidence, np.float32(0.7), consumed, done)
        results.append((confidence, consumed, done))
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            assert_array_equal(got, want)


# ---------------------------------------------------------------- kernels.loop: training


def test_reason_codes_name_the_reference_reasons():
    assert loop.REASON_NAMES[loop.DONE] == ref.DONE
    assert loop.REASON_NAMES[loop.DATA_EXHAUSTED] == ref.DATA_EXHAUSTED
    assert loop.REASON_NAMES[loop.STEP_LIMIT] == ref.STEP_LIMIT


@pytest.mark.parametrize("max_steps", [0, 1, 5, 10_000])
@pytest.mark.parametrize("n_epochs", [0, 1, 3])
def test_training_steps_needed(max_steps, n_epochs):
    episodes = [(0, 0), (2, 9), (3, 4), (10, 40)]
    starts, stops = as_arrays(episodes)
    want = n_epochs * sum(min(b - a, max_steps) for a, b in episodes)
    assert loop.training_steps_needed(starts, stops, max_steps, n_epochs) == want


@pytest.mark.parametrize("n_features", N_FEATURES)
def test_train_step_appends_one_observation(n_features):
    rng = np.random.default_rng(14)
    location, features = random_observations(rng, 10, n_features)
    store = kstore.new_store(n_features, 3)
    n = 0
    for t in (4, 4, 9):
        n = loop.train_step(store, n, location, features, t)
    assert n == 3
    got_location, got_features = ref.store_contents(store, n)
    assert_array_equal(got_location, location[[4, 4, 9]])
    assert_array_equal(got_features, features[[4, 4, 9]])
    with pytest.raises(ValueError):
        loop.train_step(store, n, location, features, 0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("max_steps", [0, 1, 6, 10_000])
def test_train_episodes_matches_reference(seed, n_features, max_steps):
    rng = np.random.default_rng(seed)
    location, features = random_observations(rng, 60, n_features)
    episodes = random_episodes(rng, 60, 6, 12)
    initial_location, initial_features = random_observations(rng, 4, n_features)
    need = loop.training_steps_needed(*as_arrays(episodes), max_steps, 1)
    store = kstore.new_store(n_features, 4 + need)
    store[:3, :4] = initial_location.T
    store[3:, :4] = initial_features.T
    steps = np.full(len(episodes), -1, dtype=np.int64)
    stored = np.full(len(episodes), -1, dtype=np.int64)
    reason = np.full(len(episodes), -1, dtype=np.int8)
    n = loop.train_episodes(store, 4, location, features, *as_arrays(episodes), max_steps, steps, stored, reason)
    want = ref.run_experiment(location, features, episodes, 1, max_steps, [], 0, 0, np.inf,
                              initial_location, initial_features)
    assert n == want["n_stored"] == 4 + need
    assert_array_equal(steps, want["train_steps"])
    assert_array_equal(stored, want["train_stored"])
    assert reason_names(reason) == want["train_reason"]
    got_location, got_features = ref.store_contents(store, n)
    assert_array_equal(got_location, want["stored_location"])
    assert_array_equal(got_features, want["stored_features"])


def test_train_episodes_into_a_too_small_store_raises_and_writes_nothing():
    rng = np.random.default_rng(15)
    location, features = random_observations(rng, 20, 1)
    starts, stops = as_arrays([(0, 5), (5, 12)])
    store = kstore.new_store(1, 11)
    before = store.copy()
    out = [np.zeros(2, np.int64), np.zeros(2, np.int64), np.zeros(2, np.int8)]
    with pytest.raises(ValueError):
        loop.train_episodes(store, 0, location, features, starts, stops, 100, *out)
    assert_array_equal(store, before)
    with pytest.raises(ValueError):  # fits from empty, not after 3 stored
        loop.train_episodes(kstore.new_store(1, 12), 3, location, features, starts, stops, 100, *out)
    assert loop.train_episodes(kstore.new_store(1, 12), 0, location, features, starts, stops, 100, *out) == 12


# ---------------------------------------------------------------- kernels.loop: evaluation


def eval_problem(seed, n_features, n_stored=120, n_obs=150, n_episodes=7, max_length=30):
    rng = np.random.default_rng(seed)
    stored_location, stored_features = random_observations(rng, n_stored, n_features)
    location, features = random_observations(rng, n_obs, n_features)
    # Nudge the first half of the queries onto stored points, so confidences rise and vary.
    half = n_obs // 2
    pick = rng.integers(0, max(n_stored, 1), size=half)
    if n_stored:
        location[:half] = stored_location[pick] + rng.normal(0.0, 0.05, size=(half, 3)).astype(np.float32)
        features[:half] = stored_features[pick]
    store, n = make_store(stored_location, stored_features)
    episodes = random_episodes(rng, n_obs, n_episodes, max_length)
    episodes.append((0, max_length))  # one long episode that starts in the nudged half
    return store, n, location, features, episodes


def threshold_for(kind, store, n, location, features, episodes, max_steps):
    if kind == "inf":
        return np.inf
    if kind == "above_one":
        return 2.0
    if kind == "never_below_one":
        return 0.999
    if kind == "step_1":
        return 1e-3
    if kind == "mid":
        return threshold_stopping_near(reference_trajectories(store, n, location, features, episodes, max_steps), 5)
    raise ValueError(kind)


THRESHOLD_KINDS = ["inf", "above_one", "never_below_one", "step_1", "mid"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("threshold_kind", THRESHOLD_KINDS)
def test_eval_episodes_matches_reference(seed, n_features, threshold_kind):
    max_steps = 25
    store, n, location, features, episodes = eval_problem(seed, n_features)
    threshold = threshold_for(threshold_kind, store, n, location, features, episodes, max_steps)
    steps, confidence, reason = kernel_eval(store, n, location, features, episodes, max_steps, threshold, 4)
    want_steps, want_confidence, want_reason = reference_eval(store, n, location, features, episodes,
                                                              max_steps, threshold)
    assert_array_equal(steps, want_steps)
    assert reason_names(reason) == want_reason
    assert_allclose(confidence, want_confidence, rtol=RTOL)
    if threshold_kind == "step_1":
        assert all(s == 1 for s, (a, b) in zip(steps, episodes) if b > a)
    if threshold_kind == "mid":
        assert loop.DONE in reason
        assert any(r == loop.DONE and 1 < s < min(b - a, max_steps) for s, r, (a, b) in zip(steps, reason, episodes))
        assert any(r == loop.DONE and s % 4 != 0 for s, r in zip(steps, reason))  # mid-chunk (chunk 4)
    if threshold_kind in ("inf", "above_one", "never_below_one"):
        assert loop.DONE not in reason


@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("max_steps", [0, 1, 2])
def test_eval_episodes_with_tiny_step_limits(n_features, max_steps):
    store, n, location, features, episodes = eval_problem(20, n_features)
    episodes += [(5, 6), (7, 9)]  # lengths 1 and 2: data runs out exactly at the limit for some max_steps
    for threshold in (np.inf, 1e-3):
        steps, confidence, reason = kernel_eval(store, n, location, features, episodes, max_steps, threshold, 3)
        want = reference_eval(store, n, location, features, episodes, max_steps, threshold)
        assert_array_equal(steps, want[0])
        assert reason_names(reason) == want[2]
        assert_allclose(confidence, want[1], rtol=RTOL)
    if max_steps == 0:
        assert_array_equal(steps, np.zeros(len(episodes)))
        assert_array_equal(confidence, np.zeros(len(episodes), np.float32))
        assert reason_names(reason) == [ref.DATA_EXHAUSTED if a == b else ref.STEP_LIMIT for a, b in episodes]


def test_eval_episodes_against_an_empty_store():
    store, _, location, features, episodes = eval_problem(21, 1)
    steps, confidence, reason = kernel_eval(store, 0, location, features, episodes, 10, 0.5, 4)
    assert_array_equal(confidence, np.zeros(len(episodes), np.float32))
    assert_array_equal(steps, [min(b - a, 10) for a, b in episodes])
    assert loop.DONE not in reason


def test_eval_episodes_with_no_episodes_and_only_empty_episodes():
    store, n, location, features, _ = eval_problem(22, 1)
    assert [len(x) for x in kernel_eval(store, n, location, features, [], 10, 0.5, 4)] == [0, 0, 0]
    steps, confidence, reason = kernel_eval(store, n, location, features, [(3, 3), (0, 0)], 10, 0.5, 4)
    assert_array_equal(steps, [0, 0])
    assert reason_names(reason) == [ref.DATA_EXHAUSTED] * 2


@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("threshold_kind", ["inf", "never_below_one", "step_1", "mid"])
@pytest.mark.parametrize("n_stored", [0, 3, 120, BLOCKED])
def test_eval_episodes_does_not_depend_on_chunk(n_features, threshold_kind, n_stored):
    max_steps = 25
    store, n, location, features, episodes = eval_problem(23, n_features, n_stored=n_stored)
    threshold = 0.3 if (threshold_kind == "mid" and n_stored < 120) else \
        threshold_for(threshold_kind, store, n, location, features, episodes, max_steps)
    results = [kernel_eval(store, n, location, features, episodes, max_steps, threshold, chunk)
               for chunk in (1, 3, 64, 10_000)]
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            assert_array_equal(got, want)


@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("threshold_kind", ["inf", "never_below_one", "step_1", "mid"])
@pytest.mark.parametrize("n_stored", [0, 5, 120, BLOCKED])
def test_eval_episodes_equals_the_stepwise_path_bitwise(n_features, threshold_kind, n_stored):
    # BLOCKED (over BLOCKED_ABOVE) puts every round, even 1-step chunks over ~8 episodes,
    # over PARALLEL_MIN_COMPARISONS: the fused path runs its tiled batch; 5 and 120 run serially.
    max_steps = 25
    store, n, location, features, episodes = eval_problem(24, n_features, n_stored=n_stored)
    threshold = 0.3 if (threshold_kind == "mid" and n_stored < 120) else \
        threshold_for(threshold_kind, store, n, location, features, episodes, max_steps)
    stepwise = stepwise_eval(store, n, location, features, episodes, max_steps, threshold)
    for chunk in (1, 4, 10_000):
        fused = kernel_eval(store, n, location, features, episodes, max_steps, threshold, chunk)
        for got, want in zip(fused, stepwise):
            assert_array_equal(got, want)


@pytest.mark.parametrize("n_features", N_FEATURES)
def test_match_step_matches_reference_and_mean_similarity(n_features):
    store, n, location, features, _ = eval_problem(25, n_features)
    stored_location, stored_features = ref.store_contents(store, n)
    confidence = np.float32(0.0)
    want_confidence = 0.0
    for t in range(12):
        s, confidence = loop.match_step(store, n, location, features, t, confidence)
        want_s = ref.mean_similarity(stored_location, stored_features, location[t], features[t])
        want_confidence = ref.update_confidence(want_confidence, want_s)
        assert s == matching.mean_similarity(store, n, location[t], features[t])
        assert_allclose(s, want_s, rtol=RTOL)
        assert_allclose(confidence, want_confidence, rtol=RTOL)
        confidence = np.float32(confidence)


# ---------------------------------------------------------------- kernels.loop: whole experiments


def kernel_experiment(location, features, train_episodes, n_train, max_train, eval_episodes, n_eval,
                      max_eval, threshold, chunk, capacity=None, n_features=None, packed=False):
    """Run ``loop.run_experiment`` (or, with ``packed``, ``loop.run_experiment_packed``); a dict of outputs."""
    n_features = features.shape[1] if n_features is None else n_features
    train_starts, train_stops = as_arrays(train_episodes)
    eval_starts, eval_stops = as_arrays(eval_episodes)
    if capacity is None:
        capacity = loop.training_steps_needed(train_starts, train_stops, max_train, n_train)
    store = kstore.new_store(n_features, capacity)
    n_tr = n_train * len(train_episodes)
    n_ev = n_eval * len(eval_episodes)
    if packed:
        plan = loop.pack_plan(train_starts, train_stops, n_train, max_train, eval_starts, eval_stops, n_eval,
                              max_eval, chunk)
        assert loop.packed_sizes(plan) == (n_tr, n_ev)
        counts = np.full(2 * n_tr + n_ev, -1, np.int64)
        confidence = np.full(n_ev, np.nan, np.float32)
        reasons = np.full(n_tr + n_ev, -1, np.int8)
        out = dict(train_steps=counts[:n_tr], train_stored=counts[n_tr:2 * n_tr], train_reason=reasons[:n_tr],
                   eval_steps=counts[2 * n_tr:], eval_confidence=confidence, eval_reason=reasons[n_tr:])
        out["n_stored"] = loop.run_experiment_packed(store, location, features, plan, np.float32(threshold),
                                                     counts, confidence, reasons)
        out["store"] = store
        return out
    out = dict(
        train_steps=np.full(n_tr, -1, np.int64), train_stored=np.full(n_tr, -1, np.int64),
        train_reason=np.full(n_tr, -1, np.int8), eval_steps=np.full(n_ev, -1, np.int64),
        eval_confidence=np.full(n_ev, np.nan, np.float32), eval_reason=np.full(n_ev, -1, np.int8))
    out["n_stored"] = loop.run_experiment(
        store, 0, location, features, train_starts, train_stops, n_train, max_train,
        eval_starts, eval_stops, n_eval, max_eval, np.float32(threshold), chunk,
        out["train_steps"], out["train_stored"], out["train_reason"],
        out["eval_steps"], out["eval_confidence"], out["eval_reason"])
    out["store"] = store
    return out


EXPERIMENTS = [
    # (n_train_epochs, max_train_steps, n_eval_epochs, max_eval_steps, threshold)
    (1, 10_000, 1, 10_000, np.inf),
    (3, 8, 2, 20, 0.45),
    (2, 1, 2, 1, np.inf),
    (2, 0, 1, 5, 0.4),  # nothing stored
    (0, 10, 2, 10, 0.4),  # no training
    (2, 10, 0, 10, 0.4),  # no evaluation
    (2, 15, 3, 0, 0.4),  # evaluation step limit 0
    (1, 10_000, 2, 30, 1e-3),  # stops at step 1
]


@pytest.mark.parametrize("packed", [False, True], ids=["run_experiment", "run_experiment_packed"])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("n_train, max_train, n_eval, max_eval, threshold", EXPERIMENTS)
def test_run_experiment_matches_reference(seed, n_features, n_train, max_train, n_eval, max_eval, threshold, packed):
    rng = np.random.default_rng(seed)
    location, features = random_observations(rng, 80, n_features)
    train_episodes = random_episodes(rng, 80, 5, 20)
    eval_episodes = random_episodes(rng, 80, 4, 25)
    got = kernel_experiment(location, features, train_episodes, n_train, max_train, eval_episodes, n_eval,
                            max_eval, threshold, 4, n_features=n_features, packed=packed)
    want = ref.run_experiment(location, features, train_episodes, n_train, max_train, eval_episodes, n_eval,
                              max_eval, float(np.float32(threshold)))
    assert got["n_stored"] == want["n_stored"]
    for key in ("train_steps", "train_stored", "eval_steps"):
        assert_array_equal(got[key], want[key], err_msg=key)
    assert reason_names(got["train_reason"]) == want["train_reason"]
    assert reason_names(got["eval_reason"]) == want["eval_reason"]
    assert_allclose(got["eval_confidence"], want["eval_confidence"], rtol=RTOL)
    stored_location, stored_features = ref.store_contents(got["store"], got["n_stored"])
    assert_array_equal(stored_location, want["stored_location"])
    assert_array_equal(stored_features, want["stored_features"])


def test_run_experiment_matches_its_parts_and_any_chunk():
    rng = np.random.default_rng(26)
    location, features = random_observations(rng, 90, 1)
    train_episodes = random_episodes(rng, 90, 6, 20)
    eval_episodes = random_episodes(rng, 90, 5, 30)
    runs = [kernel_experiment(location, features, train_episodes, 2, 15, eval_episodes, 3, 25, 0.42, chunk)
            for chunk in (1, 3, 64, 10_000)]
    for other in runs[1:]:
        for key, want in runs[0].items():
            assert_array_equal(other[key], want, err_msg=key)
    # The evaluation part equals eval_episodes on the trained store, one epoch at a time.
    first = runs[0]
    for p in range(3):
        part = kernel_eval(first["store"], first["n_stored"], location, features, eval_episodes, 25, 0.42, 5)
        e = len(eval_episodes)
        for got, key in zip(part, ("eval_steps", "eval_confidence", "eval_reason")):
            assert_array_equal(got, first[key][p * e:(p + 1) * e])


@pytest.mark.parametrize("packed", [False, True], ids=["run_experiment", "run_experiment_packed"])
def test_run_experiment_with_a_too_small_store_raises(packed):
    rng = np.random.default_rng(27)
    location, features = random_observations(rng, 30, 1)
    with pytest.raises(ValueError):
        kernel_experiment(location, features, [(0, 10)], 3, 100, [(0, 10)], 1, 10, 0.5, 4, capacity=29,
                          packed=packed)
    assert kernel_experiment(location, features, [(0, 10)], 3, 100, [(0, 10)], 1, 10, 0.5, 4,
                             capacity=30, packed=packed)["n_stored"] == 30


def test_run_experiment_packed_equals_run_experiment_bitwise():
    """Same outputs, bit for bit, including the store, on several feature counts and chunks."""
    rng = np.random.default_rng(28)
    for n_features in N_FEATURES:
        location, features = random_observations(rng, 120, n_features)
        train_episodes = random_episodes(rng, 120, 7, 30)
        eval_episodes = random_episodes(rng, 120, 6, 40)
        for chunk in (1, 5, 64):
            wide, packed = (kernel_experiment(location, features, train_episodes, 3, 25, eval_episodes, 2, 35,
                                              0.41, chunk, packed=p) for p in (False, True))
            for key, want in wide.items():
                assert_array_equal(packed[key], want, err_msg=f"{key}, {n_features} features, chunk {chunk}")


def test_pack_plan_layout_and_errors():
    plan = loop.pack_plan([0, 5], [5, 9], 3, 7, [2], [8], 4, 6, 16, n_stored=11)
    assert plan.dtype == np.int64
    assert_array_equal(plan, [11, 2, 3, 7, 1, 4, 6, 16, 0, 5, 5, 9, 2, 8])
    assert dict(zip(loop.PLAN_FIELDS, plan)) == dict(n_stored=11, n_train_episodes=2, n_train_epochs=3,
                                                     max_train_steps=7, n_eval_episodes=1, n_eval_epochs=4,
                                                     max_eval_steps=6, chunk=16)
    assert loop.packed_sizes(plan) == (6, 4)
    with pytest.raises(ValueError, match="same length"):
        loop.pack_plan([0, 5], [5], 1, 1, [], [], 1, 1, 1)
    with pytest.raises(ValueError, match="chunk"):
        loop.pack_plan([0], [5], 1, 1, [0], [5], 1, 1, 0)
    with pytest.raises(ValueError, match=">= 0"):
        loop.pack_plan([0], [5], -1, 1, [0], [5], 1, 1, 1)


def test_run_experiment_packed_rejects_outputs_that_do_not_match_the_plan():
    rng = np.random.default_rng(29)
    location, features = random_observations(rng, 20, 1)
    plan = loop.pack_plan([0], [10], 2, 100, [0, 10], [10, 20], 1, 100, 4)
    n_tr, n_ev = loop.packed_sizes(plan)
    store = kstore.new_store(1, 20)
    good = (np.zeros(2 * n_tr + n_ev, np.int64), np.zeros(n_ev, np.float32), np.zeros(n_tr + n_ev, np.int8))
    for k in range(3):
        bad = list(good)
        bad[k] = bad[k][:-1]
        with pytest.raises(ValueError, match="plan and outputs do not match"):
            loop.run_experiment_packed(store, location, features, plan, np.float32(0.5), *bad)
    with pytest.raises(ValueError, match="plan and outputs do not match"):
        loop.run_experiment_packed(store, location, features, plan[:-1], np.float32(0.5), *good)
    assert loop.run_experiment_packed(store, location, features, plan, np.float32(0.5), *good) == 20


SEED_PARITY = {  # (size, epochs): final confidence, from the external Rust reference implementation
    (10, 10): 0.688552856,
    (50, 10): 0.320348978,
    (100, 10): 0.232865244,
    (500, 5): 0.102160096,
    (1000, 2): 0.064621277,
}


@pytest.mark.parametrize("size, epochs", list(SEED_PARITY))
def test_seed_workload_parity(size, epochs):
    location, features = seed_workload(size)
    episode = [(0, size)]
    got = kernel_experiment(location, features, episode, epochs, 10_000, episode, epochs, 10_000, np.inf, 64)
    assert got["n_stored"] == size * epochs
    assert reason_names(got["eval_reason"]) == [ref.DATA_EXHAUSTED] * epochs
    assert_array_equal(got["eval_steps"], [size] * epochs)
    assert_allclose(got["eval_confidence"][-1], SEED_PARITY[size, epochs], rtol=RTOL)
    # The plain reference reproduces the external figures as well.
    want = ref.run_experiment(location, features, episode, epochs, 10_000, episode, epochs, 10_000, np.inf)
    assert_allclose(want["eval_confidence"][-1], SEED_PARITY[size, epochs], rtol=RTOL)
    # And the stepwise path gives the fused result bit for bit.
    stepwise = stepwise_eval(got["store"], got["n_stored"], location, features, episode, 10_000, np.inf)
    assert_array_equal(stepwise[1], got["eval_confidence"][-1:])


# ---------------------------------------------------------------- kernels.store


@pytest.mark.parametrize("n_features, bytes_each", [(0, 12), (1, 16), (3, 24)])
def test_store_layout_and_bytes_per_observation(n_features, bytes_each):
    store = kstore.new_store(n_features, 9)
    assert store.shape == (3 + n_features, 9)
    assert store.dtype == np.float32 and store.flags.c_contiguous
    assert not store.any()
    assert kstore.bytes_per_observation(store) == bytes_each


def test_new_store_rejects_negative_sizes():
    with pytest.raises(ValueError):
        kstore.new_store(-1, 5)
    with pytest.raises(ValueError):
        kstore.new_store(1, -5)


@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("n", [0, 1, 6])
def test_store_from_arrays_round_trips(n_features, n):
    rng = np.random.default_rng(28)
    location, features = random_observations(rng, n, n_features)
    store, n_stored = kstore.store_from_arrays(location, features)
    assert n_stored == n and store.shape == (3 + n_features, n)
    assert store.dtype == np.float32 and store.flags.c_contiguous
    got_location, got_features = ref.store_contents(store, n_stored)
    assert_array_equal(got_location, location)
    assert_array_equal(got_features, features)


def test_store_from_arrays_rejects_bad_shapes():
    with pytest.raises(ValueError):
        kstore.store_from_arrays(np.zeros((4, 2)), np.zeros((4, 1)))
    with pytest.raises(ValueError):
        kstore.store_from_arrays(np.zeros((4, 3)), np.zeros((5, 1)))
    with pytest.raises(ValueError):
        kstore.store_from_arrays(np.zeros((4, 3)), np.zeros(4))


# ---------------------------------------------------------------- package rules


def kernel_sources():
    files = sorted(KERNELS_DIR.glob("*.py"))
    assert files
    return files


@pytest.mark.parametrize("path", kernel_sources(), ids=lambda p: p.name)
def test_kernels_import_only_numpy_numba_llvmlite_and_the_standard_library(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level > 0:  # relative: inside kernels
                continue
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top != "engine", f"{path.name}:{node.lineno} imports {name}"
            # llvmlite is numba's own code generator (kernels.timing emits an LLVM intrinsic)
            assert top in ("numpy", "numba", "llvmlite") or top in sys.stdlib_module_names, \
                f"{path.name}:{node.lineno} imports {name}"


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


def test_importing_kernels_compiles_nothing(tmp_path):
    cache = tmp_path / "numba_cache"
    cache.mkdir()
    got = run_python(LIST_DISPATCHERS + """
    print(json.dumps({name: [str(s) for s in d.signatures] for name, d in dispatchers()}))
    """, cache)
    assert len(got) >= 20  # the kernels of distance, matching and loop at least
    assert "kernels.distance.pairwise_distances" in got and "kernels.loop.run_experiment" in got
    assert {name: sigs for name, sigs in got.items() if sigs} == {}
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # and cached nothing (numba makes empty folders)


def test_similarity_kernels_compute_in_float32_only(tmp_path):
    # A fresh cache, so every callee is compiled (a kernel loaded from the cache
    # does not compile, and so does not list, the helpers it calls).
    cache = tmp_path / "numba_cache"
    cache.mkdir()
    got = run_python(LIST_DISPATCHERS + """
    import io
    import numpy as np
    from kernels import matching, store as kstore

    rng = np.random.default_rng(0)
    sigs = {}
    for n_features in (0, 1, 3):
        store = rng.random((3 + n_features, 2000), dtype=np.float32)
        location = rng.random((300, 3), dtype=np.float32)
        features = rng.random((300, n_features), dtype=np.float32)
        matching.mean_similarity(store, 2000, location[0], features[0])
        matching.batch_similarity(store, 2000, location, features)  # parallel branch
        matching.batch_similarity(store, 2000, location[:1], features[:1])  # serial branch
        out = np.empty(300, np.float32)
        matching._batch_similarity_serial(store, 2000, location, features, np.arange(300), out)
        matching._batch_similarity_parallel(store, 2000, location, features, np.arange(300), out)
    sims = rng.random(70000, dtype=np.float32)
    offsets = np.array([0, 10, 30000, 70000], dtype=np.int64)
    conf = np.zeros(3, dtype=np.float32)
    matching.scan_segments(sims, offsets, conf, np.float32(0.9), np.zeros(3, np.int64), np.zeros(3, np.bool_))
    matching.scan_segments(sims[:10], offsets[:2], conf[:1], np.float32(0.9), np.zeros(1, np.int64),
                           np.zeros(1, np.bool_))
    for name, d in dispatchers():
        if name.startswith("kernels.matching."):
            sigs[name] = [[str(a) for a in s.args] + ["-> " + str(s.return_type)] for s in d.nopython_signatures]
    text = io.StringIO()
    matching._similarity_sum.inspect_types(file=text)
    print(json.dumps({"sigs": sigs, "similarity_sum_types": text.getvalue()}))
    """, cache)
    sigs = got["sigs"]
    for name in ("_similarity_sum", "mean_similarity", "_batch_similarity_serial", "_batch_similarity_parallel",
                 "batch_similarity", "termination_scan", "update_confidence"):
        assert sigs["kernels.matching." + name], f"{name} was not compiled"
    for name, name_sigs in sigs.items():
        for sig in name_sigs:
            assert not any("array(float64" in part for part in sig), (name, sig)
    assert all(sig[-1] == "-> float32" for sig in sigs["kernels.matching.mean_similarity"])
    assert all(sig[-1] == "-> float32" for sig in sigs["kernels.matching.update_confidence"])
    assert all(sig[-1] == "-> array(float32, 1d, C)" for sig in sigs["kernels.matching.batch_similarity"])
    # The hot loop: every argument, every intermediate value float32 (or integer).
    assert all("float64" not in part for sig in sigs["kernels.matching._similarity_sum"] for part in sig)
    assert got["similarity_sum_types"] and "float64" not in got["similarity_sum_types"]
